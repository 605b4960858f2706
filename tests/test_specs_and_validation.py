import pytest

from stt import segments
from stt.loaders import load_gsm8k, load_mnli, load_squad
from stt.specs import get_task
from stt.validate import clean_completion, repetitive, segment_reasons, still_english

from .conftest import DATA, FIXTURES


def _identity_round_trip(spec, example, language="de"):
    parts: dict[str, list[str]] = {}
    for seg in spec.segments(example):
        parts.setdefault(seg.field, []).append(seg.text)
    return spec.assemble(example, parts, language)


def test_math_round_trip_keeps_answer_and_lines():
    spec = get_task("gsm8k")
    ex = load_gsm8k(DATA / "gsm8k" / "train.jsonl")[0]
    segs = spec.segments(ex)
    assert [s.field for s in segs] == ["question", "rationale", "rationale"]
    out = _identity_round_trip(spec, ex)
    assert out == {"id": ex["id"], "answer": "72", "question": ex["question"], "rationale": ex["rationale"]}
    assert spec.check(ex, out, "de") == []


def test_math_lost_numbers_flagged():
    spec = get_task("gsm8k")
    ex = load_gsm8k(DATA / "gsm8k" / "train.jsonl")[0]
    out = _identity_round_trip(spec, ex)
    out["rationale"] = out["rationale"].replace("24", "")
    assert spec.check(ex, out, "de") == ["lost_numbers:rationale"]


def test_formula_only_segment_is_copied_not_translated():
    spec = get_task("gsm8k")
    ex = {"id": "x", "question": "How many?", "rationale": "Tom has 3.\n3*2 = 6", "answer": "6"}
    assert [s.translate for s in spec.segments(ex)] == [True, True, False]


def test_qa_round_trip_and_answer_offset():
    spec = get_task("squad")
    ex = load_squad(DATA / "xquad" / "xquad.en.json")[0]
    assert len([s for s in spec.segments(ex) if s.field == "context"]) > 1  # split into sentences
    out = _identity_round_trip(spec, ex)
    assert spec.check(ex, out, "de") == []
    assert out["context"][out["answer_start"] :].startswith(out["answer_text"])
    # lower-cased answer: found case-insensitively, span taken from the context
    out["answer_text"] = out["answer_text"].lower()
    assert spec.check(ex, out, "de") == []
    assert out["context"][out["answer_start"] :].startswith(out["answer_text"])
    out["answer_text"] = "not in there at all"
    assert spec.check(ex, out, "de") == ["answer_not_in_context"]
    assert out["answer_start"] == -1


def test_nli_round_trip_keeps_label():
    spec = get_task("mnli")
    ex = load_mnli(FIXTURES / "mnli_train_sample.jsonl")[1]
    assert len([s for s in spec.segments(ex) if s.field == "premise"]) == 2
    out = _identity_round_trip(spec, ex)
    assert out["label"] == "entailment" and out["premise"] == ex["premise"]


def test_sentence_join_per_script():
    assert segments.join(["你好。", "再见。"], "sentences", "zh") == "你好。再见。"
    assert segments.join(["Hallo.", "Tschüss."], "sentences", "de") == "Hallo. Tschüss."


@pytest.mark.parametrize("raw,clean", [
    (" Wie viel hat sie verdient?", "Wie viel hat sie verdient?"),
    ("German: Wie viel hat sie verdient?\nEnglish: next", "Wie viel hat sie verdient?"),
    (" Sie hat 5 Äpfel. English: She has", "Sie hat 5 Äpfel."),
    ("  \n", ""),
])
def test_clean_completion(raw, clean):
    assert clean_completion(raw, "German") == clean


GOOD = [
    ("Weng earns $12 an hour for babysitting.", "Weng verdient 12 $ pro Stunde fürs Babysitten.", "de"),
    ("How many clips did Natalia sell?", "นาตาเลียขายคลิปไปกี่อัน", "th"),
    ("How many clips did Natalia sell?", "娜塔莉亚卖了多少个夹子？", "zh"),
    ("Working 50 minutes, she earned $10.", "Работая 50 минут, она заработала 10 долларов.", "ru"),
]


@pytest.mark.parametrize("source,output,lang", GOOD)
def test_good_translations_pass(source, output, lang):
    assert segment_reasons(source, output, lang, "stop") == []


@pytest.mark.parametrize("source,output,lang,reason", [
    ("A train travels 60 kilometers per hour.", "", "de", "empty"),
    ("A train travels 60 kilometers per hour.", "A train travels 60 kilometers per hour.", "de",
     "identical_to_source"),
    ("There are 120 - 36 = 84 pages left to be read.", "มี 120 - 36 = 84 pages left to be read.", "th",
     "still_english"),
    ("How much did she earn?", "She earned how much of the money she had?", "de", "still_english"),
    ("Natalia sold 48+24 = 72 clips.", "Natalia hat 48+24+24+24+24+24+24+24+24+24+24+24+24 verkauft", "de",
     "no_stop"),
    ("Natalia sold 72 clips altogether in April and May.",
     "Sie hat sie hat sie hat sie hat sie hat sie hat sie hat sie hat", "de", "repetition"),
    ("Betty is saving money for a new wallet which costs $100.", "Geld.", "de", "length_ratio"),
])
def test_bad_translations_rejected_with_reason(source, output, lang, reason):
    finish = "length" if reason == "no_stop" else "stop"
    assert reason in segment_reasons(source, output, lang, finish)


def test_helpers():
    assert not still_english("Wie viele Clips hat Natalia verkauft?", "de")
    assert repetitive("ดีดีดีดีดีดีดีดีดีดีดีดีดีดีดีดีดีดีดีดีดีดีดีดี")
    assert not repetitive("Natalia hat im April 48 Clips verkauft und im Mai halb so viele.")
