"""Batch runner executed by the vLLM environment's Python: Parquet of prompts in, Parquet of completions out.

    <vllm-env>/bin/python stt/vllm_runner.py --input prompts.parquet --output completions.parquet \\
        --settings settings.json

It imports only vllm and pyarrow (with `--backend transformers` it runs stt's CPU engine instead, for
testing the contract without a GPU). The input has one row per request:
    prompt (str), max_tokens (int), stop (list[str]), kind ("generate" | "score"),
    continuation (str, for "score": log-likelihood of prompt's last part), lora (str, adapter path or "")
The output has, in the same order: text, prompt_tokens, completion_tokens, finish_reason, logprob,
score_tokens, is_greedy. settings.json holds the model path, sampling and engine settings. On failure
the runner exits non-zero with one line `stt-runner-error: <message>` on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# Model load and generation times of this run, written to the output's metadata (benchmarks read them).
TIMES: dict[str, float] = {}

OUT_SCHEMA = pa.schema([
    ("text", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("finish_reason", pa.string()), ("logprob", pa.float64()), ("score_tokens", pa.int64()),
    ("is_greedy", pa.bool_()),
])


def run_vllm(rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    from vllm import LLM, SamplingParams

    loras = sorted({r["lora"] for r in rows if r.get("lora")})
    t_load = time.perf_counter()
    llm = LLM(
        model=settings["model"], tokenizer=settings.get("tokenizer") or settings["model"],
        dtype=settings.get("dtype", "auto"), tensor_parallel_size=settings.get("tensor_parallel_size", 1),
        gpu_memory_utilization=settings.get("gpu_memory_utilization", 0.9),
        max_model_len=settings.get("max_model_len"), load_format=settings.get("load_format", "auto"),
        enable_prefix_caching=True,  # the few-shot demonstrations are a prefix shared by every prompt
        enable_lora=bool(loras), max_lora_rank=settings.get("max_lora_rank", 64), max_loras=max(1, len(loras)),
        seed=settings.get("seed", 0),
    )
    TIMES["load_seconds"] = time.perf_counter() - t_load
    t_gen = time.perf_counter()
    lora_requests: dict[str, Any] = {}
    if loras:
        from vllm.lora.request import LoRARequest

        lora_requests = {path: LoRARequest(f"adapter-{i}", i + 1, path) for i, path in enumerate(loras)}
    out: list[dict[str, Any] | None] = [None] * len(rows)
    gen_idx = [i for i, r in enumerate(rows) if r["kind"] == "generate"]
    if gen_idx:
        params = [SamplingParams(temperature=settings.get("temperature", 0.0), top_p=settings.get("top_p", 1.0),
                                 seed=settings.get("seed", 0), max_tokens=rows[i]["max_tokens"],
                                 stop=list(rows[i]["stop"] or []) or None) for i in gen_idx]
        # One call for the whole shard: vLLM schedules the batch itself.
        results = llm.generate([rows[i]["prompt"] for i in gen_idx], params, use_tqdm=False,
                               lora_request=[lora_requests.get(rows[i].get("lora")) for i in gen_idx]
                               if loras else None)
        for i, res in zip(gen_idx, results, strict=True):
            c = res.outputs[0]
            out[i] = {"text": c.text, "prompt_tokens": len(res.prompt_token_ids),
                      "completion_tokens": len(c.token_ids),
                      "finish_reason": "length" if c.finish_reason == "length" else "stop",
                      "logprob": None, "score_tokens": None, "is_greedy": None}
    score_idx = [i for i, r in enumerate(rows) if r["kind"] == "score"]
    if score_idx:
        tok = llm.get_tokenizer()
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        results = llm.generate([rows[i]["prompt"] + rows[i]["continuation"] for i in score_idx], params,
                               use_tqdm=False, lora_request=[lora_requests.get(rows[i].get("lora"))
                                                             for i in score_idx] if loras else None)
        for i, res in zip(score_idx, results, strict=True):
            ids = res.prompt_token_ids
            # The caller sends how many trailing tokens are the continuation (stt's shared split); the
            # context-alone count is the fallback for callers that do not.
            k = rows[i].get("score_tokens")
            n_ctx = len(ids) - int(k) if k else len(tok(rows[i]["prompt"])["input_ids"])
            total, greedy = 0.0, True
            for pos in range(n_ctx, len(ids)):
                entry = res.prompt_logprobs[pos] or {}
                lp = entry[ids[pos]]
                total += lp.logprob
                greedy &= lp.rank == 1
            out[i] = {"text": "", "prompt_tokens": len(ids), "completion_tokens": 0, "finish_reason": "score",
                      "logprob": total, "score_tokens": len(ids) - n_ctx, "is_greedy": greedy}
    TIMES["generate_seconds"] = time.perf_counter() - t_gen
    return [o for o in out if o is not None]


def run_transformers(rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The same contract on stt's CPU engine (this project's environment), for tests without a GPU."""
    from stt.config import EngineConfig, GenerationParams
    from stt.engines import Request, get_engine

    out: list[dict[str, Any] | None] = [None] * len(rows)
    by_lora: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_lora.setdefault(r.get("lora") or "", []).append(i)
    for lora, idx in by_lora.items():
        engine = get_engine(EngineConfig(model=settings["model"], batch_size=settings.get("batch_size", 8),
                                         adapter=lora or None, reuse_prefix_cache=True),
                            GenerationParams(temperature=settings.get("temperature", 0.0),
                                             top_p=settings.get("top_p", 1.0), seed=settings.get("seed", 0)))
        gen = [i for i in idx if rows[i]["kind"] == "generate"]
        for i, c in zip(gen, engine.generate([Request(rows[i]["prompt"], rows[i]["max_tokens"],
                                                      tuple(rows[i]["stop"] or ())) for i in gen]), strict=True):
            out[i] = {"text": c.text, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                      "finish_reason": c.finish_reason, "logprob": None, "score_tokens": None, "is_greedy": None}
        score = [i for i in idx if rows[i]["kind"] == "score"]
        pairs = [(rows[i]["prompt"], rows[i]["continuation"]) for i in score]
        for i, s in zip(score, engine.loglikelihood(pairs) if pairs else [], strict=True):
            out[i] = {"text": "", "prompt_tokens": 0, "completion_tokens": 0, "finish_reason": "score",
                      "logprob": s.logprob, "score_tokens": s.tokens, "is_greedy": s.is_greedy}
    return [o for o in out if o is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="stt batch runner: Parquet prompts -> Parquet completions")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--settings", required=True)
    ap.add_argument("--backend", choices=("vllm", "transformers"), default="vllm")
    args = ap.parse_args(argv)
    try:
        settings = json.loads(Path(args.settings).read_text(encoding="utf-8"))
        rows = pq.read_table(args.input).to_pylist()
        missing = {"prompt", "max_tokens", "stop", "kind"} - set(rows[0]) if rows else set()
        if missing:
            raise ValueError(f"{args.input}: missing columns {sorted(missing)}")
        t0 = time.perf_counter()
        out = (run_vllm if args.backend == "vllm" else run_transformers)(rows, settings)
        if len(out) != len(rows):
            raise RuntimeError(f"{len(out)} results for {len(rows)} requests")
        meta = {"stt.seconds": f"{time.perf_counter() - t0:.3f}", "stt.backend": args.backend}
        meta.update({f"stt.{k}": f"{v:.3f}" for k, v in TIMES.items()})
        table = pa.Table.from_pylist(out, schema=OUT_SCHEMA).replace_schema_metadata(meta)
        tmp = args.output + ".tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, args.output)
    except Exception as exc:  # noqa: BLE001 - the parent process shows this one line to the user
        print(f"stt-runner-error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
