"""Metrics on hand-checked cases: number extraction, SQuAD normalisation, label scoring, chrF."""

import pytest

from stt.evaluate import score_predictions
from stt.metrics import (
    extract_final_number,
    math_correct,
    normalize_answer,
    normalize_number,
    squad_exact_match,
    squad_f1,
    translation_scores,
)


@pytest.mark.parametrize("text,number", [
    ("She has 3 + 4 = 7 apples.\nThe answer is 7.", "7"),
    ("The answer is 1,234.", "1234"),
    ("He pays $1,000,000 in total.", "1000000"),
    ("The temperature drops to -5 degrees.", "-5"),
    ("Each costs 2.50 dollars, so 3 cost 7.5", "7.5"),
    ("The answer is 18. Question: how many eggs are left? 9", "18"),  # "The answer is" beats the last number
    ("Sie verdient 10 Dollar. Die Antwort: 1.000.000", "1000000"),  # dots as thousands separators
    ("12.0", "12"),
    ("no number here", None),
    ("", None),
])
def test_extract_final_number(text, number):
    assert extract_final_number(text) == number


def test_math_correct_compares_normalised_numbers():
    assert math_correct("so 70,000 profit. The answer is 70000.", "70000")
    assert math_correct("The answer is 7.0", "7")
    assert not math_correct("The answer is 71", "70")
    assert not math_correct("I do not know", "3")
    assert normalize_number("3.50") == "3.5" and normalize_number("abc") is None


def test_squad_normalisation_and_scores():
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    assert squad_exact_match("the Eiffel tower", "Eiffel Tower.") == 1.0
    assert squad_f1("in the year 1889", "1889") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert squad_f1("Paris", "London") == 0.0
    # German keeps its articles: "der" is a word of the answer, not an English article.
    assert normalize_answer("der Eiffelturm", "de") == "der eiffelturm"
    # Thai and Chinese have no spaces between words: characters are the tokens.
    assert squad_f1("北京大学", "北京", "zh") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert squad_exact_match("กรุงเทพฯ", "กรุงเทพฯ", "th") == 1.0
    assert squad_f1("กรุงเทพ", "กรุงเทพมหานคร", "th") > 0.5


def test_scores_recomputed_from_prediction_rows():
    rows = [{"output": "The answer is 18.", "prediction": "18", "gold": "18"},
            {"output": "The answer is 4.", "prediction": "4", "gold": "3"},
            {"output": "nothing", "prediction": "", "gold": "3"}]
    s = score_predictions("gsm8k", "de", rows)
    assert s["accuracy"] == pytest.approx(100 / 3) and s["answered"] == pytest.approx(200 / 3)
    qa = [{"prediction": "Eiffel Tower", "gold": '["the Eiffel Tower", "tower"]'},
          {"prediction": "Louvre", "gold": '["Orsay"]'}]
    assert score_predictions("squad", "en", qa) == {"f1": 50.0, "exact_match": 50.0, "n": 2}
    nli = [{"prediction": "entailment", "gold": "entailment"}, {"prediction": "neutral", "gold": "contradiction"}]
    assert score_predictions("mnli", "de", nli)["accuracy"] == 50.0


def test_translation_scores_rank_a_close_translation_higher():
    ref = ["Janets Enten legen 16 Eier pro Tag."]
    good = translation_scores(["Janets Enten legen 16 Eier am Tag."], ref, "de")
    bad = translation_scores(["Der Hund schläft."], ref, "de")
    assert good["chrf"] > bad["chrf"] and good["bleu"] > bad["bleu"]
    assert translation_scores(ref, ref, "de")["chrf"] == 100.0
    th = translation_scores(["เป็ดของเจเน็ตวางไข่ 16 ฟอง"], ["เป็ดของเจเน็ตวางไข่ 16 ฟองต่อวัน"], "th")
    assert 0 < th["bleu"] < 100
