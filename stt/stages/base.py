"""What a stage is: its jobs, and for each job its folder, key, time limit and how to do it."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stt import markers, pipeline
from stt.config import EngineConfig, RunConfig
from stt.errors import DataError


class Job(BaseModel):
    """One unit of a stage: what a worker needs to find and do it, as plain values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str  # a name in stt.stages.REGISTRY
    task: str
    name: str  # shard id, language, set, adapter or evaluation name: unique within (task, stage)
    wave: int = 0  # jobs of a wave start once every job of the earlier waves is done
    shard: dict[str, Any] | None = None  # translate: the planned shard (stt.translate.ShardJob)

    @property
    def id(self) -> str:
        return f"{self.task}/{self.stage}/{self.name}"


class StageDef(ABC):
    """One stage. A subclass says what is particular to it; the defaults are what most stages do: done when
    its folder holds a marker under the job's current key, whose record is the job's result."""

    name: str = ""
    uses_model: bool = True  # its jobs load a model (one at a time per worker: the model slot)
    # The Prefect stage flow (and chained deployment) that runs its jobs: translate-stage, build-sets, finetune
    # or evaluate-stage (stt_app/flows/stages.py); a new stage joins one by naming it here.
    flow: str = ""

    @abstractmethod
    def jobs(self, config: RunConfig, task: str, plan: pipeline.TaskPlan) -> list[Job]:
        ...

    @abstractmethod
    def folder(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> Path:
        ...

    @abstractmethod
    def key(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> str:
        """The content key of the job's output (as written in its marker): everything that changes it."""
        ...

    @abstractmethod
    def run(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> dict[str, Any]:
        """Do the job (idempotent: a finished output is read back, not redone)."""
        ...

    def is_done(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> bool:
        try:
            key = self.key(config, plan, job)
        except DataError:  # an upstream output is missing (e.g. its set is not built): not done
            return False
        return markers.read_done(self.folder(config, plan, job), key) is not None

    def result(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> dict[str, Any]:
        out = self.folder(config, plan, job)
        return {**json.loads((out / markers.MARKER).read_text()), "folder": str(out)}

    def brief(self, info: dict[str, Any]) -> str:
        """One line on a finished job for the logs, from its result."""
        return f"{info.get('rows')} rows -> {info.get('folder')}"

    def timeout_s(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> float | None:
        """When the job counts as hung (stt.timeouts); None: no limit."""
        return None

    def engine_kept(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> EngineConfig | None:
        """The loaded model the job can reuse; every other one is let go before it starts."""
        return None


def find(items: Any, job: Job, what: str) -> Any:
    """The planned item (set, adapter, evaluation) a job names."""
    for item in items:
        if item.name == job.name:
            return item
    raise DataError(f"{job.id}: no {what} '{job.name}' in this config's plan (was the config changed?)")
