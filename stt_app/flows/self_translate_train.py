"""The end-to-end flow: the stage flows of `stt_app.flows.stages` one after another, then the report."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from stt.config import RunConfig
from stt.runlock import run_lock
from stt_app.flows.stages import FLOWS, ORDER, report


@flow(name="self-translate-train", log_prints=True, persist_result=True, result_serializer="json")
def self_translate_train(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008
    """The whole method: translate -> build sets -> fine-tune -> evaluate -> report.

    Zero-shot transfer (LoRA on English only) vs Self-Translate-Train (LoRA on English + the model's own
    translations), per language. Every stage is cached on its inputs; a rerun redoes only what changed.
    """
    with run_lock(config.root):  # one run per run folder at a time
        return _run(config)


def _run(config: RunConfig) -> dict[str, Any]:
    timings: dict[str, float] = {}
    for name in ORDER:  # the stage flows, in the order of their stages
        t0 = time.perf_counter()
        FLOWS[name](config)
        timings[name] = round(time.perf_counter() - t0, 1)
    out = report(config, timings)
    for name, seconds in timings.items():
        get_run_logger().info("%s: %.1fs", name, seconds)
    return {**out, "timings": timings}
