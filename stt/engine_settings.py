"""The engine kinds, one class each: the settings a config's `engine:` holds for that kind, and what is
particular to the kind (where its engine class lives, what of its settings changes outputs, whether a loaded
model serves every batch size, whether it can run in the engine process, what ends a hung call). `engine.kind`
picks the class. Read by `stt.engines` (loading, stage keys) and the app's log lines; the engine modules
themselves are imported only when a model loads.

A new engine: its module (a class with the `stt.engines.base.Engine` interface), and here its settings class
(a subclass of `EngineSettings`) with its line in KINDS; the union `EngineConfig` is made from KINDS.

A config written before the kinds had their own settings (every field on one class) still loads: another
kind's field at its default is dropped; set to anything else, it fails with one line saying what to change.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, field_validator, model_validator


class EngineSettings(BaseModel):
    """What every kind has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    model: str = "gemma3-270m"
    batch_size: int = Field(8, ge=1)
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on GPU
    reuse_prefix_cache: bool = True  # compute the shared few-shot prefix once per language
    # transformers / llama-cpp: "child" loads the model in a child process that a job's timeout kills for real
    # (a call stuck in native code included) and whose memory goes back to the system when it is released;
    # "inline" loads it in the job's own process (a debugger's view of the engine). The same engine code
    # either way: outputs do not change.
    process: Literal["inline", "child"] = "child"
    adapter: Path | None = None  # a LoRA adapter folder (peft) applied on top of the model

    engine_class: ClassVar[str]  # "module:Class", imported when a model loads (stt.engines.inline)
    # The batch is a setting of each call (transformers): one loaded model serves every batch size.
    batch_per_call: ClassVar[bool] = False
    # The model lives in this process, so `engine.process: child` can move it to the engine process
    # (stt.engines.child). vllm-batch runs in its own supervised runner, openai holds no model.
    in_process: ClassVar[bool] = True
    hang_note: ClassVar[str] = ""  # what ends a hung model call (stt_app.tasks.logs); "": engine.process says
    # The kind that scores label tasks (all prefill, no generation) in this kind's place; None: this kind.
    labels_on: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _other_kinds_fields(cls, data: Any) -> Any:
        """A field of another kind (a config saved when every kind shared one class) is dropped when it holds
        that kind's default and refused with what to change otherwise."""
        if not isinstance(data, dict):
            return data
        kept = dict(data)
        for name, value in data.items():
            if name in cls.model_fields:
                continue
            owners = [k for k in KINDS.values() if name in k.model_fields]
            if not owners:
                continue  # an unknown field: pydantic's own error names it
            if all(_is_default(k, name, value) for k in owners):
                del kept[name]
                continue
            owner = _kind_name(owners[0])
            raise ValueError(f"engine.{name} is a setting of '{owner}' engines, not of '{_kind_name(cls)}': remove "
                             f"it, or set engine.kind: {owner}")
        return kept

    def signature(self) -> dict[str, Any]:
        """What of its settings changes what the model writes or how a continuation scores (stage keys)."""
        return {"kind": self.kind, "dtype": self.dtype, "device": self.device}

    def as_kind(self, kind: str, **update: Any) -> EngineSettings:
        """The same model and common settings on another kind of engine (its own settings at their defaults)."""
        common = self.model_dump(include=set(EngineSettings.model_fields) - {"kind"})
        return KINDS[kind](**common | update)


class TransformersSettings(EngineSettings):
    """In-process transformers (CPU or one GPU)."""

    kind: Literal["transformers"] = "transformers"

    engine_class = "stt.engines.transformers_engine:TransformersEngine"
    batch_per_call = True

    def signature(self) -> dict[str, Any]:
        out = {**super().signature(), "device": auto_device() if self.device == "auto" else self.device}
        if self.adapter is not None:
            # Merged into the weights (in fp32) is the same function as peft's separate LoRA path to rounding,
            # not the same bits.
            out["lora"] = "merged" if merges_adapter(resolved_dtype(self.dtype, out["device"])) else "applied"
        return out


class LlamaCppSettings(EngineSettings):
    """In-process llama.cpp on the GGUF weights (the fastest on a CPU)."""

    kind: Literal["llama-cpp"] = "llama-cpp"
    n_ctx: int = Field(8192, ge=256)  # KV cells shared by the prefix and every running sequence
    threads: int | None = Field(None, ge=1)  # default: all cores

    engine_class = "stt.engines.llamacpp_engine:LlamaCppEngine"
    # Prefill is where torch's fp32 beats llama.cpp's Q4 kernels on a CPU (with an adapter 8.5 vs 4.7 XNLI
    # items/s, benchmarks/RESULTS.md); generation is llama.cpp's.
    labels_on = "transformers"

    def signature(self) -> dict[str, Any]:
        # Its batch shapes change the order of its sums, so the batch size changes outputs (benchmarks/RESULTS.md).
        return {**super().signature(), "batch_size": self.batch_size}


class VLLMBatchSettings(EngineSettings):
    """Offline vllm.LLM.generate in the vLLM environment's Python: one runner process that loads the base model
    once and serves every adapter by path (stt/engines/vllm_batch.py)."""

    kind: Literal["vllm-batch"] = "vllm-batch"
    vllm_python: str | None = None  # the vLLM environment (scripts/setup-vllm.sh); default: $STT_VLLM_PYTHON
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=16)
    load_format: str = "auto"  # "dummy": random weights of the model's shape (benchmarks without weights)
    max_lora_rank: int = Field(64, ge=1)

    engine_class = "stt.engines.vllm_batch:VLLMBatchEngine"
    in_process = False
    hang_note = ("model jobs call vLLM in its runner's process group: a job's timeout kills the runner with vLLM's "
                 "engine-core and worker processes, a call stuck in native code included, and the job is retried")

    def signature(self) -> dict[str, Any]:
        return {**super().signature(), "dtype": vllm_dtype(self), "load_format": self.load_format,
                "max_model_len": self.max_model_len, "tensor_parallel_size": self.tensor_parallel_size}


class OpenAISettings(EngineSettings):
    """A /v1/completions endpoint (`vllm serve`), one or more used round-robin."""

    kind: Literal["openai"] = "openai"
    base_urls: tuple[str, ...] = ()  # default: $STT_OPENAI_BASE_URLS (comma-separated), e.g. http://vllm:8000/v1
    served_model: str | None = None  # the model name the server knows (default: its first model)
    concurrency: int = Field(16, ge=1)  # requests in flight
    timeout_s: float = Field(300, gt=0)
    max_retries: int = Field(5, ge=0)
    # No key field on purpose: a config is saved next to every output. The endpoint key comes from
    # $STT_OPENAI_API_KEY only (sent as a Bearer token, see stt.secrets).

    engine_class = "stt.engines.openai_engine:OpenAIEngine"
    in_process = False
    hang_note = ("model jobs call an endpoint: a request is ended by engine.timeout_s and retried "
                 "(engine.max_retries); the server's own processes are the server's")

    @field_validator("base_urls")
    @classmethod
    def _no_credentials_in_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from stt.secrets import has_credentials

        if any(has_credentials(u) for u in value):
            raise ValueError("engine.base_urls must not carry credentials (user:password@): the config is saved "
                             "with every output; set the endpoint key in STT_OPENAI_API_KEY instead")
        return value

    def signature(self) -> dict[str, Any]:
        return {**super().signature(), "served_model": self.served_model}


# The registry: engine.kind -> its settings class.
KINDS: dict[str, type[EngineSettings]] = {
    c.model_fields["kind"].default: c for c in (TransformersSettings, LlamaCppSettings, VLLMBatchSettings,
                                                  OpenAISettings)}


def _kind_name(cls: type[EngineSettings]) -> str:
    return str(cls.model_fields["kind"].default)


def _is_default(cls: type[EngineSettings], name: str, value: Any) -> bool:
    default = cls.model_fields[name].default
    return value == default or (isinstance(default, tuple) and isinstance(value, list) and tuple(value) == default)


def _kind_of_input(value: Any) -> str:
    # No kind: transformers, the default engine, as before the kinds had their own settings.
    return value.get("kind", "transformers") if isinstance(value, dict) else getattr(value, "kind", "")


class _AnyKindInJsonSchema:
    """The union's JSON schema as `anyOf`, not pydantic's `oneOf`. Prefect validates deployment parameters against
    it, ignoring `required`: a settings object without `kind` (read as transformers) would match every kind's
    schema, and `oneOf` would refuse it (the demo deployment's engine has no kind)."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        if "oneOf" in schema:
            schema["anyOf"] = schema.pop("oneOf")
            schema.pop("discriminator", None)
        return schema


# Made from KINDS, so a new kind is listed once.
EngineConfig = Annotated[
    Union[tuple(Annotated[settings, Tag(kind)] for kind, settings in KINDS.items())],  # noqa: UP007 - a union built from KINDS
    Discriminator(_kind_of_input, custom_error_type="engine_kind",
                  custom_error_message=f"engine.kind must be one of: {', '.join(KINDS)}"),
    _AnyKindInJsonSchema]
"""A config's `engine:`: the settings class of its `kind`."""

_ADAPTER: TypeAdapter[EngineSettings] = TypeAdapter(EngineConfig)


def engine_config(**fields: Any) -> EngineSettings:
    """The engine settings of `fields["kind"]` (default transformers), validated."""
    return _ADAPTER.validate_python(fields)


def engine_from_json(text: str | bytes) -> EngineSettings:
    return _ADAPTER.validate_json(text)


def resolved_dtype(dtype: str, device: str) -> str:
    """The dtype a transformers engine loads its weights in: `auto` is bf16 on a GPU, fp32 on the CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def merges_adapter(dtype: str) -> bool:
    """Whether a transformers engine merges a LoRA adapter into its weights (`dtype` as resolved_dtype gives
    it): in fp32, where the merged weights compute the adapter's function to rounding. A bf16 / fp16 sum
    would keep only part of a small adapter's delta in the weights' few mantissa bits, so there peft applies
    it beside them. The engine and its stage key (engine_signature) both ask here, so they cannot disagree."""
    return dtype == "float32"


def vllm_dtype(config: EngineSettings) -> str:
    """The dtype vLLM runs in: "auto" is float32 on a CPU host (the parity reference, and on CPUs without
    native bf16 about 3x bf16's speed) and the model's own dtype (bf16 for Gemma 3) on a GPU."""
    if config.dtype != "auto":
        return config.dtype
    return "float32" if auto_device() == "cpu" else "auto"


def auto_device() -> str:
    """What device="auto" resolves to in torch. Without a GPU driver on the machine torch cannot see a
    GPU, so the answer is known without importing torch (seconds, on every cached stage of a rerun)."""
    if "torch" not in sys.modules and not any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/kfd")):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
