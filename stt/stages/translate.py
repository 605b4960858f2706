"""Translate: the model translates the English training data, one job per shard (and language).

The same jobs serve a run (`plan_jobs`, from the run's config) and `stt translate` (`plan_translate`, from a
`TranslateConfig`): one folder of shards either way, done by the same runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from stt import timeouts
from stt.config import RunConfig, TimeoutConfig, TranslateConfig
from stt.engine_settings import EngineConfig
from stt.shards import read_manifest
from stt.stages.base import Job, StageDef
from stt.translate import Plan, ShardJob

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan


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
        from stt.translate import plan_translation

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
        from stt.translate import shard_done

        return shard_done(i.shard, i.config)

    def run(self, i: Inputs, folder: Path) -> dict[str, Any]:
        from stt.translate import run_shard

        return run_shard(i.shard, i.config)

    def result(self, i: Inputs, folder: Path) -> dict[str, Any]:
        return {"shard": i.shard.shard, **read_manifest(folder)["shards"][i.shard.shard], "folder": str(folder)}

    def brief(self, info: dict[str, Any]) -> str:
        return f"{info.get('rows')} rows accepted, {info.get('rejects')} set aside {info.get('reject_reasons') or ''}"

    def timeout_s(self, i: Inputs, timeouts_: TimeoutConfig) -> float | None:
        return timeouts.generation_s(i.shard.rows, i.config.generation, timeouts_, round_trip=bool(i.shard.back_key))

    def engine_kept(self, i: Inputs) -> EngineConfig | None:
        return i.config.engine


STAGE = Translate()
