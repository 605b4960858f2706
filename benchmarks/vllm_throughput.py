"""GPU translation throughput: the pipeline's vLLM paths vs raw vLLM vs transformers, on the same prompts.

Run from this project's environment on a GPU host with the vLLM environment set up (scripts/setup-vllm.sh):

    STT_VLLM_PYTHON=.venv-vllm/bin/python python benchmarks/vllm_throughput.py --model <hf-folder> \\
        --prompts 512 --batch-sizes 64,256 [--load-format dummy] [--endpoint] [--transformers] [--lora <adapter>]

Paths measured (prompts/s and generated tokens/s; generation time only, model load reported apart):
  raw       vllm.LLM.generate called directly in the vLLM environment (benchmarks/_raw_vllm.py)
  pipeline  stt's VLLMBatchEngine (Parquet -> runner subprocess -> Parquet), same settings
  endpoint  stt's OpenAIEngine against `vllm serve` started here (--endpoint)
  hf        stt's TransformersEngine on the same GPU at each batch size (--transformers)
  lora      the pipeline with a LoRA adapter applied (--lora), for LoRA evaluation throughput
`--load-format dummy` gives random weights of the model's shape: a 7-8B configuration without its weights
(a folder with config.json and the tokenizer is enough). Prints a table and a markdown block for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from stt.config import GenerationParams, PromptConfig, TranslateConfig  # noqa: E402
from stt.engine_settings import OpenAISettings, TransformersSettings, VLLMBatchSettings  # noqa: E402
from stt.engines import Request  # noqa: E402
from stt.engines.vllm_batch import IN_SCHEMA, VLLMBatchEngine, vllm_python  # noqa: E402
from stt.models import resolve_model  # noqa: E402
from stt.prompts import build_prompt_builder  # noqa: E402
from stt.stages.translate import load_examples  # noqa: E402

RAW = Path(__file__).with_name("_raw_vllm.py")


def make_requests(n: int, language: str, model_count) -> list[Request]:
    config = TranslateConfig(task="gsm8k", languages=(language,), limit=max(8, n // 4))
    spec, examples = load_examples(config)
    builder = build_prompt_builder(language, PromptConfig(), config.resolved_data_dir())
    texts = [s.text for ex in examples for s in spec.segments(ex) if s.translate]
    texts = (texts * (n // max(1, len(texts)) + 1))[:n]
    gen = GenerationParams()
    return [Request(builder.completion_prompt(t), gen.max_new_tokens(model_count(t)), gen.stop) for t in texts]


def row(name: str, n: int, tokens: int, seconds: float, extra: str = "") -> dict:
    return {"path": name, "prompts": n, "gen_tokens": tokens, "seconds": round(seconds, 2),
            "prompts_per_s": round(n / seconds, 2), "tokens_per_s": round(tokens / seconds, 1), "note": extra}


def run_raw(python: str, requests: list[Request], settings: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [{"prompt": r.prompt, "max_tokens": r.max_new_tokens, "stop": list(r.stop), "kind": "generate",
                 "continuation": "", "lora": ""} for r in requests]
        pq.write_table(pa.Table.from_pylist(rows, schema=IN_SCHEMA), Path(tmp) / "in.parquet")
        (Path(tmp) / "settings.json").write_text(json.dumps(settings))
        out = subprocess.run([python, "-P", str(RAW), tmp], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF folder (or short name / .gguf: converted once)")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--language", default="de")
    ap.add_argument("--batch-sizes", default="64,256", help="for the transformers path")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--endpoint", action="store_true")
    ap.add_argument("--transformers", action="store_true")
    ap.add_argument("--lora", default=None)
    args = ap.parse_args()

    python = vllm_python(VLLMBatchSettings())
    resolved = resolve_model(args.model)
    cfg = VLLMBatchSettings(model=args.model, load_format=args.load_format,
                       max_model_len=args.max_model_len, vllm_python=python)
    engine = VLLMBatchEngine(resolved, cfg)
    requests = make_requests(args.prompts, args.language, engine.count_tokens)
    results = []

    raw = run_raw(python, requests, engine.settings())
    results.append(row("raw vllm LLM.generate", len(requests), raw["gen_tokens"], raw["generate_seconds"],
                       f"load {raw['load_seconds']:.1f}s"))

    t0 = time.perf_counter()
    outs = engine.generate(requests)
    wall = time.perf_counter() - t0
    tokens = sum(c.completion_tokens for c in outs)
    gen_s = engine.last_timings.get("generate_seconds", wall)
    results.append(row("pipeline vllm-batch (generate)", len(requests), tokens, gen_s,
                       f"load {engine.last_timings.get('load_seconds', 0):.1f}s"))
    results.append(row("pipeline vllm-batch (whole call)", len(requests), tokens, wall, "subprocess+load+I/O"))

    if args.lora:
        lora_engine = VLLMBatchEngine(resolved, cfg.model_copy(update={"adapter": Path(args.lora)}))
        outs = lora_engine.generate(requests)
        results.append(row("pipeline vllm-batch + LoRA", len(requests), sum(c.completion_tokens for c in outs),
                           lora_engine.last_timings.get("generate_seconds", 0.0) or 1e-9))

    if args.endpoint:
        results.append(run_endpoint(python, engine, requests, args))

    if args.transformers:
        from stt.engines.transformers_engine import TransformersEngine

        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            hf = TransformersEngine(resolved, TransformersSettings(model=args.model, batch_size=bs))
            sub = requests[: min(len(requests), bs * 4)]
            t0 = time.perf_counter()
            outs = hf.generate(sub)
            results.append(row(f"transformers generate bs={bs}", len(sub), sum(c.completion_tokens for c in outs),
                               time.perf_counter() - t0))
            del hf

    report(results, raw, args)


def run_endpoint(python: str, engine: VLLMBatchEngine, requests: list[Request], args) -> dict:
    from stt.engines.openai_engine import OpenAIEngine

    port = 8123
    server = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", engine.model_path,
                               "--port", str(port), "--load-format", args.load_format, "--max-model-len",
                               str(args.max_model_len), "--enable-prefix-caching"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                time.sleep(1)
        oa = OpenAIEngine(engine.resolved, OpenAISettings(model=args.model, concurrency=256,
                                                        base_urls=(f"http://127.0.0.1:{port}/v1",)))
        t0 = time.perf_counter()
        outs = oa.generate(requests)
        return row("endpoint (vllm serve, 256 in flight)", len(requests), sum(c.completion_tokens for c in outs),
                   time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(timeout=60)


def report(results: list[dict], raw: dict, args) -> None:
    print(f"\n{'path':40} {'prompts':>7} {'tokens':>8} {'seconds':>8} {'prompts/s':>10} {'tok/s':>9}  note")
    for r in results:
        print(f"{r['path']:40} {r['prompts']:7d} {r['gen_tokens']:8d} {r['seconds']:8.2f} {r['prompts_per_s']:10.2f} "
              f"{r['tokens_per_s']:9.1f}  {r['note']}")
    base = results[0]["tokens_per_s"]
    for r in results[1:]:
        print(f"{r['path']} / raw: {r['tokens_per_s'] / base:.3f}")
    print("\n```json")
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "device": raw.get("device"),
                      "vllm": raw.get("vllm"), "model": args.model, "load_format": args.load_format,
                      "python": sys.version.split()[0], "results": results}, indent=1))
    print("```")


if __name__ == "__main__":
    main()
