import os
import subprocess
import sys

import pytest

from .conftest import ROOT

STT = [sys.executable, "-m", "stt.cli"]


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
                   "--batch-size", "--shots", "--prompt-style", "--max-new-tokens-cap", "--no-prefect"):
        assert option in out


def test_library_imports_neither_prefect_nor_vllm():
    code = ("import sys, stt.translate, stt.engines.transformers_engine, stt.specs, stt.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'vllm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


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
