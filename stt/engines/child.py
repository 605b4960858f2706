"""An engine in a child process its parent can kill (`engine.process: child`).

Why: a model call that blocks in native code (a stuck llama.cpp, torch or CUDA call) cannot be interrupted
from Python: a Prefect task timeout in a worker thread only fires once the call returns, so a call that never
returns holds the run forever. In a child process the parent waits on a pipe, in short polls, and kills the
child when the job's deadline passes (or when Prefect's timeout interrupts the wait): the call fails with
`EngineHung`, which the runners retry, and the next call starts a fresh child. Releasing the engine ends the
child, so the operating system gets its memory back. The child loads the same engine classes as the
in-process path, so outputs are the same.

Protocol on one duplex pipe: the child sends ("ready", info) once loaded, then answers each
(operation, payload, unit, batch size, STT_FAULTS) with any number of ("progress", done, total) and
one ("result", value, stats) or ("error", kind, message). EOF on the pipe (the parent died) ends the child.
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


def _serve(conn: Any, config_json: str, generation_json: str) -> None:
    """The child's main: load the engine, then answer calls until the parent closes the pipe."""
    from stt.engines import load_inline

    try:
        config = EngineConfig.model_validate_json(config_json)
        engine = load_inline(config, GenerationParams.model_validate_json(generation_json))
    except Exception as exc:  # noqa: BLE001 - the parent raises it with the reason
        conn.send(("error", type(exc).__name__, str(exc)))
        return
    conn.send(("ready", {"model_id": engine.model_id, "weights_sha256": getattr(engine, "weights_sha256", None)}))
    while True:
        try:
            operation, payload, unit, batch_size, fault_spec = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone: nothing left to answer
        if operation == "close":
            return
        try:
            if batch_size is not None and hasattr(engine, "batch_size"):
                engine.batch_size = batch_size  # transformers: a setting of the call (see get_engine)
            faults.native_hang(unit, fault_spec)  # reliability drills: a call that blocks in C, in the child
            result = getattr(engine, operation)(payload, lambda done, total: conn.send(("progress", done, total)))
            conn.send(("result", result, engine.stats))
        except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises it there
            conn.send(("error", type(exc).__name__, str(exc)))


class ChildEngine(LocalTokenizer):
    """The Engine interface over a model loaded in a child process (tokenizer methods run here)."""

    runs_elsewhere = True  # fault drills block in the child, not here (stt.faults.check)

    def __init__(self, config: EngineConfig, generation: GenerationParams | None = None):
        self.config = config
        self.generation = generation or GenerationParams()
        self.resolved = resolve_model(config.model)
        self.model_id = self.resolved.model_id
        self.weights_sha256 = self.resolved.weights_sha256
        self.adapter = str(config.adapter) if config.adapter else None
        self.stats = EngineStats()
        self.lock = threading.Lock()
        self._process: Any = None
        self._conn: Any = None

    # -- the child's lifetime ---------------------------------------------------------------------
    def _start(self) -> None:
        # spawn, not fork: the parent may hold threads (Prefect's) and a loaded torch; a fork would copy them.
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, name=f"stt-engine-{self.config.kind}",
                                    args=(child, self.config.model_dump_json(), self.generation.model_dump_json()),
                                    daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        t0 = time.monotonic()
        message = self._wait(time.monotonic() + LOAD_TIMEOUT_S, None, "loading the model")
        self.model_id = message["model_id"]
        log.info("engine process %d loaded %s in %.1fs", self._process.pid, self.model_id, time.monotonic() - t0)

    def close(self) -> None:
        """End the child (its memory goes back to the system); the next call starts a new one."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            conn.send(("close", None, "", None, ""))
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
        with contextlib.suppress(OSError):
            conn.close()

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.is_alive():
            process.kill()
            process.join(timeout=10)
        with contextlib.suppress(OSError, AttributeError):
            self._conn.close()
        self._conn = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- calls ------------------------------------------------------------------------------------
    def _wait(self, until: float | None, progress: ProgressFn | None, doing: str) -> Any:
        """The next answer of the child; kills it when `until` passes or the wait is interrupted."""
        try:
            while True:
                if until is not None and time.monotonic() > until:
                    pid = self._process.pid
                    self._kill()
                    raise EngineHung(f"the {self.config.kind} engine (process {pid}, {self.model_id}) did not "
                                     f"answer while {doing} before its deadline; the process was killed")
                if not self._conn.poll(POLL_S):
                    if not self._process.is_alive():
                        code = self._process.exitcode
                        self._kill()
                        raise EngineDied(f"the {self.config.kind} engine process ({self.model_id}) ended with "
                                         f"exit code {code} while {doing} (out of memory or killed?)")
                    continue
                try:
                    message = self._conn.recv()
                except (EOFError, OSError) as exc:
                    self._kill()
                    raise EngineDied(f"the {self.config.kind} engine process ({self.model_id}) closed its pipe "
                                     f"while {doing}") from exc
                kind = message[0]
                if kind == "progress":
                    if progress:
                        progress(message[1], message[2])
                    continue
                if kind == "ready":
                    return message[1]
                if kind == "result":
                    self.stats = message[2]
                    return message[1]
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
            self._kill()
            raise

    def _call(self, operation: str, payload: list[Any], progress: ProgressFn | None) -> Any:
        # One call at a time on the pipe (Prefect runs tasks in threads): answers are not tagged, so a second
        # caller waits here, as it would on an in-process engine's lock.
        with self.lock:
            if self._process is None:
                self._start()
            # The parent's STT_FAULTS goes with the call: a drill set after the child started still reaches it.
            self._conn.send((operation, payload, faults.current_unit(), getattr(self, "batch_size", None),
                             os.environ.get("STT_FAULTS", "")))
            return self._wait(_DEADLINE.get(), progress, operation)

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        return self._call("generate", list(requests), progress)

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], progress: ProgressFn | None = None) -> list[Score]:
        return self._call("loglikelihood", list(pairs), progress)


def supervised(kind: str) -> bool:
    """Engines that hold a model in this process can run in a child instead (vllm-batch already runs in
    a subprocess per call; openai holds no model)."""
    return kind in ("transformers", "llama-cpp")
