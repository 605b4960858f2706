"""Build sets: the training sets (English, Self-Translate-Train, the controls) from the translations, one job per
set. What each kind of set is made of is its recipe (stt.trainsets.RECIPES); a set is a folder with
`data.parquet` (one row per training pair: prompt, target, provenance) and its marker (how it was mixed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from stt import files, markers
from stt.config import BuildConfig, RunConfig, SetKind
from stt.errors import DataError
from stt.specs import get_task
from stt.stages.base import Job, StageDef
from stt.trainsets import RECIPES, SET_SCHEMA, build_rows, english_examples, set_name, side_rows, translate_fingerprint

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan


class Inputs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    kind: SetKind
    language: str | None
    translate_dir: Path
    build: BuildConfig
    source: Path | None  # the training file (human translations and unused English items are read from it)


class Build(StageDef[Inputs]):
    name = "build"
    Inputs = Inputs
    flow = "build-sets"
    uses_model = False
    outputs = ("data.parquet",)

    def plan_jobs(self, config: RunConfig, plan: TaskPlan) -> list[Job]:
        from stt.trainsets import training_source

        source = training_source(config.translate_config(plan.task))
        return [self.job(plan.task, s.name, plan.set_dir(s.name),
                         Inputs(task=plan.task, kind=s.kind, language=s.language, translate_dir=plan.translate_dir,
                                build=config.build, source=source),
                         config.timeouts) for s in plan.sets]

    def key(self, i: Inputs) -> str:
        recipe, spec = RECIPES[i.kind], get_task(i.task)
        side = side_rows(i.task, i.kind, i.language, i.translate_dir, i.source)
        # The side rows, under the name each recipe has always had in the key.
        human = None if recipe.side is None else markers.stage_key(**{recipe.side_key: side})
        return markers.stage_key(stage="build", task=spec.key_id, kind=i.kind,
                                 language=i.language if recipe.per_language else None,
                                 translate=translate_fingerprint(i.translate_dir), template=spec.template_version,
                                 config=i.build.model_dump(mode="json"), human=human)

    def make(self, i: Inputs, folder: Path, key: str) -> tuple[list[str], dict[str, Any]]:
        recipe, spec = RECIPES[i.kind], get_task(i.task)
        side = side_rows(i.task, i.kind, i.language, i.translate_dir, i.source)
        english = english_examples(i.translate_dir) + ((side or []) if recipe.side_is_english else [])
        translated = recipe.target(i.translate_dir, i.language, side) if recipe.target and i.language else []
        if recipe.target and not translated:
            raise DataError(f"{i.translate_dir}: no accepted translations into '{i.language}' to build {i.kind} "
                            "from (see _rejects/ for why)")
        rows = build_rows(spec, i.kind, i.language, english, translated, i.build.seed)
        files.write_parquet_atomic(pa.Table.from_pylist(rows, schema=SET_SCHEMA), folder / "data.parquet",
                                   {"stt.key": key, "stt.template_version": spec.template_version})
        mixing: dict[str, int] = {}
        for r in rows:
            mixing[r["variant"]] = mixing.get(r["variant"], 0) + 1
        return ["data.parquet"], {
            "task": i.task, "set": set_name(i.kind, i.language), "kind": i.kind, "language": i.language,
            "rows": len(rows), "mixing": mixing, "template_version": spec.template_version,
            "translate_dir": str(i.translate_dir), "translate_fingerprint": translate_fingerprint(i.translate_dir),
            "config": i.build.model_dump(mode="json")}


STAGE = Build()


def build_set(task: str, kind: SetKind, language: str | None, translate_dir: Path, out_root: Path,
              config: BuildConfig = BuildConfig(), source: Path | None = None  # noqa: B008 - frozen default
              ) -> dict[str, Any]:
    """One training set built (or reused) in `out_root`/<set name>, outside a plan: its marker's record."""
    return STAGE.run(Inputs(task=task, kind=kind, language=language, translate_dir=translate_dir, build=config,
                            source=source), Path(out_root) / set_name(kind, language))
