"""The Prefect task that writes a run's report (stt.report) from its finished evaluations."""

from __future__ import annotations

from typing import Any

from prefect import task

from stt import jobs
from stt.config import RunConfig
from stt.secrets import scrubbed
from stt_app.tasks.store_blocks import use_store_credentials


@task(name="report", retries=1, retry_delay_seconds=5)
def report_task(config: RunConfig) -> dict[str, Any]:
    """The same report as the plain runner's (stt.jobs.report: for a run on object storage, pulled first and
    uploaded after)."""
    use_store_credentials(config.store_credentials)
    with scrubbed():
        out = jobs.report(config)
    return {k: v for k, v in out.items() if k != "table"} | {"table": out["table"].to_dict(orient="records")}
