"""Inference engines behind one interface (see base.py). Heavy imports happen only on load."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from stt import faults
from stt.config import EngineConfig, GenerationParams
from stt.engines.base import Completion, Engine, EngineStats, Request, Score, merges_adapter, resolved_dtype
from stt.errors import ConfigError
from stt.models import resolve_model

__all__ = ["Completion", "Engine", "EngineStats", "Request", "Score", "engine_signature", "generator_signature",
           "get_engine", "give_memory_back", "kill_engine_processes", "loaded_engines", "release_engines"]

_ENGINES: dict[str, Engine] = {}
_LOAD_LOCK = threading.Lock()


def get_engine(config: EngineConfig, generation: GenerationParams | None = None) -> Engine:
    """The engine for this config, loaded once per process and reused by every shard."""
    generation = generation or GenerationParams()
    # transformers batches per call: one loaded model serves every batch size (the batch is a setting of
    # the call, not of the weights). llama.cpp sizes its KV cache by the batch, so there it is part of the key.
    loaded_as = config.model_copy(update={"batch_size": 1}) if config.kind == "transformers" else config
    key = loaded_as.model_dump_json() + generation.model_dump_json()
    with _LOAD_LOCK:
        if key not in _ENGINES:
            from stt.engines.child import ChildEngine, supervised

            if config.process == "child" and supervised(config.kind):
                _ENGINES[key] = ChildEngine(config, generation)  # its process starts on the first call
            else:
                _ENGINES[key] = load_inline(config, generation)
        engine = _ENGINES[key]
        if config.kind == "transformers":
            engine.batch_size = config.batch_size  # type: ignore[attr-defined]
    # STT_FAULTS (reliability drills) wraps the engine; without it the engine is returned as it is.
    return faults.FaultyEngine(engine) if faults.active() else engine  # type: ignore[return-value]


def load_inline(config: EngineConfig, generation: GenerationParams) -> Engine:
    """The engine class for `config.kind`, loaded in this process (a child engine's process calls this too)."""
    model = resolve_model(config.model)
    if config.kind == "transformers":
        from stt.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model, config, generation)
    if config.kind == "llama-cpp":
        from stt.engines.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(model, config, generation)
    if config.kind == "vllm-batch":
        from stt.engines.vllm_batch import VLLMBatchEngine

        return VLLMBatchEngine(model, config, generation)
    if config.kind == "openai":
        from stt.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(model, config, generation)
    raise ConfigError(f"unknown engine kind '{config.kind}'")  # pragma: no cover - pydantic restricts kind


def loaded_engines() -> list[Engine]:
    return list(_ENGINES.values())


def release_engines(keep: EngineConfig | None = None) -> None:
    """Drop loaded models (except `keep`'s), e.g. before evaluating the next adapter."""
    with _LOAD_LOCK:
        kept = None if keep is None else (keep.model_copy(update={"batch_size": 1}) if keep.kind == "transformers"
                                          else keep).model_dump_json()
        released = [key for key in _ENGINES if kept is None or not key.startswith(kept)]
        dropped = [_ENGINES.pop(key) for key in released]
    for engine in dropped:  # a child engine's process ends here, and its memory goes back to the system
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    if "stt.engines.vllm_batch" in sys.modules:  # the vLLM runner outlives its engines while a job can use it
        sys.modules["stt.engines.vllm_batch"].keep_runner(keep)
    if released:  # a full collection costs ~0.3 s: only when a model was actually let go
        give_memory_back()


def kill_engine_processes() -> None:
    """Kill this process's engine process and vLLM runner group now, without waiting for a caller's lock:
    for a parent about to leave by `os._exit` (which skips multiprocessing's cleanup). They would die with
    it anyway (parent-death signal, the runner's watchdog); this makes it immediate."""
    from stt.engines.child import kill_engine_process

    kill_engine_process()
    if "stt.engines.vllm_batch" in sys.modules:
        sys.modules["stt.engines.vllm_batch"].kill_runner_now()


def give_memory_back() -> None:
    """Free what a finished model job let go of and hand it back to the operating system.

    glibc keeps freed heap for reuse by the process, so after a fine-tuning job (model, activations,
    optimizer) the process stayed about 2 GB larger for good and each job added to it: the demo peaked
    at 9.3 GB. `malloc_trim` returns those pages (measured: 2.7 GB -> 0.8 GB after a demo adapter).
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:  # glibc only; elsewhere a no-op
        trim(0)


def engine_signature(engine_config: EngineConfig) -> dict[str, Any]:
    """The engine settings that change what a model writes or how a continuation scores.

    Engines differ in numerics (fp32 on the CPU, bf16 on a GPU, vLLM kernels, a server's build), so
    predictions made by one are never reused for a config that names another. On llama.cpp the batch
    size changes outputs too (its batch shapes change the order of its sums: benchmarks/RESULTS.md), so it
    is part of the signature there; elsewhere batch size and concurrency change speed only.
    """
    device = engine_config.device
    if engine_config.kind == "transformers" and device == "auto":
        device = _auto_device()
    out: dict[str, Any] = {"kind": engine_config.kind, "dtype": engine_config.dtype, "device": device}
    if engine_config.kind == "transformers" and engine_config.adapter is not None:
        # Merged into the weights (in fp32) is the same function as peft's separate LoRA path to rounding, not
        # the same bits.
        out["lora"] = "merged" if merges_adapter(resolved_dtype(engine_config.dtype, device)) else "applied"
    if engine_config.kind == "llama-cpp":
        out["batch_size"] = engine_config.batch_size
    if engine_config.kind == "vllm-batch":
        from stt.engines.vllm_batch import vllm_dtype

        out.update(dtype=vllm_dtype(engine_config), load_format=engine_config.load_format,
                   max_model_len=engine_config.max_model_len, tensor_parallel_size=engine_config.tensor_parallel_size)
    if engine_config.kind == "openai":
        out.update(served_model=engine_config.served_model)
    return out


def generator_signature(engine_config: EngineConfig) -> dict[str, Any]:
    """`engine_signature`, plus the adapter's weights when the model that translates carries one (the
    translate stage, translation quality). Evaluations key their adapter on their own."""
    out = engine_signature(engine_config)
    if engine_config.adapter is not None:
        from stt.files import file_sha256

        weights = Path(engine_config.adapter) / "adapter_model.safetensors"
        out["adapter"] = file_sha256(weights) if weights.is_file() else str(engine_config.adapter)
    return out


def _auto_device() -> str:
    """What device="auto" resolves to in torch. Without a GPU driver on the machine torch cannot see a
    GPU, so the answer is known without importing torch (seconds, on every cached stage of a rerun)."""
    if "torch" not in sys.modules and not any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/kfd")):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
