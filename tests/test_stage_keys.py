"""No stale result: change one config field at a time and check exactly which stages rerun.

Real run (the real model, XNLI dev as the declared NLI training stand-in, run_pipeline without Prefect)
on the same run folder. A stage "reran" when its output file was rewritten; a reused stage keeps its
file untouched. Every changed adapter must differ in weights and have taken its real number of steps.
"""

import json

import pandas as pd
import pytest

from stt.config import EngineConfig, EvalConfig, load_run_config
from stt.engines import engine_signature
from stt.evaluate import evaluate_key
from stt.models import file_sha256
from stt.pipeline import run_pipeline

from .conftest import DATA

pytestmark = pytest.mark.model

BASE = {
    "name": "keys", "tasks": "mnli", "languages": "de", "inputs": {"mnli": "xnli/xtreme_dev-en.tsv"},
    "limit": 4, "shard_size": 4, "generation": {"max_new_tokens_cap": 40},
    "train": {"rank": 2, "alpha": 4, "epochs": 1, "batch_size": 2, "max_length": 96, "save_steps": 1,
              "learning_rate": 0.001},
    "eval": {"limit": 3, "batch_size": 3, "include_english": False, "quality_limit": 2, "bootstrap_resamples": 200},
    "controls": {"equal_steps": True},
}
STAGES = {
    "translate": "translate/_raw/de-00000.parquet",
    "quality": "quality/de/translations.parquet",
    "set-en": "sets/english/data.parquet",
    "set-stt": "sets/self-translate-train-de/data.parquet",
    "adapter-en": "adapters/english/adapter_model.safetensors",
    "adapter-stt": "adapters/self-translate-train-de/adapter_model.safetensors",
    "adapter-steps": "adapters/english-steps-de/adapter_model.safetensors",
    "eval-base": "eval/base-de/predictions.parquet",
    "eval-zs": "eval/zero-shot-de/predictions.parquet",
    "eval-steps": "eval/zero-shot-equal-steps-de/predictions.parquet",
    "eval-stt": "eval/self-translate-train-de/predictions.parquet",
}
ADAPTERS = {"adapter-en", "adapter-stt", "adapter-steps"}
EVALS = {"eval-base", "eval-zs", "eval-steps", "eval-stt"}
TRAINED_EVALS = EVALS - {"eval-base"}


def _config(tmp, **overrides):
    path = tmp / "base.json"
    path.write_text(json.dumps({**BASE, "run_dir": str(tmp / "run")}))
    return load_run_config(path, **overrides)


def _snapshot(root):
    out = {}
    for name, rel in STAGES.items():
        p = root / "mnli" / rel
        out[name] = (p.stat().st_mtime_ns, file_sha256(p))
    return out


CASES = [
    # (override, stages that must rerun)
    ({}, set()),
    ({"eval.limit": 4}, EVALS),
    ({"train.learning_rate": 0.003}, ADAPTERS | TRAINED_EVALS),
    ({"train.warmup_ratio": 0.5}, ADAPTERS | TRAINED_EVALS),
    ({"build.seed": 1}, {"set-en", "set-stt"} | ADAPTERS | TRAINED_EVALS),
    ({"eval.quality_limit": 3}, {"quality"}),
]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    config = _config(tmp)
    run_pipeline(config)
    return tmp, config


@pytest.mark.parametrize("override,expected", CASES, ids=[json.dumps(c[0]) for c in CASES])
def test_exactly_the_dependent_stages_rerun(first, override, expected):
    tmp, base = first
    run_pipeline(base)  # back to the base state (reuses or redoes as needed)
    before = _snapshot(base.root)
    config = _config(tmp, **override)
    run_pipeline(config)
    after = _snapshot(config.root)
    rerun = {name for name in STAGES if after[name][0] != before[name][0]}
    assert rerun == expected
    for name in ADAPTERS & expected:
        assert after[name][1] != before[name][1], f"{name}: retrained but identical weights"
        metrics = json.loads((config.root / "mnli" / STAGES[name]).parent.joinpath("metrics.json").read_text())
        assert metrics["steps"] == metrics["planned_steps"] > 0 and metrics["resumed_from"] is None
    if "train.warmup_ratio" in override:
        curve = pd.read_csv(config.root / "mnli" / "adapters" / "english" / "loss.csv")
        metrics = json.loads((config.root / "mnli" / "adapters" / "english" / "metrics.json").read_text())
        assert metrics["warmup_steps"] == 1 and curve["learning_rate"].iloc[0] < 0.001


def test_equal_steps_control_trains_as_long_as_self_translate_train(first):
    _, config = first
    run_pipeline(config)
    adapters = config.root / "mnli" / "adapters"
    steps = {name: json.loads((adapters / name / "metrics.json").read_text())["steps"]
             for name in ("english", "self-translate-train-de", "english-steps-de")}
    stt_rows = json.loads((config.root / "mnli" / "sets" / "self-translate-train-de" / "_manifest.json").read_text())
    assert steps["english"] == 2  # 4 rows, batch 2, 1 epoch
    assert steps["english-steps-de"] == steps["self-translate-train-de"] == -(-stt_rows["rows"] // 2)


def test_evaluation_key_holds_the_engine_and_not_the_batch_size():
    config = EvalConfig(limit=2)
    cpu = EngineConfig()
    keys = {
        "cpu": evaluate_key("mnli", "de", cpu, config, DATA),
        "bf16": evaluate_key("mnli", "de", cpu.model_copy(update={"dtype": "bfloat16"}), config, DATA),
        "endpoint": evaluate_key("mnli", "de", cpu.model_copy(update={"kind": "openai"}), config, DATA),
        "vllm": evaluate_key("mnli", "de", cpu.model_copy(update={"kind": "vllm-batch"}), config, DATA),
        "limit": evaluate_key("mnli", "de", cpu, EvalConfig(limit=3), DATA),
    }
    assert len(set(keys.values())) == len(keys)
    assert evaluate_key("mnli", "de", cpu, EvalConfig(limit=2, batch_size=1), DATA) == keys["cpu"]
    assert engine_signature(cpu) == {"kind": "transformers", "dtype": "auto", "device": "cpu"}
