"""Engine that runs offline `vllm.LLM.generate` in the vLLM environment, one subprocess per call.

vLLM and Prefect cannot share one Python environment (pinned fastapi / torch / transformers), so
this process writes the requests to Parquet, runs `stt/vllm_runner.py` with the vLLM environment's
Python, and reads the completions back. One call is one shard: vLLM schedules the whole batch itself
(prefix caching on, for the shared few-shot prefix), and its GPU memory is freed when the subprocess
exits (vLLM does not give it back inside a process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stt.config import EngineConfig, GenerationParams
from stt.engines.base import Completion, EngineStats, ProgressFn, Request, Score, first_stop
from stt.engines.tokenizer import LocalTokenizer
from stt.errors import ConfigError
from stt.models import ResolvedModel, hf_folder

RUNNER = Path(__file__).resolve().parents[1] / "vllm_runner.py"

IN_SCHEMA = pa.schema([
    ("prompt", pa.string()), ("max_tokens", pa.int64()), ("stop", pa.list_(pa.string())), ("kind", pa.string()),
    ("continuation", pa.string()), ("lora", pa.string()), ("score_tokens", pa.int64()),
])


class RunnerError(RuntimeError):
    """The runner subprocess failed; the message is the runner's own."""


def vllm_python(config: EngineConfig) -> str:
    python = config.vllm_python or os.environ.get("STT_VLLM_PYTHON")
    if not python:
        raise ConfigError("engine 'vllm-batch' needs the vLLM environment: run scripts/setup-vllm.sh, then set "
                          "engine.vllm_python or STT_VLLM_PYTHON to its python (e.g. .venv-vllm/bin/python)")
    if not (Path(python).is_file() or shutil.which(python)):
        raise ConfigError(f"vLLM python '{python}' not found: run scripts/setup-vllm.sh or fix STT_VLLM_PYTHON")
    return python


class VLLMBatchEngine(LocalTokenizer):
    def __init__(self, model: ResolvedModel, config: EngineConfig, generation: GenerationParams | None = None,
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
        return {"model": self.model_path, "dtype": "auto" if c.dtype == "auto" else c.dtype,
                "tensor_parallel_size": c.tensor_parallel_size, "gpu_memory_utilization": c.gpu_memory_utilization,
                "max_model_len": c.max_model_len, "load_format": c.load_format, "max_lora_rank": c.max_lora_rank,
                "temperature": g.temperature, "top_p": g.top_p, "seed": g.seed, "batch_size": c.batch_size}

    def _run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not rows:
            return []
        with tempfile.TemporaryDirectory(prefix="stt-vllm-") as tmp:
            inp, out, settings = Path(tmp) / "in.parquet", Path(tmp) / "out.parquet", Path(tmp) / "settings.json"
            pq.write_table(pa.Table.from_pylist(rows, schema=IN_SCHEMA), inp)
            settings.write_text(json.dumps(self.settings()))
            # -P: do not put stt/ itself on sys.path (its module names would shadow packages).
            cmd = [self.python, "-P", str(RUNNER), "--input", str(inp), "--output", str(out), "--settings",
                   str(settings), "--backend", self.backend]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            self.last_runner_seconds = time.perf_counter() - t0
            if done.returncode != 0:
                lines = [ln for ln in done.stderr.splitlines() if ln.startswith("stt-runner-error:")]
                message = lines[-1].removeprefix("stt-runner-error:").strip() if lines else \
                    (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise RunnerError(f"vLLM batch runner failed (exit {done.returncode}): {message}")
            table = pq.read_table(out)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            self.last_timings = {k.removeprefix("stt."): float(v) for k, v in meta.items()
                                 if k.endswith("seconds")}
            return table.to_pylist()

    def _count(self, completions: list[Completion], t0: float) -> None:
        self.stats.calls += 1
        self.stats.requests += len(completions)
        self.stats.prompt_tokens += sum(c.prompt_tokens for c in completions)
        self.stats.completion_tokens += sum(c.completion_tokens for c in completions)
        self.stats.seconds += time.perf_counter() - t0

