"""Bad training-data rows: set aside with file, line and reason; the good rows go on; strict stops.

Hand-written files with one of each bad kind, and property-based tests (hypothesis) that mix valid and
invalid rows at random: no load crashes, and the good rows come out exactly (ids included).
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stt.badrows import BadRows
from stt.config import BadRowsConfig, TranslateConfig
from stt.engine_settings import TransformersSettings
from stt.errors import DataError
from stt.loaders import load_gsm8k, load_mnli, load_squad, load_xnli_dev
from stt.specs import get_task
from stt.validate import clean_completion, segment_reasons

GOOD = '{"question": "Tom has 3 apples. How many?", "answer": "He has 3.\\n#### 3"}'


def _write(path, lines: list[bytes | str]) -> None:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))


def test_each_kind_of_bad_gsm8k_row_is_set_aside_with_its_line_and_reason(tmp_path):
    f = tmp_path / "train.jsonl"
    _write(f, [
        GOOD,                                                            # 1 good
        '{"question": "q", "answer": ',                                  # 2 bad JSON
        '{"question": "q"}',                                             # 3 missing field
        '{"question": "q", "answer": "a\\n#### 1", "extra": 1}',         # 4 extra field
        '{"question": 5, "answer": "a\\n#### 1"}',                       # 5 wrong type
        b'{"question": "caf\xe9", "answer": "a\\n#### 1"}',              # 6 not UTF-8 (latin-1 byte)
        '{"question": "   ", "answer": "a\\n#### 1"}',                   # 7 empty text
        '{"question": "q", "answer": "no final line"}',                  # 8 no #### line
        '{"question": "q", "answer": "a\\n#### many"}',                  # 9 not a number
        json.dumps({"question": "x" * 30, "answer": "a\n#### 2"}),       # 10 too long (limit 28 below)
        '[1, 2]',                                                        # 11 not an object
        "",                                                              # blank: skipped, not a row
        GOOD.replace("3 apples", "4 pears").replace("#### 3", "#### 4"),  # 13 good
    ])
    bad = BadRows("set_aside", max_share=1.0, max_chars=28)
    rows = load_gsm8k(f, bad=bad)
    # Ids count every non-blank line: the good rows keep the ids they have in a clean file.
    assert [(r["id"], r["answer"]) for r in rows] == [("gsm8k:train:0", "3"), ("gsm8k:train:11", "4")]
    got = sorted((r["line"], r["reason"].split(" (")[0]) for r in bad.rows)
    assert got == [(2, "not valid JSON"), (3, "missing field 'answer'"), (4, "unexpected field 'extra'"),
                   (5, "field 'question' is int, not text"), (6, "not UTF-8"), (7, "field 'question' is empty"),
                   (8, "answer has no '#### <number>' line"), (9, "final answer 'many' is not a number"),
                   (10, "field 'question' is 30 characters"), (11, "not a JSON object")]
    assert all(r["file"] == str(f) for r in bad.rows)
    with pytest.raises(DataError, match=r"train.jsonl line 2: not valid JSON"):
        load_gsm8k(f, bad=BadRows("strict"))


def test_nli_and_qa_bad_rows(tmp_path):
    mnli = tmp_path / "mnli.jsonl"
    row = {"sentence1": "A man sleeps.", "sentence2": "A person rests.", "gold_label": "entailment", "pairID": "1"}
    _write(mnli, [json.dumps(row), json.dumps({**row, "gold_label": "maybe", "pairID": "2"}),
                  json.dumps({**row, "pairID": "1"}), json.dumps({**row, "gold_label": "-", "pairID": "3"}),
                  json.dumps({**row, "genre": "fiction", "pairID": "4"})])
    bad = BadRows("set_aside", max_share=1.0)
    assert [r["source_id"] for r in load_mnli(mnli, bad=bad)] == ["1", "4"]  # extra MultiNLI fields are fine
    assert [(r["line"], r["reason"]) for r in bad.rows] == [(2, "unknown label 'maybe'"),
                                                            (3, "duplicate pairID 1 (first on line 1)")]
    tsv = tmp_path / "xtreme_dev-en.tsv"
    _write(tsv, ["A\tB\tneutral", "A\tB", "A\tB\tsure", b"A\tB\xff\tneutral", "C\tD\tcontradiction",
                 "A\tB\tneutral\tx"])
    bad = BadRows("set_aside", max_share=1.0)
    assert [r["id"] for r in load_xnli_dev(tsv, bad=bad)] == ["xnli-dev:train:0", "xnli-dev:train:4"]
    assert sorted(r["line"] for r in bad.rows) == [2, 3, 4, 6]
    squad = tmp_path / "squad.json"
    qa = {"id": "q1", "question": "Who?", "answers": [{"text": "Ann", "answer_start": 0}]}
    squad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "Ann came.", "qas": [
        qa, {**qa, "id": "q2", "answers": []}, {**qa}, {**qa, "id": "q3", "answers": [{"text": "Ann"}]},
        {**qa, "id": "q4", "question": ""}, {**qa, "id": "q5"}]}]}]}))
    bad = BadRows("set_aside", max_share=1.0)
    assert [r["source_id"] for r in load_squad(squad, bad=bad)] == ["q1", "q5"]
    assert [r["line"] for r in bad.rows] == ["question q2", "question q1", "question q3", "question q4"]
    with pytest.raises(DataError, match="question q2: no answers"):
        load_squad(squad)  # strict by default (the benchmark test sets)


def test_the_run_fails_only_above_the_share_and_says_where_the_rejects_are(tmp_path):
    f = tmp_path / "train.jsonl"
    _write(f, [GOOD] * 9 + ["not json"])
    config = TranslateConfig(task="gsm8k", languages=("de",), input_path=f, out_dir=tmp_path / "out",
                             engine=TransformersSettings(), bad_rows=BadRowsConfig(max_share=0.05))
    from stt.stages.translate import BAD_ROWS_FILE, load_examples

    with pytest.raises(DataError, match=r"1 of 10 rows are bad \(10.0%, above bad_rows.max_share=5.0%\); first: "
                                        r"line 10: not valid JSON.*bad_rows.jsonl"):
        load_examples(config)
    _, examples = load_examples(config.model_copy(update={"bad_rows": BadRowsConfig(max_share=0.1)}))
    assert len(examples) == 9
    written = [json.loads(x) for x in (tmp_path / "out" / BAD_ROWS_FILE).read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in written] == [(10, "not valid JSON (Expecting value)")]
    with pytest.raises(DataError, match="line 10: not valid JSON"):
        load_examples(config.model_copy(update={"bad_rows": BadRowsConfig(mode="strict", max_share=1.0)}))


# --- property-based: random mixes of valid and invalid rows ---------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(str.strip)
_corrupt = st.sampled_from(["json", "missing", "extra", "type", "utf8", "empty", "no_final", "nan"])


def _gsm8k_line(valid: bool, question: str, answer: int, kind: str) -> bytes:
    row = {"question": question, "answer": f"Because.\n#### {answer}"}
    if valid:
        return json.dumps(row).encode()
    return {
        "json": json.dumps(row)[:-1].encode(), "missing": json.dumps({"question": question}).encode(),
        "extra": json.dumps({**row, "id": 1}).encode(), "type": json.dumps({**row, "question": [question]}).encode(),
        "utf8": json.dumps(row, ensure_ascii=False).encode() + b"\xff",
        "empty": json.dumps({**row, "question": " "}).encode(),
        "no_final": json.dumps({**row, "answer": "Because."}).encode(),
        "nan": json.dumps({**row, "answer": "Because.\n#### n/a"}).encode(),
    }[kind]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.booleans(), _text, st.integers(-10**6, 10**6), _corrupt), max_size=25))
def test_gsm8k_property_no_crash_and_every_good_row_kept(tmp_path, rows):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b"".join(_gsm8k_line(*r) + b"\n" for r in rows))
    bad = BadRows("set_aside", max_share=1.0)
    out = load_gsm8k(f, bad=bad)
    expected = [(f"gsm8k:train:{i}", q.strip(), str(a)) for i, (valid, q, a, _) in enumerate(rows) if valid]
    assert [(r["id"], r["question"], r["answer"]) for r in out] == expected
    assert len(bad.rows) == sum(not valid for valid, *_ in rows)
    assert sorted(r["line"] for r in bad.rows) == [i + 1 for i, (valid, *_) in enumerate(rows) if not valid]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.booleans(), _text.filter(lambda t: "\t" not in t and "\n" not in t and "\r" not in t),
                               st.sampled_from(["entailment", "neutral", "contradiction"]),
                               st.sampled_from(["fields", "label", "utf8", "empty"])), max_size=25))
def test_xnli_dev_property_no_crash_and_every_good_row_kept(tmp_path, rows):
    def line(valid, text, label, kind):
        if valid:
            return f"{text}\t{text}\t{label}".encode()
        return {"fields": f"{text}\t{label}".encode(), "label": f"{text}\t{text}\tyes".encode(),
                "utf8": f"{text}\t{text}\t{label}".encode() + b"\xfe", "empty": f"{text}\t \t{label}".encode()}[kind]

    f = tmp_path / "xtreme_dev-en.tsv"
    f.write_bytes(b"".join(line(*r) + b"\n" for r in rows))
    bad = BadRows("set_aside", max_share=1.0)
    out = load_xnli_dev(f, bad=bad)
    assert [(r["id"], r["premise"], r["label"]) for r in out] == [
        (f"xnli-dev:train:{i}", t, lab) for i, (valid, t, lab, _) in enumerate(rows) if valid]
    assert len(bad.rows) == sum(not valid for valid, *_ in rows)


@settings(max_examples=80, deadline=None)
@given(source=_text, output=st.text(max_size=120), finish=st.sampled_from(["stop", "length"]),
       language=st.sampled_from(["de", "th", "zh", "ru", "ja", "sw"]))
def test_validation_never_crashes_on_any_model_output(source, output, finish, language):
    cleaned = clean_completion(output, "German")
    reasons = segment_reasons(source, cleaned, language, finish)
    assert isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)
    if not cleaned:
        assert "empty" in reasons
    math = get_task("gsm8k")
    example = {"id": "x", "question": source, "rationale": source, "answer": "3"}
    assert isinstance(math.check(example, {"question": cleaned, "rationale": cleaned, "answer": "3"}, language), list)
