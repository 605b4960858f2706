"""Test-set loaders on the real MGSM, XQuAD and XNLI files."""

from collections import Counter

import pytest

from stt.errors import ConfigError
from stt.loaders import XQUAD_EVAL_ARTICLES, XQUAD_TRAIN_ARTICLES, load_squad
from stt.specs import load_test_set
from stt.testsets import load_mgsm, load_xnli, load_xquad_eval

from .conftest import DATA


def test_mgsm_has_250_parallel_problems_per_language():
    en, de = load_mgsm(DATA, "en"), load_mgsm(DATA, "de")
    assert len(en) == len(de) == 250
    assert de[0]["question"].startswith("Janets Enten legen 16 Eier") and de[0]["answer"] == "18"
    assert [r["answer"] for r in en] == [r["answer"] for r in de]  # same problems, same order


def test_xquad_eval_uses_only_held_out_articles():
    ev = load_xquad_eval(DATA, "th")
    train_paragraphs = {r["paragraph"] for r in load_squad(DATA / "xquad" / "xquad.en.json",
                                                           articles=XQUAD_TRAIN_ARTICLES)}
    assert ev and all(int(r["paragraph"].split(":")[0]) in XQUAD_EVAL_ARTICLES for r in ev)
    assert not train_paragraphs & {r["paragraph"] for r in ev}
    assert all(r["context"][r["answer_start"]:].startswith(r["answer_text"]) for r in ev)
    assert all(r["answers"] for r in ev)
    en = load_xquad_eval(DATA, "en")
    assert [r["index"] for r in en] == [r["index"] for r in ev]  # parallel across languages


def test_xnli_test_labels_attach_and_are_balanced():
    test = load_xnli(DATA, "de", "test")
    assert len(test) == 5010
    assert Counter(r["label"] for r in test) == {"entailment": 1670, "neutral": 1670, "contradiction": 1670}
    assert test[0]["label"] == "contradiction" and test[0]["hypothesis"] == "Ich habe nicht wieder mit ihm gesprochen."
    dev = load_xnli(DATA, "th", "dev")
    assert len(dev) == 2490 and dev[0]["label"] == "neutral"
    # A subset keeps the label balance: every premise carries one hypothesis per label.
    assert Counter(r["label"] for r in load_test_set("mnli", DATA, "zh", 9)) == {
        "entailment": 3, "neutral": 3, "contradiction": 3}


def test_unknown_test_set_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown task 'nope': choose from gsm8k, squad, mnli"):
        load_test_set("nope", DATA, "de")


def test_seeded_sample_is_the_same_items_in_every_language_and_not_a_prefix():
    from stt.config import EvalConfig
    from stt.specs import test_items

    config = EvalConfig(limit=300, sample_seed=0)
    de, th = test_items("mnli", DATA, "de", config), test_items("mnli", DATA, "th", config)
    full_de, full_th = load_xnli(DATA, "de", "test"), load_xnli(DATA, "th", "test")
    # Same positions of the parallel test set in both languages, in file order, no repeats.
    pos_de = [full_de.index(r) for r in de]
    assert pos_de == [full_th.index(r) for r in th] == sorted(set(pos_de)) and len(pos_de) == 300
    assert pos_de != list(range(300)) and max(pos_de) > 4000  # drawn from the whole file, not its start
    assert test_items("mnli", DATA, "de", config) == de  # fixed by the seed
    assert test_items("mnli", DATA, "de", EvalConfig(limit=300, sample_seed=1)) != de
    assert test_items("mnli", DATA, "de", EvalConfig(limit=300)) == full_de[:300]
