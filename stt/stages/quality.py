"""Translation quality: the model translates human-translated items; chrF and BLEU against the humans'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stt import pipeline, timeouts
from stt.config import EngineConfig, RunConfig
from stt.specs import get_task
from stt.stages.base import Job, StageDef


class Quality(StageDef):
    name = "quality"
    flow = "translate-stage"

    def jobs(self, config: RunConfig, task: str, plan: pipeline.TaskPlan) -> list[Job]:
        if not get_task(task).reference_field:  # no human translations to score against
            return []
        return [Job(stage=self.name, task=task, name=lang) for lang in config.languages]

    def folder(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> Path:
        return plan.quality_dir(job.name)

    def key(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> str:
        from stt.quality import quality_key

        return quality_key(job.task, job.name, config.engine, config.generation, config.prompt,
                           config.resolved_data_dir(), config.eval.quality_limit)

    def run(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> dict[str, Any]:
        from stt.quality import translation_quality

        return translation_quality(job.task, job.name, config.engine, config.generation, config.prompt,
                                   config.resolved_data_dir(), plan.quality_dir(job.name), config.eval.quality_limit)

    def brief(self, info: dict[str, Any]) -> str:
        return str(info.get("scores"))

    def timeout_s(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> float | None:
        return timeouts.evaluation_s(config.eval.quality_limit or 250, config.generation.max_new_tokens_cap,
                                     config.timeouts)

    def engine_kept(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> EngineConfig | None:
        return config.engine


STAGE = Quality()
