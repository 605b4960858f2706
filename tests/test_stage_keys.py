"""No stale result: change one config field at a time and check exactly which stages rerun.

Real run (the real model, XNLI dev as the declared NLI training stand-in, run_pipeline without Prefect)
on the same run folder, in the full tier: one representative change per stage after translation (a changed
translation's keys are in tests/test_stage_key_table.py; its reuse in tests/test_translate_flow.py), the
learning-rate schedule, and back to the first config. A stage "reran" when its output file was rewritten;
a reused stage keeps its file untouched. Every changed adapter must differ in weights and have taken its
real number of steps.
Every field of the config, without a model, is in tests/test_stage_key_table.py (default tier).
"""

import json

import pandas as pd
import pytest

from stt.config import EvalConfig, load_run_config
from stt.engine_settings import LlamaCppSettings, OpenAISettings, TransformersSettings
from stt.engines import engine_signature
from stt.files import file_sha256
from stt.jobs import run_pipeline
from stt.stages.evaluate import evaluate_key

from .conftest import DATA

pytestmark = pytest.mark.model
full = pytest.mark.full

BASE = {
    "name": "keys", "tasks": "mnli", "languages": "de", "inputs": {"mnli": "xnli/xtreme_dev-en.tsv"},
    "limit": 4, "shard_size": 4, "generation": {"max_new_tokens_cap": 40},
    "engine": {"kind": "llama-cpp", "batch_size": 4},  # the default fast path: generation on llama.cpp
    "train": {"rank": 2, "alpha": 4, "epochs": 1, "batch_size": 2, "max_length": 96, "save_steps": 2,
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


# Applied one after another, each on top of the last (so each changes exactly one field), with the stages
# that must rerun.
CASES = [
    ({}, set()),
    ({"eval.limit": 4}, EVALS),
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


@full
def test_exactly_the_dependent_stages_rerun(first):
    tmp, config = first
    overrides: dict = {}
    for override, expected in CASES:
        before = _snapshot(config.root)
        overrides.update(override)
        config = _config(tmp, **overrides)
        run_pipeline(config)
        after = _snapshot(config.root)
        rerun = {name for name in STAGES if after[name][0] != before[name][0]}
        assert rerun == expected, override
        for name in ADAPTERS & expected:
            assert after[name][1] != before[name][1], f"{override}: {name} retrained but identical weights"
            metrics = json.loads((config.root / "mnli" / STAGES[name]).parent.joinpath("metrics.json").read_text())
            assert metrics["steps"] == metrics["planned_steps"] > 0 and metrics["resumed_from"] is None
            assert metrics["steps"] == json.loads((config.root / "mnli" / STAGES[name]).parent.joinpath(
                "_manifest.json").read_text())["metrics"]["steps"]
        if "train.warmup_ratio" in override:
            curve = pd.read_csv(config.root / "mnli" / "adapters" / "english" / "loss.csv")
            metrics = json.loads((config.root / "mnli" / "adapters" / "english" / "metrics.json").read_text())
            # Linear warmup over 1 of 2 steps, then linear decay; the Trainer logs the rate a step used:
            # 0 at step 1 (warming up), the peak 0.001 at step 2. Without warmup it would be 0.001, 0.0005.
            assert metrics["warmup_steps"] == 1
            assert list(curve["learning_rate"]) == pytest.approx([0.0, 0.001])
    # Back to the first config: everything it needs is redone under its own keys, nothing stale is reused.
    base = _config(tmp)
    run_pipeline(base)
    adapter = base.root / "mnli" / "adapters" / "english"
    assert json.loads((adapter / "_manifest.json").read_text())["config"]["learning_rate"] == 0.001
    assert [p.name for p in (adapter / "checkpoints").iterdir()] == [
        json.loads((adapter / "_manifest.json").read_text())["key"][:16]]


@full
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
    cpu = TransformersSettings()
    keys = {
        "cpu": evaluate_key("mnli", "de", cpu, config, DATA),
        "bf16": evaluate_key("mnli", "de", cpu.model_copy(update={"dtype": "bfloat16"}), config, DATA),
        "endpoint": evaluate_key("mnli", "de", cpu.model_copy(update={"kind": "openai"}), config, DATA),
        "vllm": evaluate_key("mnli", "de", cpu.model_copy(update={"kind": "vllm-batch"}), config, DATA),
        "limit": evaluate_key("mnli", "de", cpu, EvalConfig(limit=3), DATA),
    }
    assert len(set(keys.values())) == len(keys)
    assert evaluate_key("mnli", "de", cpu, EvalConfig(limit=2, batch_size=1), DATA) == keys["cpu"]
    assert evaluate_key("mnli", "de", cpu.model_copy(update={"batch_size": 3}), config, DATA) == keys["cpu"]
    # llama.cpp's batch shapes change its sums (benchmarks/RESULTS.md): there the engine's batch is in the key.
    # Evaluations run with eval.batch_size, so that is the batch in their key (engine.batch_size translates).
    llama = LlamaCppSettings(batch_size=4)
    assert evaluate_key("mnli", "de", llama, config, DATA) != \
        evaluate_key("mnli", "de", llama, EvalConfig(limit=2, batch_size=1), DATA)
    assert evaluate_key("mnli", "de", llama, config, DATA) == \
        evaluate_key("mnli", "de", llama.model_copy(update={"batch_size": 2}), config, DATA)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # what "auto" must resolve to on this machine
    assert engine_signature(cpu) == {"kind": "transformers", "dtype": "auto", "device": device}
    # An adapter merged into fp32 weights is not peft's unmerged computation bit for bit: its own key.
    lora = "merged" if device == "cpu" else "applied"
    assert engine_signature(cpu.model_copy(update={"adapter": "a"}))["lora"] == lora
    assert engine_signature(cpu.model_copy(update={"adapter": "a", "dtype": "bfloat16"}))["lora"] == "applied"


@full
def test_human_translate_train_uses_the_human_translations_of_the_accepted_items(first, tmp_path):
    from stt.stages.build import build_set
    from stt.trainsets import translated_examples

    _, config = first
    translate_dir = config.root / "mnli" / "translate"
    source = DATA / "xnli" / "xtreme_dev-en.tsv"
    info = build_set("mnli", "human-translate-train", "de", translate_dir, tmp_path, config.build, source)
    rows = pd.read_parquet(tmp_path / "human-translate-train-de" / "data.parquet")
    accepted = sorted(r["id"] for r in translated_examples(translate_dir, "de"))
    assert accepted, "no translation accepted: nothing to compare the human side with"
    human = rows[rows["variant"] == "human"]
    assert sorted(human["id"]) == accepted and info["mixing"] == {"english": 4, "human": len(accepted)}
    german = (DATA / "xnli" / "xtreme_dev-de.tsv").read_text(encoding="utf-8").splitlines()
    for _, r in human.iterrows():
        premise, hypothesis, label = german[int(r["id"].rsplit(":", 1)[1])].split("\t")
        assert r["prompt"] == f"Premise: {premise}\nHypothesis: {hypothesis}\nRelation:"
        assert r["target"] == f" {label}"


def test_the_adapter_key_changes_with_the_training_code_version(monkeypatch):
    """Adapters made by older training code (before LoRA's init was seeded) are retrained, not reused."""
    from pathlib import Path

    from stt.config import TrainConfig
    from stt.models import ResolvedModel
    from stt.stages import finetune

    model, config = ResolvedModel("m", Path("m"), "0" * 64, False), TrainConfig()
    now = finetune.train_key(model, "set", config)
    monkeypatch.setattr(finetune, "TRAIN_VERSION", "finetune-v1")
    assert finetune.train_key(model, "set", config) != now


def test_the_endpoints_score_reading_version_rekeys_only_endpoint_evaluations(monkeypatch):
    """The endpoint engine changed how it reads scores (no config changed): its evaluations are redone, the
    other engines' are kept."""
    from stt.stages import evaluate

    config = EvalConfig(limit=2)
    endpoint = OpenAISettings(base_urls=("http://127.0.0.1:9/v1",))
    local = TransformersSettings()
    now = {e.kind: evaluate_key("mnli", "de", e, config, DATA) for e in (endpoint, local)}
    monkeypatch.setattr(evaluate, "ENGINE_SCORING", {})  # as before the endpoint's reading changed
    before = {e.kind: evaluate_key("mnli", "de", e, config, DATA) for e in (endpoint, local)}
    assert now["openai"] != before["openai"]
    assert now["transformers"] == before["transformers"]


def test_an_adapter_another_folder_holds_under_the_same_key_is_copied_not_trained(tiny_adapter, tmp_path,
                                                                                   monkeypatch):
    """The equal-steps controls of two languages often take the same steps on the same English set: one
    trains, the other is a copy, marked as such. Another config is not a twin and trains."""
    from stt.config import TrainConfig
    from stt.markers import read_done
    from stt.stages import finetune as ft

    # The config tests/conftest.py trained the session's tiny adapter with.
    config = TrainConfig(rank=4, alpha=8, max_steps=1, batch_size=4, max_length=48, learning_rate=0.05)

    def no_training(*_):
        raise AssertionError("trained again")

    monkeypatch.setattr(ft, "hf_folder", no_training)  # the base model's weights: the first thing training loads
    out = tmp_path / "english-steps-th"
    info = ft.finetune("gemma3-270m", tiny_adapter.parent / "set", out, config,
                       twins=[tmp_path / "not-trained", tiny_adapter])
    assert info["copied_from"] == str(tiny_adapter)
    for name in ("adapter_model.safetensors", "adapter_config.json", "metrics.json", "loss.csv"):
        assert (out / name).read_bytes() == (tiny_adapter / name).read_bytes(), name
    assert read_done(out, json.loads((tiny_adapter / "_manifest.json").read_text())["key"])
    with pytest.raises(AssertionError, match="trained again"):
        ft.finetune("gemma3-270m", tiny_adapter.parent / "set", tmp_path / "other",
                    config.model_copy(update={"learning_rate": 0.01}), twins=[tiny_adapter])
