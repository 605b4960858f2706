"""Evaluate one model (optionally with a LoRA adapter) on a task's test set in several languages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from stt import timeouts as limits
from stt.config import EngineConfig, EvalConfig, TimeoutConfig
from stt_app.tasks.logs import say_once_how_timeouts_end
from stt_app.tasks.pipeline import evaluate, evaluate_options


@flow(name="evaluate", log_prints=True, persist_result=True, result_serializer="json")
def evaluate_model(task: str = "gsm8k", languages: list[str] = ["en", "de", "th"],  # noqa: B006 - flow parameter
                   engine: EngineConfig = EngineConfig(), config: EvalConfig = EvalConfig(),  # noqa: B008
                   data_dir: str | None = None, out_dir: str = "runs/evaluate", label: str = "base",
                   timeouts: TimeoutConfig = TimeoutConfig()  # noqa: B008
                   ) -> list[dict[str, Any]]:
    from stt.config import resolve_data_dir

    data = resolve_data_dir(Path(data_dir) if data_dir else None)
    results = []
    say_once_how_timeouts_end(get_run_logger(), engine)
    for lang in languages:
        folder = Path(out_dir) / f"{label}-{lang}"
        opts = evaluate_options(task, lang, engine, config, data, folder)
        # A hung engine ends as a failed attempt that retries: a timeout from the evaluation's size.
        opts |= limits.evaluation_options(task, config, timeouts)
        results.append(evaluate.with_options(**opts)(task, lang, engine, config, str(data), str(folder), label))
    create_table_artifact(key="stt-evaluate", table=[{"model": r["model"], "task": r["task"],
                                                      "language": r["language"], **r["scores"]} for r in results],
                          description=f"{label} on {task}")
    return results
