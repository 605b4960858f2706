"""The llama.cpp engine against independent computations: llama-cpp-python's own high-level API on the
same token ids, and transformers with the same LoRA adapter."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stt.config import EngineConfig, PromptConfig
from stt.engines import Request, get_engine
from stt.models import resolve_model
from stt.prompts import build_prompt_builder

from .conftest import DATA

pytestmark = pytest.mark.model

TEXTS = ["Natalia sold clips to 48 of her friends in April.", "How many clips did Natalia sell?",
         "Weng earns $12 an hour for babysitting.", "She did 50 minutes of babysitting.",
         "How much did she earn?", "Betty has only half of the money she needs."]


def _reference(logits_all: bool = False):
    from llama_cpp import Llama

    # Laid out as the engine lays it out (cache size, full sliding-window cache, logits of the last prompt
    # token only: llama.cpp computes the last layer only for rows with an output): see the first test.
    threads = len(os.sched_getaffinity(0))
    return Llama(model_path=str(resolve_model("gemma3-270m").path), n_ctx=8192, swa_full=True,
                 logits_all=logits_all, n_threads=threads, n_threads_batch=threads, verbose=False)


@pytest.fixture(scope="module")
def reference():
    return _reference(logits_all=True)


def _requests():
    builder = build_prompt_builder("de", PromptConfig(), DATA)
    return [Request(builder.completion_prompt(t), 32, ("\n",)) for t in TEXTS]


def test_generation_is_greedy_under_an_independent_llama_cpp_forward_pass(reference):
    # llama.cpp's sums depend on batch shapes and where cells sit in the KV buffer, so two correct greedy
    # decoders can part ways at a near-tie. The check: replay prompt + our output through llama-cpp-python
    # and require every generated token to be the argmax there, up to a near-tie margin.
    engine = get_engine(EngineConfig(kind="llama-cpp", batch_size=3))
    requests = _requests()[:4]  # one more than the slots: a slot is reused (each replay below costs ~5 s)
    ours = engine.generate(requests)
    ties = total = 0
    for r, c in zip(requests, ours, strict=True):
        prompt = engine.tokenizer(r.prompt)["input_ids"]
        generated = engine.tokenizer(c.text, add_special_tokens=False)["input_ids"]
        assert c.prompt_tokens == len(prompt) and generated
        assert c.finish_reason == "stop" or c.completion_tokens == r.max_new_tokens
        reference.reset()
        reference.eval(prompt + generated)
        logits = np.array(reference.scores[len(prompt) - 1 : len(prompt) + len(generated) - 1])
        margins = logits.max(1) - logits[np.arange(len(generated)), generated]
        assert margins.max() < 0.5, (c.text, margins.max())
        ties += int((margins > 0).sum())
        total += len(generated)
    assert ties <= 0.1 * total  # nearly every token is the reference's own argmax


def test_continuous_batching_serves_every_request_with_the_prefix_shared():
    engine = get_engine(EngineConfig(kind="llama-cpp", batch_size=2))
    requests = _requests()
    first = engine.generate(requests)
    again = engine.generate(requests)
    assert [c.text for c in first] == [c.text for c in again]  # deterministic, slots reused cleanly
    assert all(c.text and "\n" not in c.text and 0 < c.completion_tokens <= 32 for c in first)
    assert max(engine.stats.batch_sizes) == 2  # never more sequences than slots


def test_loglikelihood_matches_a_plain_llama_cpp_forward_pass(reference):
    engine = get_engine(EngineConfig(kind="llama-cpp", batch_size=4))
    pairs = [("Premise: A man sleeps.\nHypothesis: Nobody sleeps.\nRelation:", f" {label}")
             for label in ("entailment", "neutral", "contradiction")] + [("The capital of France is", " Paris")]
    ours = engine.loglikelihood(pairs)
    for (context, continuation), score in zip(pairs, ours, strict=True):
        whole, n = engine.split_pair(context, continuation)
        reference.reset()
        reference.eval(whole)
        logits = np.array(reference.scores[: len(whole)], dtype=np.float64)
        logprobs = logits - logits.max(1, keepdims=True)
        logprobs -= np.log(np.exp(logprobs).sum(1, keepdims=True))
        expected = sum(logprobs[t - 1, whole[t]] for t in range(n, len(whole)))
        assert score.tokens == len(whole) - n
        assert score.logprob == pytest.approx(expected, abs=0.05)
    assert ours[0].tokens == 2  # " entailment" is two tokens: the multi-token path ran


ADAPTER_PAIRS = [("Question: What is 3 plus 3?\nAnswer:", " 6"), ("Question: What is 3 plus 3?\nAnswer:", " 7"),
                 ("Question: What is 5 plus 5?\nAnswer:", " 10"),
                 ("Question: What is 12 plus 7?\nAnswer:", " 19 apples")]


def test_a_lora_adapter_moves_scores_as_far_as_in_transformers(tiny_adapter):
    """Not merely applied: the shift the adapter causes is transformers' shift, pair by pair, within 15% plus
    twice the engines' own difference on the base model (Q4 kernels with 8-bit activations vs fp32), and the
    same on a rerun. Half an adapter, or one applied to part of the computation, misses by tens of nats."""
    def scores(kind, adapter):
        config = EngineConfig(kind=kind, adapter=adapter, reuse_prefix_cache=False)
        return np.array([s.logprob for s in get_engine(config).loglikelihood(ADAPTER_PAIRS)])

    base, lora = scores("llama-cpp", None), scores("llama-cpp", tiny_adapter)
    torch_base, torch_lora = scores("transformers", None), scores("transformers", tiny_adapter)
    shift, torch_shift = lora - base, torch_lora - torch_base
    assert (np.abs(torch_shift) > 5).all()  # the adapter acts on every pair (else the check says nothing)
    engine_difference = np.abs(base - torch_base)
    assert (engine_difference < 0.5).all()
    assert (np.abs(shift - torch_shift) <= 0.15 * np.abs(torch_shift) + 2 * engine_difference).all(), \
        (shift, torch_shift)
    assert shift.sum() / torch_shift.sum() == pytest.approx(1.0, abs=0.1)
    assert (scores("llama-cpp", tiny_adapter) == lora).all()  # a rerun gives the same scores


def test_a_shared_prefix_runs_with_the_adapter_too(tiny_adapter):
    """Generation decodes a shared few-shot prefix once and shares its KV cells: with an adapter those cells
    must be the adapter's, not the base model's.

    Checked two ways. Without an adapter, where the model's answers are decisive, outputs with the shared
    prefix equal those computed without it (the shared path itself is exact). With the adapter, every output
    with the shared prefix differs from the base model's (base cells would carry the base model's answers,
    which it gives decisively: " 14", " 12", " 18"). Equality of the two paths under this adapter is not
    asserted: on an AVX-512 machine (2026-12-02) this one-step, learning-rate-0.05 adapter left llama.cpp with
    near-ties between " the" and "\n\n" as the first token (llama.cpp scores " the" at -1.9 nats where
    transformers scores -0.23), so the two batch layouts part there, either way round from one trained
    adapter to the next. That gap between llama.cpp's LoRA and transformers' is issue 35's to settle."""
    prefix = "".join(f"Question: What is {i} plus {i}?\nAnswer: {2 * i}\n" for i in range(1, 6))
    requests = [Request(prefix + f"Question: What is {i} plus {i}?\nAnswer:", 6, ("\n",)) for i in (7, 8, 9)]
    # In this process: the test asks the engine itself which prefix it shares.
    shared = get_engine(EngineConfig(kind="llama-cpp", adapter=tiny_adapter, reuse_prefix_cache=True, process="inline"))
    assert shared._shared_prefix([r.prompt for r in requests]) == prefix  # the prefix path is the one taken
    base_shared = get_engine(EngineConfig(kind="llama-cpp", reuse_prefix_cache=True, process="inline"))
    base_plain = get_engine(EngineConfig(kind="llama-cpp", reuse_prefix_cache=False, process="inline"))
    base_outputs = [c.text for c in base_shared.generate(requests)]
    assert base_outputs == [c.text for c in base_plain.generate(requests)]
    assert all(o.strip().isdigit() for o in base_outputs)  # the base model answers with a number (seen: 14, 12, 18)
    with_prefix = [c.text for c in shared.generate(requests)]
    assert all(a != b for a, b in zip(with_prefix, base_outputs, strict=True))  # the adapter's cells


def test_an_adapter_merged_into_the_weights_scores_as_peft_applies_it(tiny_adapter):
    """The transformers engine (the reference above) merges an adapter into the fp32 weights; it scores as
    peft's own unmerged model does (LoRA matmuls beside each projection): an independent computation."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stt.models import hf_folder, resolve_model

    pairs = [("Question: What is 3 plus 3?\nAnswer:", " 6"), ("Question: What is 12 plus 7?\nAnswer:", " 19 apples")]
    folder = hf_folder(resolve_model("gemma3-270m"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    applied = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                                        str(tiny_adapter)).eval()
    expected = []
    for context, continuation in pairs:
        n = len(tokenizer(context)["input_ids"])
        ids = tokenizer(context + continuation)["input_ids"]
        with torch.no_grad():
            logprobs = applied(torch.tensor([ids])).logits[0].log_softmax(-1)
        expected.append(sum(logprobs[t - 1, ids[t]].item() for t in range(n, len(ids))))
    ours = get_engine(EngineConfig(adapter=tiny_adapter, reuse_prefix_cache=False)).loglikelihood(pairs)
    base = get_engine(EngineConfig(reuse_prefix_cache=False)).loglikelihood(pairs)
    for score, value, plain in zip(ours, expected, base, strict=True):
        assert abs(value - plain.logprob) > 5  # the adapter moves this score (else equality says nothing)
        assert score.logprob == pytest.approx(value, abs=0.02)


def test_runs_on_llama_cpp_generate_on_it_and_score_labels_on_transformers():
    from stt.config import RunConfig
    from stt.pipeline import eval_engine, plan_task

    config = RunConfig(engine=EngineConfig(kind="llama-cpp"), languages=("de",), tasks=("gsm8k", "mnli"))
    for task, kind in (("gsm8k", "llama-cpp"), ("mnli", "transformers")):
        plan = plan_task(config, task)
        kinds = {job.name: eval_engine(config, plan, job).kind for job in plan.evals}
        # Every column of one task's table on one engine: the base model's and every adapter's.
        assert "base-de" in kinds and "self-translate-train-de" in kinds
        assert set(kinds.values()) == {kind}, (task, kinds)


def test_a_hugging_face_folder_is_refused_with_the_reason(tmp_path):
    from stt.errors import ConfigError
    from stt.models import hf_folder

    folder = str(hf_folder(resolve_model("gemma3-270m")))
    with pytest.raises(ConfigError, match="runs GGUF weights"):
        get_engine(EngineConfig(kind="llama-cpp", model=folder, process="inline"))
    # In an engine process the model loads on the first call: the same refusal comes from there.
    with pytest.raises(ConfigError, match="runs GGUF weights"):
        get_engine(EngineConfig(kind="llama-cpp", model=folder, process="child")).generate(
            [Request("Question: 1 + 1?\nAnswer:", 4, ("\n",))])


def test_llama_cpp_prints_nothing_and_its_last_words_come_with_a_refusal(tiny_adapter, tmp_path, capfd):
    """llama.cpp logs about 90 lines at its ERROR level for every adapter loaded (LoRA tensors that cannot use
    the repacked CPU buffer) and one per model load (a token type it corrects): none reaches the terminal. When
    it does refuse something, its last lines are in the error."""
    from stt.engines.llamacpp_engine import LlamaCppEngine
    from stt.errors import ConfigError
    from stt.models import ResolvedModel

    capfd.readouterr()
    LlamaCppEngine(resolve_model("gemma3-270m"), EngineConfig(kind="llama-cpp", adapter=str(tiny_adapter)))
    printed = capfd.readouterr().err
    assert "llama_adapter_lora_init_impl" not in printed and "control-looking token" not in printed, printed[:500]
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(ConfigError, match=r"could not load .*broken\.gguf; llama\.cpp said: .*\S"):
        LlamaCppEngine(ResolvedModel("broken", broken, "0" * 64, True), EngineConfig(kind="llama-cpp"))
