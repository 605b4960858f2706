"""Timeouts of the model-holding tasks, derived from their size (see TimeoutConfig).

A hung engine (vLLM after an out-of-memory, a stalled endpoint) then ends as a failed attempt that
Prefect retries, instead of a run that waits forever.
"""

from __future__ import annotations

from pathlib import Path

from stt.config import EvalConfig, GenerationParams, TimeoutConfig
from stt.specs import get_task, test_size

SEGMENTS_PER_EXAMPLE = 12  # generous: a GSM8K rationale has a few lines, an NLI pair two or three sentences


def generation_s(rows: int, generation: GenerationParams, config: TimeoutConfig, round_trip: bool = False) -> float:
    tokens = rows * SEGMENTS_PER_EXAMPLE * generation.max_new_tokens_cap * (2 if round_trip else 1)
    return round(config.floor_s + tokens / config.min_tokens_per_s)


def evaluation_s(items: int, max_new_tokens: int, config: TimeoutConfig) -> float:
    """Generation tasks (math, QA) at min_tokens_per_s; scoring (NLI, max_new_tokens=0) at min_items_per_s."""
    work = items * max_new_tokens / config.min_tokens_per_s if max_new_tokens else items / config.min_items_per_s
    return round(config.floor_s + work)


def evaluation_timeout_s(task: str, config: EvalConfig, limits: TimeoutConfig, data_dir: Path, language: str,
                         extra_tokens: int = 0) -> float:
    """One evaluation's timeout, from its size (items x tokens it may generate)."""
    spec = get_task(task)
    items = config.limit or test_size(task, data_dir, language, spec.test_split(config))
    return evaluation_s(items, spec.answer_tokens(config) + extra_tokens, limits)


def training_s(steps: int, config: TimeoutConfig) -> float:
    return round(config.floor_s + steps * config.max_step_s)
