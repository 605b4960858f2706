"""Build sets: the training sets (English, Self-Translate-Train, the controls) from the translations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from stt.config import BuildConfig, RunConfig, SetKind
from stt.stages.base import Job, StageDef

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan


class Inputs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    kind: SetKind
    language: str | None
    translate_dir: Path
    sets_root: Path
    build: BuildConfig
    source: Path | None  # the training file (human translations are looked up next to it)


class Build(StageDef[Inputs]):
    name = "build"
    Inputs = Inputs
    flow = "build-sets"
    uses_model = False

    def plan_jobs(self, config: RunConfig, plan: TaskPlan) -> list[Job]:
        from stt.trainsets import training_source

        source = training_source(config.translate_config(plan.task))
        return [self.job(plan.task, s.name, plan.set_dir(s.name),
                         Inputs(task=plan.task, kind=s.kind, language=s.language, translate_dir=plan.translate_dir,
                                sets_root=plan.root / "sets", build=config.build, source=source),
                         config.timeouts) for s in plan.sets]

    def key(self, i: Inputs) -> str:
        from stt.trainsets import build_key

        return build_key(i.task, i.kind, i.language, i.translate_dir, i.build, i.source)

    def run(self, i: Inputs, folder: Path) -> dict[str, Any]:
        from stt.trainsets import build_set

        return build_set(i.task, i.kind, i.language, i.translate_dir, i.sets_root, i.build, i.source)


STAGE = Build()
