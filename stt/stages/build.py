"""Build sets: the training sets (English, Self-Translate-Train, the controls) from the translations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stt import pipeline
from stt.config import RunConfig
from stt.stages.base import Job, StageDef, find


class Build(StageDef):
    name = "build"
    flow = "build-sets"
    uses_model = False

    def jobs(self, config: RunConfig, task: str, plan: pipeline.TaskPlan) -> list[Job]:
        return [Job(stage=self.name, task=task, name=s.name) for s in plan.sets]

    def folder(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> Path:
        return plan.set_dir(job.name)

    def key(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> str:
        from stt.trainsets import build_key, training_source

        s = find(plan.sets, job, "training set")
        return build_key(job.task, s.kind, s.language, plan.translate_dir, config.build,
                         training_source(config.translate_config(job.task)))

    def run(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> dict[str, Any]:
        from stt.trainsets import build_set, training_source

        s = find(plan.sets, job, "training set")
        return build_set(job.task, s.kind, s.language, plan.translate_dir, plan.root / "sets", config.build,
                         training_source(config.translate_config(job.task)))


STAGE = Build()
