"""The Prefect task that writes a run's report (stt.report) from its finished evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from stt.report import write_report
from stt.secrets import scrubbed


@task(name="report", retries=1, retry_delay_seconds=5)
def report_task(root: str, evaluations: list[dict[str, Any]], quality_results: list[dict[str, Any]],
                config: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    with scrubbed():
        out = write_report(Path(root), evaluations, quality_results, config, notes)
    return {k: v for k, v in out.items() if k != "table"} | {"table": out["table"].to_dict(orient="records")}
