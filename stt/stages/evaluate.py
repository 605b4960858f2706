"""Evaluate: every model (base, adapters, controls, seeds) on the test sets, per language (translate-test, which
translates the inputs first, is a stage of its own: stt/stages/translate_test.py).

The same jobs serve a run (`plan_jobs`: every model of the plan) and `stt evaluate` (`plan_evaluate`: one
model, or one adapter, in the languages asked for). A job writes `predictions.parquet` (one row per test
item: prompt, output, parsed prediction, gold, per-item score) and `_manifest.json` (scores, config, model,
adapter, data hash). The scores are computed from the saved predictions (stt.scoring), so anyone can
recompute them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from stt import faults, files, markers, timeouts
from stt.config import EvalConfig, RunConfig, TimeoutConfig
from stt.engine_settings import EngineConfig
from stt.engines import engine_signature, get_engine
from stt.engines.tokenizer import SPLIT_VERSION
from stt.errors import DataError
from stt.files import file_sha256
from stt.models import resolve_model
from stt.scoring import primary_metric, score_predictions, score_row
from stt.specs import get_task, test_items
from stt.stages.base import Job, ModelOnItems, StageDef

if TYPE_CHECKING:
    from stt.pipeline import EvalJob, TaskPlan

log = logging.getLogger(__name__)


# Changes to how predictions are made or read that are not in a config: part of the evaluation key.
SCORING_VERSION = f"eval-v2/{SPLIT_VERSION}"
# The same for one engine kind alone, so the other kinds' finished evaluations stay valid. openai: the
# continuation's tokens are counted back from usage.completion_tokens (before, scores shifted by a token
# whenever the model ended at once) and an adapter is scored under its own name.
ENGINE_SCORING = {"openai": "usage-v2"}


def adapter_fingerprint(adapter: Path | None) -> str | None:
    if adapter is None:
        return None
    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        # A DataError: an adapter the plan trains is an upstream output, not there yet (its evaluation is not done).
        raise DataError(f"adapter folder {adapter} has no adapter_model.safetensors (a peft LoRA adapter)")
    return file_sha256(weights)


def evaluate_key(task: str, language: str, engine_config: EngineConfig, config: EvalConfig, data_dir: Path,
                 items: list[dict] | None = None) -> str:
    """What the predictions depend on: weights, adapter, engine, test items, template, stops, settings."""
    items = items if items is not None else test_items(task, data_dir, language, config)
    return _key(task, language, resolve_model(engine_config.model).weights_sha256,
                adapter_fingerprint(engine_config.adapter), markers.stage_key(items=items), config,
                engine_signature(_running(engine_config, config)))


def _running(engine_config: EngineConfig, config: EvalConfig) -> EngineConfig:
    """The engine config an evaluation runs with: the evaluation's batch size (which is in the key through
    engine_signature where it changes outputs, on llama.cpp)."""
    return engine_config.model_copy(update={"batch_size": config.batch_size})


def _key(task: str, language: str, weights: str, adapter_sha: str | None, data_sha: str, config: EvalConfig,
         engine: dict[str, Any]) -> str:
    # The batch size is in the engine's signature where it changes outputs (llama.cpp); the rest changes the
    # predictions.
    # The per-task maps are read for this task alone (another task's cap does not change these predictions).
    settings = config.model_dump(mode="json", exclude={"batch_size", "include_english", "adapters_on_english",
                                                       "quality_limit", "bootstrap_resamples", "bootstrap_seed",
                                                       "primary_metric", "max_new_tokens", "test_split"})
    spec = get_task(task)
    return markers.stage_key(stage="evaluate", task=spec.key_id, language=language, weights=weights,
                             adapter=adapter_sha, data=data_sha, template=spec.template_version, config=settings,
                             engine=engine, max_new_tokens=spec.answer_tokens(config), split=spec.test_split(config),
                             stops=spec.stops(), scoring=_scoring(engine["kind"]))


def _scoring(kind: str) -> str:
    return f"{SCORING_VERSION}/{ENGINE_SCORING[kind]}" if kind in ENGINE_SCORING else SCORING_VERSION


PRED_SCHEMA = pa.schema([
    ("id", pa.string()), ("index", pa.int64()), ("task", pa.string()), ("language", pa.string()),
    ("output_language", pa.string()), ("model", pa.string()), ("prompt", pa.string()), ("output", pa.string()),
    ("prediction", pa.string()), ("gold", pa.string()), ("score", pa.float64()), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
])


def evaluate(task: str, language: str, engine_config: EngineConfig, config: EvalConfig, data_dir: Path,
             out_folder: Path, label: str = "base", items: list[dict] | None = None,
             output_language: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate (or reuse) one (model, adapter, task, language); returns the manifest with the scores.

    `items` replaces the test items (translate-test passes the model's English translations of them);
    `output_language` is the language the model answers in, when it is not `language`.
    """
    if items is None:
        items = test_items(task, data_dir, language, config)
    key = evaluate_key(task, language, engine_config, config, data_dir, items)
    return markers.made_once(Path(out_folder), key, list(OUTPUTS), "evaluate", lambda: predict(
        task, language, engine_config, config, Path(out_folder), key, label, items, output_language, extra))


OUTPUTS = ("predictions.parquet",)


def predict(task: str, language: str, engine_config: EngineConfig, config: EvalConfig, out_folder: Path, key: str,
            label: str, items: list[dict], output_language: str | None = None,
            extra: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """The model's predictions on `items` and their scores, written in `out_folder` (the file is stamped with
    `key`); returns the files and what the marker records (stt.markers.made_once writes it)."""
    spec = get_task(task)
    output_language = output_language or language
    model = resolve_model(engine_config.model)
    adapter_sha = adapter_fingerprint(engine_config.adapter)
    data_sha = markers.stage_key(items=items)
    signature = engine_signature(_running(engine_config, config))
    engine = get_engine(_running(engine_config, config))
    t0 = time.perf_counter()
    with faults.unit(f"eval:{label}-{language}"):
        rows = spec.eval_rows(engine, items, config, output_language)
    seconds = time.perf_counter() - t0
    full = []
    for it, r in zip(items, rows, strict=True):
        row = {"id": it["id"], "index": it["index"], "task": task, "language": language,
               "output_language": output_language, "model": label, **r}
        row["score"] = score_row(task, language, row)
        full.append(row)
    files.write_parquet_atomic(pa.Table.from_pylist(full, schema=PRED_SCHEMA), out_folder / "predictions.parquet",
                                {"stt.key": key})
    metric = primary_metric(task, config)
    scores = score_predictions(task, language, full, config.bootstrap_resamples, config.bootstrap_seed, metric)
    tokens = sum(r["completion_tokens"] for r in full)
    throughput = {"seconds": round(seconds, 2), "items_per_s": round(len(full) / seconds, 3) if seconds else None,
                  "tokens_per_s": round(tokens / seconds, 2) if seconds and tokens else None}
    log.info("%s %s %s: %s (%d items, %.1fs)", label, task, language,
             {k: round(v, 2) if isinstance(v, float) else v for k, v in scores.items()}, len(full), seconds)
    return list(OUTPUTS), dict(task=task, language=language, model=label, metric=metric, scores=scores,
                               throughput=throughput, model_id=model.model_id, weights_sha256=model.weights_sha256,
                               adapter=str(engine_config.adapter) if engine_config.adapter else None,
                               adapter_sha256=adapter_sha, data_sha256=data_sha, test_set=spec.test_set,
                               engine=signature, template_version=spec.template_version,
                               scoring_version=_scoring(signature["kind"]),
                               config=config.model_dump(mode="json"), **(extra or {}))


class Inputs(ModelOnItems):  # engine: with the adapter, if any
    label: str  # the model's name in the outputs (base, zero-shot, self-translate-train, ...)
    eval: EvalConfig


def eval_engine(config: RunConfig, plan: TaskPlan, job: EvalJob) -> EngineConfig:
    adapter = plan.adapter_dir(job.adapter) if job.adapter else None
    update: dict[str, Any] = {"adapter": adapter, "reuse_prefix_cache": False}
    if config.engine.labels_on and not get_task(plan.task).answer_tokens(config.eval):
        # Label scoring on the kind that does it best (engine_settings: labels_on). Per task, not per column:
        # the base model and every adapter of one table are scored by the same engine.
        return config.engine.as_kind(config.engine.labels_on, **update)
    return config.engine.model_copy(update=update)


class Evaluate(StageDef[Inputs]):
    name = "evaluate"
    Inputs = Inputs
    flow = "evaluate-stage"

    def plan_jobs(self, config: RunConfig, plan: TaskPlan) -> list[Job]:
        data_dir = config.resolved_data_dir()
        return [self.job(plan.task, e.name, plan.eval_dir(e),
                         Inputs(task=plan.task, language=e.language, label=e.model, engine=eval_engine(config, plan, e),
                                eval=config.eval, data_dir=data_dir),
                         config.timeouts) for e in plan.evals if not e.translate_test]

    def plan_evaluate(self, task: str, languages: list[str], engine: EngineConfig, config: EvalConfig,
                      data_dir: Path, out_dir: Path, label: str, limits: TimeoutConfig) -> list[Job]:
        """One model (with its adapter, if any) on a task's test set in these languages: `stt evaluate`."""
        return [self.job(task, f"{label}-{lang}", out_dir / f"{label}-{lang}",
                         Inputs(task=task, language=lang, label=label, engine=engine, eval=config, data_dir=data_dir),
                         limits) for lang in languages]

    def key(self, i: Inputs) -> str:
        return evaluate_key(i.task, i.language, i.engine, i.eval, i.data_dir)

    outputs = ("predictions.parquet",)

    def make(self, i: Inputs, folder: Path, key: str) -> tuple[list[str], dict[str, Any]]:
        return predict(i.task, i.language, i.engine, i.eval, folder, key, i.label,
                       test_items(i.task, i.data_dir, i.language, i.eval))

    def brief(self, info: dict[str, Any]) -> str:
        scores = info.get("scores") or {}
        shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()
                 if k not in ("n", "ci_level", "bootstrap_resamples", "bootstrap_seed")]
        return f"{scores.get('n')} items, " + ", ".join(shown)

    def timeout_s(self, i: Inputs, timeouts_: TimeoutConfig) -> float | None:
        return timeouts.evaluation_timeout_s(i.task, i.eval, timeouts_, i.data_dir, i.language)

    def engine_kept(self, i: Inputs) -> EngineConfig | None:
        return i.engine.model_copy(update={"batch_size": i.eval.batch_size})


STAGE = Evaluate()
