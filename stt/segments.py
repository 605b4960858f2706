"""Split long fields into segments the model translates one at a time, and join them back.

One segment per prompt keeps outputs short and lets a newline stop end each translation.
"""

from __future__ import annotations

import re
from typing import Literal

SplitMode = Literal["whole", "lines", "sentences"]

# A sentence ends at . ! ? followed by space and an upper-case letter, digit or quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
_LETTER = re.compile(r"[^\W\d_]")
# Languages written without spaces between sentences.
_NO_SPACE = {"zh", "ja"}


def split(text: str, mode: SplitMode) -> list[str]:
    if mode == "whole":
        return [text.strip()]
    if mode == "lines":
        return [line.strip() for line in text.split("\n") if line.strip()]
    # Newlines inside a segment would defeat the newline stop: treat them as sentence breaks too.
    return [s.strip() for line in text.split("\n") for s in _SENTENCE_END.split(line) if s.strip()]


def join(parts: list[str], mode: SplitMode, language: str) -> str:
    if mode == "lines":
        return "\n".join(parts)
    return ("" if language in _NO_SPACE else " ").join(parts)


def needs_translation(text: str) -> bool:
    """Formula-only segments (`48/2 = 24`) carry no language: they are copied, not translated."""
    return bool(_LETTER.search(text))
