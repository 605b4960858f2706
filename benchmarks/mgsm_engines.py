"""MGSM evaluation with an adapter on both CPU engines, the same items in one run (issue 23's MGSM goal).

    python benchmarks/mgsm_engines.py ADAPTER [--language de] [--items 20] [--max-new-tokens 96]
        [--tf-batch 10] [--llama-batch 10 20] [--out FILE.json]

ADAPTER: a peft adapter folder of the base model (the demo's `runs/demo/gsm8k/adapters/english`, say).
Each engine evaluates the first N MGSM items of the language through the task's own evaluation code
(`eval_rows`: prompt, stops, answer extraction); items/s counts from the engine's load to the last answer.
Reported: items/s and the ratio to transformers, tokens generated, accuracy with a 95% interval over items
(bootstrap, 2,000 resamples), and the share of items whose whole greedy output is identical to transformers'.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np

from stt.config import EvalConfig, GenerationParams
from stt.engine_settings import engine_config
from stt.engines import load_inline
from stt.specs import get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(kind: str, batch: int, adapter: Path, items: list, config: EvalConfig, language: str) -> dict:
    spec = get_task("gsm8k")
    t0 = time.perf_counter()
    engine = load_inline(engine_config(kind=kind, adapter=adapter, batch_size=batch, reuse_prefix_cache=False),
                         GenerationParams())
    rows = spec.eval_rows(engine, items, config, language)
    seconds = time.perf_counter() - t0
    del engine
    gc.collect()
    scores = np.array([spec.score_row(language, r) for r in rows], dtype=float)
    rng = np.random.default_rng(0)
    boots = scores[rng.integers(0, len(scores), (2000, len(scores)))].mean(1)
    return {"engine": kind, "batch": batch, "seconds": round(seconds, 1),
            "items_per_s": round(len(items) / seconds, 3),
            "tokens": int(sum(r["completion_tokens"] for r in rows)),
            "accuracy": round(100 * scores.mean(), 1),
            "accuracy_95": [round(100 * float(np.percentile(boots, 2.5)), 1),
                            round(100 * float(np.percentile(boots, 97.5)), 1)],
            "outputs": [r["output"] for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter", type=Path)
    ap.add_argument("--language", default="de")
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--tf-batch", type=int, default=10)
    ap.add_argument("--llama-batch", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    items = get_task("gsm8k").test_items(DATA, args.language)[: args.items]
    config = EvalConfig(limit=args.items, batch_size=args.tf_batch, max_new_tokens={"gsm8k": args.max_new_tokens})
    reference = run("transformers", args.tf_batch, args.adapter, items, config, args.language)
    results = [reference] + [run("llama-cpp", b, args.adapter, items, config, args.language)
                             for b in args.llama_batch]
    for r in results:
        r["ratio_to_transformers"] = round(r["items_per_s"] / reference["items_per_s"], 2)
        r["identical_outputs"] = sum(a == b for a, b in zip(r["outputs"], reference["outputs"], strict=True))
    summary = [{k: v for k, v in r.items() if k != "outputs"} for r in results]
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"items": args.items, "language": args.language,
                                        "max_new_tokens": args.max_new_tokens, "results": results}, indent=1))


if __name__ == "__main__":
    main()
