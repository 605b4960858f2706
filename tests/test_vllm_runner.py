"""The vLLM batch runner's contract (Parquet in -> subprocess -> Parquet out), run with the CPU engine.

The runner is the same file the vLLM environment executes; `--backend transformers` swaps only the
generation call, so the files, the subprocess and the error reporting are what a GPU run goes through.
These tests hold the runner's plumbing to the in-process engine; vLLM itself (its outputs against
transformers', its LoRA, its hung and killed runners) is tested in tests/test_vllm_engine.py (full tier).
"""

import sys

import pytest

from stt.engine_settings import OpenAISettings, TransformersSettings, VLLMBatchSettings
from stt.engines import Request, get_engine
from stt.engines.vllm_batch import RunnerError, VLLMBatchEngine
from stt.errors import ConfigError
from stt.models import resolve_model
from stt.prompts import build_prompt_builder

from .conftest import DATA, ENGINE_TEST_PROMPT

pytestmark = pytest.mark.model

SOURCES = ["Weng earns $12 an hour for babysitting.", "How much did she earn?"]


def _runner_engine(model: str = "gemma3-270m") -> VLLMBatchEngine:
    config = VLLMBatchSettings(model="gemma3-270m", vllm_python=sys.executable, batch_size=4)
    engine = VLLMBatchEngine(resolve_model("gemma3-270m"), config, backend="transformers")
    engine.model_path = model
    return engine


def test_runner_gives_the_same_completions_as_the_engine_in_process():
    builder = build_prompt_builder("de", ENGINE_TEST_PROMPT, DATA)
    requests = [Request(builder.completion_prompt(s), 24, ("\n",)) for s in SOURCES]
    via_runner = _runner_engine().generate(requests)
    direct = get_engine(TransformersSettings(batch_size=4)).generate(requests)
    assert [c.text for c in via_runner] == [c.text for c in direct]
    assert [c.completion_tokens for c in via_runner] == [c.completion_tokens for c in direct]
    assert all(c.prompt_tokens > 150 and c.finish_reason in ("stop", "length") for c in via_runner)


def test_runner_scores_continuations():
    pairs = [("The capital of France is", " Paris"), ("The capital of France is", " banana")]
    scores = _runner_engine().loglikelihood(pairs)
    direct = get_engine(TransformersSettings(batch_size=4, reuse_prefix_cache=False)).loglikelihood(pairs)
    assert scores[0].logprob > scores[1].logprob
    assert [round(s.logprob, 3) for s in scores] == [round(s.logprob, 3) for s in direct]


def test_runner_errors_surface_with_the_runners_message():
    with pytest.raises(RunnerError, match=r"vLLM batch runner failed: ConfigError: unknown model "
                                          r"'no-such-model'"):
        _runner_engine("no-such-model").generate([Request("Hello", 4, ())])


def test_missing_vllm_environment_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("STT_VLLM_PYTHON", raising=False)
    with pytest.raises(ConfigError, match="engine 'vllm-batch' needs the vLLM environment: run "
                                          "scripts/setup-vllm.sh"):
        get_engine(VLLMBatchSettings())
    with pytest.raises(ConfigError, match="vLLM python '/nowhere/python' not found"):
        get_engine(VLLMBatchSettings(vllm_python="/nowhere/python"))
    monkeypatch.delenv("STT_OPENAI_BASE_URLS", raising=False)
    with pytest.raises(ConfigError, match="engine 'openai' needs an endpoint"):
        get_engine(OpenAISettings())


def test_runner_applies_a_lora_adapter_like_the_engine_in_process(tiny_adapter):
    """LoRA evaluation through the runner: the adapter path travels in the Parquet, per request."""
    requests = [Request("Question: What is 3 plus 3?\nAnswer:", 8, ("\n",))]
    engine = _runner_engine()
    engine.adapter = str(tiny_adapter)
    via_runner = engine.generate(requests)
    direct = get_engine(TransformersSettings(adapter=tiny_adapter, reuse_prefix_cache=False)).generate(requests)
    base = get_engine(TransformersSettings(reuse_prefix_cache=False)).generate(requests)
    assert [c.text for c in via_runner] == [c.text for c in direct]
    assert via_runner[0].text != base[0].text  # the adapter was applied, not ignored


@pytest.mark.full  # one more runner process; the default tier checks the adapter's generation through the runner
def test_runner_moves_scores_by_the_adapters_own_shift(tiny_adapter):
    """Scores through the runner with an adapter are the in-process engine's with it: the adapter's whole shift
    (several nats per pair), not a part of it and not none."""
    pairs = [("Question: What is 3 plus 3?\nAnswer:", " 6"), ("Question: What is 12 plus 7?\nAnswer:", " 19 apples")]
    engine = _runner_engine()
    engine.adapter = str(tiny_adapter)
    via_runner = [s.logprob for s in engine.loglikelihood(pairs)]
    direct = [s.logprob for s in get_engine(TransformersSettings(adapter=tiny_adapter, reuse_prefix_cache=False))
              .loglikelihood(pairs)]
    base = [s.logprob for s in get_engine(TransformersSettings(reuse_prefix_cache=False)).loglikelihood(pairs)]
    assert all(abs(d - b) > 5 for d, b in zip(direct, base, strict=True))  # the adapter's shift is large here
    assert via_runner == pytest.approx(direct, abs=1e-3)
