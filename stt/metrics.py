"""Task metrics: final-number accuracy (math), SQuAD exact match / F1 (QA), label accuracy (NLI), chrF/BLEU.

Every function takes plain strings so a score can be recomputed from the saved predictions alone.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

from stt.numbers import final_answer, parse_number

# Languages scored on characters, not words: no spaces between words (a secondary XQuAD score).
CHAR_LEVEL = {"zh", "th", "ja"}


def extract_final_number(text: str, language: str = "en") -> str | None:
    """The model's final answer, read with the language's number format (see stt.numbers)."""
    return final_answer(text, language)


def math_correct(prediction: str, gold: str, language: str = "en") -> bool:
    """MGSM accuracy: the final number of the solution equals the gold number (golds are plain numbers)."""
    pred = final_answer(prediction, language)
    return pred is not None and pred == parse_number(gold, "en")


# --- SQuAD v1.1 (the official evaluation script's normalisation; XTREME scores XQuAD with it) ---------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Official SQuAD v1.1: lower case, ASCII punctuation removed, English articles removed, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(pred: list[str], ref: list[str]) -> float:
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:  # as the official script: also 0 when both are empty
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Official SQuAD v1.1 token F1 (whitespace tokens in every language: the primary XQuAD score)."""
    return _f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def char_f1(prediction: str, gold: str) -> float:
    """Secondary score for languages written without spaces (zh, th, ja): F1 over characters, after lower
    case and removal of all Unicode punctuation and whitespace. Labelled `char_f1`, never the primary."""
    def chars(text: str) -> list[str]:
        return [ch for ch in text.lower() if not ch.isspace() and not unicodedata.category(ch).startswith("P")]

    return _f1(chars(prediction), chars(gold))


def best_over_golds(fn, prediction: str, golds: Sequence[str]) -> float:
    """SQuAD scores a prediction against every gold answer and keeps the best."""
    return max(fn(prediction, g) for g in golds)


# --- translation quality ----------------------------------------------------------------------------
def translation_scores(hypotheses: Sequence[str], references: Sequence[str], language: str) -> dict[str, float]:
    """Corpus chrF and BLEU (sacrebleu); BLEU uses the zh/th/ja-aware tokenizers."""
    import sacrebleu

    refs = [list(references)]
    tokenize = bleu_tokenizer(language)
    bleu = sacrebleu.corpus_bleu(list(hypotheses), refs, tokenize=tokenize)
    chrf = sacrebleu.corpus_chrf(list(hypotheses), refs)
    return {"chrf": round(chrf.score, 2), "bleu": round(bleu.score, 2), "bleu_tokenizer": tokenize}


# Scripts written without spaces between words: sacrebleu's word tokenizer (13a) would count a whole
# sentence as one word. zh: sacrebleu's Chinese tokenizer; th, ja, lo, km, my: characters (`char`; `flores200`
# would need a SentencePiece model from the hub, `ja-mecab` an extra package).
_BLEU_TOKENIZERS = {"zh": "zh", "th": "char", "ja": "char", "lo": "char", "km": "char", "my": "char"}


def bleu_tokenizer(language: str) -> str:
    return _BLEU_TOKENIZERS.get(language.split("-")[0], "13a")
