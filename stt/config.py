"""Typed, serialisable run configuration. A run is reproducible from its config alone."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stt.errors import ConfigError


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["transformers"] = "transformers"  # vllm engines come in a later issue
    model: str = "gemma3-270m"
    batch_size: int = Field(8, ge=1)
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on GPU
    reuse_prefix_cache: bool = True  # compute the shared few-shot prefix once per language


class GenerationParams(BaseModel):
    """Everything that changes what the model writes. Part of the generation cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    # max new tokens per segment = clamp(ratio * source tokens + extra, min, cap)
    max_new_tokens_ratio: float = Field(2.0, gt=0)
    max_new_tokens_extra: int = Field(16, ge=0)
    max_new_tokens_cap: int = Field(256, ge=1)
    stop: tuple[str, ...] = ("\n",)

    def max_new_tokens(self, source_tokens: int) -> int:
        wanted = int(self.max_new_tokens_ratio * source_tokens) + self.max_new_tokens_extra
        return max(1, min(self.max_new_tokens_cap, wanted))


class PromptConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    style: Literal["completion", "chat"] = "completion"  # chat: the model's chat template (needs one)
    num_shots: int = Field(8, ge=0)
    demonstrations: Path | None = None  # jsonl with lang/question/answer like mgsm_exemplars.jsonl


class TranslateConfig(BaseModel):
    """What the translate stage needs to know. Saved next to its outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = "gsm8k"
    languages: tuple[str, ...] = ("de", "th")
    limit: int | None = Field(None, ge=1)  # first N training examples; None = all
    input_path: Path | None = None  # a file in the task's release format; default: the task's file in data_dir
    data_dir: Path | None = None  # default: $STT_DATA_DIR, else ../shared/data beside the repo
    out_dir: Path = Path("runs/translate")
    shard_size: int = Field(16, ge=1)
    engine: EngineConfig = EngineConfig()
    generation: GenerationParams = GenerationParams()
    prompt: PromptConfig = PromptConfig()

    @field_validator("languages", mode="before")
    @classmethod
    def _split_languages(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    def resolved_data_dir(self) -> Path:
        return resolve_data_dir(self.data_dir)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def resolve_data_dir(configured: Path | None = None) -> Path:
    """Config value, then $STT_DATA_DIR, then the shared/data folder beside the repository."""
    candidates = [configured, os.environ.get("STT_DATA_DIR"), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for c in candidates:
        if c:
            path = Path(c).expanduser()
            if path.is_dir():
                return path.resolve()
            if c is not candidates[-1]:
                raise ConfigError(f"data directory {path} does not exist (from config data_dir or $STT_DATA_DIR)")
    raise ConfigError(
        f"no data directory: set STT_DATA_DIR or data_dir (looked for {candidates[-1]})"
    )


def stable_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
