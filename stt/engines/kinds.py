"""The engine kinds, one entry each: where its engine class lives and what is particular to it (what in its
settings changes outputs, whether a loaded model serves every batch size, whether it can run in the engine
process, what ends a hung call). Read by `stt.engines` (loading, stage keys) and the app's log lines; the
engine modules themselves are imported only when a model loads.

A new engine: its module (a class with the `stt.engines.base.Engine` interface) and one entry in KINDS.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stt.config import EngineConfig, GenerationParams
from stt.errors import ConfigError

if TYPE_CHECKING:
    from stt.engines.base import Engine
    from stt.models import ResolvedModel


@dataclass(frozen=True)
class EngineKind:
    name: str
    engine_class: str  # "module:Class"
    # The batch is a setting of each call (transformers): one loaded model serves every batch size.
    batch_per_call: bool = False
    # The model lives in this process, so `engine.process: child` can move it to the engine process
    # (stt.engines.child). vllm-batch runs in its own supervised runner, openai holds no model.
    in_process: bool = True
    hang_note: str = ""  # what ends a hung model call (the log line of stt_app.tasks.logs); "" : engine.process says

    def load(self, model: ResolvedModel, config: EngineConfig, generation: GenerationParams) -> Engine:
        module, cls = self.engine_class.split(":")
        return getattr(importlib.import_module(module), cls)(model, config, generation)

    def signature(self, config: EngineConfig) -> dict[str, Any]:
        """What of its settings changes what the model writes or how a continuation scores (stage keys)."""
        return {"kind": self.name, "dtype": config.dtype, "device": config.device}


class Transformers(EngineKind):
    def signature(self, config: EngineConfig) -> dict[str, Any]:
        from stt.engines.base import merges_adapter, resolved_dtype

        out = {**super().signature(config), "device": auto_device() if config.device == "auto" else config.device}
        if config.adapter is not None:
            # Merged into the weights (in fp32) is the same function as peft's separate LoRA path to rounding,
            # not the same bits.
            out["lora"] = "merged" if merges_adapter(resolved_dtype(config.dtype, out["device"])) else "applied"
        return out


class LlamaCpp(EngineKind):
    def signature(self, config: EngineConfig) -> dict[str, Any]:
        # Its batch shapes change the order of its sums, so the batch size changes outputs (benchmarks/RESULTS.md).
        return {**super().signature(config), "batch_size": config.batch_size}


class VLLMBatch(EngineKind):
    def signature(self, config: EngineConfig) -> dict[str, Any]:
        return {**super().signature(config), "dtype": vllm_dtype(config), "load_format": config.load_format,
                "max_model_len": config.max_model_len, "tensor_parallel_size": config.tensor_parallel_size}


class OpenAI(EngineKind):
    def signature(self, config: EngineConfig) -> dict[str, Any]:
        return {**super().signature(config), "served_model": config.served_model}


KINDS: dict[str, EngineKind] = {k.name: k for k in (
    Transformers("transformers", "stt.engines.transformers_engine:TransformersEngine", batch_per_call=True),
    LlamaCpp("llama-cpp", "stt.engines.llamacpp_engine:LlamaCppEngine"),
    VLLMBatch("vllm-batch", "stt.engines.vllm_batch:VLLMBatchEngine", in_process=False,
              hang_note="model jobs call vLLM in its runner's process group: a job's timeout kills the runner with "
                        "vLLM's engine-core and worker processes, a call stuck in native code included, and the job "
                        "is retried"),
    OpenAI("openai", "stt.engines.openai_engine:OpenAIEngine", in_process=False,
           hang_note="model jobs call an endpoint: a request is ended by engine.timeout_s and retried "
                     "(engine.max_retries); the server's own processes are the server's"),
)}


def kind_of(config: EngineConfig) -> EngineKind:
    if config.kind not in KINDS:  # pragma: no cover - pydantic restricts kind
        raise ConfigError(f"unknown engine kind '{config.kind}' (kinds: {', '.join(KINDS)})")
    return KINDS[config.kind]


def vllm_dtype(config: EngineConfig) -> str:
    """The dtype vLLM runs in: "auto" is float32 on a CPU host (the parity reference, and on CPUs without
    native bf16 about 3x bf16's speed) and the model's own dtype (bf16 for Gemma 3) on a GPU."""
    if config.dtype != "auto":
        return config.dtype
    return "float32" if auto_device() == "cpu" else "auto"


def auto_device() -> str:
    """What device="auto" resolves to in torch. Without a GPU driver on the machine torch cannot see a
    GPU, so the answer is known without importing torch (seconds, on every cached stage of a rerun)."""
    import sys
    from pathlib import Path

    if "torch" not in sys.modules and not any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/kfd")):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
