"""Find an answer span in a context without losing offsets.

Case folding and Unicode normalisation change string lengths ("ß" -> "ss", "İ" -> "i̇", "Ａ" -> "a"),
so an offset found in folded text is wrong in the original. The folded context is built character by
character with a map back to the original position of each folded character.
"""

from __future__ import annotations

import unicodedata


def _fold_char(ch: str) -> str:
    return unicodedata.normalize("NFKC", ch).casefold()


def _folded_with_map(text: str) -> tuple[str, list[int]]:
    out, where = [], []
    for i, ch in enumerate(text):
        folded = _fold_char(ch)
        out.append(folded)
        where += [i] * len(folded)
    return "".join(out), where


def find_span(context: str, answer: str) -> tuple[int, int] | None:
    """(start, end) of `answer` in `context` as original offsets: exact first, then case/width-insensitive."""
    answer = answer.strip()
    if not answer:
        return None
    start = context.find(answer)
    if start >= 0:
        return start, start + len(answer)
    folded, where = _folded_with_map(context)
    needle = "".join(_fold_char(ch) for ch in answer)
    pos = folded.find(needle)
    if pos < 0 or not needle:
        return None
    return where[pos], where[pos + len(needle) - 1] + 1
