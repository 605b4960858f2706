"""The one interface every inference engine implements.

It mirrors vLLM's offline `LLM.generate`: a list of prompts in, one completion per prompt out, in
the same order, with token counts. Engines decide batching and scheduling themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


def first_stop(text: str, stop: Sequence[str]) -> int:
    """Where the earliest stop string starts in `text` (the completion is cut there), -1 when none occurs.
    An empty stop string stops nothing."""
    return min((p for p in (text.find(s) for s in stop if s) if p >= 0), default=-1)


@dataclass(frozen=True)
class Request:
    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str  # cut before the first stop string; the stop itself is not included
    prompt_tokens: int
    completion_tokens: int  # tokens the model generated, up to and including the one that stopped it
    finish_reason: str  # "stop" (stop string or end of sequence) or "length" (hit max_new_tokens)


@dataclass(frozen=True)
class Score:
    """Log-likelihood of a continuation given a context (vLLM: prompt_logprobs)."""

    logprob: float  # sum over the continuation's tokens
    tokens: int
    is_greedy: bool  # every continuation token was the model's top choice


# Called after each batch with (requests done, requests total).
ProgressFn = Callable[[int, int], None]


@dataclass
class EngineStats:
    """Counters a caller can read to see what the engine actually did (tests use them)."""

    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    oom_backoffs: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class Engine(Protocol):
    model_id: str
    weights_sha256: str
    stats: EngineStats

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]: ...

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], progress: ProgressFn | None = None) -> list[Score]: ...

    def count_tokens(self, text: str) -> int: ...

    @property
    def chat_template(self) -> str | None: ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...
