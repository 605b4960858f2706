"""Numbers as each language writes them: one parser for the MGSM metric and the translate stage's check.

A number is read with the conventions of the language it is written in: German "1.800" is 1800 and
"2,50" is 2.5; English "1,800" is 1800; Russian and French group thousands with spaces ("80 000",
also U+00A0 / U+202F). Full-width digits and separators are read as ASCII (NFKC). A separator
followed by exactly three digits is a thousands separator when the language groups with it; any
other separator between digits is a decimal point (models often write English-style decimals in
every language, so "3.5" stays 3.5 in German, and never becomes 35).

The final answer of a solution is the first number after the last answer phrase ("The answer is",
"Die Antwort ist", "答案是" ... taken from the MGSM exemplars' own answer lines), else the last number.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from decimal import Decimal, InvalidOperation

# decimal separator, thousands separators (spaces: plain, no-break U+00A0, narrow no-break U+202F).
_SPACES = " \u00a0\u202f"
FORMATS: dict[str, tuple[str, str]] = {
    "en": (".", ","), "zh": (".", ","), "ja": (".", ","), "th": (".", ","), "sw": (".", ","),
    "te": (".", ","), "bn": (".", ","),
    "de": (",", "." + _SPACES), "es": (",", "." + _SPACES), "fr": (",", "." + _SPACES),
    "ru": (",", "." + _SPACES),
}

# Answer phrases: the MGSM exemplars' closing lines (mgsm_exemplars.jsonl, "answer" field), plus the
# common variants a model writes. English is accepted in every language: the task template's closing
# line ("The answer is N.") is English everywhere.
ANSWER_PHRASES: dict[str, tuple[str, ...]] = {
    "en": ("the answer is", "answer:"),
    "de": ("die antwort ist", "die antwort lautet", "antwort:"),
    "es": ("la respuesta es", "respuesta:"),
    "fr": ("la réponse est", "réponse :", "réponse:"),
    "ru": ("ответ —", "ответ -", "ответ:", "ответ", "итого"),
    "zh": ("答案是", "答案：", "答案:"),
    "ja": ("答えは", "答え："),
    "th": ("คำตอบคือ", "คำตอบ:"),
    "sw": ("jibu ni", "jibu:"),
    "te": ("సమాధానం",),
    "bn": ("উত্তর হল", "উত্তর:"),
}

# Digits with separators between them; a minus only when it is not a hyphen after a word or a digit.
_CANDIDATE = re.compile(r"(?:(?<!\w)-)?(?<![\d.,])\d+(?:[.,\u00a0\u202f ]\d+)*")


def _fold(text: str) -> str:
    """Full-width digits and punctuation to ASCII; keep U+00A0/U+202F (NFKC would turn them into spaces)."""
    out = []
    for ch in text:
        out.append(ch if ch in "\u00a0\u202f" else unicodedata.normalize("NFKC", ch))
    return "".join(out)


def _formats(language: str) -> tuple[str, str]:
    return FORMATS.get(language, FORMATS["en"])


def _value(token: str, language: str) -> Decimal | None:
    """The value of one token (digits and separators) under the language's conventions; None if ambiguous."""
    decimal_sep, thousands = _formats(language)
    negative = token.startswith("-")
    parts = re.split(r"([.,\u00a0\u202f ])", token.lstrip("-"))
    groups, seps = parts[0::2], parts[1::2]
    decimals = ""
    if seps:
        last = seps[-1]
        repeated = seps.count(last) > 1  # a number has one decimal point: a repeated mark groups thousands
        grouping = len(groups[-1]) == 3 and (last in thousands or repeated)
        if last in _SPACES and not grouping:
            return None  # "5 6": two numbers
        # The language's decimal mark is decimal unless repeated; the other mark is decimal unless it
        # groups exactly three digits (English-style "3.5" in German stays 3.5, "1.800" is 1800).
        is_decimal = not repeated and (last == decimal_sep or not grouping)
        if is_decimal:
            decimals, groups, seps = groups[-1], groups[:-1], seps[:-1]
        if seps:
            if len(set(seps)) != 1 or seps[0] == decimal_sep and is_decimal:
                return None
            if len(groups[0]) > 3 or any(len(g) != 3 for g in groups[1:]):
                return None
    try:
        value = Decimal("".join(groups) + ("." + decimals if decimals else ""))
    except InvalidOperation:
        return None
    return -value if negative else value


def _format(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def parse_number(text: str, language: str = "en") -> str | None:
    """One number written in `language` as a canonical string ('1800', '2.5', '-3'); None if it is not one."""
    text = _fold(text).strip().rstrip(".。")
    for ch in "$€£¥₽฿":
        text = text.replace(ch, "")
    text = text.strip()
    if not re.fullmatch(r"-?\d+(?:[.,\u00a0\u202f ]\d+)*", text):
        return None
    value = _value(text, language)
    return None if value is None else _format(value)


def _candidates(text: str, language: str) -> list[tuple[int, str]]:
    """(position, canonical value) of every number in the text, in order."""
    out = []
    for m in _CANDIDATE.finditer(text):
        token = m.group(0)
        value = _value(token, language)
        if value is None:
            # Not one number ("5 6", "1,2,3"): read each group on its own.
            for sub in re.finditer(r"-?\d+", token):
                out.append((m.start() + sub.start(), _format(Decimal(sub.group(0)))))
        else:
            out.append((m.start(), _format(value)))
    return out


def numbers_in(text: str, language: str = "en") -> Counter[str]:
    """Every number of a text by value: '1,000' (en) and '1.000' (de) both count as '1000'."""
    return Counter(v for _, v in _candidates(_fold(text), language))


def final_answer(text: str, language: str = "en") -> str | None:
    """The number after the last answer phrase of the language (or English), else the last number."""
    folded = _fold(text)
    lowered = folded.lower()
    phrases = ANSWER_PHRASES.get(language, ()) + ANSWER_PHRASES["en"]
    ends = [m.end() for p in phrases for m in re.finditer(re.escape(p), lowered)]
    candidates = _candidates(folded, language)
    if ends:
        after = max(ends)
        following = [v for pos, v in candidates if pos >= after]
        if following:
            return following[0]
    return candidates[-1][1] if candidates else None
