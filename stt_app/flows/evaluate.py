"""The evaluate flow (`stt evaluate`): one model (optionally with a LoRA adapter) on a task's test set in
several languages, a one-stage plan run as tasks by the same runner as every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from stt import jobs
from stt.config import EvalConfig, TimeoutConfig
from stt.engine_settings import EngineConfig, TransformersSettings
from stt_app.flows.run_jobs import run_here


@flow(name="evaluate", log_prints=True, persist_result=True, result_serializer="json")
def evaluate_model(task: str = "gsm8k", languages: list[str] = ["en", "de", "th"],  # noqa: B006 - flow parameter
                   engine: EngineConfig = TransformersSettings(), config: EvalConfig = EvalConfig(),  # noqa: B008
                   data_dir: str | None = None, out_dir: str = "runs/evaluate", label: str = "base",
                   timeouts: TimeoutConfig = TimeoutConfig()  # noqa: B008
                   ) -> list[dict[str, Any]]:
    from stt.config import resolve_data_dir

    data = resolve_data_dir(Path(data_dir) if data_dir else None)
    planned = jobs.evaluate_jobs(task, languages, engine, config, data, Path(out_dir), label, timeouts)
    results = run_here(planned, engine)
    create_table_artifact(key="stt-evaluate", table=[{"model": r["model"], "task": r["task"],
                                                      "language": r["language"], **r["scores"]} for r in results],
                          description=f"{label} on {task}")
    return results
