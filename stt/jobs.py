"""One plan of stage jobs for a run; every runner executes these jobs and nothing else. The stages are
modules of `stt/stages/` (each declares its jobs and how to do one), in the order of stt.stages.REGISTRY:

    translate  one job per (language, shard)       model
    quality    one job per (task, language)         model
    build      one job per training set             cpu
    finetune   one job per adapter                  model (wave 1: the equal-steps controls, which
                                                    read the step count of a wave-0 adapter)
    evaluate   one job per (model, language)        model
    then the report, from the finished evaluations' folders.

A job is plain data (JSON): a Prefect task, a deployment's flow run on another machine and the plain
loop all receive the same `Job` and call `run(config, job)`. Each job's `key` is its stage's content key
(the same key the stage writes in its folder's marker), and `is_done` reads that marker and verifies its
files, so whichever runner did a job, any other sees it done and skips it.

Runners: `run_plan` below (plain Python, `stt run --no-prefect`), `stt_app.flows.stages` (one Prefect task per
job, in one flow run) and `stt_app.flows.fanout` (groups of jobs as flow runs of the `run-jobs` deployment
spread over the gpu work pool's workers).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stt import pipeline
from stt.config import RunConfig
from stt.errors import DataError
from stt.report import write_report
from stt.runlock import run_lock
from stt.stages import REGISTRY, Job, StageDef

log = logging.getLogger(__name__)

Stage = str  # a name in stt.stages.REGISTRY
STAGES: tuple[Stage, ...] = tuple(REGISTRY)
MODEL_STAGES = frozenset(name for name, stage in REGISTRY.items() if stage.uses_model)


class JobsFailed(RuntimeError):
    """Some jobs of a stage failed after their retries; the finished ones are kept."""

    unit = "job"

    def __init__(self, failed: dict[str, str]):
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
        super().__init__(f"{len(failed)} {self.unit}(s) failed after retries ({listing}); finished {self.unit}s "
                         "are kept, rerun the same config to retry the rest")
        self.failed = failed


def _stage(name: str) -> StageDef:
    if name not in REGISTRY:
        raise DataError(f"unknown stage '{name}' (stages: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def stage_jobs(config: RunConfig, stage: Stage) -> list[Job]:
    """Every job of a stage, in plan order, done or not."""
    return [job for task in config.tasks for job in _stage(stage).jobs(config, task, pipeline.plan_task(config, task))]


def stages_of_flow(flow: str) -> tuple[Stage, ...]:
    """The stages a Prefect stage flow runs, in plan order (StageDef.flow)."""
    return tuple(name for name, stage in REGISTRY.items() if stage.flow == flow)


def waves(jobs: list[Job]) -> list[list[Job]]:
    return [[j for j in jobs if j.wave == w] for w in sorted({j.wave for j in jobs})]


def uses_model(job: Job) -> bool:
    return _stage(job.stage).uses_model


def brief(job: Job, info: dict[str, Any]) -> str:
    """One line on a finished job for the logs."""
    return _stage(job.stage).brief(info)


def folder(config: RunConfig, job: Job) -> Path:
    return _stage(job.stage).folder(config, pipeline.plan_task(config, job.task), job)


def key(config: RunConfig, job: Job) -> str:
    """The stage's content key of this job (as written in its marker)."""
    return _stage(job.stage).key(config, pipeline.plan_task(config, job.task), job)


def is_done(config: RunConfig, job: Job) -> bool:
    """The job's outputs are on disk under its current key, every file matching its checksum."""
    return _stage(job.stage).is_done(config, pipeline.plan_task(config, job.task), job)


def timeout_s(config: RunConfig, job: Job) -> float | None:
    """When a model job counts as hung (from its size; see stt.timeouts). None: no limit."""
    return _stage(job.stage).timeout_s(config, pipeline.plan_task(config, job.task), job)


def run(config: RunConfig, job: Job) -> dict[str, Any]:
    """Do one job (idempotent: a finished stage is read back, not redone). Keeps at most the one model
    the job needs in memory, whichever runner calls it."""
    from stt.engines import release_engines
    from stt.engines.child import deadline

    stage, plan = _stage(job.stage), pipeline.plan_task(config, job.task)
    if stage.uses_model:
        release_engines(keep=stage.engine_kept(config, plan, job))
    # A child engine (engine.process: child) is killed when the job's model calls outlast its timeout.
    with deadline(stage.timeout_s(config, plan, job)):
        return stage.run(config, plan, job)


def result(config: RunConfig, job: Job) -> dict[str, Any]:
    """A done job's record, read back from its folder (what `run` returned, for a job another runner did)."""
    return summary(_stage(job.stage).result(config, pipeline.plan_task(config, job.task), job))


def summary(info: dict[str, Any]) -> dict[str, Any]:
    """What a runner returns for a job (and Prefect persists): small JSON, paths not rows."""
    return {k: v for k, v in info.items() if k not in ("files", "table")}


def run_plan(config: RunConfig, names: tuple[Stage, ...] = STAGES,
             on_job: Callable[[Job, dict[str, Any]], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The plain-Python runner: every stage's jobs in plan order, in this process. Transient engine errors
    are retried (as Prefect's task retries do); anything else stops the run, finished jobs kept."""
    from stt.translate import _with_retries

    results: dict[str, list[dict[str, Any]]] = {}
    started = time.perf_counter()
    for stage in names:
        results[stage] = []
        planned = stage_jobs(config, stage)
        for k, job in enumerate(planned, 1):
            t0 = time.perf_counter()
            info = summary(_with_retries(run)(config, job))
            results[stage].append(info)
            # What a person watching the run reads: the stage, job k of n, its time and the run's so far.
            log.info("%s %d/%d %s: %s (%.1fs; %s elapsed)", stage, k, len(planned), job.name, brief(job, info),
                     time.perf_counter() - t0, _clock(time.perf_counter() - started))
            if on_job:
                on_job(job, info)
    from stt.engines import release_engines

    release_engines()
    return results


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def run_pipeline(config: RunConfig) -> dict[str, Any]:
    """The whole method in one process, without Prefect (the flows run the same jobs as tasks): every job
    of the plan, then the report from the run folder (the same reading as the Prefect report flow)."""
    with run_lock(config.root):  # one run per run folder at a time
        run_plan(config)
        evaluations, quality = pipeline.collect(config)
        return write_report(config.root, evaluations, quality, json.loads(config.model_dump_json()),
                            pipeline.notes(config))
