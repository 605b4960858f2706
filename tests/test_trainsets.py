"""Training-set mixing and the answer-only loss mask."""

import json

import pytest

from stt.loaders import load_gsm8k
from stt.specs import get_task
from stt.stages.finetune import pad_collator, tokenize_pairs
from stt.templates import math_pair, qa_pair
from stt.trainsets import build_rows

from .conftest import DATA

ENGLISH = load_gsm8k(DATA / "gsm8k" / "train.jsonl")[:2]
# Shaped like the translate stage's accepted rows (same id, translated fields under their English names).
GERMAN = [{"id": ENGLISH[0]["id"], "answer": ENGLISH[0]["answer"], "question": "Natalia verkaufte im April Clips an 48 "
           "ihrer Freunde und im Mai halb so viele. Wie viele Clips verkaufte sie im April und Mai insgesamt?",
           "rationale": "Natalia verkaufte im Mai 48/2 = 24 Clips.\nNatalia verkaufte insgesamt 48+24 = 72 Clips."}]


def test_english_set_is_the_english_examples_only():
    rows = build_rows(get_task("gsm8k"), "english", None, ENGLISH, [], seed=0)
    assert sorted(r["id"] for r in rows) == [e["id"] for e in ENGLISH]
    assert {r["variant"] for r in rows} == {"english"}


def test_self_translate_train_adds_the_translations():
    rows = build_rows(get_task("gsm8k"), "self-translate-train", "de", ENGLISH, GERMAN, seed=0)
    assert len(rows) == 3
    de = [r for r in rows if r["language"] == "de"]
    assert len(de) == 1 and de[0]["prompt"] == "Question: " + GERMAN[0]["question"] + "\nAnswer:"
    assert de[0]["target"].endswith("\nThe answer is 72.")  # the kept final answer closes the target


def test_code_switch_pairs_swap_field_groups():
    rows = build_rows(get_task("gsm8k"), "code-switch", "de", ENGLISH, GERMAN, seed=0)
    mixed = {r["variant"]: r for r in rows if r["variant"].startswith("code-switch")}
    assert set(mixed) == {"code-switch-0", "code-switch-1"}
    assert "Natalia verkaufte im April" in mixed["code-switch-0"]["prompt"]  # German question
    assert "Natalia sold 48/2" in mixed["code-switch-0"]["target"]  # English answer
    assert "Natalia sold clips" in mixed["code-switch-1"]["prompt"]
    assert "verkaufte im Mai" in mixed["code-switch-1"]["target"]


def test_code_switch_keeps_a_qa_answer_inside_its_context():
    spec = get_task("squad")
    en = {"id": "q:0", "source_id": "a", "title": "t", "paragraph": "0:0", "context": "Paris is in France.",
          "question": "Where is Paris?", "answer_text": "France", "answer_start": 12}
    de = {**en, "context": "Paris liegt in Frankreich.", "question": "Wo liegt Paris?", "answer_text": "Frankreich",
          "answer_start": 15}
    for r in build_rows(spec, "code-switch", "de", [en], [de], seed=0):
        f = json.loads(r["fields"])
        assert f["context"][f["answer_start"]:].startswith(f["answer_text"])


@pytest.mark.model
def test_loss_only_on_answer_tokens_and_truncation_keeps_the_answer():
    from transformers import AutoTokenizer

    from stt.models import hf_folder, resolve_model

    tok = AutoTokenizer.from_pretrained(hf_folder(resolve_model("gemma3-270m")))
    pair = math_pair(ENGLISH[0])
    [f], aside, shortened = tokenize_pairs(tok, [{"prompt": pair.prompt, "target": pair.target}], max_length=512)
    assert aside == [] and shortened == 0
    n_prompt = len(tok(pair.prompt)["input_ids"])
    assert f["labels"][:n_prompt] == [-100] * n_prompt
    assert tok.decode([t for t in f["labels"] if t != -100]) == pair.target + tok.eos_token
    assert f["labels"][-1] == tok.eos_token_id

    # A long QA context whose answer ("Zanzibar", said once) is near its end: the beginning is cut, the
    # answer stays in the kept context and is the whole target.
    filler = " ".join(f"Sentence {i} is about the weather." for i in range(60))
    late = {"context": filler + " The treaty was signed in Zanzibar.", "question": "Where was it signed?",
            "answer_text": "Zanzibar"}
    early = {"context": "The treaty was signed in Zanzibar. " + filler, "question": "Where was it signed?",
             "answer_text": "Zanzibar"}
    rows = [{**vars(qa_pair(ex)), "fields": json.dumps(ex)} for ex in (late, early)]
    features, aside, shortened = tokenize_pairs(tok, rows, max_length=64)
    assert shortened == 1 and len(features) == 1
    [g] = features
    assert len(g["input_ids"]) == 64
    kept_prompt = tok.decode([t for t, lab in zip(g["input_ids"], g["labels"], strict=True) if lab == -100])
    assert "Zanzibar" in kept_prompt and "Sentence 0 " not in kept_prompt
    assert tok.decode([t for t in g["labels"] if t != -100]) == " Zanzibar" + tok.eos_token
    # The answer of the other row was in the part that had to go: set aside with the reason, not trained on.
    assert [a["reason"] for a in aside] == ["answer_cut_from_context"]
    # A target longer than max_length cannot be trained on at all.
    long_target = [{"prompt": "Question: why?\nAnswer:", "target": " because" * 80}]
    assert [a["reason"] for a in tokenize_pairs(tok, long_target, max_length=64)[1]] == ["target_too_long"]
    batch = pad_collator(tok)([f, g])
    width = max(len(f["input_ids"]), len(g["input_ids"]))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    for i, row in enumerate((f, g)):  # each row's own tokens first, then padding out of attention and loss
        n = len(row["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert batch["labels"][i, :n].tolist() == row["labels"]
        assert batch["input_ids"][i, n:].tolist() == [tok.pad_token_id] * (width - n)
        assert batch["labels"][i, n:].tolist() == [-100] * (width - n)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)


def _translate_dir(folder, english, german):
    """A finished translate stage's folder, written by hand: one German shard over `english`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "_input").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(english), folder / "_input" / "shard-00000.parquet")
    pq.write_table(pa.Table.from_pylist(german), folder / "de-00000.parquet")
    (folder / "_manifest.json").write_text(json.dumps({"plan": ["de-00000"], "shards": {"de-00000": {
        "language": "de", "file": "de-00000.parquet", "input_file": "_input/shard-00000.parquet",
        "sha256": "a", "rejects_sha256": None, "input_sha256": "b"}}}))
    return folder


def test_equal_data_control_adds_unused_english_items_one_per_accepted_translation(tmp_path):
    from stt.config import BuildConfig
    from stt.errors import DataError
    from stt.stages.build import build_set

    source = DATA / "xnli" / "xtreme_dev-en.tsv"
    dev = get_task("mnli").load(source)
    german = get_task("mnli").load(DATA / "xnli" / "xtreme_dev-de.tsv")
    # 4 English items translated, 2 translations accepted (items 0 and 2).
    folder = _translate_dir(tmp_path / "translate", dev[:4], [{**german[0], "id": dev[0]["id"]},
                                                              {**german[2], "id": dev[2]["id"]}])
    info = build_set("mnli", "english-equal-data", "de", folder, tmp_path / "sets", BuildConfig(), source)
    rows = pq_rows(tmp_path / "sets" / "english-equal-data-de" / "data.parquet")
    # As many rows as English + German (4 + 2), all English, all distinct: items 0-3 and the next two, 4 and 5.
    assert info["rows"] == 6 and {r["language"] for r in rows} == {"en"}
    assert sorted(r["id"] for r in rows) == sorted(d["id"] for d in dev[:6])
    stt = build_set("mnli", "self-translate-train", "de", folder, tmp_path / "sets", BuildConfig(), source)
    assert stt["rows"] == info["rows"]
    with pytest.raises(DataError, match="more English items needed"):  # a pool too small says so
        (tmp_path / "small").mkdir()
        small = tmp_path / "small" / "xtreme_dev-en.tsv"  # the first 5 items: 1 unused, 2 needed
        small.write_text("\n".join(source.read_text().splitlines()[:5]) + "\n")
        build_set("mnli", "english-equal-data", "de", folder, tmp_path / "sets2", BuildConfig(), small)


def pq_rows(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_the_all_items_controls_take_every_translated_items_human_translation_whatever_was_accepted(tmp_path):
    """Issue 37: the positive control no longer depends on the model's translations. 4 English items translated,
    2 accepted: human-translate-train-all has the 4 English rows and the 4 human German ones (1:1), human-only
    the 4 German rows alone; the same-items control keeps its 2."""
    from stt.config import BuildConfig
    from stt.stages.build import build_set

    source = DATA / "xnli" / "xtreme_dev-en.tsv"
    dev = get_task("mnli").load(source)
    german = get_task("mnli").load(DATA / "xnli" / "xtreme_dev-de.tsv")
    folder = _translate_dir(tmp_path / "translate", dev[:4], [{**german[0], "id": dev[0]["id"]},
                                                              {**german[2], "id": dev[2]["id"]}])
    ids = sorted(d["id"] for d in dev[:4])
    both = build_set("mnli", "human-translate-train-all", "de", folder, tmp_path / "sets", BuildConfig(), source)
    rows = pq_rows(tmp_path / "sets" / "human-translate-train-all-de" / "data.parquet")
    assert both["rows"] == 8 and both["mixing"] == {"english": 4, "human": 4}
    assert sorted(r["id"] for r in rows if r["language"] == "de") == ids
    assert sorted(r["id"] for r in rows if r["language"] == "en") == ids
    # The German row of item 1 (not accepted) is XNLI's human premise, in the prompt.
    assert any(german[1]["premise"] in r["prompt"] for r in rows if r["language"] == "de")
    alone = build_set("mnli", "human-only", "de", folder, tmp_path / "sets", BuildConfig(), source)
    rows = pq_rows(tmp_path / "sets" / "human-only-de" / "data.parquet")
    assert alone["rows"] == 4 and {r["language"] for r in rows} == {"de"} and sorted(r["id"] for r in rows) == ids
    same = build_set("mnli", "human-translate-train", "de", folder, tmp_path / "sets", BuildConfig(), source)
    assert same["mixing"] == {"english": 4, "human": 2}
