"""Prefect tasks of the translate stage. The work itself is in `stt.translate`."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from stt import translate as lib
from stt.config import TranslateConfig
from stt.secrets import scrubbed
from stt_app.tasks.model_slot import ensure_model_slot, model_slot, model_slot_name

__all__ = ["ensure_model_slot", "generate_shard", "model_slot_name", "validate_shard"]


def generation_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    # The key is computed by the library from content: input rows, weights hash, prompt, generation
    # parameters. Validation rules are deliberately not part of it.
    job = parameters["job"]
    back = job.get("back_key")  # with round-trip filtering the task also writes the back-translations
    return f"stt-generate-{job['generation_key']}" + (f"-back-{back}" if back else "")


@task(
    name="generate-shard",
    task_run_name="generate {job[shard]}",
    retries=2,
    retry_delay_seconds=[10, 60],
    cache_key_fn=generation_cache_key,
    persist_result=True,
    result_serializer="json",
)
def generate_shard(job: dict[str, Any], config: TranslateConfig) -> dict[str, Any]:
    logger = get_run_logger()
    shard = lib.job_from_dict(job)
    if lib.raw_complete(shard):  # e.g. written by an earlier run whose Prefect result store is gone
        logger.info("%s: raw generations already on disk, model not needed", shard.shard)
        return lib.existing_generation(shard)
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        rate = done / (time.perf_counter() - t0)
        logger.info("%s: %d/%d segments generated, %.2f segments/s", shard.shard, done, total, rate)

    with scrubbed(), model_slot():  # scrubbed: the state message Prefect makes of a failure holds no secret
        result = lib.generate_shard(shard, config, progress)
    logger.info("%s: %d segments, %d tokens in %.1fs (%.1f tokens/s)", shard.shard, result["segments"],
                result["completion_tokens"], result["seconds"],
                result["completion_tokens"] / result["seconds"] if result["seconds"] else 0.0)
    return result


@task(name="validate-shard", task_run_name="validate {job[shard]}", retries=1, retry_delay_seconds=5)
def validate_shard(job: dict[str, Any], config: TranslateConfig, generated: dict[str, Any]) -> dict[str, Any]:
    # `generated` is only here so Prefect orders this task after the generation of the same shard.
    with scrubbed():
        entry = lib.validate_shard(lib.job_from_dict(job), config)
    get_run_logger().info("%s: %d rows accepted, %d rejected %s", entry["shard"], entry["rows"],
                          entry["rejects"], entry["reject_reasons"] or "")
    return entry
