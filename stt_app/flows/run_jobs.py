"""Run a list of a plan's jobs as tasks of one flow run: how every flow runs its jobs in-process (the stage
flows, `translate`, `evaluate`), and the `run-jobs` deployment that a fanned-out stage
(stt_app/flows/fanout.py) sends groups of jobs to."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from stt import jobs
from stt.engine_settings import EngineConfig
from stt_app.tasks.jobs import job_options, run_job
from stt_app.tasks.logs import say_once_how_timeouts_end
from stt_app.tasks.store_blocks import use_store_credentials


def run_here(planned: list[jobs.Job], engine: EngineConfig | None = None) -> list[dict[str, Any]]:
    """Every job as a task of this flow run, wave after wave. One failed job does not stop the others of
    its wave; the stage fails at the end, naming each failed job (finished ones are kept).
    `engine`: the jobs' engine, for the one log line on how their timeouts end."""
    logger = get_run_logger()
    if engine is not None and any(jobs.uses_model(job) for job in planned):
        say_once_how_timeouts_end(logger, engine)
    results: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    total = len(planned)
    for name in {job.store_credentials for job in planned if job.store_credentials}:
        use_store_credentials(name)
    for wave in jobs.waves(planned):
        if failed:  # a later wave needs the earlier ones
            break
        futures = [(job, run_job.with_options(**job_options(job)).submit(job)) for job in wave]
        for job, future in futures:
            future.wait()
            if not future.state.is_completed():
                failed[job.id] = str(future.state.message)
                logger.error("%s failed: %s", job.id, failed[job.id])
                continue
            results.append(future.result())
            logger.info("progress: %d/%d jobs done", len(results), total)
    if failed:
        raise jobs.JobsFailed(failed)
    return results


@flow(name="run-jobs", log_prints=True, persist_result=True, result_serializer="json")
def run_jobs(group: list[jobs.Job], engine: EngineConfig | None = None) -> list[dict[str, Any]]:
    """Do these jobs of the plan on this worker (a group sent by a fanned-out stage). Jobs already done
    are verified and skipped, so a group sent twice writes its outputs once."""
    get_run_logger().info("%d job(s): %s", len(group), ", ".join(j.id for j in group))
    return run_here(group, engine)
