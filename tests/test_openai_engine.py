"""The endpoint engine against a real OpenAI-compatible server: llama-cpp-python's, serving the Gemma GGUF.

The server runs on loopback, started and stopped here; the retry test stops it mid-run and starts
it again, and the run still completes.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time

import pandas as pd
import pytest

from stt import jobs
from stt.config import GenerationParams, PromptConfig, TranslateConfig
from stt.engine_settings import LlamaCppSettings, OpenAISettings, TransformersSettings
from stt.engines import Request
from stt.engines.openai_engine import OpenAIEngine
from stt.models import resolve_model
from stt.prompts import build_prompt_builder

from .conftest import DATA
from .services.stack import Processes, free_port, wait_healthy

pytestmark = pytest.mark.model  # a llama-cpp-python server process, not the service stack


class LlamaServer:
    def __init__(self, folder, alias: str = "gemma3-270m", *extra: str):
        self.alias = alias  # the model name the server answers to
        self.extra = list(extra)  # more llama_cpp.server settings, e.g. a LoRA adapter
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.procs = Processes(folder)
        self.gguf = str(resolve_model("gemma3-270m").path)
        self.proc = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.proc = self.procs.start(f"llama-{self.starts}", [
            sys.executable, "-m", "llama_cpp.server", "--model", self.gguf, "--host", "127.0.0.1",
            "--port", str(self.port), "--n_ctx", "4096", "--n_threads", "2", "--model_alias", self.alias,
            *self.extra], env=None)
        wait_healthy(self.url, self.proc, timeout=120, path="/models")

    def stop(self) -> None:
        self.procs.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python[server] is not installed (the dev extra installs it)")
    s = LlamaServer(tmp_path_factory.mktemp("llama"))
    try:
        s.start()
        yield s
    finally:
        s.stop()
        assert not s.procs.group_alive()


def _engine(server, **kw) -> OpenAIEngine:
    config = OpenAISettings(model="gemma3-270m", base_urls=(server.url,), **kw)
    return OpenAIEngine(resolve_model("gemma3-270m"), config, GenerationParams())


def test_generates_with_token_counts_from_the_server(server):
    builder = build_prompt_builder("de", PromptConfig(), DATA)
    engine = _engine(server, concurrency=2)
    assert engine.served_model == "gemma3-270m"
    outs = engine.generate([Request(builder.completion_prompt(s), 24, ("\n",)) for s in
                            ("Weng earns $12 an hour for babysitting.", "How much did she earn?")])
    assert all(o.text and "\n" not in o.text for o in outs)
    assert all(o.prompt_tokens > 500 and 0 < o.completion_tokens <= 24 for o in outs)  # from `usage`
    assert "Weng" in outs[0].text
    assert engine.count_tokens("How much did she earn?") == 6  # the model's own tokenizer


def test_translate_stage_runs_on_the_endpoint(server, tmp_path):
    config = TranslateConfig(task="gsm8k", languages=("de",), limit=1, out_dir=tmp_path / "out",
                             engine=OpenAISettings(model="gemma3-270m", base_urls=(server.url,)),
                             generation=GenerationParams(max_new_tokens_cap=40))
    out = jobs.translate(config)
    rows = pd.read_parquet(out / "_raw")
    # By hand: GSM8K's first training item is its question (one segment) and a two-line rationale (its
    # calculator annotations and the "#### 72" answer line are not translated).
    assert len(rows) == 3 and rows["translate"].all() and (rows["completion_tokens"] > 0).all()
    accepted = list(out.glob("de-*.parquet"))
    rejects = list((out / "_rejects").glob("*.parquet"))
    assert len(accepted) + len(rejects) == 1  # the one example is either accepted or set aside with a reason


def test_retries_ride_out_a_server_restart(server):
    engine = _engine(server, concurrency=1, max_retries=10, timeout_s=30)
    requests = [Request(f"Count to three: one, two,{' ' * i}", 6, ()) for i in range(8)]
    first_done = threading.Event()

    def progress(done: int, total: int) -> None:
        if done == 1:
            first_done.set()

    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("outs", engine.generate(requests, progress)))
    worker.start()
    assert first_done.wait(120)
    server.stop()  # mid-run: the next requests are refused
    time.sleep(3)
    server.start()
    worker.join(300)
    assert not worker.is_alive()
    assert len(result["outs"]) == 8 and all(o.completion_tokens > 0 for o in result["outs"])
    assert engine.retries > 0


def test_endpoint_scores_the_same_continuation_tokens_as_the_engine_in_process(server):
    # The shared split (stt.engines.tokenizer): the server scores exactly the label's tokens. The server runs
    # the GGUF weights in llama.cpp, the in-process engine their dequantised copy in torch: close, not equal.
    from stt.engines import get_engine

    pairs = [("Premise: A man sleeps.\nHypothesis: Nobody sleeps.\nRelation:", f" {label}")
             for label in ("entailment", "neutral", "contradiction")] + [("The capital of France is", " Paris")]
    remote = _engine(server).loglikelihood(pairs)
    local = get_engine(TransformersSettings(batch_size=4, reuse_prefix_cache=False)).loglikelihood(pairs)
    assert [s.tokens for s in remote] == [s.tokens for s in local]
    for r, loc in zip(remote, local, strict=True):
        assert r.logprob == pytest.approx(loc.logprob, abs=0.3)


@pytest.mark.full  # a second server process; the default tier checks the adapter on llama.cpp in-process
def test_an_adapter_served_by_the_endpoint_moves_scores_as_far_as_in_process(server, tiny_adapter, tmp_path):
    """A user serving an adapter from llama-cpp-python's server (`--lora_path`, under the name the engine asks
    for) gets the adapter's whole effect: each pair's shift is the shift of the same GGUF adapter in the
    in-process llama.cpp engine, within a tenth of a nat per nat of shift plus twice the two paths' own
    difference on the base model. The endpoint bugs this guards against (scoring under the base model's name;
    a continuation one token short) moved scores by tens of nats. How close llama.cpp's LoRA comes to
    transformers' is tests/test_llamacpp_engine.py's (and issue 35's) question: on an AVX-512 machine
    (2026-12-02) one trained tiny adapter left the server's first pair 18% from transformers' shift."""
    import numpy as np

    from stt.engines import get_engine
    from stt.files import file_sha256
    from stt.lora_gguf import adapter_gguf

    from .test_llamacpp_engine import ADAPTER_PAIRS

    # The name the engine asks the server for: the adapter folder's name and its weights' hash.
    name = f"{tiny_adapter.name}-{file_sha256(tiny_adapter / 'adapter_model.safetensors')[:10]}"
    served = LlamaServer(tmp_path, name, "--lora_path", str(adapter_gguf(tiny_adapter, resolve_model("gemma3-270m"))))
    try:
        served.start()
        lora = np.array([s.logprob for s in _engine(served, adapter=str(tiny_adapter)).loglikelihood(ADAPTER_PAIRS)])
    finally:
        served.stop()
    base = np.array([s.logprob for s in _engine(server).loglikelihood(ADAPTER_PAIRS)])

    def local(adapter):
        config = LlamaCppSettings(adapter=adapter, reuse_prefix_cache=False)
        return np.array([s.logprob for s in get_engine(config).loglikelihood(ADAPTER_PAIRS)])

    local_base, local_lora = local(None), local(tiny_adapter)
    shift, local_shift = lora - base, local_lora - local_base
    print(f"\nshift served {np.round(shift, 2)}, in process {np.round(local_shift, 2)}")
    assert (np.abs(local_shift) > 5).all()
    path_difference = np.abs(base - local_base)
    assert (np.abs(shift - local_shift) <= 0.1 * np.abs(local_shift) + 2 * path_difference).all(), \
        (shift, local_shift)