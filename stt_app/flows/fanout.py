"""Fan-out: a stage's jobs as flow runs of the `run-jobs` deployment, spread over the gpu pool's workers.

Prefect distributes the work; this module only submits and checks. The parent (a stage flow whose config
says `scale_out.mode: deployments`) groups the jobs not done yet, submits one flow run per group with
`run_deployment(..., timeout=0)`, and polls them. When a run ends, Completed or not, its jobs are checked
on disk (marker and checksums, as any rerun checks them): a job not done is submitted again, in a new
group, up to `max_attempts` times. Prefect does not retry a crashed flow run (a worker SIGKILLed, a machine
lost; its heartbeats stop and the `stt-crash-zombie-flow-runs` automation marks it Crashed): the parent
does. The stage is done when every job is done and verified.

Every worker must reach the run folder at the same path (one machine, or a shared filesystem: see
docs/scaling.md). A job finished twice (a run marked Crashed that had in fact finished, then its
resubmission) writes the same files under temp names and renames them, so its outputs are written once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment

from stt import jobs
from stt.config import RunConfig


@dataclass
class _Flight:
    """What the parent tracks of its submitted flow runs (one stage)."""

    config: RunConfig
    stage: str
    parent: str
    record: list[dict[str, Any]] = field(default_factory=list)  # one row per submitted flow run, for the artifact
    attempts: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    running: dict[UUID, tuple[list[jobs.Job], dict[str, Any]]] = field(default_factory=dict)  # in flight
    verified: set[str] = field(default_factory=set)  # jobs checked done on disk (once, when their run ended)

    def submit(self, group: list[jobs.Job]) -> None:
        for j in group:
            self.attempts[j.id] = self.attempts.get(j.id, 0) + 1
        attempt = max(self.attempts[j.id] for j in group)
        names = group[0].name if len(group) == 1 else f"{group[0].name}..{group[-1].name}"
        config = self.config
        run = run_deployment(
            config.scale_out.deployment, timeout=0,
            parameters={"group": [j.model_dump(mode="json") for j in group],
                        "engine": config.engine.model_dump(mode="json")},
            flow_run_name=f"{config.name} {self.stage} {names} #{attempt}",
            tags=["stt", f"stt-run:{config.name}", f"stt-stage:{self.stage}"],
            # A retried parent finds the runs it already submitted instead of submitting them again.
            idempotency_key=f"{self.parent}:{self.stage}:{group[0].id}:{len(group)}:{attempt}")
        row = {"flow_run": run.name, "flow_run_id": str(run.id), "jobs": ", ".join(j.name for j in group),
               "attempt": attempt, "state": "Scheduled", "worker": "", "missing_after": ""}
        self.record.append(row)
        self.running[run.id] = (group, row)

    def settle(self, run_id: UUID, run: Any) -> None:
        """A flow run ended: check its jobs on disk, submit again the ones not done (up to max_attempts)."""
        logger = get_run_logger()
        group, row = self.running.pop(run_id)
        missing = [j for j in group if not jobs.is_done(j)]
        self.verified |= {j.id for j in group} - {j.id for j in missing}
        row.update(state=run.state.name, worker=(run.labels or {}).get("prefect.worker.name", ""),
                   missing_after=", ".join(j.name for j in missing))
        if not missing:
            logger.info("%s: %s on %s, %d job(s) done and verified", row["flow_run"], run.state.name,
                        row["worker"] or "?", len(group))
            return
        max_attempts = self.config.scale_out.max_attempts
        again = [j for j in missing if self.attempts[j.id] < max_attempts]
        for j in missing:
            if self.attempts[j.id] >= max_attempts:
                self.failed[j.id] = f"{run.state.name} after {self.attempts[j.id]} attempts: {run.state.message}"
        logger.warning("%s ended %s (%s); %d job(s) not done, %d submitted again", row["flow_run"],
                       run.state.name, run.state.message, len(missing), len(again))
        if again:
            self.submit(again)


def run_on_workers(config: RunConfig, stage: str, planned: list[jobs.Job]) -> list[dict[str, Any]]:
    so = config.scale_out
    logger = get_run_logger()
    ctx = FlowRunContext.get()
    flight = _Flight(config, stage, str(ctx.flow_run.id) if ctx and ctx.flow_run else "no-parent")
    for wave in jobs.waves(planned):
        if flight.failed:  # a later wave needs the earlier ones
            break
        todo = [j for j in wave if not jobs.is_done(j)]
        flight.verified |= {j.id for j in wave} - {j.id for j in todo}
        logger.info("%s: %d of %d jobs to do, in groups of %d, on %s", stage, len(todo), len(wave),
                    so.group_size, so.deployment)
        for i in range(0, len(todo), so.group_size):
            flight.submit(todo[i:i + so.group_size])
        while flight.running:
            time.sleep(so.poll_s)
            with get_client(sync_client=True) as client:
                runs = {run_id: client.read_flow_run(run_id) for run_id in list(flight.running)}
            for run_id, run in runs.items():
                if run.state is not None and run.state.is_final():
                    flight.settle(run_id, run)
            done = sum(j.id in flight.verified for j in wave)
            logger.info("%s: %d/%d jobs done, %d flow run(s) in flight", stage, done, len(wave), len(flight.running))
    create_table_artifact(key=f"fanout-{stage}", table=flight.record,
                          description=f"{config.name}: {stage} jobs as flow runs of {so.deployment}")
    if flight.failed:
        raise jobs.JobsFailed(flight.failed)
    return [jobs.result(j) for j in planned]
