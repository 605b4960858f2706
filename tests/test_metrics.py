"""Metrics on hand-checked cases: numbers per language, official SQuAD scores, NLI acc/acc_norm, chrF."""

import json

import pytest

from stt.metrics import (
    char_f1,
    extract_final_number,
    math_correct,
    normalize_answer,
    squad_exact_match,
    squad_f1,
    translation_scores,
)
from stt.scoring import score_predictions
from stt.specs.labels import choice
from stt.templates import NLI_LABELS


@pytest.mark.parametrize("text,language,number", [
    ("She has 3 + 4 = 7 apples.\nThe answer is 7.", "en", "7"),
    ("The answer is 1,234.", "en", "1234"),
    ("He pays $1,000,000 in total.", "en", "1000000"),
    ("The temperature drops to -5 degrees.", "en", "-5"),
    ("Each costs 2.50 dollars, so 3 cost 7.5", "en", "7.5"),
    ("The answer is 18. Question: how many eggs are left? 9", "en", "18"),
    # The cases, with the reading a German / Russian reader would give:
    ("Die Antwort ist 1.800 Euro.", "de", "1800"),            # dot groups thousands in German
    ("Итого 80 000 рублей.", "ru", "80000"),                   # space groups thousands in Russian
    ("Ответ: 12 500", "ru", "12500"),
    ("Die Antwort ist 5. Danach kommt Frage 6.", "de", "5"),  # the German answer phrase, not the last number
    # Ambiguous cases, reading stated: a comma is the German decimal mark; an English-style "3.5" in German
    # text has no 3-digit group, so it stays 3.5 (never 35); full-width digits read as ASCII.
    ("Das kostet 2,50 Euro.", "de", "2.5"),
    ("Er läuft 3.5 km.", "de", "3.5"),
    ("答案是 １２。", "zh", "12"),
    ("Il a 12\u202f500 euros. La réponse est 12\u202f500.", "fr", "12500"),  # narrow no-break space
    ("1.234,5", "de", "1234.5"),
    ("12.0", "en", "12"),
    ("no number here", "en", None),
    ("", "en", None),
])
def test_extract_final_number(text, language, number):
    assert extract_final_number(text, language) == number


def _exemplar_answers():
    from .conftest import DATA

    return [json.loads(line) for line in (DATA / "mgsm" / "mgsm_exemplars.jsonl").open(encoding="utf-8")]


def test_every_mgsm_exemplar_answer_line_reads_as_its_number():
    # Real answer lines of every MGSM language ("Die Antwort ist 11.", "答案是 11。", "Ответ — 11." ...).
    rows = _exemplar_answers()
    assert len({r["lang"] for r in rows}) == 11
    wrong = [(r["lang"], r["index"], r["answer"][-40:]) for r in rows
             if extract_final_number(r["answer"], r["lang"]) != str(r["number_answer"])]
    assert wrong == []


def test_math_correct_compares_numbers_by_value():
    assert math_correct("so 70,000 profit. The answer is 70000.", "70000")
    assert math_correct("The answer is 7.0", "7")
    assert math_correct("Die Antwort ist 1.800 Euro.", "1800", "de")
    assert not math_correct("Die Antwort ist 1.800 Euro.", "1800", "en")  # English reads 1.8
    assert not math_correct("The answer is 71", "70")
    assert not math_correct("I do not know", "3")


def test_squad_official_normalisation_and_scores():
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    assert squad_exact_match("the Eiffel tower", "Eiffel Tower.") == 1.0
    assert squad_f1("in the year 1889", "1889") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert squad_f1("Paris", "London") == 0.0
    # The official script removes English articles in every language and only ASCII punctuation:
    assert normalize_answer("der Eiffelturm, the end") == "der eiffelturm end"
    assert normalize_answer("北京大学。") == "北京大学。"
    # Whitespace tokens: an unsegmented Chinese answer is one token (the primary, official score) ...
    assert squad_f1("北京大学", "北京") == 0.0
    # ... and the secondary character F1: 2 shared of 4 predicted, 2 gold -> P=0.5, R=1, F1=2/3.
    assert char_f1("北京大学", "北京") == pytest.approx(2 / 3)
    assert char_f1("กรุงเทพ", "กรุงเทพมหานคร") == pytest.approx(2 * 1 * (7 / 13) / (1 + 7 / 13))


def test_nli_acc_and_acc_norm_by_hand():
    # Summed log-likelihood picks "neutral" (-3.0); per byte " contradiction" wins (-3.5/14 = -0.25 > -3/8).
    lp = {"entailment": -4.0, "neutral": -3.0, "contradiction": -3.5}
    assert choice(lp, NLI_LABELS, normalized=False) == "neutral"
    assert choice(lp, NLI_LABELS, normalized=True) == "contradiction"


def test_scores_recomputed_from_prediction_rows_by_hand():
    rows = [{"output": "The answer is 18.", "prediction": "18", "gold": "18"},
            {"output": "Die Antwort ist 1.800.", "prediction": "1800", "gold": "1800"},
            {"output": "The answer is 4.", "prediction": "4", "gold": "3"},
            {"output": "nothing", "prediction": "", "gold": "3"}]
    s = score_predictions("gsm8k", "de", rows, resamples=200)
    assert s["accuracy"] == 50.0 and s["answered"] == 75.0 and s["n"] == 4
    qa = [{"prediction": "Eiffel Tower", "gold": '["the Eiffel Tower", "tower"]'},
          {"prediction": "Louvre", "gold": '["Orsay"]'}]
    q = score_predictions("squad", "en", qa, resamples=200)
    assert (q["f1"], q["exact_match"], q["n"]) == (50.0, 50.0, 2)
    nli = [{"prediction": "neutral", "gold": "neutral", "output": json.dumps({"entailment": -4.0, "neutral": -3.0,
                                                                             "contradiction": -3.5})},
           {"prediction": "entailment", "gold": "contradiction",
            "output": json.dumps({"entailment": -1.0, "neutral": -5.0, "contradiction": -9.0})}]
    n = score_predictions("mnli", "de", nli, resamples=200)
    assert n["accuracy"] == 50.0 and n["accuracy_norm"] == 0.0


def test_translation_scores_rank_a_close_translation_higher():
    ref = ["Janets Enten legen 16 Eier pro Tag."]
    good = translation_scores(["Janets Enten legen 16 Eier am Tag."], ref, "de")
    bad = translation_scores(["Der Hund schläft."], ref, "de")
    assert good["chrf"] > bad["chrf"] and good["bleu"] > bad["bleu"]
    assert translation_scores(ref, ref, "de")["chrf"] == 100.0
    th = translation_scores(["เป็ดของเจเน็ตวางไข่ 16 ฟอง"], ["เป็ดของเจเน็ตวางไข่ 16 ฟองต่อวัน"], "th")
    assert 0 < th["bleu"] < 100
