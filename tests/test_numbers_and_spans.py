"""The translate stage's number check and QA span search, on hand-written cases."""

from stt.numbers import numbers_in, parse_number
from stt.spans import find_span
from stt.specs import get_task


def test_numbers_compare_by_value_across_languages():
    assert numbers_in("1,000 and 2.50 and 3", "en") == numbers_in("1.000 und 2,50 und 3", "de")
    assert numbers_in("48/2 = 24") == {"48": 1, "2": 1, "24": 1}
    assert numbers_in("3.5 kg", "en") != numbers_in("35 kg", "de")  # a lost decimal point is a lost number
    assert parse_number("12\u00a0500", "ru") == "12500" and parse_number("abc") is None


def test_math_check_rejects_a_lost_decimal_point_and_accepts_a_localised_one():
    spec = get_task("gsm8k")
    ex = {"id": "x", "answer": "7", "question": "A pen costs $3.5. How much?", "rationale": "It costs 2.50 each."}
    ok = {"id": "x", "answer": "7", "question": "Ein Stift kostet 3,5 $. Wie viel?",
          "rationale": "Er kostet je 2,50."}
    assert spec.check(ex, ok, "de") == []
    lost = {**ok, "question": "Ein Stift kostet 35 $. Wie viel?"}
    assert spec.check(ex, lost, "de") == ["lost_numbers:question"]


def test_spans_keep_offsets_through_case_folding():
    context = "Die Straße führt nach Berlin."
    # The case: casefold turns "ß" into "ss", so an offset found in folded text was off by one.
    start, end = find_span(context, "berlin")
    assert context[start:end] == "Berlin"
    start, end = find_span(context, "STRASSE")
    assert context[start:end] == "Straße"
    istanbul = "Er flog nach İstanbul und ＡＢＣ."  # İ folds to two characters; full-width letters to ASCII
    start, end = find_span(istanbul, "i̇stanbul")
    assert istanbul[start:end] == "İstanbul"
    start, end = find_span(istanbul, "abc")
    assert istanbul[start:end] == "ＡＢＣ"
    thai = "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย"
    start, end = find_span(thai, "เมืองหลวง")
    assert (start, thai[start:end]) == (17, "เมืองหลวง")
    assert find_span(context, "München") is None


def test_qa_check_keeps_the_contexts_spelling():
    spec = get_task("squad")
    ex = {"id": "q", "context": "The road leads to Berlin.", "question": "Where?", "answer_text": "Berlin"}
    tr = {"id": "q", "context": "Die Straße führt nach Berlin.", "question": "Wohin?", "answer_text": "berlin"}
    assert spec.check(ex, tr, "de") == []
    assert tr["answer_text"] == "Berlin" and tr["answer_start"] == 22
