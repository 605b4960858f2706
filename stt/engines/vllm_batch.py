"""Engine that runs offline `vllm.LLM.generate` in the vLLM environment, in a runner process it supervises.

vLLM and Prefect cannot share one Python environment (pinned fastapi / torch / transformers), so this
process writes the requests to Parquet, hands them to `stt/vllm_runner.py --serve` running in the vLLM
environment's Python, and reads the completions back. The runner loads the base model once (LoRA enabled)
and answers every call of the jobs that follow, each adapter by path: one vLLM start per stage on a host,
not one per job. It is let go (and its memory, GPU memory included, with it) when a job needs no vLLM model
of these settings, e.g. before fine-tuning.

Supervised like the child engines: the runner leads its own process group (vLLM's engine-core and worker
processes are in it); a call that outlasts its deadline (the job's timeout, counted from when the call is sent)
kills the whole group and fails with
`EngineHung`, which the runners retry (an interrupted call, by Prefect's timeout or Ctrl-C, kills it too, and
the interruption goes on); a runner that dies fails the call with `EngineDied`, its exit status and the end
of its log; a failure inside vLLM ends the runner, and the next call starts a fresh one. If this process
dies, the runner sees its stdin close (or its parent change) and kills its group itself.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stt.config import GenerationParams
from stt.engine_settings import EngineConfig, VLLMBatchSettings, vllm_dtype
from stt.engines.base import Completion, EngineStats, ProgressFn, Request, Score, first_stop
from stt.engines.child import LOAD_TIMEOUT_S, POLL_S, EngineDied, EngineHung, call_budget, death, oom_kills
from stt.engines.tokenizer import LocalTokenizer
from stt.errors import ConfigError
from stt.models import ResolvedModel, hf_folder

log = logging.getLogger(__name__)

RUNNER = Path(__file__).resolve().parents[1] / "vllm_runner.py"

IN_SCHEMA = pa.schema([
    ("prompt", pa.string()), ("max_tokens", pa.int64()), ("stop", pa.list_(pa.string())), ("kind", pa.string()),
    ("continuation", pa.string()), ("lora", pa.string()), ("score_tokens", pa.int64()),
])


class RunnerError(RuntimeError):
    """The runner subprocess failed; the message is the runner's own."""


def vllm_python(config: VLLMBatchSettings) -> str:
    python = config.vllm_python or os.environ.get("STT_VLLM_PYTHON")
    if not python:
        raise ConfigError("engine 'vllm-batch' needs the vLLM environment: run scripts/setup-vllm.sh, then set "
                          "engine.vllm_python or STT_VLLM_PYTHON to its python (e.g. .venv-vllm/bin/python)")
    if not (Path(python).is_file() or shutil.which(python)):
        raise ConfigError(f"vLLM python '{python}' not found: run scripts/setup-vllm.sh or fix STT_VLLM_PYTHON")
    return python


class VLLMBatchEngine(LocalTokenizer):
    def __init__(self, model: ResolvedModel, config: VLLMBatchSettings, generation: GenerationParams | None = None,
                 backend: str = "vllm"):
        self.resolved = model
        self.model_id = model.model_id
        self.weights_sha256 = model.weights_sha256
        self.config = config
        self.generation = generation or GenerationParams()
        self.backend = backend  # "transformers": the same runner on stt's CPU engine (contract tests)
        self.python = vllm_python(config) if backend == "vllm" else config.vllm_python or "python"
        # vLLM reads Hugging Face folders; a GGUF model is converted once (stt prepare-model does the same).
        self.model_path = str(hf_folder(model)) if backend == "vllm" else model.model_id
        self.adapter = str(config.adapter) if config.adapter else ""
        self.stats = EngineStats()
        self.last_runner_seconds = 0.0  # the whole subprocess, start to exit
        self.last_timings: dict[str, float] = {}  # the runner's own: seconds, load_seconds, generate_seconds

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        rows = [{"prompt": r.prompt, "max_tokens": r.max_new_tokens, "stop": list(r.stop), "kind": "generate",
                 "continuation": "", "lora": self.adapter} for r in requests]
        t0 = time.perf_counter()
        out = self._run(rows)
        completions = []
        for r, o in zip(requests, out, strict=True):
            text = o["text"]
            cut = first_stop(text, r.stop)
            completions.append(Completion(text[:cut] if cut >= 0 else text, o["prompt_tokens"],
                                          o["completion_tokens"], o["finish_reason"]))
        self._count(completions, t0)
        if progress:
            progress(len(requests), len(requests))
        return completions

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], progress: ProgressFn | None = None) -> list[Score]:
        # The continuation's token count comes from the shared split (stt.engines.tokenizer), so vLLM scores
        # exactly the tokens the other engines score.
        rows = []
        for c, x in pairs:
            whole, n = self.split_pair(c, x)
            rows.append({"prompt": c, "max_tokens": 1, "stop": [], "kind": "score", "continuation": x,
                         "lora": self.adapter, "score_tokens": len(whole) - n})
        t0 = time.perf_counter()
        out = self._run(rows)
        self.stats.calls += 1
        self.stats.requests += len(rows)
        self.stats.seconds += time.perf_counter() - t0
        if progress:
            progress(len(pairs), len(pairs))
        return [Score(o["logprob"], o["score_tokens"], bool(o["is_greedy"])) for o in out]

    # -- the subprocess contract --------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        c, g = self.config, self.generation
        return {"model": self.model_path, "dtype": vllm_dtype(c), "enable_lora": True,
                "tensor_parallel_size": c.tensor_parallel_size, "gpu_memory_utilization": c.gpu_memory_utilization,
                "max_model_len": c.max_model_len, "load_format": c.load_format, "max_lora_rank": c.max_lora_rank,
                "temperature": g.temperature, "top_p": g.top_p, "seed": g.seed, "batch_size": c.batch_size}

    def _run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not rows:
            return []
        with tempfile.TemporaryDirectory(prefix="stt-vllm-") as tmp:
            inp, out = Path(tmp) / "in.parquet", Path(tmp) / "out.parquet"
            pq.write_table(pa.Table.from_pylist(rows, schema=IN_SCHEMA), inp)
            t0 = time.perf_counter()
            self.last_timings = _call(self, inp, out)
            self.last_runner_seconds = time.perf_counter() - t0
            return pq.read_table(out).to_pylist()

    @property
    def _who(self) -> str:
        return f"vLLM runner ({self.model_id}{'+' + self.adapter if self.adapter else ''})"

    @property
    def runner_key(self) -> str:
        """The runner this engine calls: the same for every adapter of one base model and its settings."""
        settings = {k: v for k, v in self.settings().items() if k != "batch_size"}
        return json.dumps([self.python, self.backend, host_key(self.config), settings], sort_keys=True)

    @property
    def pid(self) -> int | None:
        """The runner process serving this engine's settings, while one runs."""
        runner = _HOST.runner
        return runner.process.pid if runner is not None and runner.key == self.runner_key else None

    def close(self) -> None:
        """Nothing to let go here: the runner is shared by the engines of every adapter (see keep_runner)."""

    def _count(self, completions: list[Completion], t0: float) -> None:
        self.stats.calls += 1
        self.stats.requests += len(completions)
        self.stats.prompt_tokens += sum(c.prompt_tokens for c in completions)
        self.stats.completion_tokens += sum(c.completion_tokens for c in completions)
        self.stats.seconds += time.perf_counter() - t0


# -- the runner process ---------------------------------------------------------------------------------
class _Runner:
    """One `vllm_runner.py --serve` process: its own process group, calls and answers tagged by id."""

    def __init__(self, key: str, python: str, backend: str, settings: dict[str, Any], who: str):
        self.key = key
        self.folder = Path(tempfile.mkdtemp(prefix="stt-vllm-runner-"))
        (self.folder / "settings.json").write_text(json.dumps(settings))
        self.log_path = self.folder / "runner.log"  # kept after a failure: the error names it
        # -P: do not put stt/ itself on sys.path (its module names would shadow packages).
        cmd = [python, "-P", str(RUNNER), "--serve", "--settings", str(self.folder / "settings.json"),
               "--backend", backend]
        with open(self.log_path, "wb") as log_file:
            # start_new_session: the runner leads a process group that holds vLLM's own processes too, so
            # one killpg ends them all.
            self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                            start_new_session=True)
        self.ids = itertools.count(1)
        self.buffer = b""
        self.dead = False  # killed (or asked to be): never called again, even before its process is reaped
        t0 = time.monotonic()
        ready = self.answer(0, time.monotonic() + LOAD_TIMEOUT_S, f"loading the model ({who})")
        log.info("vLLM runner %d loaded %s in %.1fs (vLLM's own load %.1fs)", self.process.pid, settings["model"],
                 time.monotonic() - t0, ready.get("load_seconds", 0.0))

    def call(self, inp: Path, out: Path, budget: float | None, who: str) -> dict[str, float]:
        """One batch; its deadline (`budget` seconds) starts when it is sent."""
        call_id = next(self.ids)
        deadline = None if budget is None else time.monotonic() + budget
        message = {"id": call_id, "input": str(inp), "output": str(out), "fault": os.environ.get("STT_VLLM_FAULT", "")}
        with contextlib.suppress(OSError):  # it died: answer() reports how
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            self.process.stdin.flush()
        reply = self.answer(call_id, deadline, who)
        if "error" in reply:
            if reply.get("fatal"):
                self.kill()  # vLLM failed inside: the runner ended itself; the next call starts a fresh one
            raise RunnerError(f"vLLM batch runner failed: {reply['error']}")
        return {k: float(v) for k, v in reply.get("timings", {}).items()}

    def answer(self, call_id: int, deadline: float | None, doing: str) -> dict[str, Any]:
        """The answer tagged `call_id`; kills the group at the deadline, when interrupted, or on a lost runner."""
        try:
            while True:
                line = self._line(deadline, doing)
                message = json.loads(line)
                if message.get("id") == call_id:
                    return message
                # An answer to an earlier call (its caller was interrupted): not this call's.
        except (EngineHung, EngineDied):
            raise
        except BaseException:
            self.kill()  # interrupted (a Prefect timeout, Ctrl-C): the runner is busy with a call nobody reads
            raise

    def _line(self, deadline: float | None, doing: str) -> bytes:
        fd = self.process.stdout.fileno()
        poller = select.poll()  # not select.select: a busy process may hold file descriptors above 1024
        poller.register(fd, select.POLLIN)
        oom_before = oom_kills()
        while b"\n" not in self.buffer:
            ready = poller.poll(POLL_S * 1000)
            chunk = os.read(fd, 65536) if ready else None
            if chunk == b"" or (chunk is None and self.process.poll() is not None):
                code = self.process.wait()
                self.kill()
                died = death("vLLM runner", self.process.pid, code, doing, oom_before)
                raise type(died)(f"{died}: {self.last_error()} (log: {self.log_path})")
            # Checked after the read: an answer already in the pipe at the deadline is taken, not thrown away.
            if chunk is None and deadline is not None and time.monotonic() > deadline:
                pid = self.process.pid
                self.kill()
                raise EngineHung(f"the vLLM runner (process {pid}) did not answer while {doing} before its "
                                 f"deadline; its process group was killed (log: {self.log_path})")
            self.buffer += chunk or b""
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def last_error(self) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        marked = [ln for ln in lines if ln.startswith("stt-runner-error:")]
        if marked:
            return marked[-1].removeprefix("stt-runner-error:").strip()
        return (lines or ["(no output)"])[-1].strip()

    def kill(self) -> None:
        """End the runner and every process of its group (vLLM's engine core and workers)."""
        self.dead = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class _Host:
    """This process's one vLLM runner (one model in memory at a time), shared by every engine of the same
    settings whatever their adapter; calls queue for it one at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runner: _Runner | None = None

    def drop(self) -> None:
        """End the runner (its whole group) and forget it; the caller holds the lock."""
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.kill()
            shutil.rmtree(runner.folder, ignore_errors=True)

    def stop(self) -> None:
        with self.lock:
            self.drop()


_HOST = _Host()


def _call(engine: VLLMBatchEngine, inp: Path, out: Path) -> dict[str, float]:
    key, budget = engine.runner_key, call_budget()
    # A call's deadline is its own time once sent: the wait for a runner busy with another job's call and
    # the runner's start do not count (a hung call ahead is killed at its own deadline). Short waits, so a
    # Prefect timeout or Ctrl-C can interrupt a queued caller.
    while not _HOST.lock.acquire(timeout=POLL_S):
        pass
    try:
        runner = _HOST.runner
        if runner is not None and (runner.key != key or runner.dead or runner.process.poll() is not None):
            _HOST.drop()  # other settings (one model at a time), or a runner that ended: its whole group goes
        if _HOST.runner is None:
            _HOST.runner = _Runner(key, engine.python, engine.backend, engine.settings(), engine._who)
        runner = _HOST.runner
        try:
            return runner.call(inp, out, budget, engine._who)
        finally:
            if runner.dead:
                _HOST.drop()  # killed (deadline, interrupt, death, a fatal error): a retry starts a fresh one
    finally:
        _HOST.lock.release()


RUNNER_FIELDS = ("model", "dtype", "device", "vllm_python", "tensor_parallel_size", "gpu_memory_utilization",
                 "max_model_len", "load_format", "max_lora_rank")


def host_key(config: VLLMBatchSettings) -> str:
    """The runner an engine config uses: the same for every adapter of one base model and its vLLM settings
    (batch size, prefix reuse and the other engines' fields do not change what vLLM loads)."""
    return json.dumps({name: str(getattr(config, name)) for name in RUNNER_FIELDS})


def keep_runner(keep: EngineConfig | None) -> None:
    """Before a job: let the runner go unless the job's engine (`keep`) runs on the same base model and
    settings (an adapter's evaluation after the base model's keeps it). A runner in the middle of another
    thread's call is in use, and stays."""
    if not _HOST.lock.acquire(blocking=False):
        return
    try:
        runner = _HOST.runner
        if runner is not None and (not isinstance(keep, VLLMBatchSettings)
                                   or json.loads(runner.key)[2] != host_key(keep)):
            _HOST.drop()
    finally:
        _HOST.lock.release()


def kill_runner_now() -> None:
    """Kill the runner's group without the lock (the parent is leaving)."""
    runner = _HOST.runner
    if runner is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(runner.process.pid, signal.SIGKILL)


def stop_runner() -> None:
    """End this process's vLLM runner, if one runs (the next call starts a fresh one)."""
    _HOST.stop()
