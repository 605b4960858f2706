"""Translation quality of the model's own en->X translations, against human references.

MGSM, XQuAD and XNLI are professional translations of English items, so the model translates the
English side with the same few-shot prompt and cleaning as the translate stage, and its output is
scored against the human side with chrF and BLEU (sacrebleu). The items are test items, never
training data: they measure the translator, nothing is trained on them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from stt import faults, files, markers
from stt.config import EngineConfig, GenerationParams, PromptConfig
from stt.engines import Request, generator_signature, get_engine
from stt.errors import ConfigError
from stt.metrics import translation_scores
from stt.models import resolve_model
from stt.prompts import PromptBuilder, build_prompt_builder
from stt.specs import get_task
from stt.testsets import subset
from stt.validate import clean_completion

log = logging.getLogger(__name__)

QUALITY_SCHEMA = pa.schema([
    ("id", pa.string()), ("language", pa.string()), ("source", pa.string()), ("reference", pa.string()),
    ("output", pa.string()), ("raw", pa.string()), ("chrf", pa.float64()), ("completion_tokens", pa.int64()),
])


def reference_pairs(task: str, data_dir: Path, language: str, limit: int | None) -> list[dict[str, str]]:
    """(id, English source, human reference) for the first `limit` parallel items with human translations
    (TaskSpec.reference_items: the test set, XNLI's dev set, a declared task's `human` file)."""
    spec = get_task(task)
    field = spec.reference_field
    if not field:
        raise ConfigError(f"{task}: no human translations to score translation quality against (a declared "
                          "task needs a `human:` file)")
    english = subset(spec.reference_items(data_dir, "en"), limit)
    target = subset(spec.reference_items(data_dir, language), limit)
    by_index = {t["index"]: t for t in target}
    return [{"id": by_index[e["index"]]["id"], "source": e[field], "reference": by_index[e["index"]][field]}
            for e in english if e["index"] in by_index]


def quality_key(task: str, language: str, engine_config: EngineConfig, generation: GenerationParams,
                prompt: PromptConfig, data_dir: Path, limit: int | None) -> str:
    return _key(task, language, resolve_model(engine_config.model).weights_sha256,
                build_prompt_builder(language, prompt, data_dir), generation,
                reference_pairs(task, data_dir, language, limit), generator_signature(engine_config))


def _key(task: str, language: str, weights: str, builder: PromptBuilder, generation: GenerationParams,
         pairs: list[dict[str, str]], engine: dict[str, Any]) -> str:
    return markers.stage_key(stage="quality", task=get_task(task).key_id, language=language, weights=weights,
                             engine=engine, prefix=builder.completion_prompt(""), prompt_version=builder.version,
                            generation=generation.model_dump(mode="json"), data=pairs)


def translation_quality(task: str, language: str, engine_config: EngineConfig, generation: GenerationParams,
                        prompt: PromptConfig, data_dir: Path, out_folder: Path, limit: int | None) -> dict[str, Any]:
    """Translate the English side of `limit` parallel test items and score them; reused when unchanged."""
    import sacrebleu

    builder = build_prompt_builder(language, prompt, data_dir)
    pairs = reference_pairs(task, data_dir, language, limit)
    model = resolve_model(engine_config.model)
    key = _key(task, language, model.weights_sha256, builder, generation, pairs, generator_signature(engine_config))
    out_folder = Path(out_folder)
    done = markers.read_done(out_folder, key)
    if done:
        return {**done, "folder": str(out_folder), "reused": True}
    markers.clear(out_folder, ["translations.parquet"])
    engine = get_engine(engine_config, generation)
    requests = [Request(builder.completion_prompt(p["source"]),
                        generation.max_new_tokens(engine.count_tokens(p["source"])), generation.stop) for p in pairs]
    t0 = time.perf_counter()
    with faults.unit(f"quality:{task}-{language}"):
        outs = engine.generate(requests)
    seconds = time.perf_counter() - t0
    rows = []
    for p, o in zip(pairs, outs, strict=True):
        text = clean_completion(o.text, builder.target_name, generation.stop)
        rows.append({"id": p["id"], "language": language, "source": p["source"], "reference": p["reference"],
                     "output": text, "raw": o.text,
                     "chrf": round(sacrebleu.sentence_chrf(text, [p["reference"]]).score, 2),
                     "completion_tokens": o.completion_tokens})
    files.write_parquet_atomic(pa.Table.from_pylist(rows, schema=QUALITY_SCHEMA), out_folder / "translations.parquet",
                                {"stt.key": key})
    scores = translation_scores([r["output"] for r in rows], [r["reference"] for r in rows], language)
    log.info("translation quality %s en->%s: %s (%d items)", task, language, scores, len(rows))
    info = markers.mark_done(out_folder, key, ["translations.parquet"], stage="quality", task=task, language=language,
                            scores={**scores, "n": len(rows)}, seconds=round(seconds, 2),
                            model_id=model.model_id, weights_sha256=model.weights_sha256,
                            prompt_version=builder.version, reference_field=get_task(task).reference_field)
    return {**info, "folder": str(out_folder), "reused": False}
