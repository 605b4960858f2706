"""Registry of tasks: the built-in ones (one module each) and the ones declared in YAML (specs/declared.py,
found under configs/tasks/ or $STT_TASK_DIRS)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from stt.errors import ConfigError
from stt.loaders import Example
from stt.specs.base import Segment, TaskSpec
from stt.specs.math import GSM8K
from stt.specs.nli import MNLI
from stt.specs.qa import SQUAD
from stt.testsets import subset

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (GSM8K, SQUAD, MNLI)}

__all__ = ["TASKS", "Segment", "TaskSpec", "get_task", "known_tasks", "load_test_set", "test_items"]


def get_task(name: str) -> TaskSpec:
    if name in TASKS:
        return TASKS[name]
    from stt.specs.declared import find_task_file, load_task_file

    path = find_task_file(name)
    if path is None:
        raise ConfigError(f"unknown task '{name}': choose from {', '.join(known_tasks())} (or declare it in "
                          f"configs/tasks/{name}.yaml, see the README's 'Your own task')")
    return load_task_file(path)


def known_tasks() -> list[str]:
    from stt.specs.declared import task_dirs

    declared = sorted({p.stem for folder in task_dirs() if folder.is_dir() for p in folder.glob("*.yaml")})
    return [*TASKS, *(n for n in declared if n not in TASKS)]


def load_test_set(task: str, data_dir: Path, language: str, limit: int | None = None,
                  split: str = "test") -> list[Example]:
    """The first `limit` items of the task's test set in one language (same items in every language)."""
    return subset(get_task(task).test_items(data_dir, language, split), limit)


def test_items(task: str, data_dir: Path, language: str, config: Any) -> list[Example]:
    """The items an evaluation scores, from its EvalConfig (limit, sample_seed, and the task's split)."""
    spec = get_task(task)
    return subset(spec.test_items(data_dir, language, spec.test_split(config)), config.limit, config.sample_seed)


@functools.lru_cache(maxsize=256)
def test_size(task: str, data_dir: Path, language: str, split: str) -> int:
    """How many test items a task has in one language (an evaluation's size, for its timeout)."""
    return len(get_task(task).test_items(data_dir, language, split))
