"""The translate flow (`stt translate`): the translate plan of one config, its shards run as tasks by the same
runner as every stage; reruns skip finished shards."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from stt import jobs
from stt.config import TranslateConfig
from stt.runlock import run_lock
from stt.stages.translate import STAGE, Plan, raw_complete, summarize
from stt_app.flows.run_jobs import run_here


@flow(name="translate", log_prints=True, persist_result=True, result_serializer="json")
def translate(config: TranslateConfig = TranslateConfig()) -> dict[str, Any]:  # noqa: B008 - pydantic default
    """Self-translate the task's English training data into every target language.

    Returns the output directory, the per-language summary and what became of each shard: complete (done
    before), cached (redone from raw generations on disk, without the model), generated or failed.
    """
    with run_lock(config.out_dir):  # a second run on the same folder fails (or waits) instead of racing
        return _translate(config)


def _translate(config: TranslateConfig) -> dict[str, Any]:
    logger = get_run_logger()
    t0 = time.perf_counter()
    plan, planned = STAGE.plan_translate(config)
    todo = [j for j, s in zip(planned, plan.jobs, strict=True) if s.shard not in plan.done]
    logger.info("model %s (weights %s), prompt %s: %d shards planned, %d already complete, %d to run -> %s",
                plan.model_id, plan.weights_sha256[:12], plan.prompt_version, len(plan.jobs), len(plan.done),
                len(todo), plan.out_dir)
    statuses = {s.shard: "complete" if s.shard in plan.done else "cached" if raw_complete(s) else "generated"
                for s in plan.jobs}
    failed: jobs.ShardsFailed | None = None
    try:
        run_here(todo, config.engine)
    except jobs.JobsFailed as exc:  # the artifacts show the finished shards too; the error names shards
        failed = jobs.ShardsFailed({job_id.rsplit("/", 1)[-1]: why for job_id, why in exc.failed.items()})
        statuses |= {shard: "failed" for shard in failed.failed}
    done = sum(s.rows for s in plan.jobs if statuses[s.shard] != "failed")
    logger.info("%d/%d examples translated in %.1fs", done, sum(s.rows for s in plan.jobs), time.perf_counter() - t0)
    summary = summarize(config.out_dir)
    create_table_artifact(key="translate-summary", table=summary,
                          description=f"Self-translation of {config.task} -> {plan.out_dir}")
    create_markdown_artifact(key="translate-output", markdown=_markdown(plan, summary, statuses))
    if failed:
        raise failed
    logger.info("shards are in %s (pandas.read_parquet(%r))", plan.out_dir, plan.out_dir)
    return {"out_dir": plan.out_dir, "summary": summary, "shards": statuses}


def _markdown(plan: Plan, summary: list[dict[str, Any]], statuses: dict[str, str]) -> str:
    lines = [f"# Translate: `{plan.out_dir}`", "",
             f"model `{plan.model_id}` (sha256 `{plan.weights_sha256[:12]}`), prompt `{plan.prompt_version}`", "",
             "| language | rows | rejects | rejects by reason | tokens/s |", "|---|---|---|---|---|"]
    lines += [f"| {s['language']} | {s['rows']} | {s['rejects']} | {s['rejects_by_reason']} | {s['tokens_per_s']} |"
              for s in summary]
    counts = {k: list(statuses.values()).count(k) for k in ("complete", "cached", "generated", "failed")}
    lines += ["", f"shards this run: {counts}", "", "```python", "import pandas as pd",
              f"df = pd.read_parquet({plan.out_dir!r})", "```"]
    return "\n".join(lines)
