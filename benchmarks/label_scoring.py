"""XNLI label scoring with a LoRA adapter on the transformers engine, on the same German XNLI test items in one run:
the base model; the adapter applied by peft with the output layer's positions named by count (before); the same by
index; the adapter merged into the weights, by index (now: the engine's way in fp32).

    python benchmarks/label_scoring.py ADAPTER OUT_DIR [--items 200] [--rounds 3]

ADAPTER: a trained peft folder, e.g. an XNLI study's mnli/adapters/english. Reports items/s (median of the
rounds, after a warm-up), the ratios, and against the engine as it was (applied, by count): identical
predictions and the largest difference of a label's log-likelihood.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np

from stt.config import EvalConfig
from stt.engine_settings import TransformersSettings
from stt.engines.transformers_engine import TransformersEngine
from stt.models import resolve_model
from stt.specs import get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class CountedPositions(TransformersEngine):
    """The engine as it was: the last `keep` positions named by count (a strided slice of the hidden states)."""

    def _kept_positions(self, width: int, keep: int) -> int:  # type: ignore[override]
        return keep


VARIANTS = ("base model", "adapter applied, by count", "adapter applied, by index", "adapter merged, by index")


def load(variant: str, adapter: Path) -> TransformersEngine:
    config = TransformersSettings(adapter=None if variant == "base model" else adapter, batch_size=16,
                          reuse_prefix_cache=False)
    cls = CountedPositions if variant == "adapter applied, by count" else TransformersEngine
    return cls(resolve_model("gemma3-270m"), config, merge_adapter=variant == "adapter merged, by index")


def measure(adapter: Path, items: list, rounds: int) -> dict:
    """Every variant loaded at once and timed in turn, `rounds` times: drift of the machine hits all alike."""
    spec = get_task("mnli")
    engines = {v: load(v, adapter) for v in VARIANTS}
    runs: dict = {v: {"seconds": []} for v in VARIANTS}
    for engine in engines.values():
        spec.eval_rows(engine, items[:16], EvalConfig(batch_size=16), "de")  # warm-up: first-call allocations
    for _ in range(rounds):
        for v, engine in engines.items():
            t0 = time.perf_counter()
            runs[v]["rows"] = spec.eval_rows(engine, items, EvalConfig(batch_size=16), "de")
            runs[v]["seconds"].append(time.perf_counter() - t0)
    for r in runs.values():
        r["items_per_s"] = len(items) / float(np.median(r["seconds"]))
    del engines
    gc.collect()
    return runs


def rate(runs: dict, variant: str) -> float:
    return runs[variant]["items_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    items = get_task("mnli").test_items(DATA, "de")[: args.items]
    runs = measure(args.adapter, items, args.rounds)
    before = runs["adapter applied, by count"]["rows"]

    def agreement(variant: str) -> dict:
        pairs = list(zip(before, runs[variant]["rows"], strict=True))
        return {"identical_predictions": float(np.mean([a["prediction"] == b["prediction"] for a, b in pairs])),
                "max_abs_label_loglik_difference": max(
                    abs(x - y) for a, b in pairs
                    for x, y in zip(json.loads(a["output"]).values(), json.loads(b["output"]).values(), strict=True))}

    applied, merged, counted = "adapter applied, by index", "adapter merged, by index", "adapter applied, by count"
    figures = {
        "adapter": str(args.adapter), "items": args.items, "rounds": args.rounds,
        **{v: {"items_per_s": round(r["items_per_s"], 2), "seconds": [round(s, 2) for s in r["seconds"]],
               "accuracy": round(100 * float(np.mean([x["prediction"] == x["gold"] for x in r["rows"]])), 1)}
           for v, r in runs.items()},
        "index_over_count": round(rate(runs, applied) / rate(runs, counted), 2),
        "merged_over_applied": round(rate(runs, merged) / rate(runs, applied), 2),
        "now_over_before": round(rate(runs, merged) / rate(runs, counted), 2),
        "now_over_base_model": round(rate(runs, merged) / rate(runs, "base model"), 2),
        "against_before": {v: agreement(v) for v in (applied, merged)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "label_scoring.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
