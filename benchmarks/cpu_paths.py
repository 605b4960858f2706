"""The CPU paths side by side, in one run on the same inputs (issue 10's table).

1. Translation (same segments, greedy): the transformers engine (batched, prefix KV reused), the
   llama.cpp engine (continuous batching, prefix cells shared), raw llama.cpp one stream
   (llama-cpp-python's `Llama`, which reuses the KV of the common prefix with the previous prompt),
   and the whole translate stage on the llama.cpp engine. Greedy outputs identical to transformers'.
2. XNLI label scoring (log-likelihood of the three labels): items/s and accuracy per engine.
3. LoRA training step at the demo's shapes: all logits vs answer-only logits (+ length grouping).

    .venv/bin/python benchmarks/cpu_paths.py --examples 6 --language de --items 60 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from translate_throughput import _requests  # noqa: E402  (same segments as the older benchmark)

from stt import jobs  # noqa: E402
from stt.config import (  # noqa: E402
    EvalConfig,  # noqa: E402
    GenerationParams,
    TrainConfig,
    TranslateConfig,
)
from stt.engine_settings import LlamaCppSettings, TransformersSettings  # noqa: E402
from stt.engines import Request, get_engine, release_engines  # noqa: E402
from stt.specs import get_task, load_test_set  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _raw_llama_one_stream(model_path: str, requests: list[Request], threads: int) -> tuple[list[str], int, float]:
    """What a llama-cpp-python user writes: one Llama, one prompt after another (its prefix KV is reused)."""
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    texts, tokens = [], 0
    t0 = time.perf_counter()
    for r in requests:
        out = llm.create_completion(r.prompt, max_tokens=r.max_new_tokens, temperature=0.0, stop=list(r.stop))
        texts.append(out["choices"][0]["text"])
        tokens += out["usage"]["completion_tokens"]
    seconds = time.perf_counter() - t0
    del llm
    return texts, tokens, seconds


def translation(args: argparse.Namespace, threads: int) -> dict:
    gen = GenerationParams(max_new_tokens_cap=96)
    tf = TransformersSettings(model=args.model, batch_size=args.batch_size)
    lc = LlamaCppSettings(model=args.model, batch_size=args.batch_size)
    config = TranslateConfig(task="gsm8k", languages=(args.language,), limit=args.examples, shard_size=args.examples,
                             engine=lc, generation=gen)
    rows = {}
    engine = get_engine(tf, gen)
    requests = _requests(config, engine)
    out_tf, s_tf = _timed(lambda: engine.generate(requests))
    rows[f"transformers engine, batch {args.batch_size}, prefix KV reused"] = (s_tf, out_tf)
    release_engines()
    engine = get_engine(lc, gen)
    out_lc, s_lc = _timed(lambda: engine.generate(requests))
    rows[f"llama.cpp engine, {args.batch_size} slots, prefix shared"] = (s_lc, out_lc)
    release_engines()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.model_copy(update={"out_dir": Path(tmp) / "out"})
        _, s_pipe = _timed(lambda: jobs.translate(cfg))
    release_engines()
    from stt.models import resolve_model

    raw_texts, raw_tokens, s_raw = _raw_llama_one_stream(str(resolve_model(args.model).path), requests, threads)
    table = []
    for name, (secs, outs) in rows.items():
        toks = sum(c.completion_tokens for c in outs)
        table.append({"path": name, "seconds": round(secs, 1), "gen_tok_s": round(toks / secs, 1)})
    table.append({"path": "raw llama.cpp, one stream (llama-cpp-python Llama)", "seconds": round(s_raw, 1),
                  "gen_tok_s": round(raw_tokens / s_raw, 1)})
    lc_tokens = sum(c.completion_tokens for c in out_lc)
    table.append({"path": "translate stage (plan+generate+validate+write) on llama.cpp", "seconds": round(s_pipe, 1),
                  "gen_tok_s": round(lc_tokens / s_pipe, 1)})
    same_tf = sum(a.text.strip() == b.text.strip() for a, b in zip(out_tf, out_lc, strict=True))
    same_raw = sum(a.text.strip() == b.strip() for a, b in zip(out_lc, raw_texts, strict=True))
    return {"segments": len(requests), "table": table,
            "pipeline_vs_old_pipeline_engine": round((lc_tokens / s_pipe) / (sum(c.completion_tokens for c in out_tf)
                                                                              / s_tf), 2),
            "pipeline_vs_raw_one_stream": round((lc_tokens / s_pipe) / (raw_tokens / s_raw), 2),
            "identical_to_transformers": f"{same_tf}/{len(requests)}",
            "identical_to_raw_llama": f"{same_raw}/{len(requests)}"}


def scoring(args: argparse.Namespace) -> dict:
    items = load_test_set("mnli", TranslateConfig().resolved_data_dir(), args.language, args.items)
    out = {}
    preds = {}
    for name, cfg in (("transformers", TransformersSettings(model=args.model, batch_size=8, reuse_prefix_cache=False)),
                      ("llama-cpp", LlamaCppSettings(model=args.model, batch_size=8))):
        engine = get_engine(cfg)
        spec = get_task("mnli")
        rows, secs = _timed(lambda engine=engine, spec=spec: spec.eval_rows(engine, items, EvalConfig(), args.language))
        acc = 100 * sum(r["prediction"] == r["gold"] for r in rows) / len(rows)
        out[name] = {"items": len(items), "seconds": round(secs, 1), "items_per_s": round(len(items) / secs, 2),
                     "accuracy": round(acc, 1)}
        preds[name] = [r["prediction"] for r in rows]
        release_engines()
    out["speedup"] = round(out["llama-cpp"]["items_per_s"] / out["transformers"]["items_per_s"], 2)
    out["same_predictions"] = f"{sum(a == b for a, b in zip(*preds.values(), strict=True))}/{len(items)}"
    return out


def training(args: argparse.Namespace) -> dict:
    """Seconds per optimizer step at the demo's shapes (rank 8, batch 4, max_length 192, GSM8K pairs)."""
    import pyarrow as pa

    from stt.files import write_parquet_atomic
    from stt.loaders import load_gsm8k
    from stt.markers import mark_done
    from stt.stages.finetune import finetune
    from stt.templates import math_pair
    from stt.trainsets import SET_SCHEMA

    data = TranslateConfig().resolved_data_dir()
    examples = load_gsm8k(data / "gsm8k" / "train.jsonl")[: 4 * args.steps]
    rows = [{"id": e["id"], "source_id": e["id"], "language": "en", "variant": "english",
             **vars(math_pair(e)), "fields": "{}"} for e in examples]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=SET_SCHEMA), Path(tmp) / "set" / "data.parquet")
        mark_done(Path(tmp) / "set", "bench", ["data.parquet"])
        base = TrainConfig(rank=8, alpha=16, batch_size=4, max_length=192, learning_rate=3e-4, save_steps=1000,
                           max_steps=args.steps)
        variants = (
            ("all logits (before)", {"answer_only_logits": False, "group_by_length": False}),
            ("answer-only logits", {"group_by_length": False}),
            ("answer-only logits + length-grouped batches (default)", {}),
            ("default + lora dropout 0 (reference, changes the method)", {"dropout": 0.0}),
        )
        for name, update in variants:
            cfg = base.model_copy(update=update)
            info = finetune(args.model, Path(tmp) / "set", Path(tmp) / f"adapter{len(out)}", cfg)
            m = info["metrics"]
            out[name] = {"steps": m["steps"], "seconds_per_step": m["seconds_per_step"], "train_loss": m["train_loss"]}
    first = out["all logits (before)"]["seconds_per_step"]
    for v in out.values():
        v["speedup"] = round(first / v["seconds_per_step"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=6)
    ap.add_argument("--language", default="de")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--items", type=int, default=60, help="XNLI test items scored")
    ap.add_argument("--steps", type=int, default=6, help="training steps timed per path")
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--only", default="translation,scoring,training")
    args = ap.parse_args()
    import torch

    threads = len(os.sched_getaffinity(0))
    print(f"machine: {platform.machine()}, {threads} cores, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads); model {args.model}; {time.strftime('%Y-%m-%d')}")
    results = {}
    for part in args.only.split(","):
        results[part] = {"translation": lambda: translation(args, threads), "scoring": lambda: scoring(args),
                         "training": lambda: training(args)}[part]()
        print(f"\n## {part}\n" + json.dumps(results[part], indent=2, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
