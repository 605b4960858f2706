"""Engines in a child process its parent can kill (`engine.process: child`).

Why: a model call that blocks in native code (a stuck llama.cpp, torch or CUDA call) cannot be interrupted
from Python: a Prefect task timeout in a worker thread only fires once the call returns, so a call that never
returns holds the run forever. In a child process the parent waits on a pipe, in short polls, and kills the
child when the job's deadline passes (or when Prefect's timeout interrupts the wait): the call fails with
`EngineHung`, which the runners retry, and the next call starts a fresh child. The child loads the same
engine classes as the in-process path, so outputs are the same.

One engine process per parent, kept between jobs: it holds one model at a time and swaps it when an engine
of another config calls (starting a process costs 8-10 s on the CPU, swapping a GGUF model about 1 s).
Releasing an engine lets its model go in the child, and the operating system gets that memory back; the
process itself ends with its parent, or at a kill.

Protocol on one duplex pipe: ("load", config, generation) and ("unload",) are answered by ("ready", info);
a call (operation, payload, unit, batch size, STT_FAULTS) by any number of ("progress", done, total) and one
("result", value, stats); anything may be answered by ("error", kind, message). EOF on the pipe (the parent
died) or ("close",) ends the child.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from stt import faults
from stt.config import EngineConfig, GenerationParams
from stt.engines.base import Completion, EngineStats, ProgressFn, Request, Score
from stt.engines.tokenizer import LocalTokenizer
from stt.errors import ConfigError
from stt.models import resolve_model

log = logging.getLogger(__name__)

POLL_S = 0.2  # the parent's wait is a loop of short polls, so a Prefect timeout can interrupt it
LOAD_TIMEOUT_S = 900.0  # a model that does not load in 15 minutes is stuck, not slow
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("stt_engine_deadline", default=None)


class EngineHung(RuntimeError):
    """The engine's process did not answer before the job's deadline and was killed (retried: a fresh
    process may well answer)."""


class EngineDied(RuntimeError):
    """The engine's process ended without answering (killed from outside, out of memory, a crash)."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Model calls in this block must answer within `seconds` from now (None: no limit)."""
    token = _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> float | None:
    """The `time.monotonic()` by which this context's model calls must answer (None: no limit)."""
    return _DEADLINE.get()


def _serve(conn: Any) -> None:
    """The child's main: load the engine it is asked for (letting the previous one go), answer calls, until
    the parent closes the pipe."""
    from stt.engines import give_memory_back, load_inline

    engine: Any = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone: nothing left to answer
        operation = message[0]
        if operation == "close":
            return
        if operation in ("load", "unload"):
            engine = None  # the previous model goes first: one model in memory at a time
            give_memory_back()
            if operation == "unload":
                conn.send(("ready", {}))
                continue
            try:
                engine = load_inline(EngineConfig.model_validate_json(message[1]),
                                     GenerationParams.model_validate_json(message[2]))
            except Exception as exc:  # noqa: BLE001 - the parent raises it with the reason
                conn.send(("error", type(exc).__name__, str(exc)))
                continue
            conn.send(("ready", {"model_id": engine.model_id,
                                 "weights_sha256": getattr(engine, "weights_sha256", None)}))
            continue
        _, payload, unit, batch_size, fault_spec = message
        try:
            if engine is None:
                raise RuntimeError("no model loaded in the engine process")
            if batch_size is not None and hasattr(engine, "batch_size"):
                engine.batch_size = batch_size  # transformers: a setting of the call (see get_engine)
            faults.native_hang(unit, fault_spec)  # reliability drills: a call that blocks in C, in the child
            result = getattr(engine, operation)(payload, lambda done, total: conn.send(("progress", done, total)))
            conn.send(("result", result, engine.stats))
        except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises it there
            conn.send(("error", type(exc).__name__, str(exc)))


class _Host:
    """This process's one engine process. It holds one model at a time and swaps it when another engine
    config calls: starting a process costs 8-10 s on the CPU (imports), loading a GGUF model in a running
    one about 1 s, so jobs that follow each other reuse the process. A kill (a deadline passed) ends it;
    the next call starts a fresh one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # one call at a time on the pipe: answers are not tagged
        self.process: Any = None
        self.conn: Any = None
        self.loaded: str | None = None  # the key of the engine loaded there

    def start(self) -> None:
        # spawn, not fork: the parent may hold threads (Prefect's) and a loaded torch; a fork would copy them.
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, name="stt-engine", args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        self.loaded = None

    def kill(self) -> None:
        process, self.process, self.loaded = self.process, None, None
        if process is not None and process.is_alive():
            process.kill()
            process.join(timeout=10)
        with contextlib.suppress(OSError, AttributeError):
            self.conn.close()
        self.conn = None

    def stop(self) -> None:
        """End the process politely (the parent is done with models)."""
        with self.lock:
            process, conn = self.process, self.conn
            if process is None:
                return
            with contextlib.suppress(OSError, ValueError):
                conn.send(("close",))
            process.join(timeout=10)
            self.kill()

    def wait(self, until: float | None, progress: ProgressFn | None, doing: str, who: str) -> Any:
        """The process's next answer; kills it when `until` passes or the wait is interrupted."""
        try:
            while True:
                if until is not None and time.monotonic() > until:
                    pid = self.process.pid
                    self.kill()
                    raise EngineHung(f"the {who} (process {pid}) did not answer while {doing} before its "
                                     "deadline; the process was killed")
                if not self.conn.poll(POLL_S):
                    if not self.process.is_alive():
                        code = self.process.exitcode
                        self.kill()
                        raise EngineDied(f"the {who} process ended with exit code {code} while {doing} "
                                         "(out of memory or killed?)")
                    continue
                try:
                    message = self.conn.recv()
                except (EOFError, OSError) as exc:
                    self.kill()
                    raise EngineDied(f"the {who} process closed its pipe while {doing}") from exc
                kind = message[0]
                if kind == "progress":
                    if progress:
                        progress(message[1], message[2])
                    continue
                if kind == "ready":
                    return message[1]
                if kind == "result":
                    return message[1], message[2]
                if kind == "error":
                    if message[1] == "ConfigError":
                        raise ConfigError(message[2])
                    raise RuntimeError(f"{message[1]} in the engine process: {message[2]}")
                raise RuntimeError(f"unexpected message from the engine process: {kind!r}")
        except (ConfigError, RuntimeError):  # raised above (EngineHung, EngineDied) or sent by the child
            raise
        except BaseException:
            # Interrupted while waiting (a Prefect timeout, Ctrl-C): the child is still busy with a call
            # nobody will read, so it goes; the next call starts a fresh one.
            self.kill()
            raise


_HOST = _Host()


def stop_engine_process() -> None:
    """End this process's engine process, if one runs (the next call starts a fresh one)."""
    _HOST.stop()


class ChildEngine(LocalTokenizer):
    """The Engine interface over a model loaded in this process's engine process (tokenizer methods run
    here)."""

    runs_elsewhere = True  # fault drills block in the child, not here (stt.faults.check)

    def __init__(self, config: EngineConfig, generation: GenerationParams | None = None):
        self.config = config
        self.generation = generation or GenerationParams()
        self.resolved = resolve_model(config.model)
        self.model_id = self.resolved.model_id
        self.weights_sha256 = self.resolved.weights_sha256
        self.adapter = str(config.adapter) if config.adapter else None
        self.stats = EngineStats()
        self.lock = _HOST.lock
        self._key = config.model_dump_json() + self.generation.model_dump_json()
        self._who = f"{config.kind} engine ({self.model_id}{'+' + self.adapter if self.adapter else ''})"

    # -- the model's lifetime in the engine process -------------------------------------------------
    def _load(self) -> None:
        if _HOST.process is None:
            _HOST.start()
        t0 = time.monotonic()
        _HOST.loaded = None  # the process lets its model go before loading: until ready it holds none
        _HOST.conn.send(("load", self.config.model_dump_json(), self.generation.model_dump_json()))
        message = _HOST.wait(time.monotonic() + LOAD_TIMEOUT_S, None, "loading the model", self._who)
        _HOST.loaded = self._key
        self.stats = EngineStats()  # a fresh engine in the process: its counts start over
        self.model_id = message["model_id"]
        log.info("engine process %d loaded %s in %.1fs", _HOST.process.pid, self.model_id, time.monotonic() - t0)

    def close(self) -> None:
        """Let the model go (its memory goes back to the system); the process stays for the next model."""
        with _HOST.lock:
            if _HOST.process is None or _HOST.loaded != self._key:
                return
            _HOST.loaded = None
            try:
                _HOST.conn.send(("unload",))
                _HOST.wait(time.monotonic() + 60, None, "letting the model go", self._who)
            except (OSError, RuntimeError):
                _HOST.kill()  # it could not even unload: a fresh process is the clean state

    @property
    def pid(self) -> int | None:
        """The engine process's id while it holds this engine's model, else None."""
        return _HOST.process.pid if _HOST.process is not None and _HOST.loaded == self._key else None

    # -- calls ------------------------------------------------------------------------------------
    def _call(self, operation: str, payload: list[Any], progress: ProgressFn | None) -> Any:
        # One call at a time on the pipe (Prefect runs tasks in threads): a second caller waits here, as it
        # would on an in-process engine's lock.
        with _HOST.lock:
            if _HOST.process is None or _HOST.loaded != self._key:
                self._load()
            # The parent's STT_FAULTS goes with the call: a drill set after the child started still reaches it.
            _HOST.conn.send((operation, payload, faults.current_unit(), getattr(self, "batch_size", None),
                             os.environ.get("STT_FAULTS", "")))
            result, self.stats = _HOST.wait(_DEADLINE.get(), progress, operation, self._who)
            return result

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        return self._call("generate", list(requests), progress)

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], progress: ProgressFn | None = None) -> list[Score]:
        return self._call("loglikelihood", list(pairs), progress)


def supervised(kind: str) -> bool:
    """Engines that hold a model in this process can run in a child instead (vllm-batch runs in its own
    supervised runner process, stt/engines/vllm_batch.py; openai holds no model)."""
    return kind in ("transformers", "llama-cpp")
