"""Opt-in fault injection in the engine layer, for reliability tests and drills on a real deployment.

    STT_FAULTS="transient=de-*:1"          the first call of each matching unit fails (retries survive it)
    STT_FAULTS="permanent=th-00002"        every call of that unit fails (the run ends, other shards kept)
    STT_FAULTS="hang=de-00000"             calls of that unit never answer (an interruptible Python wait,
                                           in the engine's process: the child's under engine.process: child)
    STT_FAULTS="hang-native=eval:*"        calls of that unit block inside a C call, as a stuck llama.cpp,
                                           torch or CUDA call does: only a killed process ends them
                                           (engine.process: child)
    STT_FAULTS="rate=0.3,seed=1"           each call fails with probability 0.3

Items are comma-separated; a unit is what the stage is working on (a shard id such as `de-00003`, an
evaluation such as `eval:zero-shot-de`), matched with shell wildcards. Without STT_FAULTS nothing is
wrapped and nothing is slower.

STT_KILL_AT="<point pattern>@<n>" makes the process SIGKILL itself the n-th time (default 1) it reaches a
point matching the pattern: the kill-and-resume trials use it to die at a chosen place, for real.

    engine:<unit>                    half-way through a unit's engine work (the first half is generated)
    write:<path>                     a file fully written to its temp name, not yet renamed into place
    finetune:<adapter>:step:<n>      training step n done, its checkpoint not yet saved
    finetune:<adapter>:checkpoint:<n>  checkpoint n half-written (adapter saved; optimizer, state not)
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

IN_ENGINE_PROCESS = False  # set in a supervised engine process (stt.engines.child)
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


def current_unit() -> str:
    return _UNIT.get()


def native_hang(name: str, raw: str | None = None) -> None:
    """Block in C for good when STT_FAULTS (or `raw`, the parent's STT_FAULTS sent to a child engine) names
    this unit under hang-native. Python cannot interrupt it: no bytecode runs, so neither a Prefect thread
    timeout nor an async exception gets in."""
    pattern = _spec(raw).get("hang-native")
    if pattern and fnmatch.fnmatch(name or "-", pattern):
        import ctypes

        _say_hang("hang-native", name)
        libc = ctypes.CDLL(None)
        while True:
            libc.sleep(3600)


def _say_hang(kind: str, name: str) -> None:
    import logging

    logging.getLogger(__name__).warning("STT_FAULTS %s: %s hangs here, in process %d", kind, name or "-", os.getpid())


def python_hang(name: str, raw: str | None = None) -> None:
    """Wait for good (in Python, so a thread timeout or an interruption could end it in-process) when
    STT_FAULTS (or `raw`) names this unit under hang."""
    pattern = _spec(raw).get("hang")
    if pattern and fnmatch.fnmatch(name or "-", pattern):
        _say_hang("hang", name)
        while True:
            time.sleep(0.1)


def _spec(raw: str | None = None) -> dict[str, str]:
    raw = os.environ.get("STT_FAULTS", "") if raw is None else raw
    out = {}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        key, _, value = item.partition("=")
        out[key] = value
    return out


def active() -> bool:
    return bool(os.environ.get("STT_FAULTS") or os.environ.get("STT_KILL_AT"))


_KILL_HITS: dict[str, int] = {}


def kill_due(point: str) -> bool:
    """True the n-th time a point matching STT_KILL_AT's pattern is reached (then the caller kills)."""
    raw = os.environ.get("STT_KILL_AT")
    if not raw:
        return False
    pattern, _, nth = raw.rpartition("@") if "@" in raw else (raw, "", "1")
    if not fnmatch.fnmatch(point, pattern):
        return False
    with _LOCK:
        _KILL_HITS[pattern] = _KILL_HITS.get(pattern, 0) + 1
        return _KILL_HITS[pattern] == int(nth)


def die(point: str) -> None:
    """SIGKILL this process: no cleanup, no finally blocks, as when the machine takes it away."""
    import sys

    print(f"STT_KILL_AT: killing pid {os.getpid()} at {point}", file=sys.stderr, flush=True)
    if IN_ENGINE_PROCESS:  # the run's process goes too, as when the machine takes the job away
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(point: str) -> None:
    """A place where the kill trials may end the process (free when STT_KILL_AT is unset)."""
    if kill_due(point):
        die(point)


def check(operation: str, native: bool = True) -> None:
    """Called before each engine call: raise, hang or pass, as STT_FAULTS says for the current unit.
    `native`: the engine runs in this process, so hang and hang-native faults block here (a child engine
    blocks in its own process instead: the call carries STT_FAULTS there)."""
    spec = _spec()
    name = _UNIT.get() or "-"
    if native:
        native_hang(name)
    with _LOCK:
        _CALLS[name] = _CALLS.get(name, 0) + 1
        call = _CALLS[name]
    where = f"{operation} in {name} (call {call})"
    if native:  # an engine in another process hangs there (the call carries STT_FAULTS)
        python_hang(name)
    if "permanent" in spec and fnmatch.fnmatch(name, spec["permanent"]):
        raise PermanentEngineError(f"injected permanent fault: {where}")
    if "transient" in spec:
        # The count follows the last colon (units such as `eval:base-de` hold colons themselves).
        pattern, _, first = spec["transient"].rpartition(":")
        if not first.isdigit():
            pattern, first = spec["transient"], "1"
        if fnmatch.fnmatch(name, pattern) and call <= int(first):
            raise TransientEngineError(f"injected transient fault: {where}")
    if "rate" in spec:
        rng = random.Random(f"{spec.get('seed', '0')}:{name}:{call}")
        if rng.random() < float(spec["rate"]):
            raise TransientEngineError(f"injected transient fault (rate {spec['rate']}): {where}")


class FaultyEngine:
    """Wraps an engine: every model call goes through `check` first; everything else is the engine's."""

    def __init__(self, engine: Any):
        self._engine = engine

    def generate(self, requests: Any, *args: Any, **kwargs: Any) -> Any:
        check("generate", native=not getattr(self._engine, "runs_elsewhere", False))
        self._half_then_die(self._engine.generate, requests)
        return self._engine.generate(requests, *args, **kwargs)

    def loglikelihood(self, pairs: Any, *args: Any, **kwargs: Any) -> Any:
        check("loglikelihood", native=not getattr(self._engine, "runs_elsewhere", False))
        self._half_then_die(self._engine.loglikelihood, pairs)
        return self._engine.loglikelihood(pairs, *args, **kwargs)

    @staticmethod
    def _half_then_die(call: Any, work: Any) -> None:
        point = f"engine:{_UNIT.get() or '-'}"
        if kill_due(point):  # real work on half the unit, then the kill: the process dies mid-unit
            call(list(work)[: max(1, len(work) // 2)])
            die(point)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def reset() -> None:
    """Forget call counts (tests)."""
    with _LOCK:
        _CALLS.clear()
        _KILL_HITS.clear()
