"""The stages of a run, in the order they run. Each is one module here (a StageDef: its jobs, and each job's
folder, key, time limit and how to do it); every runner (stt.jobs.run_plan, the Prefect stage flows, the
fan-out over workers) loops over REGISTRY. A new stage: one module, and its line below."""

from __future__ import annotations

from stt.stages import build, evaluate, finetune, quality, translate, translate_test
from stt.stages.base import Job, StageDef

REGISTRY: dict[str, StageDef] = {m.STAGE.name: m.STAGE for m in (
    translate, quality, build, finetune, evaluate, translate_test,
)}

__all__ = ["REGISTRY", "Job", "StageDef"]
