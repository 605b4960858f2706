"""Inference engines behind one interface (see base.py). Heavy imports happen only on load."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from stt import faults
from stt.config import GenerationParams
from stt.engine_settings import EngineConfig
from stt.engines.base import Completion, Engine, EngineStats, Request, Score
from stt.engines.inline import give_memory_back, load_inline

__all__ = ["Completion", "Engine", "EngineStats", "Request", "Score", "engine_signature", "generator_signature",
           "get_engine", "give_memory_back", "kill_engine_processes", "loaded_engines", "release_engines"]

_ENGINES: dict[str, Engine] = {}
_LOAD_LOCK = threading.Lock()


def get_engine(config: EngineConfig, generation: GenerationParams | None = None) -> Engine:
    """The engine for this config, loaded once per process and reused by every shard."""
    generation = generation or GenerationParams()
    # transformers batches per call: one loaded model serves every batch size (the batch is a setting of
    # the call, not of the weights). llama.cpp sizes its KV cache by the batch, so there it is part of the key.
    key = _loaded_as(config).model_dump_json() + generation.model_dump_json()
    with _LOAD_LOCK:
        if key not in _ENGINES:
            from stt.engines.child import ChildEngine

            if config.process == "child" and config.in_process:
                _ENGINES[key] = ChildEngine(config, generation)  # its process starts on the first call
            else:
                _ENGINES[key] = load_inline(config, generation)
        engine = _ENGINES[key]
        if config.batch_per_call:
            engine.batch_size = config.batch_size  # type: ignore[attr-defined]
    # STT_FAULTS (reliability drills) wraps the engine; without it the engine is returned as it is.
    return faults.FaultyEngine(engine) if faults.active() else engine  # type: ignore[return-value]


def _loaded_as(config: EngineConfig) -> EngineConfig:
    """The settings a loaded model is known by: where the batch is a setting of each call, any batch size."""
    return config.model_copy(update={"batch_size": 1}) if config.batch_per_call else config


def loaded_engines() -> list[Engine]:
    return list(_ENGINES.values())


def release_engines(keep: EngineConfig | None = None) -> None:
    """Drop loaded models (except `keep`'s), e.g. before evaluating the next adapter."""
    with _LOAD_LOCK:
        kept = None if keep is None else _loaded_as(keep).model_dump_json()
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


def engine_signature(engine_config: EngineConfig) -> dict[str, Any]:
    """The engine settings that change what a model writes or how a continuation scores (each kind's own,
    stt.engine_settings).

    Engines differ in numerics (fp32 on the CPU, bf16 on a GPU, vLLM kernels, a server's build), so
    predictions made by one are never reused for a config that names another.
    """
    return engine_config.signature()


def generator_signature(engine_config: EngineConfig) -> dict[str, Any]:
    """`engine_signature`, plus the adapter's weights when the model that translates carries one (the
    translate stage, translation quality). Evaluations key their adapter on their own."""
    out = engine_signature(engine_config)
    if engine_config.adapter is not None:
        from stt.files import file_sha256

        weights = Path(engine_config.adapter) / "adapter_model.safetensors"
        out["adapter"] = file_sha256(weights) if weights.is_file() else str(engine_config.adapter)
    return out
