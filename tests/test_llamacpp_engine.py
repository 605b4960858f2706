"""The llama.cpp engine against independent computations: llama-cpp-python's own high-level API on the
same token ids, and transformers with the same LoRA adapter."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stt.config import PromptConfig
from stt.engine_settings import LlamaCppSettings, TransformersSettings
from stt.engines import Request, get_engine
from stt.models import resolve_model
from stt.prompts import build_prompt_builder

from .conftest import DATA, ENGINE_TEST_PROMPT

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


def _requests(prompt: PromptConfig = ENGINE_TEST_PROMPT):
    builder = build_prompt_builder("de", prompt, DATA)
    return [Request(builder.completion_prompt(t), 32, ("\n",)) for t in TEXTS]


def test_generation_is_greedy_under_an_independent_llama_cpp_forward_pass(reference):
    # llama.cpp's sums depend on batch shapes and where cells sit in the KV buffer, so two correct greedy
    # decoders can part ways at a near-tie. The check: replay prompt + our output through llama-cpp-python
    # and require every generated token to be the argmax there, up to a near-tie margin.
    engine = get_engine(LlamaCppSettings(batch_size=3))
    # Eight shots, as the margin below was measured on: the two-shot prompts part at wider near-ties (0.57 seen).
    requests = _requests(PromptConfig())[:4]  # one more than the slots: a slot is reused (a replay costs ~5 s)
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
    engine = get_engine(LlamaCppSettings(batch_size=2))
    requests = _requests()
    first = engine.generate(requests)
    again = engine.generate(requests)
    assert [c.text for c in first] == [c.text for c in again]  # deterministic, slots reused cleanly
    assert all(c.text and "\n" not in c.text and 0 < c.completion_tokens <= 32 for c in first)
    assert max(engine.stats.batch_sizes) == 2  # never more sequences than slots


def test_loglikelihood_matches_a_plain_llama_cpp_forward_pass(reference):
    engine = get_engine(LlamaCppSettings(batch_size=4))
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

# Per token, in nats, on the F32 GGUF: what llama.cpp's CPU arithmetic leaves against fp32 transformers with every
# weight equal. It keeps two steps in 16 bits: GELU (a table indexed by the fp16 input, compiled in) and the F16 KV
# cache. benchmarks/lora_parity_f32.py: mean 0.0010, max 0.030 over 1,102 tokens of 3 trained adapters (both in
# fp32: under 1e-4). An adapter at 0.9 of its strength misses by a mean of 0.03-0.37 there.
F32_MEAN_TOLERANCE = 0.005
F32_MAX_TOLERANCE = 0.05
PREFIX = "".join(f"Question: What is {i} plus {i}?\nAnswer: {2 * i}\n" for i in range(1, 6))
ITEMS = [f"Question: What is {a} plus {b}?\nAnswer: {a + b}\n" for a, b in ((7, 7), (3, 3), (12, 7))]


def _scaled_adapter(adapter, factor: float, folder):
    """A copy of a peft adapter with every LoRA B times `factor`: the adapter's delta at that strength."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, folder)
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v * factor if "lora_B" in k else v for k, v in weights.items()},
              folder / "adapter_model.safetensors", metadata={"format": "pt"})
    return folder


def _llama_token_logprobs(model, adapter, prefix: list[int], owns: list[list[int]], shared: bool) -> np.ndarray:
    """Log-probability of each item's own tokens after its first, the items in one batch of sequences. `shared`:
    the prefix decoded once into sequence 0 and its cells copied into each item's sequence, as generation does."""
    from stt.engines.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine(model, LlamaCppSettings(adapter=adapter, batch_size=len(owns),
                                                n_ctx=512, reuse_prefix_cache=shared))
    entries, rows = [], []
    if shared:
        engine._set_prefix(prefix)
    for seq, own in enumerate(owns, start=1):
        start = engine._copy_prefix(seq) if shared else 0
        rows.append(len(entries) + (0 if shared else len(prefix)))  # the row of the item's first token
        entries += [(t, start + k, seq, True) for k, t in enumerate(own if shared else prefix + own)]
    engine._decode(entries)
    return np.concatenate([[engine._log_softmax(engine._logits(row + k))[own[k + 1]] for k in range(len(own) - 1)]
                           for row, own in zip(rows, owns, strict=True)])


def _torch_token_logprobs(model, prefix: list[int], owns: list[list[int]]) -> np.ndarray:
    import torch

    out = []
    for own in owns:
        with torch.no_grad():
            lp = model(torch.tensor([prefix + own])).logits[0].double().log_softmax(-1)
        out.append([lp[len(prefix) + k, own[k + 1]].item() for k in range(len(own) - 1)])
    return np.concatenate(out)


@pytest.fixture(scope="module")
def mild_adapter(tmp_path_factory):
    """The tiny adapter's one step at a tenth of its learning rate: it moves these tokens by 0.8 nats on average,
    as the benchmark's trained adapters do (0.3-2.8). The tiny adapter itself drives them to -25 nats, where
    llama.cpp's 16-bit steps, a relative error, cost 0.014 nats a token (max 0.037)."""
    from .conftest import train_tiny_adapter

    return train_tiny_adapter(tmp_path_factory.mktemp("mild-adapter"), learning_rate=0.005)


def test_a_lora_adapter_scores_every_token_as_in_transformers(mild_adapter, tmp_path):
    """On the same weights in float32 (stt.gguf_f32), llama.cpp with the converted adapter gives every token the
    log-probability transformers gives it with peft's adapter (unmerged), within what llama.cpp's arithmetic
    leaves on the base model, with and without the shared prefix; the engine's own scoring (loglikelihood)
    agrees. Negative control: the adapter at 0.9 of its strength is out of that tolerance by a wide margin, so
    a partly applied adapter or a wrong LoRA scale cannot pass. (On the shipped Q4_K_M weights the engines differ
    by 0.04 nats a token on the base model already: benchmarks/RESULTS.md, "LoRA on llama.cpp".)"""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from stt.engines.llamacpp_engine import LlamaCppEngine
    from stt.gguf_f32 import f32_gguf
    from stt.models import hf_folder

    q4 = resolve_model("gemma3-270m")
    f32 = f32_gguf(q4)  # converted once, cached in ~/.cache/stt/gguf-f32
    torch_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf_folder(q4), dtype=torch.float32),
                                            str(mild_adapter)).eval()
    scorer = LlamaCppEngine(f32, LlamaCppSettings(adapter=mild_adapter, n_ctx=512,
                                              reuse_prefix_cache=False))
    prefix = scorer.tokenizer(PREFIX)["input_ids"]
    owns = [scorer.tokenizer(item, add_special_tokens=False)["input_ids"] for item in ITEMS]
    with torch_model.disable_adapter():
        torch_base = _torch_token_logprobs(torch_model, prefix, owns)
    torch_lora = _torch_token_logprobs(torch_model, prefix, owns)
    assert np.abs(torch_lora - torch_base).mean() > 0.3  # the adapter moves these tokens (else this says nothing)

    def difference(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
        d = np.abs(ours - reference)
        return float(d.mean()), float(d.max())

    def within(ours: np.ndarray, reference: np.ndarray) -> bool:
        mean, top = difference(ours, reference)
        return mean < F32_MEAN_TOLERANCE and top < F32_MAX_TOLERANCE

    base = _llama_token_logprobs(f32, None, prefix, owns, shared=False)
    assert within(base, torch_base), difference(base, torch_base)
    for shared in (False, True):
        lora = _llama_token_logprobs(f32, mild_adapter, prefix, owns, shared)
        assert within(lora, torch_lora), (shared, difference(lora, torch_lora))
    partial = _llama_token_logprobs(f32, _scaled_adapter(mild_adapter, 0.9, tmp_path / "x0.9"), prefix, owns, False)
    # Seen: mean 0.175, max 1.15 (the full adapter: 0.0018, 0.020).
    assert difference(partial, torch_lora)[0] > 10 * F32_MEAN_TOLERANCE, difference(partial, torch_lora)
    assert difference(partial, torch_lora)[1] > F32_MAX_TOLERANCE, difference(partial, torch_lora)

    # The engine's scoring path, one score per pair (sums over the continuation's tokens).
    for (context, continuation), score in zip(ADAPTER_PAIRS, scorer.loglikelihood(ADAPTER_PAIRS), strict=True):
        whole, n = scorer.split_pair(context, continuation)
        with torch.no_grad():
            lp = torch_model(torch.tensor([whole])).logits[0].double().log_softmax(-1)
        expected = sum(lp[t - 1, whole[t]].item() for t in range(n, len(whole)))
        assert score.logprob == pytest.approx(expected, abs=F32_MAX_TOLERANCE)


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
    adapter to the next. That gap is the Q4_K_M kernels' (issue 35): on the same weights in F32, llama.cpp's
    adapter gives transformers' log-probabilities token by token, with the shared prefix or without (the test
    above; the Q4_K_M paths themselves differ by up to 1 nat a token, benchmarks/RESULTS.md)."""
    prefix = "".join(f"Question: What is {i} plus {i}?\nAnswer: {2 * i}\n" for i in range(1, 6))
    requests = [Request(prefix + f"Question: What is {i} plus {i}?\nAnswer:", 6, ("\n",)) for i in (7, 8, 9)]
    # In this process: the test asks the engine itself which prefix it shares.
    shared = get_engine(LlamaCppSettings(adapter=tiny_adapter, reuse_prefix_cache=True, process="inline"))
    assert shared._shared_prefix([r.prompt for r in requests]) == prefix  # the prefix path is the one taken
    base_shared = get_engine(LlamaCppSettings(reuse_prefix_cache=True, process="inline"))
    base_plain = get_engine(LlamaCppSettings(reuse_prefix_cache=False, process="inline"))
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
    ours = get_engine(TransformersSettings(adapter=tiny_adapter, reuse_prefix_cache=False)).loglikelihood(pairs)
    base = get_engine(TransformersSettings(reuse_prefix_cache=False)).loglikelihood(pairs)
    for score, value, plain in zip(ours, expected, base, strict=True):
        assert abs(value - plain.logprob) > 5  # the adapter moves this score (else equality says nothing)
        assert score.logprob == pytest.approx(value, abs=0.02)


def test_runs_on_llama_cpp_generate_on_it_and_score_labels_on_transformers():
    from stt.config import RunConfig
    from stt.pipeline import plan_task
    from stt.stages.evaluate import eval_engine

    config = RunConfig(engine=LlamaCppSettings(), languages=("de",), tasks=("gsm8k", "mnli"))
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
        get_engine(LlamaCppSettings(model=folder, process="inline"))
    # In an engine process the model loads on the first call: the same refusal comes from there.
    with pytest.raises(ConfigError, match="runs GGUF weights"):
        get_engine(LlamaCppSettings(model=folder, process="child")).generate(
            [Request("Question: 1 + 1?\nAnswer:", 4, ("\n",))])


def test_llama_cpp_prints_nothing_and_its_last_words_come_with_a_refusal(tiny_adapter, tmp_path, capfd):
    """llama.cpp logs about 90 lines at its ERROR level for every adapter loaded (LoRA tensors that cannot use
    the repacked CPU buffer) and one per model load (a token type it corrects): none reaches the terminal. When
    it does refuse something, its last lines are in the error."""
    from stt.engines.llamacpp_engine import LlamaCppEngine
    from stt.errors import ConfigError
    from stt.models import ResolvedModel

    capfd.readouterr()
    LlamaCppEngine(resolve_model("gemma3-270m"), LlamaCppSettings(adapter=str(tiny_adapter)))
    printed = capfd.readouterr().err
    assert "llama_adapter_lora_init_impl" not in printed and "control-looking token" not in printed, printed[:500]
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(ConfigError, match=r"could not load .*broken\.gguf; llama\.cpp said: .*\S"):
        LlamaCppEngine(ResolvedModel("broken", broken, "0" * 64, True), LlamaCppSettings())
