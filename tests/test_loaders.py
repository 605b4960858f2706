import hashlib
import re

import pytest

from stt.errors import DataError
from stt.loaders import XQUAD_EVAL_ARTICLES, XQUAD_TRAIN_ARTICLES, load_gsm8k, load_mnli, load_squad
from stt.specs import get_task

from .conftest import DATA, FIXTURES


def _sha_from_source(folder: str, name: str) -> str:
    text = (DATA / folder / "SOURCE.md").read_text()
    return re.search(rf"\|\s*{re.escape(name)}\s*\|.*?([0-9a-f]{{64}})", text).group(1)


@pytest.mark.parametrize("folder,name", [("gsm8k", "train.jsonl"), ("xquad", "xquad.en.json"),
                                         ("mgsm", "mgsm_exemplars.jsonl")])
def test_real_files_match_their_published_checksums(folder, name):
    digest = hashlib.sha256((DATA / folder / name).read_bytes()).hexdigest()
    assert digest == _sha_from_source(folder, name)


def test_gsm8k_train_loads_in_full_with_rationale_and_answer():
    rows = load_gsm8k(DATA / "gsm8k" / "train.jsonl")
    assert len(rows) == 7473
    first = rows[0]
    assert first["id"] == "gsm8k:train:0"
    assert first["question"].startswith("Natalia sold clips to 48")
    assert first["answer"] == "72"
    assert "<<" not in first["rationale"] and "####" not in first["rationale"]
    assert first["rationale"].split("\n") == ["Natalia sold 48/2 = 24 clips in May.",
                                              "Natalia sold 48+24 = 72 clips altogether in April and May."]
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", r["answer"]) for r in rows)  # commas stripped


def test_xquad_halves_split_by_article_with_no_shared_paragraph():
    path = DATA / "xquad" / "xquad.en.json"
    train = load_squad(path, dataset="xquad.en", articles=XQUAD_TRAIN_ARTICLES)
    held_out = load_squad(path, dataset="xquad.en", split="eval", articles=XQUAD_EVAL_ARTICLES)
    assert len(train) + len(held_out) == 1190
    assert not {r["context"] for r in train} & {r["context"] for r in held_out}
    for r in train[:50]:
        assert r["context"][r["answer_start"] : r["answer_start"] + len(r["answer_text"])] == r["answer_text"]
    # the default QA source of the task spec is that training half
    spec = get_task("squad")
    assert [r["id"] for r in spec.load(spec.default_source(DATA))] == [r["id"] for r in train]


def test_ids_are_stable_across_loads():
    path = DATA / "xquad" / "xquad.en.json"
    a = load_squad(path, articles=XQUAD_TRAIN_ARTICLES)
    b = load_squad(path)
    assert {r["id"]: r["source_id"] for r in a}.items() <= {r["id"]: r["source_id"] for r in b}.items()


def test_mnli_fixture_in_release_format():
    rows = load_mnli(FIXTURES / "mnli_train_sample.jsonl")
    assert [r["label"] for r in rows] == ["neutral", "entailment", "contradiction"]  # '-' row skipped
    assert rows[2]["id"] == "mnli:train:2" and rows[2]["source_id"] == "900003c"


def test_bad_input_gives_a_specific_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a\\n#### 1"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2: missing field 'answer'"):
        load_gsm8k(bad)
    bad.write_text('{"question": "q", "answer": "a\\n#### 1"}\nnot json\n')
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        load_gsm8k(bad)
    with pytest.raises(DataError, match="not found"):
        load_mnli(tmp_path / "missing.jsonl")
