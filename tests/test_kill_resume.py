"""Killed anywhere, a run resumes with nothing lost: SIGKILL at points of every stage, for real.

One run goes uninterrupted. A second, on the same config in another folder, is started again and again
with `STT_KILL_AT` naming where the process kills itself (SIGKILL: no cleanup runs): half-way through a
shard's generation, with a shard, a manifest or the predictions written to their temp name but not yet
renamed, after a training step whose checkpoint is not saved, inside a checkpoint's write, half-way
through an evaluation and while writing the report. After every kill the folder is checked as a reader
would see it; the last start runs to the end. Everything must equal the uninterrupted run's: translated
shards, rejects, training sets, translation quality, the adapters (bit for bit: fine-tuning resumes from
its last complete checkpoint with the optimizer, schedule, data position and random state restored),
predictions and results.

Full tier only (about 17 starts of a whole run; the store's kill-and-takeover across machines is in
tests/test_store_run.py). Which stage each kill interrupted is read from the folder (the first stage whose
outputs are not all complete), not taken from the list of kill points.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from stt.files import file_sha256
from stt.shards import read_metadata

from .services.stack import ROOT, VENV_BIN

pytestmark = [pytest.mark.model, pytest.mark.full, pytest.mark.timeout(1200)]  # 1st test builds every run

CONFIG = {
    "name": "kill-trials", "tasks": ["gsm8k"], "languages": ["de"], "limit": 4, "shard_size": 2,
    "engine": {"kind": "llama-cpp", "model": "gemma3-270m", "batch_size": 4},
    "generation": {"max_new_tokens_cap": 40},
    "build": {"sets": ["english", "self-translate-train"]},
    "train": {"rank": 4, "alpha": 8, "max_steps": 3, "batch_size": 2, "max_length": 96, "save_steps": 1},
    "eval": {"limit": 2, "batch_size": 2, "max_new_tokens": {"gsm8k": 8}, "quality_limit": 2, "include_english": False},
    "controls": {"equal_steps": False},
}

# (stage, where the process kills itself). Each start resumes the previous one's work and dies further on.
KILLS = [
    ("translate", "engine:de-00000"),                          # half of shard 0 generated
    ("translate", "write:*/translate/de-00000.parquet"),       # shard 0 written, not yet renamed
    ("translate", "write:*/translate/_manifest.json"),         # the manifest's update half-done
    ("translate", "engine:de-00001"),
    ("quality", "engine:quality:gsm8k-de"),
    ("build", "write:*/sets/english/data.parquet"),
    ("build", "write:*/sets/self-translate-train-de/_manifest.json"),  # data in place, marker not
    ("fine-tune", "finetune:english:step:2"),                  # step 2 done, its checkpoint not saved
    ("fine-tune", "finetune:english:checkpoint:3"),            # inside checkpoint 3's write
    ("fine-tune", "write:*/adapters/english/_manifest.json"),  # adapter saved, marker not
    ("fine-tune", "finetune:self-translate-train-de:checkpoint:2"),
    ("evaluate", "engine:eval:base-de"),                       # half of an evaluation scored
    ("evaluate", "write:*/eval/zero-shot-de/predictions.parquet"),
    ("evaluate", "write:*/eval/self-translate-train-de/_manifest.json"),
    ("report", "write:*/results.parquet"),
    ("report", "write:*/report.md"),
]

# The run's outputs, by stage, counted by hand from CONFIG (2 shards of de, the two sets and adapters,
# three evaluations of de: base, zero-shot, Self-Translate-Train).
SETS = ("english", "self-translate-train-de")
EVALS = ("base-de", "zero-shot-de", "self-translate-train-de")


def stage_in_progress(folder: Path) -> str:
    """The first stage whose outputs are not all complete in the folder (what a kill interrupted)."""
    task = folder / "gsm8k"
    manifest = task / "translate" / "_manifest.json"
    shards = json.loads(manifest.read_text()).get("shards", {}) if manifest.is_file() else {}
    if sorted(shards) != ["de-00000", "de-00001"]:
        return "translate"
    if not (task / "quality" / "de" / "_manifest.json").is_file():
        return "quality"
    if not all((task / "sets" / s / "_manifest.json").is_file() for s in SETS):
        return "build"
    if not all((task / "adapters" / s / "_manifest.json").is_file() for s in SETS):
        return "fine-tune"
    if not all((task / "eval" / e / "_manifest.json").is_file() for e in EVALS):
        return "evaluate"
    if not ((folder / "results.parquet").is_file() and (folder / "report.md").is_file()):
        return "report"
    return "done"


def _run(folder: Path, kill_at: str | None, config_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("STT_KILL_AT", None)
    if kill_at:
        env["STT_KILL_AT"] = kill_at
    return subprocess.run([str(VENV_BIN / "stt"), "run", "--config", str(config_path), "--no-prefect",
                           "--run-dir", str(folder)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)


def reader_view_problems(folder: Path) -> list[str]:
    """What a reader of the folder could be misled by: a file a manifest vouches for that does not match
    its checksum, or a Parquet file under its final name that does not read."""
    problems = []
    for marker in folder.rglob("_manifest.json"):
        info = json.loads(marker.read_text())  # a half-written manifest is never under its final name
        vouched = dict(info.get("files", {}))
        for entry in info.get("shards", {}).values():  # the translate stage's manifest: one entry per shard
            for file, sha in (("file", "sha256"), ("rejects_file", "rejects_sha256")):
                if entry.get(file) and entry.get(sha):
                    vouched[entry[file]] = entry[sha]
            # The input shard is vouched for by the hash of its rows, recorded in the file's own metadata.
            if read_metadata(marker.parent / entry["input_file"]).get("stt.content_sha256") != entry["input_sha256"]:
                problems.append(f"{marker}: {entry['input_file']} does not hold the rows it was planned with")
        for name, sha in vouched.items():
            path = marker.parent / name
            if not path.is_file() or file_sha256(path) != sha:
                problems.append(f"{marker}: {name} does not match its checksum")
    for path in folder.rglob("*.parquet"):
        if path.name.startswith("."):  # a temp name: not a file any reader opens
            continue
        try:
            pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
            problems.append(f"{path}: unreadable ({exc})")
    return problems


def _table(path: Path, sort: list[str]) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(sort).reset_index(drop=True)


def _outputs(folder: Path) -> dict[str, pd.DataFrame]:
    task = folder / "gsm8k"
    out = {}
    for path in sorted((task / "translate").glob("de-*.parquet")):
        out[f"translate/{path.name}"] = _table(path, ["id"])
    for path in sorted((task / "translate" / "_rejects").glob("*.parquet")):
        out[f"rejects/{path.name}"] = _table(path, ["id"])
    for path in sorted((task / "sets").glob("*/data.parquet")):
        out[f"sets/{path.parent.name}"] = _table(path, ["id"])
    for path in sorted((task / "eval").glob("*/predictions.parquet")):
        out[f"eval/{path.parent.name}"] = _table(path, ["id"])
    out["translation-quality"] = _table(task / "quality" / "de" / "translations.parquet", ["id"])
    results = pd.read_parquet(folder / "results.parquet")
    paths = [c for c in results.columns if c.endswith(("_predictions", "_predictions_by_seed"))]  # file paths
    results = results.drop(columns=paths)
    out["results"] = results.sort_values(list(results.columns[:3])).reset_index(drop=True)
    return out


def _adapter(folder: Path, name: str) -> dict:
    from safetensors.numpy import load_file

    adapter = folder / "gsm8k" / "adapters" / name
    metrics = json.loads((adapter / "metrics.json").read_text())
    return {"tensors": load_file(adapter / "adapter_model.safetensors"), "train_loss": metrics["train_loss"],
            "curve": [c["loss"] for c in metrics["loss_curve"]], "resumed_from": metrics["resumed_from"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill-trials")
    config_path = base / "config.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    t0 = time.time()
    straight = _run(base / "uninterrupted", None, config_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    uninterrupted_s = time.time() - t0
    trials, t0 = [], time.time()
    for _, kill_at in KILLS:
        done = _run(base / "killed", kill_at, config_path)
        # Proof the kill happened where it was asked for, by SIGKILL, and not that the run just failed.
        assert done.returncode == -signal.SIGKILL, (kill_at, done.returncode, done.stderr[-3000:])
        assert "STT_KILL_AT: killing pid" in done.stderr, done.stderr[-2000:]
        trials.append({"stage": stage_in_progress(base / "killed"), "kill_at": kill_at,
                       "problems": reader_view_problems(base / "killed")})
    final = _run(base / "killed", None, config_path)
    assert final.returncode == 0, final.stderr[-3000:]
    return {"base": base, "trials": trials, "uninterrupted_s": uninterrupted_s, "killed_s": time.time() - t0,
            "uninterrupted_stderr": straight.stderr}


def test_after_every_kill_a_reader_sees_only_complete_verified_files(runs):
    assert [t for t in runs["trials"] if t["problems"]] == []
    # Each kill interrupted the stage it was meant for, as the folder shows, and the kills moved forward.
    assert [(t["stage"], t["kill_at"]) for t in runs["trials"]] == KILLS
    assert {t["stage"] for t in runs["trials"]} == {"translate", "quality", "build", "fine-tune", "evaluate", "report"}


def test_the_resumed_run_equals_the_uninterrupted_one(runs):
    straight, killed = _outputs(runs["base"] / "uninterrupted"), _outputs(runs["base"] / "killed")
    assert sorted(killed) == sorted(straight)
    assert len([k for k in straight if k.startswith("translate/")]) == 2  # both shards, compared row by row
    assert len([k for k in straight if k.startswith("sets/")]) == 2
    assert len([k for k in straight if k.startswith("eval/")]) == 3
    for name, table in straight.items():
        pd.testing.assert_frame_equal(killed[name], table, obj=name)
        assert not table.duplicated(_row_key(table)).any(), f"{name}: duplicate rows"
        if name.startswith("eval/"):
            assert len(table) == CONFIG["eval"]["limit"], name


def _row_key(table: pd.DataFrame) -> list[str]:
    """What identifies a row: the id, and in a training set also its language and variant."""
    return [c for c in ("id", "language", "variant") if c in table.columns] or list(table.columns)


def test_fine_tuning_resumed_from_its_checkpoints_matches_the_uninterrupted_adapter(runs):
    import numpy as np

    killed_in_training = {point.split(":")[1] for _, point in KILLS if point.startswith("finetune:")}
    assert killed_in_training == set(SETS)  # both adapters are killed mid-training
    rows = []
    for name in SETS:
        a = _adapter(runs["base"] / "uninterrupted", name)
        b = _adapter(runs["base"] / "killed", name)
        assert a["resumed_from"] is None
        if name in killed_in_training:
            assert b["resumed_from"] and "checkpoint-" in b["resumed_from"], name
        else:
            assert b["resumed_from"] is None, name
        assert sorted(a["tensors"]) == sorted(b["tensors"])
        diff = max(float(np.abs(a["tensors"][k] - b["tensors"][k]).max()) for k in a["tensors"])
        rows.append({"adapter": name, "uninterrupted_loss": a["train_loss"], "resumed_loss": b["train_loss"],
                     "uninterrupted_curve": a["curve"], "resumed_curve": b["curve"],
                     "resumed_from": b["resumed_from"] and Path(b["resumed_from"]).name, "max_weight_diff": diff})
        assert len(b["curve"]) == len(a["curve"]) == CONFIG["train"]["max_steps"]  # every step, not only the resumed
        assert b["curve"] == a["curve"] and b["train_loss"] == a["train_loss"]
        assert diff == 0.0, rows[-1]  # bit for bit: LoRA init seeded, state restored from the checkpoint
    print("\nfine-tune resume vs uninterrupted:", json.dumps(rows, indent=1))
    print(f"kill trials: {len(runs['trials'])} kills; uninterrupted {runs['uninterrupted_s']:.0f}s, "
          f"killed-and-resumed {runs['killed_s']:.0f}s")


def test_the_plain_runner_shows_each_job_as_it_ends(runs):
    """What a person watching `stt run --no-prefect` reads: each job of each stage, k of n, as it ends."""
    import re

    line = r"INFO +([\w-]+) (\d+)/(\d+) ([\w.-]+): .*\(\d+\.\ds; \d+:\d\d elapsed\)"
    shown = re.findall(line, runs["uninterrupted_stderr"])
    # By hand from CONFIG: 2 translation shards, quality in de, 2 sets, 2 adapters, 3 evaluations.
    assert [(stage, int(k), int(n), name) for stage, k, n, name in shown] == [
        ("translate", 1, 2, "de-00000"), ("translate", 2, 2, "de-00001"), ("quality", 1, 1, "de"),
        ("build", 1, 2, "english"), ("build", 2, 2, "self-translate-train-de"),
        ("finetune", 1, 2, "english"), ("finetune", 2, 2, "self-translate-train-de"),
        ("evaluate", 1, 3, "base-de"), ("evaluate", 2, 3, "zero-shot-de"),
        ("evaluate", 3, 3, "self-translate-train-de")]
