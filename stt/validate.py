"""Clean a raw completion and decide whether it is a usable translation.

Every rule returns a reason code; a row with any reason goes to the rejects file with it. The rules
are not part of the generation cache key: bump VALIDATION_VERSION when they change and cached
generations are re-validated without running the model again.
"""

from __future__ import annotations

import re
from collections import Counter

VALIDATION_VERSION = "validate-v2"  # v2: numbers read per language (stt.numbers)

# Scripts of targets not written in Latin letters: output should be mostly in them.
_SCRIPTS = {
    "ru": r"[\u0400-\u04FF]",
    "th": r"[\u0E00-\u0E7F]",
    "zh": r"[\u4E00-\u9FFF\u3400-\u4DBF]",
    "ja": r"[\u3040-\u30FF\u4E00-\u9FFF]",
    "bn": r"[\u0980-\u09FF]",
    "te": r"[\u0C00-\u0C7F]",
}
# English function words that are not words of the Latin-script targets (de, fr, es, sw).
_ENGLISH = set(
    "the and of with how many much she he her his they their does did each every what which has have "
    "had would for from are is this that there were been it its after before then than if when who".split()
)
_WORD = re.compile(r"[^\W\d_]+")


def clean_completion(text: str, target_name: str, stop: tuple[str, ...] = ("\n",), source_name: str = "English"
                     ) -> str:
    """Strip an echoed label (`German:`), cut at the stop, trim whitespace."""
    text = text.strip()
    for label in (f"{target_name}:", f"{target_name}：", "Translation:"):
        if text.startswith(label):
            text = text[len(label) :].strip()
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    # A base model that skips the stop runs on into the next demonstration.
    text = text.split(f"{source_name}:")[0]
    return text.strip()


def segment_reasons(source: str, output: str, language: str, finish_reason: str,
                    min_ratio: float = 0.2, max_ratio: float = 4.0) -> list[str]:
    """Reasons this output is not a usable translation of source (empty list = accepted)."""
    if not output:
        return ["empty"]
    reasons = []
    if finish_reason == "length":
        reasons.append("no_stop")  # ran to the token limit: runaway output
    src_words = _WORD.findall(source.lower())
    if output.casefold() == source.strip().casefold() and len(src_words) >= 3:
        reasons.append("identical_to_source")
    elif still_english(output, language):
        reasons.append("still_english")
    if repetitive(output):
        reasons.append("repetition")
    if len(source) >= 20:
        ratio = len(output) / len(source)
        lo = min_ratio / 2 if language in ("zh", "ja") else min_ratio
        if not lo <= ratio <= max_ratio:
            reasons.append("length_ratio")
    return reasons


def still_english(output: str, language: str) -> bool:
    letters = _WORD.findall(output)
    if not letters:
        return False
    if language in _SCRIPTS:
        chars = "".join(letters)
        native = len(re.findall(_SCRIPTS[language], chars))
        return native / len(chars) < 0.3
    words = [w.lower() for w in letters]
    english = sum(w in _ENGLISH for w in words)
    return english >= 2 and english / len(words) >= 0.2


def repetitive(output: str) -> bool:
    """One 3-word (or, for text without spaces, 6-character) span repeated 4+ times, covering 40%+."""
    words = output.split()
    if len(words) >= 6:
        units, n = words, 3
    else:
        units, n = list(re.sub(r"\s", "", output)), 6
    grams = Counter(tuple(units[i : i + n]) for i in range(len(units) - n + 1))
    if not grams:
        return False
    count = grams.most_common(1)[0][1]
    return count >= 4 and count * n >= 0.4 * len(units)
