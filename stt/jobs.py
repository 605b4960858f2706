"""One plan of stage jobs for a run; every runner executes these jobs and nothing else.

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

Runners: `run_plan` below (plain Python, `stt run --no-prefect`), `flows.stages` (one Prefect task per
job, in one flow run) and `flows.fanout` (groups of jobs as flow runs of the `run-jobs` deployment
spread over the gpu work pool's workers).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from stt import pipeline, stages, timeouts
from stt.config import EngineConfig, RunConfig
from stt.errors import DataError
from stt.shards import read_manifest

log = logging.getLogger(__name__)

Stage = Literal["translate", "quality", "build", "finetune", "evaluate"]
STAGES: tuple[Stage, ...] = ("translate", "quality", "build", "finetune", "evaluate")
MODEL_STAGES = frozenset({"translate", "quality", "finetune", "evaluate"})


class JobsFailed(RuntimeError):
    """Some jobs of a stage failed after their retries; the finished ones are kept."""

    unit = "job"

    def __init__(self, failed: dict[str, str]):
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
        super().__init__(f"{len(failed)} {self.unit}(s) failed after retries ({listing}); finished {self.unit}s "
                         "are kept, rerun the same config to retry the rest")
        self.failed = failed


class Job(BaseModel):
    """One unit of a stage: what a worker needs to find and do it, as plain values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: Stage
    task: str
    name: str  # shard id, language, set, adapter or evaluation name: unique within (task, stage)
    wave: int = 0  # jobs of a wave start once every job of the earlier waves is done
    shard: dict[str, Any] | None = None  # translate: the planned shard (stt.translate.ShardJob)

    @property
    def id(self) -> str:
        return f"{self.task}/{self.stage}/{self.name}"

    @property
    def uses_model(self) -> bool:
        return self.stage in MODEL_STAGES


def stage_jobs(config: RunConfig, stage: Stage) -> list[Job]:
    """Every job of a stage, in plan order, done or not. Planning the translate stage writes its input
    shards and manifest (idempotent), so workers receive shards that exist."""
    from stt.translate import job_to_dict, plan_translation

    out: list[Job] = []
    for task in config.tasks:
        plan = pipeline.plan_task(config, task)
        if stage == "translate":
            tplan = plan_translation(config.translate_config(task))
            out += [Job(stage=stage, task=task, name=j.shard, shard=job_to_dict(j)) for j in tplan.jobs]
        elif stage == "quality":
            out += [Job(stage=stage, task=task, name=lang) for lang in config.languages]
        elif stage == "build":
            out += [Job(stage=stage, task=task, name=s.name) for s in plan.sets]
        elif stage == "finetune":
            out += [Job(stage=stage, task=task, name=a.name, wave=1 if a.steps_like else 0) for a in plan.adapters]
        elif stage == "evaluate":
            out += [Job(stage=stage, task=task, name=e.name) for e in plan.evals]
    return out


def waves(jobs: list[Job]) -> list[list[Job]]:
    return [[j for j in jobs if j.wave == w] for w in sorted({j.wave for j in jobs})]


def folder(config: RunConfig, job: Job) -> Path:
    plan = pipeline.plan_task(config, job.task)
    return {"translate": lambda: plan.translate_dir, "quality": lambda: plan.quality_dir(job.name),
            "build": lambda: plan.set_dir(job.name), "finetune": lambda: plan.adapter_dir(job.name),
            "evaluate": lambda: plan.eval_dir(_eval(plan, job))}[job.stage]()


def key(config: RunConfig, job: Job) -> str:
    """The stage's content key of this job (as written in its marker)."""
    from stt.evaluate import evaluate_key
    from stt.finetune import finetune_key
    from stt.quality import quality_key
    from stt.trainsets import build_key, training_source
    from stt.translate_test import translate_test_key
    from stt.validate import VALIDATION_VERSION

    plan = pipeline.plan_task(config, job.task)
    data_dir = config.resolved_data_dir()
    if job.stage == "translate":
        s = _shard(job)
        return stages.stage_key(generation=s.generation_key, back=s.back_key, min_chrf=s.round_trip_min_chrf,
                                input=s.input_sha256, validation=VALIDATION_VERSION)
    if job.stage == "quality":
        return quality_key(job.task, job.name, config.engine, config.generation, config.prompt, data_dir,
                           config.eval.quality_limit)
    if job.stage == "build":
        s = _set(plan, job)
        return build_key(job.task, s.kind, s.language, plan.translate_dir, config.build,
                         training_source(config.translate_config(job.task)))
    if job.stage == "finetune":
        a = _adapter(plan, job)
        return finetune_key(config.engine.model, plan.set_dir(a.set_name),
                            pipeline.adapter_train_config(config, plan, a))
    e = _eval(plan, job)
    if e.translate_test:
        return translate_test_key(job.task, e.language, pipeline.translator_engine(config),
                                  pipeline.eval_engine(config, plan, e), config.eval, config.generation,
                                  config.prompt, data_dir)
    return evaluate_key(job.task, e.language, pipeline.eval_engine(config, plan, e), config.eval, data_dir)


def is_done(config: RunConfig, job: Job) -> bool:
    """The job's outputs are on disk under its current key, every file matching its checksum."""
    from stt.translate import shard_done

    if job.stage == "translate":
        return shard_done(_shard(job), config.translate_config(job.task))
    try:
        k = key(config, job)
    except DataError:  # an upstream output is missing (e.g. its set is not built): not done
        return False
    out = folder(config, job)
    if job.stage == "evaluate" and _eval(pipeline.plan_task(config, job.task), job).translate_test:
        # Translate-test's marker holds the key of its answers; the run key says which inputs made them.
        marker = out / stages.MARKER
        info = json.loads(marker.read_text()) if marker.is_file() else {}
        return info.get("run_key") == k and stages.read_done(out, info["key"]) is not None
    return stages.read_done(out, k) is not None


def timeout_s(config: RunConfig, job: Job) -> float | None:
    """When a model job counts as hung (from its size; see stt.timeouts). None: no limit."""
    limits = config.timeouts
    if job.stage == "translate":
        s = _shard(job)
        return timeouts.generation_s(s.rows, config.generation, limits, round_trip=bool(s.back_key))
    if job.stage == "quality":
        return timeouts.evaluation_s(config.eval.quality_limit or 250, config.generation.max_new_tokens_cap, limits)
    if job.stage == "finetune":
        plan = pipeline.plan_task(config, job.task)
        a = _adapter(plan, job)
        return timeouts.training_s(_steps(plan.set_dir(a.set_name), pipeline.adapter_train_config(config, plan, a)),
                                   limits)
    if job.stage == "evaluate":
        e = _eval(pipeline.plan_task(config, job.task), job)
        extra = config.generation.max_new_tokens_cap if e.translate_test else 0
        return timeouts.evaluation_timeout_s(job.task, config.eval, limits, extra)
    return None


def run(config: RunConfig, job: Job) -> dict[str, Any]:
    """Do one job (idempotent: a finished stage is read back, not redone). Keeps at most the one model
    the job needs in memory, whichever runner calls it."""
    from stt.engines import release_engines
    from stt.finetune import finetune
    from stt.quality import translation_quality
    from stt.trainsets import build_set, training_source
    from stt.translate import run_shard

    plan = pipeline.plan_task(config, job.task)
    data_dir = config.resolved_data_dir()
    if job.uses_model:
        release_engines(keep=_engine_kept(config, plan, job))
    if job.stage == "translate":
        return run_shard(_shard(job), config.translate_config(job.task))
    if job.stage == "quality":
        return translation_quality(job.task, job.name, config.engine, config.generation, config.prompt, data_dir,
                                   plan.quality_dir(job.name), config.eval.quality_limit)
    if job.stage == "build":
        s = _set(plan, job)
        return build_set(job.task, s.kind, s.language, plan.translate_dir, plan.root / "sets", config.build,
                         training_source(config.translate_config(job.task)))
    if job.stage == "finetune":
        a = _adapter(plan, job)
        return finetune(config.engine.model, plan.set_dir(a.set_name), plan.adapter_dir(a.name),
                        pipeline.adapter_train_config(config, plan, a), config.engine.device)
    return pipeline.run_job_evaluation(config, plan, _eval(plan, job), data_dir)


def result(config: RunConfig, job: Job) -> dict[str, Any]:
    """A done job's record, read back from its folder (what `run` returned, for a job another runner did)."""
    if job.stage == "translate":
        out = folder(config, job)
        return {"shard": job.name, **read_manifest(out)["shards"][job.name], "folder": str(out)}
    out = folder(config, job)
    return summary({**json.loads((out / stages.MARKER).read_text()), "folder": str(out)})


def summary(info: dict[str, Any]) -> dict[str, Any]:
    """What a runner returns for a job (and Prefect persists): small JSON, paths not rows."""
    return {k: v for k, v in info.items() if k not in ("files", "table")}


def run_plan(config: RunConfig, names: tuple[Stage, ...] = STAGES,
             on_job: Callable[[Job, dict[str, Any]], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The plain-Python runner: every stage's jobs in plan order, in this process. Transient engine errors
    are retried (as Prefect's task retries do); anything else stops the run, finished jobs kept."""
    from stt.translate import _with_retries

    results: dict[str, list[dict[str, Any]]] = {}
    for stage in names:
        results[stage] = []
        for job in stage_jobs(config, stage):
            info = summary(_with_retries(run)(config, job))
            results[stage].append(info)
            if on_job:
                on_job(job, info)
    from stt.engines import release_engines

    release_engines()
    return results


def _engine_kept(config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> EngineConfig | None:
    """The loaded model a job can reuse; every other one is let go first (training wants the memory)."""
    if job.stage in ("translate", "quality"):
        return config.engine
    if job.stage == "evaluate":
        e = _eval(plan, job)
        return None if e.translate_test else pipeline.eval_engine(config, plan, e).model_copy(
            update={"batch_size": config.eval.batch_size})
    return None


def _shard(job: Job) -> Any:
    from stt.translate import job_from_dict

    if job.shard is None:
        raise DataError(f"{job.id}: a translate job carries its planned shard")
    return job_from_dict(job.shard)


def _find(items: Any, job: Job, what: str) -> Any:
    for item in items:
        if item.name == job.name:
            return item
    raise DataError(f"{job.id}: no {what} '{job.name}' in this config's plan (was the config changed?)")


def _set(plan: pipeline.TaskPlan, job: Job) -> pipeline.SetJob:
    return _find(plan.sets, job, "training set")


def _adapter(plan: pipeline.TaskPlan, job: Job) -> pipeline.AdapterJob:
    return _find(plan.adapters, job, "adapter")


def _eval(plan: pipeline.TaskPlan, job: Job) -> pipeline.EvalJob:
    return _find(plan.evals, job, "evaluation")


def _steps(set_folder: Path, train: Any) -> int:
    """Optimizer steps an adapter will take (from its set's manifest), for its timeout."""
    from stt.finetune import planned_steps

    marker = Path(set_folder) / stages.MARKER
    rows = json.loads(marker.read_text()).get("rows", 0) if marker.is_file() else 0
    return planned_steps(max(rows, 1), train)
