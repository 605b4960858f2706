"""Token counting and chat templates from the model's own tokenizer, for engines that run elsewhere.

The served or subprocess model and the local `model` setting name the same weights, so the local
tokenizer counts exactly what the server will see (used to size max_new_tokens per segment).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from stt.models import ResolvedModel, hf_folder


@functools.cache
def _tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def own_tokenizer(folder: str) -> Any:
    """A tokenizer of the model in `folder` whose settings (padding side, pad token) are the caller's own.

    Reading Gemma 3's tokenizer takes 3-7 s (its 262k-entry vocabulary and 6k added tokens), and every
    fine-tuning job and engine load needs one: the vocabulary is read once per process and shared; the
    copy gets its own attribute containers, so one user's `padding_side` or `pad_token` never reaches
    another. (The backend's padding state is set from these attributes on every call.)"""
    shared = _tokenizer(str(folder))
    mine = copy.copy(shared)
    mine.__dict__.update({k: copy.copy(v) for k, v in vars(shared).items() if isinstance(v, (dict, list, set))})
    return mine


SPLIT_VERSION = "whole-minus-context-v1"


def split_continuation(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], int]:
    """The one definition of a scored continuation, shared by every engine.

    The whole text `context + continuation` is tokenised once (with the model's BOS); the context's
    tokens are the longest prefix it shares with the tokenisation of the context alone, and every
    token after them is the continuation (lm-evaluation-harness's split). Returns (whole ids, number
    of context tokens). A merge across the boundary moves the merged token to the continuation.
    """
    whole = tokenizer(context + continuation)["input_ids"]
    alone = tokenizer(context)["input_ids"]
    n = 0
    while n < min(len(whole), len(alone)) and whole[n] == alone[n]:
        n += 1
    if n >= len(whole):
        raise ValueError(f"continuation {continuation!r} adds no tokens after its context")
    return whole, max(n, 1)  # the first token (BOS) is always context: something must predict token 1


class TokenizerMethods:
    """Token counting and chat templates for any engine with a Hugging Face `tokenizer`."""

    tokenizer: Any

    def split_pair(self, context: str, continuation: str) -> tuple[list[int], int]:
        return split_continuation(self.tokenizer, context, continuation)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class LocalTokenizer(TokenizerMethods):
    """For engines whose model runs elsewhere: the tokenizer of the same weights, loaded here."""

    resolved: ResolvedModel

    @property
    def tokenizer(self) -> Any:
        return _tokenizer(str(hf_folder(self.resolved)))
