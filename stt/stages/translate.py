"""Translate: the model translates the English training data, one job per shard (and language)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stt import pipeline, timeouts
from stt.config import EngineConfig, RunConfig
from stt.errors import DataError
from stt.shards import read_manifest
from stt.stages.base import Job, StageDef


def _shard(job: Job) -> Any:
    from stt.translate import job_from_dict

    if job.shard is None:
        raise DataError(f"{job.id}: a translate job carries its planned shard")
    return job_from_dict(job.shard)


class Translate(StageDef):
    name = "translate"
    flow = "translate-stage"

    def jobs(self, config: RunConfig, task: str, plan: pipeline.TaskPlan) -> list[Job]:
        # Planning writes the input shards and the manifest (idempotent): workers get shards that exist.
        from stt.translate import job_to_dict, plan_translation

        tplan = plan_translation(config.translate_config(task))
        return [Job(stage=self.name, task=task, name=j.shard, shard=job_to_dict(j)) for j in tplan.jobs]

    def folder(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> Path:
        return plan.translate_dir

    def key(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> str:
        from stt.markers import stage_key
        from stt.validate import VALIDATION_VERSION

        s = _shard(job)
        return stage_key(generation=s.generation_key, back=s.back_key, min_chrf=s.round_trip_min_chrf,
                         input=s.input_sha256, validation=VALIDATION_VERSION)

    def is_done(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> bool:
        from stt.translate import shard_done

        return shard_done(_shard(job), config.translate_config(job.task))

    def run(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> dict[str, Any]:
        from stt.translate import run_shard

        return run_shard(_shard(job), config.translate_config(job.task))

    def result(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> dict[str, Any]:
        out = self.folder(config, plan, job)
        return {"shard": job.name, **read_manifest(out)["shards"][job.name], "folder": str(out)}

    def brief(self, info: dict[str, Any]) -> str:
        return f"{info.get('rows')} rows accepted, {info.get('rejects')} set aside {info.get('reject_reasons') or ''}"

    def timeout_s(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> float | None:
        s = _shard(job)
        return timeouts.generation_s(s.rows, config.generation, config.timeouts, round_trip=bool(s.back_key))

    def engine_kept(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> EngineConfig | None:
        return config.engine


STAGE = Translate()
