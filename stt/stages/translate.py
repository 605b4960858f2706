"""Translate: the model translates the English training data, one job per shard (and language).

The same jobs serve a run (`plan_jobs`, from the run's config) and `stt translate` (`plan_translate`, from a
`TranslateConfig`): one folder of shards either way, done by the same runner.

The translate stage's work: plan -> generate (model) -> validate + assemble (no model).

`stt.stages.translate` makes one job of each planned shard; every runner does a job with `run_shard`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from stt import faults, files, markers, shards, timeouts
from stt.badrows import BadRows
from stt.config import RunConfig, TimeoutConfig, TranslateConfig, stable_json
from stt.engine_settings import EngineConfig
from stt.engines import Request, generator_signature, get_engine
from stt.errors import ConfigError, DataError
from stt.models import resolve_model
from stt.prompts import PromptBuilder, build_prompt_builder
from stt.shards import read_manifest
from stt.specs import TaskSpec, get_task
from stt.stages.base import Job, StageDef
from stt.store import Unit
from stt.validate import VALIDATION_VERSION, clean_completion, segment_reasons

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan

log = logging.getLogger(__name__)
BAD_ROWS_FILE = "_input/bad_rows.jsonl"


@dataclass(frozen=True)
class ShardJob:
    """One (language, shard) unit of work; everything a task needs, as plain serialisable values."""

    shard: str  # e.g. "de-00003"
    index: int
    language: str
    input_path: str
    input_sha256: str
    rows: int
    generation_key: str  # hash of everything that determines the raw generations
    # Round-trip filtering (None when off): the back-translations' key, and the threshold validation applies.
    back_key: str | None = None
    round_trip_min_chrf: float | None = None

    @property
    def raw_path(self) -> str:
        return str(Path(self.input_path).parents[1] / "_raw" / f"{self.shard}.parquet")

    @property
    def back_path(self) -> str:
        return str(Path(self.input_path).parents[1] / "_raw" / f"{self.shard}.back.parquet")


@dataclass(frozen=True)
class Plan:
    out_dir: str
    config_json: str
    model_id: str
    weights_sha256: str
    prompt_version: str
    jobs: tuple[ShardJob, ...]
    done: tuple[str, ...]  # shards already complete and verified on disk

    @property
    def todo(self) -> list[ShardJob]:
        return [j for j in self.jobs if j.shard not in self.done]

    @property
    def config(self) -> TranslateConfig:
        return TranslateConfig.model_validate_json(self.config_json)


def check_config(config: TranslateConfig) -> None:
    """Fail fast, before any work, on a bad task, language, model or missing input. Raises SttError."""
    spec = get_task(config.task)
    if not config.languages:
        raise ConfigError("no target languages given")
    for lang in config.languages:
        build_prompt_builder(lang, config.prompt, config.resolved_data_dir())
    path = config.resolved_input() or spec.default_source(config.resolved_data_dir())
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    resolve_model(config.engine.model)


def load_examples(config: TranslateConfig) -> tuple[TaskSpec, list[dict[str, Any]]]:
    spec = get_task(config.task)
    path = config.resolved_input() or spec.default_source(config.resolved_data_dir())
    policy = config.bad_rows
    bad = BadRows(policy.mode, policy.max_share, policy.max_chars)
    examples = spec.load(path, bad=bad)
    # Bad rows are set aside in a file next to the shards (file, line, reason), never silently dropped.
    rejects = bad.write(Path(config.out_dir) / BAD_ROWS_FILE)
    if bad.rows:
        log.warning("%s: %d bad rows set aside (%s), see %s", path, len(bad.rows),
                    dict(Counter(r["reason"].split(" (")[0] for r in bad.rows).most_common(3)), rejects)
    bad.check(len(examples) + len(bad.rows), path, rejects)
    if not examples:
        raise DataError(f"{path}: no examples")
    return spec, examples[: config.limit] if config.limit else examples


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def _string_schema(fields: list[str], ints: tuple[str, ...] = ()) -> pa.Schema:
    return pa.schema([(f, pa.int64() if f in ints else pa.string()) for f in fields])


def plan_translation(config: TranslateConfig) -> Plan:
    """Load and shard the English data, pin the model, and find which shards are already done."""
    check_config(config)
    spec, examples = load_examples(config)
    model = resolve_model(config.engine.model)
    out = Path(config.out_dir)
    (out / "_input").mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(out / "_config.json", json.loads(config.model_dump_json()))
    fields = list(examples[0])
    jobs: list[ShardJob] = []
    builders = {lang: build_prompt_builder(lang, config.prompt, config.resolved_data_dir())
                for lang in config.languages}
    for index, start in enumerate(range(0, len(examples), config.shard_size)):
        chunk = examples[start : start + config.shard_size]
        input_path = out / "_input" / f"shard-{index:05d}.parquet"
        content = hashlib.sha256(stable_json(chunk).encode()).hexdigest()
        if shards.read_metadata(input_path).get("stt.content_sha256") != content:
            schema = _string_schema(fields, ints=("answer_start",))
            files.write_parquet_atomic(_table(chunk, schema), input_path, {"stt.content_sha256": content})
        for lang in config.languages:
            key = generation_key(config, builders[lang], model.weights_sha256, content, lang)
            back = back_key(config, key, lang) if config.round_trip.enabled else None
            jobs.append(ShardJob(shards.shard_id(lang, index), index, lang, str(input_path), content,
                                 len(chunk), key, back, config.round_trip.threshold(lang) if back else None))
    manifest = shards.read_manifest(out)
    done = tuple(j.shard for j in jobs if shard_complete(out, manifest["shards"].get(j.shard), j))
    _set_aside_stale(out, {j.shard for j in jobs})
    shards.update_manifest(
        out, config=json.loads(config.model_dump_json()), task=spec.name,
        model={"model_id": model.model_id, "weights_sha256": model.weights_sha256},
        prompt_version=builders[config.languages[0]].version, validation_version=VALIDATION_VERSION,
        plan=[j.shard for j in jobs], bad_rows=_count_lines(out / BAD_ROWS_FILE),
    )
    return Plan(str(out), config.model_dump_json(), model.model_id, model.weights_sha256,
                builders[config.languages[0]].version, tuple(jobs), done)


def _count_lines(path: Path) -> int:
    return sum(1 for _ in path.open(encoding="utf-8")) if path.is_file() else 0


def generation_key(config: TranslateConfig, builder: PromptBuilder, weights_sha256: str,
                   input_sha256: str, language: str) -> str:
    """Everything that changes the raw generations, and nothing else (not the validation rules)."""
    parts = {
        "task": get_task(config.task).key_id,  # a declared task's definition too
        "language": language,
        "input": input_sha256,
        "weights": weights_sha256,
        "prompt_version": builder.version,
        "prompt_prefix": builder.completion_prompt(""),  # demonstrations and their wording
        "generation": config.generation.model_dump(mode="json"),
        "engine": generator_signature(config.engine),  # engines differ in numerics: never reuse another's output
    }
    return hashlib.sha256(stable_json(parts).encode()).hexdigest()


def back_key(config: TranslateConfig, generation: str, language: str) -> str:
    """The back-translations depend on the forward generations and the reverse (-> English) prompt."""
    builder = build_prompt_builder(language, config.prompt, config.resolved_data_dir(), to_english=True)
    return markers.stage_key(stage="round-trip", forward=generation, prompt_version=builder.version,
                            prompt_prefix=builder.completion_prompt(""), cleaning=VALIDATION_VERSION)


def shard_complete(out: Path, entry: dict[str, Any] | None, job: ShardJob) -> bool:
    """Done means: same input, same generations, same validation rules, files intact."""
    if not entry:
        return False
    same = (entry.get("input_sha256") == job.input_sha256 and entry.get("generation_key") == job.generation_key
            and entry.get("validation_version") == VALIDATION_VERSION and entry.get("back_key") == job.back_key
            and entry.get("round_trip_min_chrf") == job.round_trip_min_chrf)
    files = [(entry.get("file"), entry.get("sha256")), (entry.get("rejects_file"), entry.get("rejects_sha256"))]
    # A shard with no accepted rows (or no rejects) has no file for them; the manifest says so.
    return same and all(name is None or shards.file_ok(out / name, sha) for name, sha in files)


def raw_complete(job: ShardJob) -> bool:
    """The raw generations for this job (and its back-translations) are on disk, written under the same key."""
    return _forward_complete(job) and (job.back_key is None or _back_complete(job))


def _forward_complete(job: ShardJob) -> bool:
    return shards.read_metadata(Path(job.raw_path)).get("stt.generation_key") == job.generation_key


def _back_complete(job: ShardJob) -> bool:
    return shards.read_metadata(Path(job.back_path)).get("stt.back_key") == job.back_key


def _set_aside_stale(out: Path, planned: set[str]) -> None:
    """Shards of an earlier, larger plan would be read along with this one: move them to _stale/."""
    for path in out.glob("*.parquet"):
        if path.stem not in planned:
            (out / "_stale").mkdir(exist_ok=True)
            shutil.move(str(path), out / "_stale" / path.name)
            shards.update_manifest(out, path.stem, None)
            log.warning("moved %s to _stale/: not part of this run's plan", path.name)


def _prompt(builder: PromptBuilder, text: str, style: str, engine: Any) -> str:
    if style == "chat":
        if not engine.chat_template:
            raise ConfigError(f"prompt style 'chat' needs a chat template; model {engine.model_id} has none")
        return engine.apply_chat_template(builder.chat_messages(text))
    return builder.completion_prompt(text)


RAW_SCHEMA = pa.schema([
    ("id", pa.string()), ("field", pa.string()), ("segment", pa.int64()), ("source", pa.string()),
    ("translate", pa.bool_()), ("completion", pa.string()), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()), ("finish_reason", pa.string()),
])


BACK_SCHEMA = pa.schema([
    ("translation", pa.string()), ("back", pa.string()), ("completion_tokens", pa.int64()),
    ("finish_reason", pa.string()),
])


def generate_shard(job: ShardJob, config: TranslateConfig, progress: Any = None) -> dict[str, Any]:
    """Run the model on every segment of one shard; write the raw generations (and, with round-trip
    filtering, the back-translations of the cleaned translations). Needs the model. A part already on
    disk under its key is not generated again (a shard killed between the two resumes with the second).

    Its model calls run under a deadline: the one the runner set for the job (stt.jobs.run), else the
    shard's timeout."""
    from stt.engines.child import call_budget, deadline
    from stt.timeouts import generation_s

    budget = call_budget()
    if budget is None:
        budget = generation_s(job.rows, config.generation, config.timeouts, round_trip=bool(job.back_key))
    with faults.unit(job.shard), deadline(budget):
        result = existing_generation(job) if _forward_complete(job) else _generate_forward(job, config, progress)
        if job.back_key and not _back_complete(job):
            result["back"] = _generate_back(job, config, progress)
    return result


def _generate_back(job: ShardJob, config: TranslateConfig, progress: Any = None) -> dict[str, Any]:
    """Translate every cleaned translation of the shard back into English (same demonstrations, reversed)."""
    data_dir = config.resolved_data_dir()
    target_name = build_prompt_builder(job.language, config.prompt, data_dir).target_name
    builder = build_prompt_builder(job.language, config.prompt, data_dir, to_english=True)
    engine = get_engine(config.engine, config.generation)
    raw = pq.read_table(job.raw_path).to_pylist()
    cleaned = [clean_completion(r["completion"], target_name, config.generation.stop) for r in raw if r["translate"]]
    unique = [t for t in dict.fromkeys(cleaned) if t]
    requests = [Request(_prompt(builder, t, config.prompt.style, engine),
                        config.generation.max_new_tokens(engine.count_tokens(t)), config.generation.stop)
                for t in unique]
    t0 = time.perf_counter()
    completions = engine.generate(requests, progress)
    seconds = time.perf_counter() - t0
    rows = [{"translation": t, "back": clean_completion(c.text, "English", config.generation.stop, target_name),
             "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason}
            for t, c in zip(unique, completions, strict=True)]
    files.write_parquet_atomic(_table(rows, BACK_SCHEMA), Path(job.back_path),
                                {"stt.back_key": job.back_key, "stt.seconds": f"{seconds:.3f}",
                                 "stt.prompt_version": builder.version})
    return {"segments": len(rows), "completion_tokens": sum(r["completion_tokens"] for r in rows),
            "seconds": round(seconds, 3)}


def round_trip_chrf(sources: list[str], backs: list[str]) -> float:
    """Sentence chrF (sacrebleu, default chrF2) of the example's back-translated segments against its English."""
    from sacrebleu.metrics import CHRF

    return round(CHRF().sentence_score(" ".join(backs), [" ".join(sources)]).score, 2)


def _generate_forward(job: ShardJob, config: TranslateConfig, progress: Any = None) -> dict[str, Any]:
    spec = get_task(config.task)
    examples = pq.read_table(job.input_path).to_pylist()
    builder = build_prompt_builder(job.language, config.prompt, config.resolved_data_dir())
    engine = get_engine(config.engine, config.generation)
    segs = [(ex["id"], seg) for ex in examples for seg in spec.segments(ex)]
    # Identical segments (a QA context shared by several questions) are generated once.
    unique = list(dict.fromkeys(seg.text for _, seg in segs if seg.translate))
    requests = []
    for text in unique:
        n = engine.count_tokens(text)
        requests.append(Request(_prompt(builder, text, config.prompt.style, engine),
                                config.generation.max_new_tokens(n), config.generation.stop))
    t0 = time.perf_counter()
    completions = dict(zip(unique, engine.generate(requests, progress), strict=True))
    seconds = time.perf_counter() - t0
    rows = []
    for ex_id, seg in segs:
        c = completions.get(seg.text) if seg.translate else None
        rows.append({
            "id": ex_id, "field": seg.field, "segment": seg.index, "source": seg.text, "translate": seg.translate,
            "completion": c.text if c else seg.text, "prompt_tokens": c.prompt_tokens if c else 0,
            "completion_tokens": c.completion_tokens if c else 0, "finish_reason": c.finish_reason if c else "copied",
        })
    meta = {
        "stt.generation_key": job.generation_key, "stt.model_id": engine.model_id,
        "stt.weights_sha256": engine.weights_sha256, "stt.prompt_version": builder.version,
        "stt.generation": config.generation.model_dump_json(), "stt.seconds": f"{seconds:.3f}",
    }
    files.write_parquet_atomic(_table(rows, RAW_SCHEMA), Path(job.raw_path), meta)
    generated = sum(c.completion_tokens for c in completions.values())
    return {"raw_path": job.raw_path, "segments": len(requests), "completion_tokens": generated,
            "seconds": round(seconds, 3)}


def existing_generation(job: ShardJob) -> dict[str, Any]:
    """What generate_shard returned, read back from a raw file that is already complete."""
    table = pq.read_table(job.raw_path, columns=["translate", "completion_tokens"])
    return {"raw_path": job.raw_path, "segments": sum(table["translate"].to_pylist()),
            "completion_tokens": sum(table["completion_tokens"].to_pylist()),
            "seconds": float(shards.read_metadata(Path(job.raw_path)).get("stt.seconds", 0)), "reused": True}


def _output_schema(spec: TaskSpec) -> pa.Schema:
    fields = ["id", "task", "language", "shard"]
    fields += [k for k in spec.kept if k != "id"] + list(spec.translated)
    fields += list(spec.added_int_fields)
    fields += [f"src_{k}" for k in spec.translated]
    fields += ["model_id", "weights_sha256", "prompt_version", "validation_version", "generation_key", "generation"]
    return pa.schema([(f, pa.int64() if f in spec.added_int_fields else pa.string()) for f in fields] + [
        ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("segments", pa.int64()),
        ("round_trip_chrf", pa.float64()),  # null without round-trip filtering
    ])


REJECT_SCHEMA = pa.schema([
    ("id", pa.string()), ("task", pa.string()), ("language", pa.string()), ("shard", pa.string()),
    ("reason", pa.string()), ("reasons", pa.list_(pa.string())), ("source", pa.string()),
    ("output", pa.string()), ("details", pa.string()), ("model_id", pa.string()),
    ("prompt_version", pa.string()), ("validation_version", pa.string()), ("generation_key", pa.string()),
    # Round-trip filtering: the example's chrF, and (for rows set aside only by the filter) the row as it
    # would have been accepted, JSON, so the unfiltered training set can be rebuilt without regenerating.
    ("round_trip_chrf", pa.float64()), ("row", pa.string()),
])


def validate_shard(job: ShardJob, config: TranslateConfig) -> dict[str, Any]:
    """Clean and check the raw generations, reassemble examples, write accepted rows and rejects."""
    spec = get_task(config.task)
    out = Path(config.out_dir)
    examples = {ex["id"]: ex for ex in pq.read_table(job.input_path).to_pylist()}
    raw_table = pq.read_table(job.raw_path)
    meta = shards.read_metadata(Path(job.raw_path))
    if meta.get("stt.generation_key") != job.generation_key:
        raise DataError(f"shard {job.shard}: raw generations {job.raw_path} were made under another key")
    target_name = build_prompt_builder(job.language, config.prompt, config.resolved_data_dir()).target_name
    by_example: dict[str, list[dict[str, Any]]] = {}
    for r in raw_table.to_pylist():
        by_example.setdefault(r["id"], []).append(r)
    provenance = {
        "model_id": meta["stt.model_id"], "weights_sha256": meta["stt.weights_sha256"],
        "prompt_version": meta["stt.prompt_version"], "validation_version": VALIDATION_VERSION,
        "generation_key": job.generation_key, "generation": meta["stt.generation"],
    }
    back: dict[str, str] = {}
    if job.back_key:
        if not _back_complete(job):
            raise DataError(f"shard {job.shard}: back-translations {job.back_path} missing or made under another key")
        back = {r["translation"]: r["back"] for r in pq.read_table(job.back_path).to_pylist()}
    accepted, rejected = [], []
    for ex_id, ex in examples.items():
        row, reject = _validated(spec, job, config, ex, by_example.get(ex_id, []), target_name, provenance, back)
        if reject is None:
            accepted.append(row)
        else:
            rejected.append(reject)
    file_meta = {"stt.generation_key": job.generation_key, "stt.validation_version": VALIDATION_VERSION}
    data_file, sha = _write_or_remove(_table(accepted, _output_schema(spec)), out, f"{job.shard}.parquet", file_meta)
    rej_file, rej_sha = _write_or_remove(_table(rejected, REJECT_SCHEMA), out, f"_rejects/{job.shard}.parquet",
                                         file_meta)
    entry = _shard_entry(job, out, accepted, rejected, raw_table.to_pylist(), meta, provenance)
    entry.update(file=data_file, sha256=sha, rejects_file=rej_file, rejects_sha256=rej_sha)
    shards.update_manifest(out, job.shard, entry)
    return {"shard": job.shard, **entry}


def _validated(spec: TaskSpec, job: ShardJob, config: TranslateConfig, ex: dict[str, Any], raw: list[dict[str, Any]],
               target_name: str, provenance: dict[str, Any], back: dict[str, str]
               ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One example of a shard: its translated row, and its reject record (None when it is accepted)."""
    parts: dict[str, list[str]] = {}
    details, reasons = [], []
    for r in sorted(raw, key=lambda r: (r["field"], r["segment"])):
        text = clean_completion(r["completion"], target_name, config.generation.stop) if r["translate"] \
            else r["source"]
        why = segment_reasons(r["source"], text, job.language, r["finish_reason"]) if r["translate"] else []
        reasons += [f"{w}:{r['field']}" if ":" not in w else w for w in why]
        parts.setdefault(r["field"], []).append(text)
        details.append({"field": r["field"], "segment": r["segment"], "source": r["source"], "output": text,
                        "raw": r["completion"], "reasons": why, "translate": r["translate"]})
    if not details:
        reasons.append("no_generations")
    translated = spec.assemble(ex, parts, job.language)
    reasons += spec.check(ex, translated, job.language)
    base = {"id": ex["id"], "task": spec.name, "language": job.language, "shard": job.shard}
    tokens = {"prompt_tokens": sum(r["prompt_tokens"] for r in raw),
              "completion_tokens": sum(r["completion_tokens"] for r in raw)}
    chrf = None
    if job.back_key:
        pairs = [(d["source"], back.get(d["output"], "")) for d in details if d["translate"]]
        chrf = round_trip_chrf([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
    row = {**base, **translated, **{f"src_{k}": ex[k] for k in spec.translated}, **provenance, **tokens,
           "segments": len(details), "round_trip_chrf": chrf}
    filtered = not reasons and chrf is not None and chrf < job.round_trip_min_chrf
    if filtered:
        reasons = ["round_trip"]
    if not reasons:
        return row, None
    reasons = list(dict.fromkeys(reasons))
    return row, {**base, "reason": reasons[0].split(":")[0], "reasons": reasons,
                 "round_trip_chrf": chrf, "row": json.dumps(row, ensure_ascii=False) if filtered else None,
                 "source": json.dumps({k: ex[k] for k in spec.translated}, ensure_ascii=False),
                 "output": json.dumps({k: translated[k] for k in spec.translated}, ensure_ascii=False),
                 "details": json.dumps(details, ensure_ascii=False),
                 **{k: provenance[k] for k in ("model_id", "prompt_version", "validation_version", "generation_key")}}


def _shard_entry(job: ShardJob, out: Path, accepted: list[dict[str, Any]], rejected: list[dict[str, Any]],
                 raw_rows: list[dict[str, Any]], meta: dict[str, str], provenance: dict[str, Any]) -> dict[str, Any]:
    """The shard's manifest entry, its files' names and checksums aside."""
    entry: dict[str, Any] = {
        "language": job.language, "index": job.index, "file": None, "rows": len(accepted),
        "sha256": None, "rejects_file": None, "rejects": len(rejected),
        "rejects_sha256": None, "reject_reasons": dict(Counter(r["reason"] for r in rejected)),
        "input_file": str(Path(job.input_path).relative_to(out)), "input_sha256": job.input_sha256,
        "input_rows": job.rows, "raw_file": f"_raw/{job.shard}.parquet", "generation_key": job.generation_key,
        "validation_version": VALIDATION_VERSION, "prompt_version": provenance["prompt_version"],
        "completion_tokens": sum(r["completion_tokens"] for r in raw_rows),
        "generate_seconds": float(meta.get("stt.seconds", 0)),
        "back_key": job.back_key, "round_trip_min_chrf": job.round_trip_min_chrf,
    }
    if job.back_key:
        back_meta = shards.read_metadata(Path(job.back_path))
        scores = [r["round_trip_chrf"] for r in accepted + rejected if r.get("round_trip_chrf") is not None]
        entry.update(back_seconds=float(back_meta.get("stt.seconds", 0)),
                     back_completion_tokens=sum(pq.read_table(job.back_path)["completion_tokens"].to_pylist()),
                     round_trip_chrf_mean=round(sum(scores) / len(scores), 2) if scores else None,
                     round_trip_set_aside=sum(r["reason"] == "round_trip" for r in rejected))
    return entry


def _write_or_remove(table: pa.Table, out: Path, name: str, meta: dict[str, str]) -> tuple[str | None, str | None]:
    """Write a non-empty table; an empty shard gets no file (datasets cannot read zero-row Parquet files)."""
    path = out / name
    if table.num_rows == 0:
        path.unlink(missing_ok=True)
        return None, None
    return name, files.write_parquet_atomic(table, path, meta)


def summarize(out_dir: Path) -> list[dict[str, Any]]:
    """Per language: examples, accepted rows, rejects by reason, generated tokens and tokens/s."""
    manifest = shards.read_manifest(out_dir)
    planned = set(manifest.get("plan", manifest["shards"]))
    per: dict[str, dict[str, Any]] = {}
    for name, e in sorted(manifest["shards"].items()):
        if name not in planned:
            continue
        s = per.setdefault(e["language"], {"language": e["language"], "shards": 0, "examples": 0, "rows": 0,
                                           "rejects": 0, "reasons": Counter(), "tokens": 0, "seconds": 0.0,
                                           "rt_scores": []})
        s["shards"] += 1
        s["examples"] += e["input_rows"]
        s["rows"] += e["rows"]
        s["rejects"] += e["rejects"]
        s["reasons"].update(e["reject_reasons"])
        s["tokens"] += e["completion_tokens"]
        s["seconds"] += e["generate_seconds"]
        if e.get("round_trip_chrf_mean") is not None:
            s["rt_scores"].append((e["round_trip_chrf_mean"], e["rows"] + e["rejects"]))
    table = []
    for s in per.values():
        table.append({
            "language": s["language"], "shards": s["shards"], "examples": s["examples"], "rows": s["rows"],
            "rejects": s["rejects"],
            "rejects_by_reason": ", ".join(f"{k}={v}" for k, v in s["reasons"].most_common()) or "-",
            "generated_tokens": s["tokens"],
            "tokens_per_s": round(s["tokens"] / s["seconds"], 2) if s["seconds"] else None,
            "round_trip_set_aside": s["reasons"].get("round_trip", 0),
            # Mean sentence chrF of the back-translations (None without round-trip filtering).
            "round_trip_chrf": round(sum(m * n for m, n in s["rt_scores"]) / max(1, sum(n for _, n in s["rt_scores"])),
                                     2) if s["rt_scores"] else None,
        })
    return table


def shard_done(job: ShardJob, config: TranslateConfig) -> bool:
    out = Path(config.out_dir)
    return shard_complete(out, shards.read_manifest(out)["shards"].get(job.shard), job)


def run_shard(job: ShardJob, config: TranslateConfig) -> dict[str, Any]:
    """One shard, idempotent: a shard already complete is read back, raw generations on disk are reused.

    Done twice (a crashed flow run that had in fact finished, then its resubmission) it is written once:
    every file goes to a temp name and is renamed, and the manifest entry is replaced under its lock."""
    if shard_done(job, config):
        return {"shard": job.shard, **shards.read_manifest(Path(config.out_dir))["shards"][job.shard]}
    if not raw_complete(job):
        t0 = time.perf_counter()

        def progress(done: int, total: int) -> None:
            log.info("%s: %d/%d segments generated, %.2f segments/s", job.shard, done, total,
                     done / max(time.perf_counter() - t0, 1e-9))

        generate_shard(job, config, progress)
    return validate_shard(job, config)


class Inputs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    shard: ShardJob
    config: TranslateConfig


class Translate(StageDef[Inputs]):
    name = "translate"
    Inputs = Inputs
    flow = "translate-stage"

    def plan_translate(self, config: TranslateConfig) -> tuple[Plan, list[Job]]:
        """The shards of one translate config. Planning writes the input shards and the manifest (idempotent):
        workers get shards that exist."""
        tplan = plan_translation(config)
        return tplan, [self.job(config.task, s.shard, Path(config.out_dir), Inputs(shard=s, config=config),
                                config.timeouts) for s in tplan.jobs]

    def plan_jobs(self, config: RunConfig, plan: TaskPlan) -> list[Job]:
        return self.plan_translate(config.translate_config(plan.task))[1]

    def key(self, i: Inputs) -> str:
        from stt.markers import stage_key
        from stt.validate import VALIDATION_VERSION

        s = i.shard
        return stage_key(generation=s.generation_key, back=s.back_key, min_chrf=s.round_trip_min_chrf,
                         input=s.input_sha256, validation=VALIDATION_VERSION)

    def is_done(self, i: Inputs, folder: Path) -> bool:
        return shard_done(i.shard, i.config)

    def run(self, i: Inputs, folder: Path) -> dict[str, Any]:
        return run_shard(i.shard, i.config)

    def result(self, i: Inputs, folder: Path) -> dict[str, Any]:
        return {"shard": i.shard.shard, **read_manifest(folder)["shards"][i.shard.shard], "folder": str(folder)}

    def unit_name(self, i: Inputs) -> str:
        return i.shard.shard  # the shards share one folder: each is its own unit

    def unit(self, i: Inputs, folder: Path, info: dict[str, Any]) -> Unit:
        entry = read_manifest(folder)["shards"][i.shard.shard]
        names = tuple(n for n in (entry.get("file"), entry.get("rejects_file")) if n)
        return Unit(i.shard.shard, names, merge={"shard": i.shard.shard, "entry": entry})

    def planned(self, folder: Path) -> Unit | None:
        # The input shards and the manifest's plan, written by planning in the parent; a worker on another
        # machine reads them.
        names = ["_config.json", *(p.relative_to(folder).as_posix() for p in sorted((folder / "_input").rglob("*"))
                                   if p.is_file())]
        top = {k: v for k, v in read_manifest(folder).items() if k not in ("shards", "updated")}
        return Unit("plan", tuple(names), merge={"top": top})

    def brief(self, info: dict[str, Any]) -> str:
        return f"{info.get('rows')} rows accepted, {info.get('rejects')} set aside {info.get('reject_reasons') or ''}"

    def timeout_s(self, i: Inputs, timeouts_: TimeoutConfig) -> float | None:
        return timeouts.generation_s(i.shard.rows, i.config.generation, timeouts_, round_trip=bool(i.shard.back_key))

    def engine_kept(self, i: Inputs) -> EngineConfig | None:
        return i.config.engine


STAGE = Translate()
