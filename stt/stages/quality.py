"""Translation quality: the model translates human-translated items; chrF and BLEU against the humans'.

MGSM, XQuAD and XNLI are professional translations of English items, so the model translates the
English side with the same few-shot prompt and cleaning as the translate stage, and its output is
scored against the human side with chrF and BLEU (sacrebleu). The items are test items, never
training data: they measure the translator, nothing is trained on them. One job per (task, language).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from stt import faults, files, markers, timeouts
from stt.config import GenerationParams, PromptConfig, RunConfig, TimeoutConfig
from stt.engine_settings import EngineConfig
from stt.engines import Request, generator_signature, get_engine
from stt.errors import ConfigError
from stt.metrics import translation_scores
from stt.models import resolve_model
from stt.prompts import build_prompt_builder
from stt.specs import get_task
from stt.stages.base import Job, ModelOnItems, StageDef
from stt.testsets import subset
from stt.validate import clean_completion

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan

log = logging.getLogger(__name__)

QUALITY_SCHEMA = pa.schema([
    ("id", pa.string()), ("language", pa.string()), ("source", pa.string()), ("reference", pa.string()),
    ("output", pa.string()), ("raw", pa.string()), ("chrf", pa.float64()), ("completion_tokens", pa.int64()),
])


class Inputs(ModelOnItems):
    generation: GenerationParams
    prompt: PromptConfig
    limit: int | None  # human-translated items scored


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


class Quality(StageDef[Inputs]):
    name = "quality"
    Inputs = Inputs
    flow = "translate-stage"
    outputs = ("translations.parquet",)

    def plan_jobs(self, config: RunConfig, plan: TaskPlan) -> list[Job]:
        if not get_task(plan.task).reference_field:  # no human translations to score against
            return []
        data_dir = config.resolved_data_dir()
        return [self.job(plan.task, lang, plan.quality_dir(lang),
                         Inputs(task=plan.task, language=lang, engine=config.engine, generation=config.generation,
                                prompt=config.prompt, data_dir=data_dir, limit=config.eval.quality_limit),
                         config.timeouts) for lang in config.languages]

    def key(self, i: Inputs) -> str:
        builder = build_prompt_builder(i.language, i.prompt, i.data_dir)
        return markers.stage_key(stage="quality", task=get_task(i.task).key_id, language=i.language,
                                 weights=resolve_model(i.engine.model).weights_sha256,
                                 engine=generator_signature(i.engine), prefix=builder.completion_prompt(""),
                                 prompt_version=builder.version, generation=i.generation.model_dump(mode="json"),
                                 data=reference_pairs(i.task, i.data_dir, i.language, i.limit))

    def make(self, i: Inputs, folder: Path, key: str) -> tuple[list[str], dict[str, Any]]:
        """Translate the English side of `limit` parallel test items and score them."""
        import sacrebleu

        builder = build_prompt_builder(i.language, i.prompt, i.data_dir)
        pairs = reference_pairs(i.task, i.data_dir, i.language, i.limit)
        model = resolve_model(i.engine.model)
        generation = i.generation
        engine = get_engine(i.engine, generation)
        requests = [Request(builder.completion_prompt(p["source"]),
                            generation.max_new_tokens(engine.count_tokens(p["source"])), generation.stop)
                    for p in pairs]
        t0 = time.perf_counter()
        with faults.unit(f"quality:{i.task}-{i.language}"):
            outs = engine.generate(requests)
        seconds = time.perf_counter() - t0
        rows = []
        for p, o in zip(pairs, outs, strict=True):
            text = clean_completion(o.text, builder.target_name, generation.stop)
            rows.append({"id": p["id"], "language": i.language, "source": p["source"], "reference": p["reference"],
                         "output": text, "raw": o.text,
                         "chrf": round(sacrebleu.sentence_chrf(text, [p["reference"]]).score, 2),
                         "completion_tokens": o.completion_tokens})
        files.write_parquet_atomic(pa.Table.from_pylist(rows, schema=QUALITY_SCHEMA),
                                   folder / "translations.parquet", {"stt.key": key})
        scores = translation_scores([r["output"] for r in rows], [r["reference"] for r in rows], i.language)
        log.info("translation quality %s en->%s: %s (%d items)", i.task, i.language, scores, len(rows))
        return ["translations.parquet"], {
            "task": i.task, "language": i.language, "scores": {**scores, "n": len(rows)},
            "seconds": round(seconds, 2), "model_id": model.model_id, "weights_sha256": model.weights_sha256,
            "prompt_version": builder.version, "reference_field": get_task(i.task).reference_field}

    def brief(self, info: dict[str, Any]) -> str:
        return str(info.get("scores"))

    def timeout_s(self, i: Inputs, timeouts_: TimeoutConfig) -> float | None:
        return timeouts.evaluation_s(i.limit or 250, i.generation.max_new_tokens_cap, timeouts_)

    def engine_kept(self, i: Inputs) -> EngineConfig | None:
        return i.engine


STAGE = Quality()
