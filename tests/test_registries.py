"""The registries that replace the string ladders (issue 36): engine kinds, answer kinds, training-set recipes and
arms, stages; and the one runner's plan, made once per run. Expected values are written by hand."""

from __future__ import annotations

import json

import pytest

from stt import jobs, pipeline
from stt.config import EvalConfig, RunConfig, TimeoutConfig
from stt.engine_settings import LlamaCppSettings, OpenAISettings, TransformersSettings, VLLMBatchSettings

from .conftest import DATA


def test_each_engine_kind_keys_what_changes_its_outputs():
    from stt.engines import engine_signature

    assert engine_signature(LlamaCppSettings(batch_size=3, device="auto")) == \
        {"kind": "llama-cpp", "dtype": "auto", "device": "auto", "batch_size": 3}
    # transformers resolves the device (no GPU driver here) and says how an adapter is applied: merged in fp32.
    assert engine_signature(TransformersSettings(batch_size=3, adapter="/a")) == \
        {"kind": "transformers", "dtype": "auto", "device": "cpu", "lora": "merged"}
    assert engine_signature(TransformersSettings(device="cpu", dtype="bfloat16", adapter="/a"))["lora"] \
        == "applied"
    assert engine_signature(OpenAISettings(served_model="m", batch_size=3)) == \
        {"kind": "openai", "dtype": "auto", "device": "auto", "served_model": "m"}
    assert engine_signature(VLLMBatchSettings(max_model_len=512)) == \
        {"kind": "vllm-batch", "dtype": "float32", "device": "auto", "load_format": "auto", "max_model_len": 512,
         "tensor_parallel_size": 1}


def test_engine_kinds_say_where_they_run_and_what_ends_a_hung_call():
    from stt.engine_settings import KINDS
    from stt_app.tasks.logs import timeout_note

    assert sorted(k for k, v in KINDS.items() if v.in_process) == ["llama-cpp", "transformers"]
    assert [k for k, v in KINDS.items() if v.batch_per_call] == ["transformers"]
    assert {k: v.labels_on for k, v in KINDS.items() if v.labels_on} == {"llama-cpp": "transformers"}
    assert timeout_note(OpenAISettings(process="inline")).startswith("model jobs call an endpoint")
    assert timeout_note(VLLMBatchSettings()).startswith("model jobs call vLLM in its runner's")
    assert timeout_note(LlamaCppSettings(process="inline")).startswith("engine.process is inline")


# Every field of the one engine class that configs were saved with before each kind had its own settings,
# at its default (experiments/*/config.json hold all of them).
OLD_ENGINE = {"kind": "transformers", "model": "gemma3-270m", "batch_size": 8, "device": "auto", "dtype": "auto",
              "reuse_prefix_cache": True, "process": "child", "adapter": None, "n_ctx": 8192, "threads": None,
              "vllm_python": None, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9,
              "max_model_len": None, "load_format": "auto", "max_lora_rank": 64, "base_urls": [],
              "served_model": None, "concurrency": 16, "timeout_s": 300.0, "max_retries": 5}


def test_an_engine_is_the_settings_class_of_its_kind_and_an_old_config_still_loads(tmp_path):
    from stt.config import load_run_config

    def engine_of(engine: dict) -> object:
        return RunConfig(name="t", tasks=("gsm8k",), engine=engine).engine

    old = engine_of(OLD_ENGINE | {"kind": "llama-cpp", "n_ctx": 4096, "batch_size": 2})
    assert type(old) is LlamaCppSettings and (old.n_ctx, old.batch_size) == (4096, 2)
    assert not hasattr(old, "concurrency")  # the other kinds' fields at their defaults are dropped
    assert type(engine_of({"model": "smollm2-135m"})) is TransformersSettings  # no kind: the default kind
    assert type(engine_of(OLD_ENGINE | {"kind": "openai", "concurrency": 4})).__name__ == "OpenAISettings"
    # Another kind's field set to anything but its default: one line saying what to change.
    with pytest.raises(ValueError) as caught:
        engine_of(OLD_ENGINE | {"kind": "llama-cpp", "concurrency": 3})
    assert ("engine.concurrency is a setting of 'openai' engines, not of 'llama-cpp': remove it, or set "
            "engine.kind: openai") in str(caught.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ntasks: [gsm8k]\nengine: {kind: llamacpp}\n")
    with pytest.raises(ValueError, match="engine.kind must be one of: transformers, llama-cpp, vllm-batch, openai"):
        load_run_config(bad)
    # The same model and common settings on another kind (how llama.cpp runs label scoring on transformers).
    moved = LlamaCppSettings(batch_size=3, n_ctx=1024, process="inline").as_kind("transformers", batch_size=5)
    assert moved == TransformersSettings(batch_size=5, process="inline")


def test_the_command_line_says_a_wrong_engine_setting_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from stt_app.cli import app

    config = tmp_path / "c.yaml"
    config.write_text("name: t\ntasks: [gsm8k]\nengine: {kind: llama-cpp, n_ctx: 3, base_urls: [http://x]}\n")
    out = CliRunner().invoke(app, ["run", "--config", str(config), "--no-prefect"])
    assert out.exit_code == 2
    assert out.output.strip() == ("error: engine.base_urls is a setting of 'openai' engines, not of 'llama-cpp': "
                                  "remove it, or set engine.kind: openai")
    config.write_text("name: t\ntasks: [gsm8k]\nengine: {kind: llama-cpp, n_ctx: 3}\n")
    out = CliRunner().invoke(app, ["run", "--config", str(config), "--no-prefect"])
    assert out.output.strip() == "error: invalid engine.n_ctx: Input should be greater than or equal to 256"


def test_answer_kinds_read_check_and_write_answers():
    from stt.specs.answers import NUMBER, SPAN, Label

    assert NUMBER.target("18", "9 * 2 = 18.") == " 9 * 2 = 18.\nThe answer is 18."
    assert NUMBER.target("18", None) == " The answer is 18."
    assert NUMBER.read("many", {}, None, "t.yaml") == (None, "answer 'many' is not a number")
    assert NUMBER.check({"q": "3.5 apples"}, {"q": "35 Äpfel"}, ["q"], "answer", None, "de") == ["lost_numbers:q"]
    assert NUMBER.check({"q": "2.50 euros"}, {"q": "2,50 Euro"}, ["q"], "answer", None, "de") == []
    assert SPAN.gold("Paris") == '["Paris"]'
    translated = {"context": "Sie wohnt in Paris.", "answer": "paris"}
    assert SPAN.check({}, translated, ["context"], "answer", "context", "de") == []
    assert translated["answer"] == "Paris"  # respelled as the context has it
    assert SPAN.check({}, {"context": "Sie wohnt in Rom.", "answer": "Paris"}, ["context"], "answer", "context",
                      "de") == ["answer_not_in_context"]
    label = Label(("no", "yes"), (("0", "no"), ("1", "yes")))
    assert label.read("1", {}, None, "pawsx.yaml") == ("yes", "")
    assert label.read("2", {}, None, "pawsx.yaml") == (None, "label '2' is not one of 0, 1 (pawsx.yaml: labels)")
    assert (NUMBER.max_new_tokens, SPAN.max_new_tokens, label.max_new_tokens) == (256, 32, 0)


def test_a_tasks_own_settings_come_from_its_spec_unless_the_config_names_the_task(tmp_path):
    from stt.config import load_run_config
    from stt.errors import ConfigError
    from stt.specs import get_task

    def caps(config: EvalConfig) -> tuple[int, ...]:
        return tuple(get_task(t).answer_tokens(config) for t in ("gsm8k", "squad", "mnli", "pawsx"))

    assert caps(EvalConfig()) == (256, 32, 0, 0)
    assert caps(EvalConfig(max_new_tokens={"gsm8k": 7, "squad": 5})) == (7, 5, 0, 0)
    assert [get_task(t).test_split(EvalConfig(test_split={"mnli": "dev"})) for t in ("mnli", "gsm8k")] == \
        ["dev", "test"]
    with pytest.raises(ConfigError, match=r"eval.test_split: gsm8k has no labelled split 'dev' \(choose from test\)"):
        get_task("gsm8k").test_split(EvalConfig(test_split={"gsm8k": "dev"}))
    # A config saved before: the old settings at their defaults load; set otherwise, one line says what to write.
    assert EvalConfig(max_new_tokens_math=256, max_new_tokens_qa=32, xnli_split="test") == EvalConfig()
    with pytest.raises(ValueError, match=r"eval.max_new_tokens_math is now set per task: write "
                                         r"eval.max_new_tokens: \{gsm8k: 96\} \(each math task by name\)"):
        EvalConfig(max_new_tokens_math=96)
    # Checked with the run's tasks, before any work.
    for setting, message in (("max_new_tokens: {squad: 8}", "eval.max_new_tokens: 'squad' is not a task of this run"),
                             ("max_new_tokens: {mnli: 8}", "eval.max_new_tokens: mnli's answers are scored, not"),
                             ("test_split: {mnli: train}", "eval.test_split: mnli has no labelled split 'train'")):
        path = tmp_path / "c.yaml"
        path.write_text(f"name: t\ntasks: [mnli]\ninputs: {{mnli: xnli/xtreme_dev-en.tsv}}\ndata_dir: {DATA}\n"
                        f"eval: {{{setting}}}\n")
        with pytest.raises(ConfigError, match=message):
            jobs.check_run(load_run_config(path))


def test_built_in_and_declared_tasks_share_the_answer_kinds():
    from stt.specs import get_task

    kinds = {t: type(get_task(t).answer).__name__ for t in ("gsm8k", "squad", "mnli", "pawsx")}
    assert kinds == {"gsm8k": "Number", "squad": "Span", "mnli": "Label", "pawsx": "Label"}
    assert get_task("pawsx").primary_choices == ("accuracy_calibrated", "accuracy", "accuracy_norm")
    assert get_task("squad").primary_choices == ("f1", "exact_match")


def test_the_arms_give_the_reports_columns_and_comparisons():
    from stt.arms import COMPARISONS, MODEL_OF_SET, SHOWN

    assert MODEL_OF_SET == {"english": "zero-shot", "english-equal-data": "zero-shot-equal-data",
                            "self-translate-train": "self-translate-train",
                            "self-translate-train-unfiltered": "self-translate-train-unfiltered",
                            "code-switch": "code-switch", "human-translate-train": "human-translate-train",
                            "human-translate-train-all": "human-translate-train-all", "human-only": "human-only"}
    assert COMPARISONS == [("gain", "stt", "zero_shot"), ("gain_vs_equal_steps", "stt", "zero_shot_steps"),
                           ("gain_vs_translate_test", "stt", "translate_test"),
                           ("filter_gain", "stt", "stt_unfiltered"), ("gain_vs_equal_data", "stt", "zero_shot_data"),
                           ("human_gain", "human_tt", "zero_shot"), ("human_all_gain", "human_all", "zero_shot"),
                           ("human_only_gain", "human_only", "zero_shot")]
    assert SHOWN["zero_shot_steps"] == "zero-shot (equal steps)"


def test_set_recipes_name_their_sets():
    from stt.trainsets import set_name

    assert [set_name(k, "de") for k in ("english", "english-equal-data", "code-switch")] == \
        ["english", "english-equal-data-de", "code-switch-de"]


def test_a_run_is_planned_once_and_its_jobs_need_nothing_else(tmp_path, monkeypatch):
    """Every job's key, done check and timeout come from the job alone: the config is planned once per task."""
    config = RunConfig(tasks=("mnli", "gsm8k"), languages=("de",), limit=2, shard_size=1, run_dir=tmp_path,
                       inputs={"mnli": DATA / "xnli" / "xtreme_dev-en.tsv"}, engine={"kind": "llama-cpp"},
                       eval={"limit": 2})
    real, calls = pipeline.plan_task, []
    monkeypatch.setattr(pipeline, "plan_task", lambda c, t: calls.append(t) or real(c, t))
    planned = jobs.plan_run(config)
    assert calls == ["mnli", "gsm8k"]
    every = [job for stage in planned.values() for job in stage]
    # By hand, per task: 2 shards, quality in de, 2 sets, 3 adapters, 8 evaluations (no translate-test here).
    assert len(every) == 2 * (2 + 1 + 2 + 3 + 8)
    for job in every:  # through JSON, as a worker on another machine gets it
        job = jobs.Job.model_validate(json.loads(job.model_dump_json()))
        jobs.is_done(job)
        jobs.timeout_s(job)
    assert calls == ["mnli", "gsm8k"]
    assert not any(jobs.is_done(job) for job in every)


@pytest.mark.parametrize(("task", "items", "tokens"), [("gsm8k", 250, 256), ("mnli", 5010, 0)])
def test_an_evaluations_timeout_comes_from_its_tasks_own_size(task, items, tokens):
    """Without eval.limit the timeout counts the task's own test items (MGSM: 250 per language, XNLI: 5,010)."""
    from stt.timeouts import evaluation_timeout_s

    limits = TimeoutConfig(floor_s=10, min_tokens_per_s=1000, min_items_per_s=10)
    expected = 10 + (items * tokens / 1000 if tokens else items / 10)
    assert evaluation_timeout_s(task, EvalConfig(), limits, DATA, "de") == round(expected)
    assert evaluation_timeout_s(task, EvalConfig(limit=4), limits, DATA, "de") == round(
        10 + (4 * tokens / 1000 if tokens else 4 / 10))
