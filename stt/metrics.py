"""Task metrics: final-number accuracy (math), SQuAD exact match / F1 (QA), label accuracy (NLI), chrF/BLEU.

Every function takes plain strings so a score can be recomputed from the saved predictions alone.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

# "1,234.5", "-3", ".5", "1.000.000" (German thousands) are numbers; a trailing "." ends a sentence.
_NUMBER = re.compile(r"-?\d[\d,.]*\d|-?\d|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*\$?\s*(-?[\d,.]*\d)", re.IGNORECASE)
# Languages scored on characters, not words: no spaces between words.
CHAR_LEVEL = {"zh", "th", "ja"}


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '3.50' -> '3.5', '-2.0' -> '-2', '1.000.000' -> '1000000'. None if not a number."""
    t = text.strip().rstrip(".").replace(" ", "")
    if t.count(".") > 1:  # dots as thousands separators
        t = t.replace(".", "")
    t = t.replace(",", "")
    try:
        value = float(t)
    except ValueError:
        return None
    if value == int(value):
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def extract_final_number(text: str) -> str | None:
    """The model's final answer: the number after 'The answer is', else the last number in the text."""
    m = _ANSWER_IS.findall(text)
    candidates = m or _NUMBER.findall(text)
    for c in reversed(candidates):
        n = normalize_number(c)
        if n is not None:
            return n
    return None


def math_correct(prediction: str, gold: str) -> bool:
    pred = extract_final_number(prediction)
    return pred is not None and pred == normalize_number(gold)


# --- SQuAD (the official v1.1 evaluation's normalisation) -------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str, language: str = "en") -> str:
    """Lower case, no punctuation, no English articles, single spaces (plus Unicode punctuation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT and not unicodedata.category(ch).startswith("P"))
    if language == "en":
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str, language: str) -> list[str]:
    norm = normalize_answer(text, language)
    if language in CHAR_LEVEL:
        return [ch for ch in norm if not ch.isspace()]
    return norm.split()


def squad_exact_match(prediction: str, gold: str, language: str = "en") -> float:
    return float(normalize_answer(prediction, language) == normalize_answer(gold, language))


def squad_f1(prediction: str, gold: str, language: str = "en") -> float:
    pred, ref = _tokens(prediction, language), _tokens(gold, language)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if not pred or not ref:
        return float(pred == ref)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(fn, prediction: str, golds: Sequence[str], language: str) -> float:
    """SQuAD scores a prediction against every gold answer and keeps the best."""
    return max(fn(prediction, g, language) for g in golds)


# --- translation quality ----------------------------------------------------------------------------
def translation_scores(hypotheses: Sequence[str], references: Sequence[str], language: str) -> dict[str, float]:
    """Corpus chrF and BLEU (sacrebleu); BLEU uses the zh/th/ja-aware tokenizers."""
    import sacrebleu

    refs = [list(references)]
    tokenize = {"zh": "zh", "ja": "ja-mecab", "th": "char"}.get(language, "13a")
    try:
        bleu = sacrebleu.corpus_bleu(list(hypotheses), refs, tokenize=tokenize)
    except Exception:  # ja-mecab needs an extra package: fall back to characters
        bleu = sacrebleu.corpus_bleu(list(hypotheses), refs, tokenize="char")
    chrf = sacrebleu.corpus_chrf(list(hypotheses), refs)
    return {"chrf": round(chrf.score, 2), "bleu": round(bleu.score, 2)}
