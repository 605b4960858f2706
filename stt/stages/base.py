"""What a stage is: its jobs, planned once with everything each needs, and for each job its key, time limit
and how to do it.

A stage declares `Inputs`, a pydantic model of everything one job reads (settings, folders of its inputs).
Planning resolves them once from the run's plan (`plan_jobs`) or from one command's arguments (the stage's
own planner, e.g. `stt translate`); from then on a job is plain JSON that any runner, on any machine, can do
without the run's config.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from stt import markers
from stt.config import RunConfig, TimeoutConfig
from stt.engine_settings import EngineConfig
from stt.errors import DataError
from stt.store import Unit

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan


class Job(BaseModel):
    """One unit of a stage: what a worker needs to find and do it, as plain values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str  # a name in stt.stages.REGISTRY
    task: str
    name: str  # shard id, language, set, adapter or evaluation name: unique within (task, stage)
    folder: str  # where its outputs are (a translate job: the run's translate folder, shared by its shards)
    inputs: dict[str, Any]  # the stage's Inputs, as JSON
    wave: int = 0  # jobs of a wave start once every job of the earlier waves is done
    timeouts: TimeoutConfig = TimeoutConfig()  # when a model job counts as hung, and its retries
    # A run on object storage (stt.store): its URL, and the mirror folder the paths above are under (relative
    # to the worker's working directory unless STT_MIRROR is absolute). None: a run folder on this disk.
    store: str | None = None
    root: str | None = None
    store_credentials: str | None = None  # the config's: a Prefect block name the app loads before the job

    @property
    def id(self) -> str:
        return f"{self.task}/{self.stage}/{self.name}"


class ModelOnItems(BaseModel):
    """The inputs every job that runs a model on one task's items in one language has (quality, evaluate)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    language: str
    engine: EngineConfig
    data_dir: Path


I = TypeVar("I", bound=BaseModel)  # noqa: E741 - a stage's Inputs


class StageDef(ABC, Generic[I]):
    """One stage. A subclass says what is particular to it; the defaults are what most stages do: done when
    its folder holds a marker under the job's current key, whose record is the job's result."""

    name: ClassVar[str] = ""
    Inputs: ClassVar[type[BaseModel]]
    uses_model: ClassVar[bool] = True  # its jobs load a model (one at a time per worker: the model slot)
    # The Prefect stage flow (and chained deployment) that runs its jobs: translate-stage, build-sets, finetune
    # or evaluate-stage (stt_app/flows/stages.py); a new stage joins one by naming it here.
    flow: ClassVar[str] = ""

    def job(self, task: str, name: str, folder: Path, inputs: I, timeouts: TimeoutConfig, wave: int = 0) -> Job:
        return Job(stage=self.name, task=task, name=name, folder=str(folder), wave=wave, timeouts=timeouts,
                   inputs=inputs.model_dump(mode="json"))

    def inputs(self, job: Job) -> I:
        return self.Inputs.model_validate(job.inputs)  # type: ignore[return-value]

    @abstractmethod
    def plan_jobs(self, config: RunConfig, plan: TaskPlan) -> list[Job]:
        """The stage's jobs of one task of a run, their inputs resolved from the plan."""

    @abstractmethod
    def key(self, i: I) -> str:
        """The content key of the job's output (as written in its marker): everything that changes it."""

    # The files `make` writes in the job's folder: cleared before the job is redone under a new key.
    outputs: ClassVar[tuple[str, ...]] = ()

    def run(self, i: I, folder: Path) -> dict[str, Any]:
        """Do the job, or read it back: a folder done under the job's key is reused; otherwise the stale
        outputs are cleared, `make` writes the new ones, and the marker (key, checksums, `make`'s record) is
        written last."""
        key = self.key(i)
        return markers.made_once(folder, key, list(self.outputs), self.name, lambda: self.make(i, folder, key),
                                 keep=self.kept(key))

    def kept(self, key: str) -> str | None:
        """The subfolder of an output folder that a redo keeps (a resumable stage's progress under this key)."""
        return None

    def make(self, i: I, folder: Path, key: str) -> tuple[list[str], dict[str, Any]]:
        """Turn the inputs into the outputs: write them in `folder` and return their names and what the
        marker records beside them (the runner writes it)."""
        raise NotImplementedError(f"stage {self.name}: neither make() nor run() is defined")

    def is_done(self, i: I, folder: Path) -> bool:
        try:
            key = self.key(i)
        except DataError:  # an upstream output is missing (e.g. its set is not built): not done
            return False
        return markers.read_done(folder, key) is not None

    def result(self, i: I, folder: Path) -> dict[str, Any]:
        return {**json.loads((folder / markers.MARKER).read_text()), "folder": str(folder)}

    def unit_name(self, i: I) -> str:
        """The job's unit on a run's object store: one per folder, unless several jobs share a folder."""
        return "folder"

    def unit(self, i: I, folder: Path, info: dict[str, Any]) -> Unit:
        """What a finished job publishes to a run's object store: its files and its marker, last."""
        return Unit(self.unit_name(i), (*info.get("files", {}), markers.MARKER))

    def progress(self, i: I, folder: Path, key: str) -> list[Unit]:
        """A running job's progress that another worker can resume from (fine-tuning's complete checkpoints):
        on a run's object store it is published while the job runs. Read only: the job is still writing."""
        return []

    def planned(self, folder: Path) -> Unit | None:
        """Files the stage's planning wrote in a job folder (workers elsewhere need them), or None."""
        return None

    def brief(self, info: dict[str, Any]) -> str:
        """One line on a finished job for the logs, from its result."""
        return f"{info.get('rows')} rows -> {info.get('folder')}"

    def timeout_s(self, i: I, timeouts: TimeoutConfig) -> float | None:
        """When the job counts as hung (stt.timeouts); None: no limit."""
        return None

    def engine_kept(self, i: I) -> EngineConfig | None:
        """The loaded model the job can reuse; every other one is let go before it starts."""
        return None

