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
    assert len(translated) > 0
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
    ({"answer": "span"}, "answer: Input should be 'label'"),
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
