"""Engines in a child process its parent can kill (`engine.process: child`).

Why: a model call that blocks in native code (a stuck llama.cpp, torch or CUDA call) cannot be interrupted
from Python: a Prefect task timeout in a worker thread only fires once the call returns, so a call that never
returns holds the run forever. In a child process the parent waits on a pipe, in short polls, and kills the
child when the call's deadline passes (or when Prefect's timeout interrupts the wait): the call fails with
`EngineHung`, which the runners retry, and the next call starts a fresh child. The child loads the same
engine classes as the in-process path, so outputs are the same. Fine-tuning runs there too (`run_supervised`).

One engine process per parent, kept between jobs: it holds one model at a time and swaps it when an engine
of another config calls (starting a process costs seconds of imports, swapping a GGUF model about 1 s).
Releasing an engine lets its model go in the child, and the operating system gets that memory back.

The child never outlives its parent: it runs in its own process group (a terminal's Ctrl-C reaches the
parent, which decides; a kill of the group reaches anything the child started) and the kernel SIGKILLs it
when the parent dies (Linux's parent-death signal, which works while the child is stuck in native code;
armed from a launcher thread that lives as long as the parent, because the signal follows the thread that
started the child, and Prefect's worker threads come and go).

Protocol on one duplex pipe, every message tagged with the id of the request it answers:
    ("load", id, config, generation), ("unload", id)    answered by ("ready", id, info)
    ("call", id, operation, payload, unit, batch, faults) by ("progress", id, done, total)... and
                                                          ("result", id, value, stats)
    ("run", id, "module:function", kwargs, unit, faults)  by ("result", id, value, None)
    anything may be answered by ("error", id, kind, message), and preceded by ("log", id, level, logger, text)
    (the child's `stt` log lines); ("close",) or EOF ends the child.
A request whose caller stops waiting before its own final answer (a deadline, an exception in a progress
callback, Prefect's timeout, Ctrl-C) kills the child: nobody will read what it was going to send, so the
next caller can never read a stale answer. An answer with another id is a desynchronised pipe: killed too.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import ctypes
import importlib
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stt import faults
from stt.config import GenerationParams
from stt.engine_settings import EngineConfig, engine_from_json
from stt.engines.base import Completion, EngineStats, ProgressFn, Request, Score
from stt.engines.tokenizer import LocalTokenizer
from stt.errors import ConfigError, DataError
from stt.models import resolve_model

log = logging.getLogger(__name__)

POLL_S = 0.2  # the parent's wait is a loop of short polls, so a Prefect timeout can interrupt it
LOAD_TIMEOUT_S = 900.0  # a model that does not load in 15 minutes is stuck, not slow
UNLOAD_TIMEOUT_S = 60.0
# Functions a parent may run in the engine process (`run_supervised`): named, not pickled code.
RUNNABLE = frozenset({"stt.stages.finetune:make_adapter"})
_BUDGET: contextvars.ContextVar[float | None] = contextvars.ContextVar("stt_engine_call_budget", default=None)
_OOM_EVENTS: Path | None = None  # where the OOM killer's kill count is read; None: this process's cgroup


class EngineHung(RuntimeError):
    """The engine's process did not answer a call within the call's deadline and was killed (retried: a fresh
    process may well answer)."""


class EngineDied(RuntimeError):
    """The engine's process ended without answering (killed from outside, a crash). Retried once more by the
    runners: a crash may not repeat."""


class EngineOutOfMemory(EngineDied):
    """The out-of-memory killer ended the engine's process. Not retried: the same call needs the same memory."""


class EngineDesync(RuntimeError):
    """The engine process answered another request than the one waited for; it was killed."""


def worth_retrying(exc: BaseException) -> bool:
    """Engine errors a retry may get past: a hung or crashed engine process, an endpoint's failure, an
    injected transient fault. Not an out-of-memory kill (the same call needs the same memory)."""
    from stt.engines.openai_engine import EndpointError

    if isinstance(exc, EngineOutOfMemory):
        return False
    return isinstance(exc, faults.TransientEngineError | EndpointError | EngineHung | EngineDied)


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Each model call in this block must answer within `seconds` of being sent (None: no limit). The clock
    starts when the call reaches the engine process: the wait for another caller's call, the process's start
    and the model's load do not count (the load has its own limit, LOAD_TIMEOUT_S)."""
    token = _BUDGET.set(seconds)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def call_budget() -> float | None:
    """The seconds a model call in this context may take once sent (None: no limit)."""
    return _BUDGET.get()


# -- process lifetime: launched from one long-lived thread, dying with the parent --------------------------
class _Launcher:
    """Starts child processes from one thread that lives as long as this process. Linux's parent-death
    signal fires when the *thread* that started the child ends, not the process: started from a Prefect
    worker thread, a child would be killed when the thread pool lets that thread go."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def run(self, fn: Callable[[], Any]) -> Any:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="stt-process-launcher", daemon=True)
                self.thread.start()
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.jobs.put((fn, done))
        return done.result()

    def _loop(self) -> None:
        while True:
            fn, done = self.jobs.get()
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
                done.set_exception(exc)


LAUNCHER = _Launcher()

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In a child: lead its own process group, and be SIGKILLed by the kernel when the parent dies (Linux;
    elsewhere a watchdog thread polls the parent, which works only while the child runs Python)."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:  # pragma: no cover - the project runs on Linux
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def _oom_counter_files() -> list[Path]:
    """The files that count the OOM killer's kills in this process's memory cgroup: cgroup v2's
    memory.events, cgroup v1's memory.oom_control (both hold an `oom_kill N` line)."""
    if _OOM_EVENTS is not None:
        return [_OOM_EVENTS]
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        where = path.lstrip("/")
        if controllers == "":  # the v2 hierarchy (mounted at /sys/fs/cgroup, or /sys/fs/cgroup/unified beside v1)
            files += [Path("/sys/fs/cgroup") / where / "memory.events",
                      Path("/sys/fs/cgroup/unified") / where / "memory.events"]
        elif "memory" in controllers.split(","):
            files.append(Path("/sys/fs/cgroup/memory") / where / "memory.oom_control")
    return files


def oom_kills() -> int | None:
    """The out-of-memory killer's kills so far in this process's memory cgroup (None where no counter can
    be read: a death then reads as a plain EngineDied, retried)."""
    for path in _oom_counter_files():
        try:
            for line in path.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def death(who: str, pid: int, code: int | None, doing: str, oom_before: int | None) -> EngineDied:
    """The error for a process that ended without answering: its exit status or signal, and the OOM killer
    named when the cgroup counted a kill meanwhile."""
    if code is None:
        how = "ended (its exit status not yet known)"
    elif code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with status {code}"
    after = oom_kills()
    if code == -signal.SIGKILL and oom_before is not None and after is not None and after > oom_before:
        return EngineOutOfMemory(
            f"the {who} (process {pid}) {how} while {doing}: the out-of-memory killer ended it (this cgroup's "
            f"oom_kill count went {oom_before} -> {after}). Not retried: lower engine.batch_size (or "
            "max_length / eval.batch_size), or give the machine more memory")
    hint = " (SIGKILL from outside: the out-of-memory killer sends it too; see `dmesg`)" \
        if code == -signal.SIGKILL else ""
    return EngineDied(f"the {who} (process {pid}) {how} while {doing}{hint}")


def _serve(conn: Any, parent_pid: int) -> None:
    """The child's main: load the engine it is asked for (letting the previous one go), answer calls and
    runs, until the parent closes the pipe or dies."""
    die_with_parent(parent_pid)
    faults.IN_ENGINE_PROCESS = True  # a drill's kill takes the run's process with it (stt.faults.die)
    from stt.engines.inline import give_memory_back, load_inline

    current: list[int] = [0]
    conn = _LockedConn(conn)  # the log handler may send from another thread than the main loop
    handler = _PipeLogHandler(conn, current)
    stt_log = logging.getLogger("stt")
    stt_log.addHandler(handler)
    stt_log.setLevel(logging.INFO)
    stt_log.propagate = False  # said once, by the parent
    engine: Any = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone: nothing left to answer
        operation = message[0]
        if operation == "close":
            return
        request = current[0] = message[1]
        try:
            if operation in ("load", "unload", "run"):
                engine = None  # the previous model goes first: one model in memory at a time
                give_memory_back()
            if operation == "unload":
                conn.send(("ready", request, {}))
            elif operation == "load":
                engine = load_inline(engine_from_json(message[2]),
                                     GenerationParams.model_validate_json(message[3]))
                conn.send(("ready", request, {"model_id": engine.model_id,
                                              "weights_sha256": getattr(engine, "weights_sha256", None)}))
            elif operation == "run":
                _, _, target, kwargs, unit, fault_spec = message
                module, _, name = target.partition(":")
                try:
                    with faults.unit(unit):
                        faults.native_hang(unit, fault_spec)  # reliability drills: a training step stuck in C
                        faults.python_hang(unit, fault_spec)
                        result = getattr(importlib.import_module(module), name)(**kwargs)
                finally:
                    give_memory_back()  # the model, its activations and the optimizer: gone before the next job
                conn.send(("result", request, result, None))
            else:
                _, _, name, payload, unit, batch_size, fault_spec = message
                if engine is None:
                    raise RuntimeError("no model loaded in the engine process")
                if batch_size is not None and hasattr(engine, "batch_size"):
                    engine.batch_size = batch_size  # transformers: a setting of the call (see get_engine)
                faults.native_hang(unit, fault_spec)  # reliability drills: a call that blocks in C, in the child
                faults.python_hang(unit, fault_spec)
                result = getattr(engine, name)(payload, _progress_to(conn, request))
                conn.send(("result", request, result, engine.stats))
        except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises it there
            if operation == "load":
                engine = None
            conn.send(("error", request, type(exc).__name__, str(exc)))


class _LockedConn:
    """The child's end of the pipe, one message at a time (a message over the pipe's buffer is written in
    pieces: two threads' sends would interleave)."""

    def __init__(self, conn: Any):
        self.conn, self.lock = conn, threading.Lock()

    def send(self, message: Any) -> None:
        with self.lock:
            self.conn.send(message)

    def recv(self) -> Any:
        return self.conn.recv()


def _progress_to(conn: Any, request: int) -> ProgressFn:
    return lambda done, total: conn.send(("progress", request, done, total))


class _PipeLogHandler(logging.Handler):
    """The child's `stt` log records go to the parent (re-logged there, so they reach the run's log)."""

    def __init__(self, conn: Any, current: list[int]):
        super().__init__(logging.INFO)
        self.conn, self.current = conn, current

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(("log", self.current[0], record.levelno, record.name, record.getMessage()))


_ERRORS: dict[str, type[Exception]] = {"ConfigError": ConfigError, "DataError": DataError}


class _Host:
    """This process's one engine process. It holds one model at a time and swaps it when another engine
    config calls: starting a process costs seconds (imports: 8-10 s with torch on a slow CPU), loading a
    GGUF model in a running one about 1 s, so jobs that follow each other reuse the process. A kill (a
    deadline passed, an abandoned request) ends it; the next call starts a fresh one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # one request at a time on the pipe
        self.process: Any = None
        self.conn: Any = None
        self.loaded: str | None = None  # the key of the engine loaded there
        self.ids = itertools.count(1)
        self.starts = 0

    def start(self) -> None:
        # spawn, not fork: the parent may hold threads (Prefect's) and a loaded torch; a fork would copy them.
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_serve, name="stt-engine", args=(child, os.getpid()), daemon=True)
        try:
            LAUNCHER.run(process.start)
        except BaseException:
            for end in (parent, child):
                end.close()
            raise
        child.close()
        self.process, self.conn, self.loaded = process, parent, None
        self.starts += 1

    def kill(self) -> None:
        """End the process and anything it started (its process group), now; forget it."""
        process, conn = self.process, self.conn
        self.process, self.conn, self.loaded = None, None, None
        if process is not None and process.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            if process.exitcode is None:  # not reaped yet, so the pid is still its own
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(process.pid, signal.SIGKILL)  # not yet its own group leader: the process alone
            process.join(timeout=10)
            if process.exitcode is None:
                log.warning("engine process %d did not end within 10 s of SIGKILL (stuck in the kernel, e.g. a "
                            "GPU driver call); a fresh process starts beside it", process.pid)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

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

    def request(self, message: tuple[Any, ...], budget: float | None, progress: ProgressFn | None,
                doing: str, who: str) -> tuple[Any, ...]:
        """Send one request (the caller holds the lock; the process runs) and wait for its own final answer,
        at most `budget` seconds from now. Any way out without that answer kills the process."""
        request_id = next(self.ids)
        process, conn = self.process, self.conn
        oom_before = oom_kills()
        answered = False
        try:
            with contextlib.suppress(OSError, ValueError):  # it died: the wait below reports how
                conn.send((message[0], request_id, *message[1:]))
            until = None if budget is None else time.monotonic() + budget
            while True:
                if conn.poll(POLL_S):
                    try:
                        reply = conn.recv()
                    except (EOFError, OSError):
                        process.join(timeout=5)
                        raise death(who, process.pid, process.exitcode, doing, oom_before) from None
                    kind, rid = reply[0], reply[1]
                    if kind == "log":  # a log line, whichever request it came during
                        logging.getLogger(reply[3]).log(reply[2], "%s", reply[4])
                    elif rid != request_id:
                        raise EngineDesync(f"the {who} (process {process.pid}) answered request {rid} while "
                                           f"request {request_id} ({doing}) waited; the process was killed")
                    elif kind == "progress":
                        if progress:
                            progress(reply[2], reply[3])
                    else:
                        answered = True
                        if kind == "error":
                            raise _ERRORS.get(reply[2], RuntimeError)(
                                reply[3] if reply[2] in _ERRORS else f"{reply[2]} in the engine process: {reply[3]}")
                        return reply
                elif not process.is_alive():
                    process.join(timeout=1)
                    raise death(who, process.pid, process.exitcode, doing, oom_before)
                # Every pass, after reading: a final answer already in the pipe at the deadline is taken, and a
                # stream of progress or log lines cannot hold the call past it.
                if until is not None and time.monotonic() > until:
                    raise EngineHung(f"the {who} (process {process.pid}) did not answer while {doing} within "
                                     f"its {budget:g} s deadline; the process was killed")
        finally:
            if not answered:
                # Hung, dead, desynchronised, or interrupted (a Prefect timeout, Ctrl-C, a progress callback
                # that raised): the process is busy with a request nobody will read. It goes; the next call
                # starts a fresh one.
                self.kill()

    def ensure(self) -> None:
        if self.process is None:
            self.start()


_HOST = _Host()


def stop_engine_process() -> None:
    """End this process's engine process, if one runs (the next call starts a fresh one)."""
    _HOST.stop()


def kill_engine_process() -> None:
    """Kill the engine process now without waiting for the lock (the parent is leaving: `os._exit` skips
    multiprocessing's own cleanup)."""
    process = _HOST.process
    if process is not None and process.pid is not None:
        for kill in (os.killpg, os.kill):  # the group, and the process if it has not made its group yet
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    # Acquired in short waits: a Prefect timeout or Ctrl-C can interrupt a caller queued behind a long call.
    while not _HOST.lock.acquire(timeout=POLL_S):
        pass
    try:
        yield
    finally:
        _HOST.lock.release()


def run_supervised(target: str, kwargs: dict[str, Any], who: str, unit: str = "") -> Any:
    """`target(**kwargs)` ("module:function", one of RUNNABLE) in the engine process, under the call's
    deadline (`deadline`): fine-tuning, whose native hang would otherwise hold the run. The engine process
    lets its loaded model go first (one model in memory at a time); its `stt` log lines come back here."""
    if target not in RUNNABLE:
        raise ValueError(f"{target} is not runnable in the engine process (RUNNABLE: {sorted(RUNNABLE)})")
    with _locked():
        if _HOST.process is None:
            # A fresh process: its start (imports) is not the run's time, so wait for it to answer first.
            _HOST.start()
            _HOST.request(("unload",), LOAD_TIMEOUT_S, None, "starting", f"engine process ({who})")
        _HOST.loaded = None
        reply = _HOST.request(("run", target, kwargs, unit or faults.current_unit(), os.environ.get("STT_FAULTS", "")),
                              call_budget(), None, who, "engine process")
        return reply[2]


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
        _HOST.ensure()
        t0 = time.monotonic()
        _HOST.loaded = None  # the process lets its model go before loading: until ready it holds none
        reply = _HOST.request(("load", self.config.model_dump_json(), self.generation.model_dump_json()),
                              LOAD_TIMEOUT_S, None, "loading the model", self._who)
        _HOST.loaded = self._key
        self.stats = EngineStats()  # a fresh engine in the process: its counts start over
        self.model_id = reply[2]["model_id"]
        log.info("engine process %d loaded %s in %.1fs", _HOST.process.pid, self.model_id, time.monotonic() - t0)

    def close(self) -> None:
        """Let the model go (its memory goes back to the system); the process stays for the next model."""
        with _locked():
            if _HOST.process is None or _HOST.loaded != self._key:
                return
            _HOST.loaded = None
            with contextlib.suppress(RuntimeError, ConfigError, DataError):  # a failed unload has killed it
                _HOST.request(("unload",), UNLOAD_TIMEOUT_S, None, "letting the model go", self._who)

    @property
    def pid(self) -> int | None:
        """The engine process's id while it holds this engine's model, else None."""
        return _HOST.process.pid if _HOST.process is not None and _HOST.loaded == self._key else None

    # -- calls ------------------------------------------------------------------------------------
    def _call(self, operation: str, payload: list[Any], progress: ProgressFn | None) -> Any:
        # One request at a time on the pipe (Prefect runs tasks in threads): a second caller waits here, as it
        # would on an in-process engine's lock. The call's deadline starts when it is sent, after the load.
        with _locked():
            if _HOST.process is None or _HOST.loaded != self._key:
                self._load()
            # The parent's STT_FAULTS goes with the call: a drill set after the child started still reaches it.
            reply = _HOST.request(("call", operation, payload, faults.current_unit(),
                                   getattr(self, "batch_size", None), os.environ.get("STT_FAULTS", "")),
                                  call_budget(), progress, operation, self._who)
            self.stats = reply[3]
            return reply[2]

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        return self._call("generate", list(requests), progress)

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], progress: ProgressFn | None = None) -> list[Score]:
        return self._call("loglikelihood", list(pairs), progress)
