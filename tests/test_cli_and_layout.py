import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

STT = [sys.executable, "-m", "stt_app.cli"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*STT, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("args,message", [
    (["--task", "nope"], "error: unknown task 'nope': choose from gsm8k, squad, mnli"),
    (["--languages", "de,xx"], "error: unknown target language 'xx'"),
    (["--model", "no-such-model"], "error: unknown model 'no-such-model'"),
    (["--task", "mnli"], "error: MultiNLI train is not available offline"),
    (["--input", "/nonexistent/train.jsonl"], "error: input file not found: /nonexistent/train.jsonl"),
    (["--limit", "0"], "error: invalid limit"),
    (["--data-dir", "/nonexistent"], "error: data directory /nonexistent does not exist"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, message):
    result = _run("translate", *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_help_explains_every_option():
    out = _run("translate", "--help").stdout
    for option in ("--task", "--languages", "--limit", "--model", "--out", "--input", "--data-dir", "--shard-size",
                   "--batch-size", "--shots", "--prompt-style", "--max-new-tokens-cap", "--set", "--no-prefect"):
        assert option in out


def _lint_imports(root) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(root / "pyproject.toml"),
                           "--no-cache"], capture_output=True, text=True, cwd=root, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_import_contracts_hold_and_catch_an_import_inside_a_function(tmp_path):
    """The contracts in pyproject.toml (the library imports neither Prefect, vLLM nor stt_app; the app's
    layers; no cycles in stt) hold, and they see an import written inside a function."""
    kept = _lint_imports(ROOT)
    assert kept.returncode == 0, kept.stdout[-2000:]
    assert "3 kept, 0 broken" in kept.stdout
    for name in ("stt", "stt_app"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "stt" / "report.py", "a") as f:
        f.write("\n\ndef _late():\n    from prefect import flow\n\n    return flow\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "stt.report -> prefect" in broken.stdout and "2 kept, 1 broken" in broken.stdout


@pytest.mark.parametrize("args,message", [
    (["run", "--config", "/nonexistent.yaml"], "error: config file not found: /nonexistent.yaml"),
    (["run", "--config", "configs/demo.yaml", "--set", "eval.limit"], "error: --set expects key=value"),
    (["run", "--config", "configs/demo.yaml", "--set", "languages=[de,xx]"], "error: unknown target language 'xx'"),
    (["run", "--config", "configs/demo.yaml", "--set", "train.rank=0"], "error: invalid train.rank"),
    (["run", "--config", "configs/demo.yaml", "--set", "tasks=[mnli]"], "error: MultiNLI train is not available"),
    (["evaluate", "--task", "nope"], "error: unknown task 'nope'"),
    (["evaluate", "--adapter", "/tmp"], "error: adapter folder /tmp has no adapter_model.safetensors"),
    (["evaluate", "--languages", "en,qq"], "error: unknown target language 'qq'"),
])
def test_run_and_evaluate_bad_arguments(args, message):
    result = _run(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_presets_load_and_validate():
    from stt.config import load_run_config

    demo = load_run_config(ROOT / "configs" / "demo.yaml")
    assert demo.engine.model == "gemma3-270m" and demo.languages == ("de", "th")
    paper = load_run_config(ROOT / "configs" / "paper.yaml", **{"eval.limit": 5})
    assert paper.tasks == ("gsm8k", "squad", "mnli") and paper.eval.limit == 5
    assert set(paper.languages) == {"de", "ru", "th", "zh"}


def test_dotted_overrides_set_nested_settings_and_skip_what_was_not_given():
    from stt.config import with_overrides

    data = {"engine": {"model": "a", "batch_size": 8}, "limit": 3}
    out = with_overrides(data, {"engine.batch_size": 2, "prompt.num_shots": 4, "limit": None, "name": "x"})
    assert out == {"engine": {"model": "a", "batch_size": 2}, "prompt": {"num_shots": 4}, "limit": 3, "name": "x"}
    assert data == {"engine": {"model": "a", "batch_size": 8}, "limit": 3}  # the input is left as it was


@pytest.mark.parametrize("args,message", [
    (["translate", "--set", "engine.batch_size=0"], "error: invalid engine.batch_size"),
    (["translate", "--limit", "3", "--set", "limit.x=1"], "error: --set limit.x: 'limit' is a value"),
    (["translate", "--set", "no_such_setting=1"], "error: invalid no_such_setting"),
    (["evaluate", "--set", "train.rank=4"], "error: --set train: evaluate takes engine.* and eval.* settings"),
    # A setting that moved into the task: one line with what to write instead (issue 36).
    (["evaluate", "--set", "eval.xnli_split=train"],
     "error: eval.xnli_split is now set per task: write eval.test_split: {mnli: train}"),
    (["evaluate", "--task", "mnli", "--split", "train"],
     "error: eval.test_split: mnli has no labelled split 'train' (choose from test, dev)"),
    (["evaluate", "--task", "mnli", "--max-new-tokens", "8"], "error: --max-new-tokens: mnli's answers are scored"),
])
def test_set_reaches_the_same_settings_as_the_named_options(args, message):
    result = _run(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message), result.stderr


def test_every_stage_runs_in_one_prefect_stage_flow():
    """A stage module names the stage flow that runs it; none is left out of the Prefect runs (the plain runner
    runs every stage of the registry)."""
    from stt import jobs
    from stt_app.flows.stages import FLOWS, ORDER, _stages_of

    flows = ("translate-stage", "build-sets", "finetune", "evaluate-stage")  # stt_app/flows/stages.py
    assert flows == ORDER and set(FLOWS) == set(flows)  # the end-to-end flow runs each once, in this order
    covered = [s for f in flows for s in _stages_of(f)]
    assert sorted(covered) == sorted(jobs.STAGES) == ["build", "evaluate", "finetune", "quality", "translate",
                                                      "translate-test"]
    # the flows run them in plan order
    assert covered == ["translate", "quality", "build", "finetune", "evaluate", "translate-test"]
