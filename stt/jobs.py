"""The one runner of stage work. A run, `stt translate` and `stt evaluate` are all plans of stage jobs, and
every entry point executes them through the functions here. The stages are modules of `stt/stages/` (each
declares its jobs' inputs and how to do one), in the order of stt.stages.REGISTRY:

    translate  one job per (language, shard)       model
    quality    one job per (task, language)         model
    build      one job per training set             cpu
    finetune   one job per adapter                  model (wave 1: the equal-steps controls, which
                                                    read the step count of a wave-0 adapter)
    evaluate   one job per (model, language)        model
    then the report, from the finished evaluations' folders.

A job is plain JSON carrying everything it needs (`Job.inputs`, resolved once when the run is planned): a
Prefect task, a deployment's flow run on another machine and the plain loop all receive the same `Job` and
call `run(job)`. Each job's `key` is its stage's content key (the same key the stage writes in its folder's
marker), and `is_done` reads that marker and verifies its files, so whichever runner did a job, any other
sees it done and skips it. This module owns what is common to every job: the done check, the engine that
stays loaded, the deadline of its model calls and (without Prefect) its retries.

Who loops over the jobs: `run_jobs` below (plain Python: `--no-prefect`), `stt_app.flows.run_jobs.run_here`
(one Prefect task per job, in one flow run) and `stt_app.flows.fanout` (groups of jobs as flow runs of the
`run-jobs` deployment spread over the gpu work pool's workers).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from stt import pipeline, stored
from stt.config import EvalConfig, RunConfig, TimeoutConfig, TranslateConfig
from stt.engine_settings import EngineConfig
from stt.errors import ConfigError, DataError
from stt.report import write_report
from stt.runlock import run_lock
from stt.specs import get_task
from stt.stages import REGISTRY, Job, StageDef
from stt.stages.evaluate import STAGE as EVALUATE
from stt.stages.translate import STAGE as TRANSLATE
from stt.stages.translate import check_config
from stt.store import RunStore

log = logging.getLogger(__name__)

Stage = str  # a name in stt.stages.REGISTRY
STAGES: tuple[Stage, ...] = tuple(REGISTRY)
MODEL_STAGES = frozenset(name for name, stage in REGISTRY.items() if stage.uses_model)
F = TypeVar("F", bound=Callable[..., Any])


class JobsFailed(RuntimeError):
    """Some jobs of a stage failed after their retries; the finished ones are kept."""

    unit = "job"

    def __init__(self, failed: dict[str, str]):
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
        super().__init__(f"{len(failed)} {self.unit}(s) failed after retries ({listing}); finished {self.unit}s "
                         "are kept, rerun the same config to retry the rest")
        self.failed = failed


class ShardsFailed(JobsFailed):
    """Some shards of a translation failed (`stt translate`)."""

    unit = "shard"


def _stage(name: str) -> StageDef:
    if name not in REGISTRY:
        raise DataError(f"unknown stage '{name}' (stages: {', '.join(REGISTRY)})")
    return REGISTRY[name]


# --- planning: once per run ---------------------------------------------------------------------------------

def check_run(config: RunConfig) -> None:
    """Fail fast, before any work, on an unknown or badly declared task or a primary metric the task does not
    have (the settings themselves are checked by pydantic; tasks may be declared in files)."""
    for task in config.tasks:
        check_config(config.translate_config(task))
    for setting in ("max_new_tokens", "test_split"):
        for task in getattr(config.eval, setting):
            if task not in config.tasks:
                raise ConfigError(f"eval.{setting}: '{task}' is not a task of this run "
                                  f"(tasks: {', '.join(config.tasks)})")
    for task in config.eval.max_new_tokens:
        if not get_task(task).answer_tokens(config.eval):
            raise ConfigError(f"eval.max_new_tokens: {task}'s answers are scored, not generated")
    for task in config.eval.test_split:
        get_task(task).test_split(config.eval)
    for task, metric in config.eval.primary_metric.items():
        choices = get_task(task).primary_choices
        if metric not in choices:
            raise ConfigError(f"eval.primary_metric: '{metric}' is not a per-item metric of {task} "
                              f"(choose from {', '.join(choices)})")


def plan_run(config: RunConfig, names: tuple[Stage, ...] = STAGES) -> dict[Stage, list[Job]]:
    """Every job of these stages, in plan order, done or not: the config is planned once, per task. For a run
    on object storage, each job names the store, and what planning wrote (translation's input shards) is
    published for workers elsewhere."""
    plans = [pipeline.plan_task(config, task) for task in config.tasks]
    planned = {stage: [job for plan in plans for job in _stage(stage).plan_jobs(config, plan)] for stage in names}
    if config.store:
        stamp = {"store": config.store, "root": str(config.root), "store_credentials": config.store_credentials}
        planned = {stage: [j.model_copy(update=stamp) for j in jobs] for stage, jobs in planned.items()}
        stored.publish_plans(RunStore(config.store, config.root), planned)
    return planned


def stage_jobs(config: RunConfig, stage: Stage) -> list[Job]:
    """Every job of one stage, in plan order."""
    return plan_run(config, (stage,))[stage]


def translate_jobs(config: TranslateConfig) -> list[Job]:
    """`stt translate`: the shards of one task's training data, a one-stage plan."""
    return TRANSLATE.plan_translate(config)[1]


def evaluate_jobs(task: str, languages: list[str], engine: EngineConfig, config: EvalConfig, data_dir: Path,
                  out_dir: Path, label: str, limits: TimeoutConfig = TimeoutConfig()) -> list[Job]:  # noqa: B008
    """`stt evaluate`: one model on a task's test set in these languages, a one-stage plan."""
    return EVALUATE.plan_evaluate(task, languages, engine, config, data_dir, out_dir, label, limits)


def waves(jobs: list[Job]) -> list[list[Job]]:
    return [[j for j in jobs if j.wave == w] for w in sorted({j.wave for j in jobs})]


# --- one job ------------------------------------------------------------------------------------------------

def uses_model(job: Job) -> bool:
    return _stage(job.stage).uses_model


def brief(job: Job, info: dict[str, Any]) -> str:
    """One line on a finished job for the logs."""
    return _stage(job.stage).brief(info)


def key(job: Job) -> str:
    """The stage's content key of this job (as written in its marker)."""
    stage = _stage(job.stage)
    if job.store:
        stored.pull_inputs(job)
    return stage.key(stage.inputs(job))


def is_done(job: Job) -> bool:
    """The job's outputs are on disk under its current key, every file matching its checksum (on a run's
    object store: its unit is claimed under that key)."""
    stage = _stage(job.stage)
    if job.store:
        return stored.is_done(job, stage)
    return stage.is_done(stage.inputs(job), Path(job.folder))


def timeout_s(job: Job) -> float | None:
    """When a model job counts as hung (from its size; see stt.timeouts). None: no limit."""
    stage = _stage(job.stage)
    return stage.timeout_s(stage.inputs(job), job.timeouts)


def run(job: Job) -> dict[str, Any]:
    """Do one job (idempotent: a finished stage is read back, not redone). Keeps at most the one model the
    job needs in memory, whichever runner calls it, and ends its model calls at its deadline (engine.process
    child)."""
    from stt.engines import release_engines
    from stt.engines.child import deadline

    stage = _stage(job.stage)
    inputs, folder = stage.inputs(job), Path(job.folder)
    if stage.uses_model:
        release_engines(keep=stage.engine_kept(inputs))
    with deadline(stage.timeout_s(inputs, job.timeouts)):
        if job.store:  # inputs down from the run's object store, the job here, its unit up
            return stored.run(job, stage, lambda: stage.run(inputs, folder))
        return stage.run(inputs, folder)


def result(job: Job) -> dict[str, Any]:
    """A done job's record, read back from its folder (what `run` returned, for a job another runner did)."""
    stage = _stage(job.stage)
    if job.store:
        stored.pull_inputs(job)
    return summary(stage.result(stage.inputs(job), Path(job.folder)))


def summary(info: dict[str, Any]) -> dict[str, Any]:
    """What a runner returns for a job (and Prefect persists): small JSON, paths not rows."""
    return {k: v for k, v in info.items() if k not in ("files", "table")}


def retried(fn: F) -> F:
    """The plain runner's counterpart of the Prefect task's retries: an engine error that is transient
    (an injected one, an endpoint's, a hung or crashed engine process) is retried twice; anything else, an
    engine process ended by the out-of-memory killer included, fails at once."""
    import tenacity

    from stt.engines.child import worth_retrying

    return tenacity.retry(retry=tenacity.retry_if_exception(worth_retrying),
                          stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential(min=0.5, max=10),
                          reraise=True,
                          before_sleep=lambda s: log.warning("retrying after %s", s.outcome.exception()))(fn)


# --- the plain runner ---------------------------------------------------------------------------------------

def run_jobs(planned: list[Job], on_job: Callable[[Job, dict[str, Any]], None] | None = None
             ) -> list[dict[str, Any]]:
    """The plain-Python runner: the jobs in order, in this process. Transient engine errors are retried (as
    Prefect's task retries do); anything else stops the run, finished jobs kept."""
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for k, job in enumerate(planned, 1):
        t0 = time.perf_counter()
        info = summary(retried(run)(job))
        results.append(info)
        # What a person watching the run reads: the stage, job k of n, its time and the run's so far.
        log.info("%s %d/%d %s: %s (%.1fs; %s elapsed)", job.stage, k, len(planned), job.name, brief(job, info),
                 time.perf_counter() - t0, _clock(time.perf_counter() - started))
        if on_job:
            on_job(job, info)
    return results


def run_plan(config: RunConfig, names: tuple[Stage, ...] = STAGES,
             on_job: Callable[[Job, dict[str, Any]], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every stage's jobs of a run in plan order, in this process."""
    from stt.engines import release_engines

    planned = plan_run(config, names)
    results = {stage: run_jobs(planned[stage], on_job) for stage in names}
    release_engines()
    return results


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def run_pipeline(config: RunConfig) -> dict[str, Any]:
    """The whole method in one process, without Prefect (the flows run the same jobs as tasks): every job
    of the plan, then the report from the run folder (the same reading as the Prefect report flow)."""
    with run_lock(config.root):  # one run per run folder at a time (on object storage: per mirror)
        run_plan(config)
        return report(config)


def report(config: RunConfig) -> dict[str, Any]:
    """The report from the finished evaluations (for a run on object storage: pulled first, the report
    uploaded after)."""
    rs = RunStore(config.store, config.root) if config.store else None
    if rs:
        rs.pull(Path(c["folder"]) for c in rs.claims())
    evaluations, quality = pipeline.collect(config)
    out = write_report(config.root, evaluations, quality, json.loads(config.model_dump_json()),
                       pipeline.notes(config))
    if rs:
        rs.put_plain(config.root, sorted(p.name for p in config.root.iterdir() if p.is_file()
                                         and not p.name.startswith(".")))
    return out


def translate(config: TranslateConfig) -> Path:
    """`stt translate --no-prefect`: the translate plan of one config, run here. Returns the shards' folder."""
    from stt.engines import release_engines

    with run_lock(config.out_dir):  # a second run on the same folder fails (or waits) instead of racing
        run_jobs(translate_jobs(config))
    release_engines()
    return Path(config.out_dir)


def evaluate(task: str, languages: list[str], engine: EngineConfig, config: EvalConfig, data_dir: Path,
             out_dir: Path, label: str, limits: TimeoutConfig = TimeoutConfig()  # noqa: B008
             ) -> list[dict[str, Any]]:
    """`stt evaluate --no-prefect`: one model's evaluations, run here."""
    from stt.engines import release_engines

    out = run_jobs(evaluate_jobs(task, languages, engine, config, data_dir, out_dir, label, limits))
    release_engines()
    return out
