"""Opt-in fault injection in the engine layer, for reliability tests and drills on a real deployment.

    STT_FAULTS="transient=de-*:1"          the first call of each matching unit fails (retries survive it)
    STT_FAULTS="permanent=th-00002"        every call of that unit fails (the run ends, other shards kept)
    STT_FAULTS="hang=de-00000"             calls of that unit never answer (the task's timeout ends them)
    STT_FAULTS="rate=0.3,seed=1"           each call fails with probability 0.3

Items are comma-separated; a unit is what the stage is working on (a shard id such as `de-00003`, an
evaluation such as `eval:zero-shot-de`), matched with shell wildcards. Without STT_FAULTS nothing is
wrapped and nothing is slower.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

_UNIT: contextvars.ContextVar[str] = contextvars.ContextVar("stt_unit", default="")
_CALLS: dict[str, int] = {}
_LOCK = threading.Lock()


class TransientEngineError(RuntimeError):
    """An injected failure that a retry gets past (as an engine hiccup would)."""


class PermanentEngineError(RuntimeError):
    """An injected failure that no retry gets past."""


@contextlib.contextmanager
def unit(name: str) -> Iterator[None]:
    """Name the unit of work the engine calls inside this block belong to."""
    token = _UNIT.set(name)
    try:
        yield
    finally:
        _UNIT.reset(token)


def _spec() -> dict[str, str]:
    raw = os.environ.get("STT_FAULTS", "")
    out = {}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        key, _, value = item.partition("=")
        out[key] = value
    return out


def active() -> bool:
    return bool(os.environ.get("STT_FAULTS"))


def check(operation: str) -> None:
    """Called before each engine call: raise, hang or pass, as STT_FAULTS says for the current unit."""
    spec = _spec()
    name = _UNIT.get() or "-"
    with _LOCK:
        _CALLS[name] = _CALLS.get(name, 0) + 1
        call = _CALLS[name]
    where = f"{operation} in {name} (call {call})"
    if "hang" in spec and fnmatch.fnmatch(name, spec["hang"]):
        while True:  # never answers; an interruptible sleep, so a task timeout can end it
            time.sleep(0.1)
    if "permanent" in spec and fnmatch.fnmatch(name, spec["permanent"]):
        raise PermanentEngineError(f"injected permanent fault: {where}")
    if "transient" in spec:
        pattern, _, first = spec["transient"].partition(":")
        if fnmatch.fnmatch(name, pattern) and call <= int(first or 1):
            raise TransientEngineError(f"injected transient fault: {where}")
    if "rate" in spec:
        rng = random.Random(f"{spec.get('seed', '0')}:{name}:{call}")
        if rng.random() < float(spec["rate"]):
            raise TransientEngineError(f"injected transient fault (rate {spec['rate']}): {where}")


class FaultyEngine:
    """Wraps an engine: every model call goes through `check` first; everything else is the engine's."""

    def __init__(self, engine: Any):
        self._engine = engine

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        check("generate")
        return self._engine.generate(*args, **kwargs)

    def loglikelihood(self, *args: Any, **kwargs: Any) -> Any:
        check("loglikelihood")
        return self._engine.loglikelihood(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def reset() -> None:
    """Forget call counts (tests)."""
    with _LOCK:
        _CALLS.clear()
