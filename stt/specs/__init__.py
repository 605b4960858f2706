"""Registry of task specs, one module per task family."""

from __future__ import annotations

from stt.errors import ConfigError
from stt.specs.base import Segment, TaskSpec
from stt.specs.math import GSM8K
from stt.specs.nli import MNLI
from stt.specs.qa import SQUAD

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (GSM8K, SQUAD, MNLI)}

__all__ = ["TASKS", "Segment", "TaskSpec", "get_task"]


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}': choose from {', '.join(TASKS)}")
    return TASKS[name]
