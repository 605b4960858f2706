"""A user's own classification dataset as a task, with no code: declared in YAML, run end to end from the
command line. PAWS-X is declared the same way (configs/tasks/pawsx.yaml)."""

import csv
import json
import os
import subprocess
import sys
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from .conftest import DATA, ROOT

# Real XNLI rows, two of its labels, under the user's own names: a claim follows from a passage or not.
VERDICT = {"entailment": "holds", "contradiction": "fails"}  # the file's label -> its value in the user's files
WORDS = {"holds": "yes", "fails": "no"}  # the user's label -> the word the model answers


def _xnli_dev_en(n: int) -> list[tuple[str, str, str]]:
    rows = [line.rstrip("\n").split("\t") for line in (DATA / "xnli" / "xtreme_dev-en.tsv").open(encoding="utf-8")]
    return [(p, h, VERDICT[label]) for p, h, label in rows if label in VERDICT][:n]


def _xnli_test(language: str, n: int) -> list[tuple[str, str, str]]:
    labels = (DATA / "xnli" / "xnli_test_labels.txt").read_text(encoding="utf-8").split()
    rows = [line.rstrip("\n").split("\t")[:2]
            for line in (DATA / "xnli" / f"xtreme_test-{language}.tsv").open(encoding="utf-8")]
    return [(p, h, VERDICT[label]) for (p, h), label in zip(rows, labels, strict=True) if label in VERDICT][:n]


def _task_folder(tmp_path, **changes):
    """A user's folder: a CSV training file and Parquet test files with their own column names, and the YAML."""
    folder = tmp_path / "mytasks"
    folder.mkdir(exist_ok=True)
    with open(folder / "claims_train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["passage_text", "claim_text", "verdict"])
        w.writerows(_xnli_dev_en(8))
    for language in ("de",):
        rows = _xnli_test(language, 12)
        pq.write_table(pa.table({"body": [r[0] for r in rows], "statement": [r[1] for r in rows],
                                 "outcome": [r[2] for r in rows]}), folder / f"claims_test_{language}.parquet")
    definition = {
        "name": "claims", "answer": "label", "fields": ["passage", "claim"], "labels": WORDS,
        "prompt": "Passage: {passage}\nClaim: {claim}\nDoes the claim hold:",
        "train": {"path": "claims_train.csv", "columns": {"passage": "passage_text", "claim": "claim_text",
                                                          "label": "verdict"}},
        "test": {"path": "claims_test_{language}.parquet", "columns": {"passage": "body", "claim": "statement",
                                                                         "label": "outcome"}},
    }
    definition.update(changes)
    (folder / "claims.yaml").write_text(yaml.safe_dump(definition, allow_unicode=True))
    return folder


def _stt(*args, tasks_dir, cwd=ROOT, timeout=900):
    env = {**os.environ, "STT_TASK_DIRS": str(tasks_dir), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "stt_app.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


@pytest.mark.model
@pytest.mark.full  # 84 s; the default tier keeps the declared task's plan, data, prompts and validation below
def test_a_users_own_dataset_runs_end_to_end_from_the_command_line(tmp_path):
    folder = _task_folder(tmp_path)
    # As small as the whole method gets: 4 examples translated, one step per adapter, 8 test items.
    run = {"name": "claims-run", "tasks": ["claims"], "languages": ["de"], "limit": 4, "shard_size": 4,
           "engine": {"kind": "llama-cpp", "model": "gemma3-270m", "batch_size": 8},
           "generation": {"max_new_tokens_cap": 64},
           "train": {"rank": 4, "alpha": 8, "batch_size": 4, "max_steps": 1, "save_steps": 1, "max_length": 192},
           "eval": {"limit": 8, "include_english": False, "batch_size": 8},
           "controls": {"equal_steps": False}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run))
    out = tmp_path / "run"
    done = _stt("run", "--config", str(config), "--run-dir", str(out), "--no-prefect", tasks_dir=folder)
    assert done.returncode == 0, done.stderr[-3000:]

    # The report's table: the task's row in German, both columns scored on the first 8 items of the test file.
    results = pd.read_parquet(out / "results.parquet")
    [row] = results.to_dict("records")
    assert (row["task"], row["language"], row["n"], row["metric"]) == ("claims", "de", 8, "accuracy_calibrated")
    assert row["zero_shot"] == row["zero_shot"] and row["stt"] == row["stt"]  # not NaN
    assert "claims" in (out / "report.md").read_text()

    # Gold labels are the test file's, mapped by the declared words, in the file's order.
    expected = [WORDS[r[2]] for r in _xnli_test("de", 8)]
    predictions = pd.read_parquet(row["stt_predictions"])
    assert predictions["gold"].tolist() == expected
    assert predictions["prompt"].iloc[0].startswith("Passage: " + _xnli_test("de", 1)[0][0])
    scores = [json.loads(o) for o in predictions["output"]]
    assert all(set(s) == {"yes", "no"} for s in scores)  # both label words scored for every item

    # Translated training rows keep the user's labels (mapped), joined to the English rows by id.
    english = {f"claims:train:{i}": WORDS[r[2]] for i, r in enumerate(_xnli_dev_en(4))}
    translated = pd.read_parquet(out / "claims" / "translate", columns=["id", "label", "passage", "claim"])
    # Each of the 4 English examples is either kept (translated) or set aside with a reason, none lost.
    rejects = sorted((out / "claims" / "translate" / "_rejects").glob("*.parquet"))
    set_aside = sum(len(pd.read_parquet(p)) for p in rejects)
    assert len(set(translated["id"])) + set_aside == 4 and len(translated) > 0
    assert all(english[i] == label for i, label in zip(translated["id"], translated["label"], strict=True))
    training = pd.read_parquet(out / "claims" / "sets" / "self-translate-train-de" / "data.parquet")
    assert Counter(training["variant"]) == {"english": 4, "translated": len(translated)}
    assert all(t.startswith(" yes") or t.startswith(" no") for t in training["target"])


@pytest.mark.parametrize("changes,message", [
    ({"train": {"path": "claims_train.csv", "columns": {"passage": "passage_text", "claim": "claim_text",
                                                        "label": "verdict", "topic": "x"}}},
     "train.columns: unknown field 'topic'"),
    ({"labels": {"holds": "yes"}}, "labels: at least two"),
    ({"prompt": "Passage: {passage}\nDoes it hold:"}, "prompt: no {claim} placeholder for field 'claim'"),
    ({"answer": "essay"}, "answer: Input should be 'label', 'span' or 'number'"),
    ({"answer": "span"}, "labels: only for answer: label (this task's answer is a span)"),
    ({"train": {"path": "no_such_file.csv"}}, "input file not found: "),
    ({"train": {"path": "claims_train.csv", "columns": {"passage": "text", "claim": "claim_text",
                                                        "label": "verdict"}}},
     "train: column 'text' (field 'passage') is not in"),
    ({"labels": {"holds": "yes", "maybe": "perhaps"}}, "label 'fails' is not one of holds, maybe"),
])
def test_a_bad_task_definition_stops_with_one_line_naming_the_file_and_field(tmp_path, changes, message):
    folder = _task_folder(tmp_path, **changes)
    done = _stt("translate", "--task", "claims", "--languages", "de", "--limit", "2", "--out", str(tmp_path / "t"),
                "--no-prefect", tasks_dir=folder, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    *warnings, last = done.stderr.strip().splitlines()
    assert last.startswith("error: ") and message in last, done.stderr
    if "label 'fails'" in message:  # rows the labels do not cover are set aside (a warning), then too many stop it
        assert "claims.yaml: labels" in last and "bad_rows.max_share" in last
    else:
        assert not warnings, done.stderr  # one line
    if "file not found" not in message:
        assert "claims.yaml" in last  # the definition's own file is named


def test_pawsx_is_one_declared_file():
    from stt.specs import get_task, known_tasks

    assert "pawsx" in known_tasks()
    spec = get_task("pawsx")
    assert spec.source == ROOT / "configs" / "tasks" / "pawsx.yaml"
    train = spec.load(spec.default_source(DATA))
    assert len(train) == 2000  # SOURCE.md: xtreme_dev-en.tsv, 2,000 rows
    test = spec.test_items(DATA, "de")
    # SOURCE.md: the de test labels are 1,105 x 0 and 895 x 1; 0 -> "no", 1 -> "yes".
    assert Counter(r["label"] for r in test) == {"no": 1105, "yes": 895}
    with open(DATA / "pawsx" / "hf_test-de.tsv", encoding="utf-8") as f:
        next(f)
        first = f.readline().rstrip("\n").split("\t")
    assert (test[0]["sentence1"], test[0]["sentence2"]) == (first[1].strip(), first[2].strip())
    # Human translate-train: row i of the German dev file translates English row i.
    human = spec.human_examples(spec.default_source(DATA), "de")
    assert len(human) == 2000 and [h["id"] for h in human] == [t["id"] for t in train]
    assert human[0]["sentence1"].startswith("Durch die Zusammenlegung des Four Rivers Council")
    # PAWS-X labels are per language (SOURCE.md): the human side keeps its own, almost always the same.
    assert sum(h["label"] == t["label"] for h, t in zip(human, train, strict=True)) / 2000 > 0.95


def test_pawsx_plans_like_a_built_in_task(tmp_path):
    from stt.config import RunConfig
    from stt.jobs import stage_jobs

    config = RunConfig(tasks=("pawsx",), languages=("de",), limit=16, run_dir=tmp_path,
                       eval={"include_english": False}, controls={"human_translate_train": True})
    assert [j.name for j in stage_jobs(config, "build")] == ["english", "self-translate-train-de",
                                                              "human-translate-train-de"]
    assert [j.name for j in stage_jobs(config, "quality")] == ["de"]
    assert {j.name for j in stage_jobs(config, "evaluate")} == {"base-de", "zero-shot-de", "zero-shot-equal-steps-de",
                                                                 "self-translate-train-de",
                                                                 "human-translate-train-de"}


def _xquad(language: str, articles: range, n: int) -> list[tuple[str, str, str]]:
    data = json.loads((DATA / "xquad" / f"xquad.{language}.json").read_text(encoding="utf-8"))["data"]
    out = [(p["context"], qa["question"], qa["answers"][0]["text"])
           for a in data[articles.start:articles.stop] for p in a["paragraphs"] for qa in p["qas"]]
    return out[:n]


def _span_task(tmp_path):
    """Extractive QA under the user's names: JSONL training rows (English XQuAD, articles 0-23), a CSV test file
    (German XQuAD, articles 24-47)."""
    folder = tmp_path / "spantasks"
    folder.mkdir()
    with open(folder / "faq_train.jsonl", "w", encoding="utf-8") as f:
        for c, q, a in _xquad("en", range(0, 24), 6):
            f.write(json.dumps({"passage": c, "ask": q, "reply": a}, ensure_ascii=False) + "\n")
    with open(folder / "faq_test_de.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["passage", "ask", "reply"])
        w.writerows(_xquad("de", range(24, 48), 4))
    (folder / "faq.yaml").write_text(yaml.safe_dump({
        "name": "faq", "answer": "span", "fields": {"passage": "sentences", "question": "whole"},
        "context": "passage", "label": "answer", "prompt": "Context: {passage}\nQuestion: {question}\nAnswer:",
        "train": {"path": "faq_train.jsonl", "columns": {"question": "ask", "answer": "reply"}},
        "test": {"path": "faq_test_{language}.csv", "columns": {"question": "ask", "answer": "reply"}}}))
    return folder


def _number_task(tmp_path):
    """Math word problems under the user's names: a CSV of GSM8K rows (problem, worked solution, result) and
    MGSM's German TSV as it ships (no header: question, answer)."""
    folder = tmp_path / "numtasks"
    folder.mkdir()
    with open(folder / "sums_train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["problem", "worked", "result"])
        for line in (DATA / "gsm8k" / "train.jsonl").open(encoding="utf-8").readlines()[:5]:
            row = json.loads(line)
            body, _, final = row["answer"].rpartition("####")
            w.writerow([row["question"], body.strip(), final.strip()])
    (folder / "sums.yaml").write_text(yaml.safe_dump({
        "name": "sums", "answer": "number", "fields": {"problem": "whole"}, "label": "result",
        "rationale": "worked", "prompt": "Question: {problem}\nAnswer:",
        "train": {"path": "sums_train.csv"},
        "test": {"path": str(DATA / "mgsm" / "mgsm_{language}.tsv"), "header": False,
                 "columns": ["problem", "result"]}}))
    return folder


def test_a_declared_span_task_keeps_answers_inside_their_context(tmp_path, monkeypatch):
    from stt.specs import get_task

    monkeypatch.setenv("STT_TASK_DIRS", str(_span_task(tmp_path)))
    spec = get_task("faq")
    train = spec.load(spec.default_source(DATA))
    english = _xquad("en", range(0, 24), 6)
    assert [(r["passage"], r["question"], r["answer"]) for r in train] == english
    assert spec.primary_choices[0] == "f1" and spec.translated == {"passage": "sentences", "question": "whole",
                                                                   "answer": "whole"}
    assert spec.pair(train[0]).target == " " + english[0][2]
    # The human German of the same XQuAD question passes the span check; an answer the context lacks does not.
    german = json.loads((DATA / "xquad" / "xquad.de.json").read_text(encoding="utf-8"))["data"][0]["paragraphs"][0]
    de = {"passage": german["context"], "question": german["qas"][0]["question"],
          "answer": german["qas"][0]["answers"][0]["text"]}
    assert spec.check(train[0], dict(de), "de") == []
    assert spec.check(train[0], {**de, "answer": "Zanzibar"}, "de") == ["answer_not_in_context"]
    test = spec.test_items(DATA, "de")
    assert [(r["passage"], r["answer"]) for r in test] == [(c, a) for c, _, a in _xquad("de", range(24, 48), 4)]
    # SQuAD F1 by hand: prediction "Denver Broncos" against gold "Broncos": 2*(1/2*1)/(1/2+1) = 66.7.
    rows = [{"prediction": "Denver Broncos", "gold": json.dumps(["Broncos"]), "output": "Denver Broncos"},
            {"prediction": "Broncos", "gold": json.dumps(["the Broncos"]), "output": "Broncos"}]
    scores = spec.item_scores("de", rows)
    assert [round(x, 4) for x in scores["f1"]] == [0.6667, 1.0] and scores["exact_match"] == [0.0, 1.0]


def test_a_declared_number_task_reads_numbers_and_keeps_them_through_translation(tmp_path, monkeypatch):
    from stt.specs import get_task

    monkeypatch.setenv("STT_TASK_DIRS", str(_number_task(tmp_path)))
    spec = get_task("sums")
    train = spec.load(spec.default_source(DATA))
    assert train[0]["result"] == "72" and train[0]["problem"].startswith("Natalia sold clips to 48")
    pair = spec.pair(train[0])
    assert pair.prompt.startswith("Question: Natalia") and pair.target.endswith("\nThe answer is 72.")
    assert pair.target.startswith(" Natalia sold 48/2 = <<48/2=24>>24 clips in May.")
    assert spec.translated == {"problem": "whole", "worked": "lines"} and "result" in spec.kept
    lost = {**train[0], "problem": train[0]["problem"].replace("48", "84")}
    assert spec.check(train[0], lost, "de") == ["lost_numbers:problem"]
    test = spec.test_items(DATA, "de")
    assert len(test) == 250 and (test[0]["result"], test[1]["result"]) == ("18", "3")  # MGSM de, rows 1-2
    rows = [{"output": "Sie verdient 9 * 2 = 18 Dollar. The answer is 18.", "prediction": "18", "gold": "18"},
            {"output": "The answer is 1.800,5.", "prediction": "1800.5", "gold": "1800"}]
    assert spec.item_scores("de", rows)["accuracy"] == [1.0, 0.0]


@pytest.mark.model
@pytest.mark.full  # with the end-to-end label task above: the two generator answer kinds
def test_declared_span_and_number_tasks_evaluate_from_the_command_line(tmp_path):
    for folder, task, metric in ((_span_task(tmp_path), "faq", "f1"), (_number_task(tmp_path), "sums", "accuracy")):
        out = tmp_path / f"eval-{task}"
        done = _stt("evaluate", "--task", task, "--languages", "de", "--limit", "2", "--max-new-tokens", "24",
                    "--set", f"eval.max_new_tokens.{task}=16", "--out", str(out), "--no-prefect", tasks_dir=folder,
                    timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        predictions = pd.read_parquet(out / "base-de" / "predictions.parquet")
        assert len(predictions) == 2 and (predictions["completion_tokens"] > 0).all()
        assert (predictions["completion_tokens"] <= 16).all()  # --set, given after the named option, wins
        manifest = json.loads((out / "base-de" / "_manifest.json").read_text())
        assert manifest["metric"] == metric and manifest["test_set"].startswith(task)
