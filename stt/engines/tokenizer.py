"""Token counting and chat templates from the model's own tokenizer, for engines that run elsewhere.

The served or subprocess model and the local `model` setting name the same weights, so the local
tokenizer counts exactly what the server will see (used to size max_new_tokens per segment).
"""

from __future__ import annotations

import functools
from typing import Any

from stt.models import ResolvedModel, hf_folder


@functools.cache
def _tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


class TokenizerMethods:
    """Token counting and chat templates for any engine with a Hugging Face `tokenizer`."""

    tokenizer: Any

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
