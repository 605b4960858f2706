"""Fine-tune: one LoRA adapter per training set and seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from stt import markers, timeouts
from stt.config import RunConfig, TimeoutConfig, TrainConfig
from stt.errors import DataError
from stt.stages.base import Job, StageDef

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan


class Inputs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    set_folder: Path
    train: TrainConfig  # the run's, with this replicate's seed
    # Train for as many optimizer steps as the adapter in this folder took (the equal-steps control).
    steps_like: Path | None = None
    device: str
    twins: tuple[Path, ...] = ()  # the task's other adapters: one done under the same key is copied
    supervised: bool  # engine.process child: the training runs in the engine process, ended at the deadline


def train_config(i: Inputs) -> TrainConfig:
    """The adapter's training config: the equal-steps control's max_steps read from its twin's marker."""
    if i.steps_like is None:
        return i.train
    marker = i.steps_like / markers.MARKER
    if not marker.is_file():
        raise DataError(f"{i.steps_like.name} must be trained first: this adapter trains for as many steps")
    return i.train.model_copy(update={"max_steps": json.loads(marker.read_text())["metrics"]["steps"]})


class Finetune(StageDef[Inputs]):
    name = "finetune"
    Inputs = Inputs
    flow = "finetune"

    def plan_jobs(self, config: RunConfig, plan: TaskPlan) -> list[Job]:
        out = []
        for a in plan.adapters:
            inputs = Inputs(model=config.engine.model, set_folder=plan.set_dir(a.set_name),
                            train=config.train.model_copy(update={"seed": a.seed, "seeds": ()}),
                            steps_like=plan.adapter_dir(a.steps_like) if a.steps_like else None,
                            device=config.engine.device, supervised=config.engine.process == "child",
                            twins=tuple(plan.adapter_dir(b.name) for b in plan.adapters if b.name != a.name))
            # An adapter trained for as many steps as another one waits for it (wave 1).
            out.append(self.job(plan.task, a.name, plan.adapter_dir(a.name), inputs, config.timeouts,
                                wave=1 if a.steps_like else 0))
        return out

    def key(self, i: Inputs) -> str:
        from stt.finetune import finetune_key

        return finetune_key(i.model, i.set_folder, train_config(i))

    def run(self, i: Inputs, folder: Path) -> dict[str, Any]:
        from stt.engines import give_memory_back
        from stt.finetune import finetune

        try:
            return finetune(i.model, i.set_folder, folder, train_config(i), i.device, twins=list(i.twins),
                            supervised=i.supervised)
        finally:
            give_memory_back()  # the model, its activations and the optimizer: 2 GB a later job never reuses

    def brief(self, info: dict[str, Any]) -> str:
        m = info.get("metrics", {})
        loss = m.get("train_loss")
        copied = f" (copied from {Path(info['copied_from']).name}: the same key)" if info.get("copied_from") else ""
        return f"{m.get('steps')} steps, train loss " + (f"{loss:.4g}" if isinstance(loss, float) else str(loss)) \
            + copied

    def timeout_s(self, i: Inputs, timeouts_: TimeoutConfig) -> float | None:
        from stt.finetune import planned_steps

        marker = i.set_folder / markers.MARKER  # the set's rows give the adapter's steps
        rows = json.loads(marker.read_text()).get("rows", 0) if marker.is_file() else 0
        try:
            train = train_config(i)
        except DataError:
            train = i.train
        return timeouts.training_s(planned_steps(max(rows, 1), train), timeouts_)


STAGE = Finetune()
