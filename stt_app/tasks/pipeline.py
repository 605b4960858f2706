"""Prefect tasks outside the run's plan: one ad-hoc evaluation (the `evaluate` flow) and the report.
The plan's jobs run through `stt_app.tasks.jobs.run_job`.

An evaluation is cached on the content key its library function computes (weights, adapter, data,
settings); when its folder is gone or damaged the cache is refreshed and it is redone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from stt import markers
from stt.config import EngineConfig, EvalConfig
from stt.engines import release_engines
from stt.evaluate import evaluate as evaluate_lib
from stt.evaluate import evaluate_key
from stt.report import write_report
from stt.secrets import scrubbed
from stt_app.tasks.model_slot import model_slot


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    """What a task returns (and Prefect persists): small JSON, paths not rows."""
    return {k: v for k, v in info.items() if k != "files"}


def cached_on(key: str, folder: Path) -> dict[str, Any]:
    """Task options: cache on the stage key; refresh when the folder no longer holds that result."""
    return {"cache_key_fn": lambda *_: key, "refresh_cache": markers.read_done(folder, key) is None}


@task(name="evaluate", task_run_name="evaluate {label} {task_name} {language}", retries=1, retry_delay_seconds=30,
      persist_result=True, result_serializer="json")
def evaluate(task_name: str, language: str, engine: EngineConfig, config: EvalConfig, data_dir: str,
             out_folder: str, label: str) -> dict[str, Any]:
    with scrubbed(), model_slot():  # scrubbed: the state message Prefect makes of a failure holds no secret
        release_engines(keep=engine.model_copy(update={"batch_size": config.batch_size}))
        info = evaluate_lib(task_name, language, engine, config, Path(data_dir), Path(out_folder), label)
    t = info["throughput"]
    get_run_logger().info("%s %s %s: %s (%s items/s, %s tokens/s)", label, task_name, language, info["scores"],
                          t["items_per_s"], t["tokens_per_s"])
    return _summary(info)


def evaluate_options(task_name: str, language: str, engine: EngineConfig, config: EvalConfig, data_dir: Path,
                     out_folder: Path) -> dict[str, Any]:
    return cached_on(evaluate_key(task_name, language, engine, config, data_dir), out_folder)


@task(name="report", retries=1, retry_delay_seconds=5)
def report(root: str, evaluations: list[dict[str, Any]], quality_results: list[dict[str, Any]],
           config: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    with scrubbed():
        out = write_report(Path(root), evaluations, quality_results, config, notes)
    return {k: v for k, v in out.items() if k != "table"} | {"table": out["table"].to_dict(orient="records")}
