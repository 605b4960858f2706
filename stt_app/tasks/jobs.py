"""The Prefect task that runs one job of a plan (`stt.jobs`): every flow, in-process or on a worker of the
gpu pool, submits this task and nothing else for its jobs."""

from __future__ import annotations

import contextlib
import time
from contextlib import nullcontext
from typing import Any

from prefect import get_run_logger, task

from stt import jobs
from stt.config import TimeoutConfig
from stt.engines.child import EngineOutOfMemory
from stt.markers import stage_key
from stt.secrets import scrubbed
from stt_app.tasks.model_slot import model_slot


@task(name="stage-job", task_run_name="{job.stage} {job.task} {job.name}", persist_result=True,
      result_serializer="json")
def run_job(job: jobs.Job) -> dict[str, Any]:
    t0 = time.perf_counter()
    # scrubbed: the state message Prefect makes of a failure holds no secret
    with scrubbed(), model_slot() if jobs.uses_model(job) else nullcontext():  # one model job per machine at a time
        info = jobs.summary(jobs.run(job))
    get_run_logger().info("%s done in %.1fs: %s", job.id, time.perf_counter() - t0, jobs.brief(job, info))
    return info


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: every failure is retried (Prefect's default) except an engine process
    ended by the out-of-memory killer, which would only die again with the same memory."""
    exc = getattr(state, "data", None)  # Prefect hands the failed attempt's exception as the state's data
    if not isinstance(exc, BaseException) and state is not None:
        with contextlib.suppress(Exception):
            exc = state.result(raise_on_failure=False)
    return not isinstance(exc, EngineOutOfMemory)


def task_options(timeout_s: float, config: TimeoutConfig) -> dict[str, object]:
    """A model task's timeout and retries; an engine process killed for memory is not retried."""
    return {"timeout_seconds": timeout_s, "retries": config.retries,
            "retry_delay_seconds": list(config.retry_delays_s) or 0, "retry_condition_fn": retry_condition}


def job_options(job: jobs.Job) -> dict[str, Any]:
    """Cached on the job's content key; refreshed when its folder no longer holds that result; a model job
    gets a timeout from its size and the configured retries, a CPU job one quick retry."""
    # The folder is part of the cache key: two runs of one config in two folders each get their own outputs.
    key = stage_key(key=jobs.key(job), folder=job.folder)
    opts: dict[str, Any] = {"cache_key_fn": lambda *_: f"stt-{job.stage}-{key}", "refresh_cache": not jobs.is_done(job)}
    limit = jobs.timeout_s(job)
    return opts | (task_options(limit, job.timeouts) if limit else {"retries": 1, "retry_delay_seconds": 5})
