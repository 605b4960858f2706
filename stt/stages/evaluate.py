"""Evaluate: every model (base, adapters, controls, seeds) on the test sets, per language (translate-test, which
translates the inputs first, is a stage of its own: stt/stages/translate_test.py).

The same jobs serve a run (`plan_jobs`: every model of the plan) and `stt evaluate` (`plan_evaluate`: one
model, or one adapter, in the languages asked for).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from stt import timeouts
from stt.config import EvalConfig, RunConfig, TimeoutConfig
from stt.engine_settings import EngineConfig
from stt.specs import get_task
from stt.stages.base import Job, ModelOnItems, StageDef

if TYPE_CHECKING:
    from stt.pipeline import EvalJob, TaskPlan


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
        from stt.evaluate import evaluate_key

        return evaluate_key(i.task, i.language, i.engine, i.eval, i.data_dir)

    outputs = ("predictions.parquet",)

    def make(self, i: Inputs, folder: Path, key: str) -> tuple[list[str], dict[str, Any]]:
        from stt.evaluate import predict
        from stt.specs import test_items

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
