"""Evaluate: every model (base, adapters, controls, seeds) on the test sets, per language."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stt import markers, pipeline, timeouts
from stt.config import EngineConfig, RunConfig
from stt.errors import DataError
from stt.stages.base import Job, StageDef, find


class Evaluate(StageDef):
    name = "evaluate"
    flow = "evaluate-stage"

    def jobs(self, config: RunConfig, task: str, plan: pipeline.TaskPlan) -> list[Job]:
        return [Job(stage=self.name, task=task, name=e.name) for e in plan.evals]

    def folder(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> Path:
        return plan.eval_dir(find(plan.evals, job, "evaluation"))

    def key(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> str:
        from stt.evaluate import evaluate_key
        from stt.translate_test import translate_test_key

        e, data_dir = find(plan.evals, job, "evaluation"), config.resolved_data_dir()
        if e.translate_test:
            return translate_test_key(job.task, e.language, pipeline.translator_engine(config),
                                      pipeline.eval_engine(config, plan, e), config.eval, config.generation,
                                      config.prompt, data_dir)
        return evaluate_key(job.task, e.language, pipeline.eval_engine(config, plan, e), config.eval, data_dir)

    def is_done(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> bool:
        if not find(plan.evals, job, "evaluation").translate_test:
            return super().is_done(config, plan, job)
        # Translate-test's marker holds the key of its answers; the run key says which inputs made them.
        try:
            key = self.key(config, plan, job)
        except DataError:  # an upstream output is missing: not done
            return False
        marker = self.folder(config, plan, job) / markers.MARKER
        info = json.loads(marker.read_text()) if marker.is_file() else {}
        return info.get("run_key") == key and markers.read_done(marker.parent, info["key"]) is not None

    def run(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> dict[str, Any]:
        return pipeline.run_job_evaluation(config, plan, find(plan.evals, job, "evaluation"),
                                           config.resolved_data_dir())

    def brief(self, info: dict[str, Any]) -> str:
        scores = info.get("scores") or {}
        shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()
                 if k not in ("n", "ci_level", "bootstrap_resamples", "bootstrap_seed")]
        return f"{scores.get('n')} items, " + ", ".join(shown)

    def timeout_s(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> float | None:
        e = find(plan.evals, job, "evaluation")
        extra = config.generation.max_new_tokens_cap if e.translate_test else 0
        return timeouts.evaluation_timeout_s(job.task, config.eval, config.timeouts, extra)

    def engine_kept(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> EngineConfig | None:
        e = find(plan.evals, job, "evaluation")
        return None if e.translate_test else pipeline.eval_engine(config, plan, e).model_copy(
            update={"batch_size": config.eval.batch_size})


STAGE = Evaluate()
