"""A cheap maintenance flow: verify the data folder's checksums (scheduled daily on the cpu pool)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from stt.config import resolve_data_dir
from stt.datacheck import check_data as check
from stt.errors import DataError


@flow(name="check-data", log_prints=True, persist_result=True, result_serializer="json")
def check_data(data_dir: str | None = None) -> dict[str, Any]:
    folder = resolve_data_dir(Path(data_dir) if data_dir else None)
    rows = check(folder)
    create_table_artifact(key="stt-data-check", table=rows, description=f"checksums of {folder}")
    bad = [r for r in rows if r["status"] != "ok"]
    get_run_logger().info("%s: %d files checked, %d not ok", folder, len(rows), len(bad))
    if bad:
        raise DataError("data files do not match their SOURCE.md checksums: "
                        + ", ".join(f"{r['folder']}/{r['file']} ({r['status']})" for r in bad))
    return {"data_dir": str(folder), "files": len(rows)}
