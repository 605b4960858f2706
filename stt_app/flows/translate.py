"""The translate flow: shards fan out as task runs; reruns skip finished shards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from stt import translate as lib
from stt.config import TranslateConfig
from stt.jobs import JobsFailed
from stt.runlock import run_lock
from stt.timeouts import generation_s, task_options
from stt_app.tasks.logs import say_once_how_timeouts_end
from stt_app.tasks.translate import ensure_model_slot, generate_shard, validate_shard


class ShardsFailed(JobsFailed):
    unit = "shard"


@flow(name="translate", log_prints=True, persist_result=True, result_serializer="json")
def translate(config: TranslateConfig = TranslateConfig()) -> dict[str, Any]:  # noqa: B008 - pydantic default
    """Self-translate the task's English training data into every target language.

    Returns the output directory, the per-language summary and which shards ran.
    """
    with run_lock(config.out_dir):  # a second run on the same folder fails (or waits) instead of racing
        return _translate(config)


def _translate(config: TranslateConfig) -> dict[str, Any]:
    logger = get_run_logger()
    t0 = time.perf_counter()
    plan = lib.plan_translation(config)
    todo = plan.todo
    total_rows = sum(j.rows for j in plan.jobs)
    logger.info("model %s (weights %s), prompt %s: %d shards planned, %d already complete, %d to run -> %s",
                plan.model_id, plan.weights_sha256[:12], plan.prompt_version, len(plan.jobs), len(plan.done),
                len(todo), plan.out_dir)
    if todo:
        ensure_model_slot()
        say_once_how_timeouts_end(logger, config.engine)
    pending = []
    for job in todo:
        payload = lib.job_to_dict(job)
        # A cached generation whose file is gone (or was written under another key) is recomputed.
        # A hung engine ends as a timed-out attempt that retries, not a run that waits forever.
        timeout = generation_s(job.rows, config.generation, config.timeouts, round_trip=bool(job.back_key))
        gen = generate_shard.with_options(refresh_cache=not lib.raw_complete(job),
                                          **task_options(timeout, config.timeouts))
        gen_future = gen.submit(payload, config)
        pending.append((job, gen_future, validate_shard.submit(payload, config, gen_future)))
    done_rows = sum(j.rows for j in plan.jobs if j.shard in plan.done)
    statuses = {s: "complete" for s in plan.done}
    failed: dict[str, str] = {}
    for job, gen_future, val_future in pending:
        val_future.wait()
        state = val_future.state
        if not state.is_completed():
            # One bad shard must not hide the others: record it, keep going, fail the run at the end.
            gen_state = gen_future.state
            failed[job.shard] = str(gen_state.message if not gen_state.is_completed() else state.message)
            statuses[job.shard] = "failed"
            logger.error("%s failed: %s", job.shard, failed[job.shard])
            continue
        statuses[job.shard] = "cached" if gen_future.state.name == "Cached" else "generated"
        done_rows += job.rows
        elapsed = time.perf_counter() - t0
        logger.info("progress: %d/%d examples (%.0f%%), %.2f examples/s", done_rows, total_rows,
                    100 * done_rows / total_rows, done_rows / elapsed)
    summary = lib.summarize(Path(plan.out_dir))
    create_table_artifact(key="translate-summary", table=summary,
                          description=f"Self-translation of {config.task} -> {plan.out_dir}")
    create_markdown_artifact(key="translate-output", markdown=_markdown(plan, summary, statuses))
    if failed:
        raise ShardsFailed(failed)
    logger.info("shards are in %s (pandas.read_parquet(%r))", plan.out_dir, plan.out_dir)
    return {"out_dir": plan.out_dir, "summary": summary, "shards": statuses}


def _markdown(plan: lib.Plan, summary: list[dict[str, Any]], statuses: dict[str, str]) -> str:
    lines = [f"# Translate: `{plan.out_dir}`", "",
             f"model `{plan.model_id}` (sha256 `{plan.weights_sha256[:12]}`), prompt `{plan.prompt_version}`", "",
             "| language | rows | rejects | rejects by reason | tokens/s |", "|---|---|---|---|---|"]
    lines += [f"| {s['language']} | {s['rows']} | {s['rejects']} | {s['rejects_by_reason']} | {s['tokens_per_s']} |"
              for s in summary]
    counts = {k: list(statuses.values()).count(k) for k in ("complete", "cached", "generated", "failed")}
    lines += ["", f"shards this run: {counts}", "", "```python", "import pandas as pd",
              f"df = pd.read_parquet({plan.out_dir!r})", "```"]
    return "\n".join(lines)
