"""LoRA on llama.cpp against transformers, on one trained adapter per task (issue 23).

1. Per-token log-probabilities of one prompt: the base model's own engine difference (Q4_K_M in llama.cpp,
   which quantises activations to 8 bits for its dot products, vs the same weights dequantised to fp32 in
   transformers), then the adapter's shift on each engine, repeated, with and without a shared prefix.
2. XNLI label scoring with the adapter, both engines, same items: items/s and identical predictions.
3. MGSM evaluation with a GSM8K adapter, both engines, same items: items/s, identical greedy outputs, accuracy.

    python benchmarks/lora_parity.py OUT_DIR [--nli-items 200] [--mgsm-items 40] [--steps 30]

Adapters are trained here (seeded) on real English data; the figures go to OUT_DIR/lora_parity.json.

Part 1 is superseded by benchmarks/lora_parity_f32.py (issue 35): one prompt of 40 tokens, and its shift ratios
with and without the shared prefix are sums over different tokens (all 40, then the 16 after the prefix), so they
do not compare the two paths. The newer script compares per token, on the same tokens, on F32 weights as well.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from stt.config import EvalConfig, TrainConfig
from stt.engine_settings import engine_config
from stt.engines.llamacpp_engine import LlamaCppEngine
from stt.engines.transformers_engine import TransformersEngine
from stt.files import write_parquet_atomic
from stt.markers import mark_done
from stt.models import resolve_model
from stt.specs import get_task
from stt.stages.finetune import finetune
from stt.trainsets import SET_SCHEMA

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = resolve_model("gemma3-270m")


def train(task: str, out: Path, rows: int, steps: int) -> Path:
    """A seeded rank-8 adapter on the task's first `rows` English training items."""
    if (out / "adapter" / "adapter_model.safetensors").is_file():
        return out / "adapter"
    spec = get_task(task)
    # MultiNLI is not available offline: the English XNLI dev set is the project's declared stand-in.
    source = DATA / "xnli" / "xtreme_dev-en.tsv" if task == "mnli" else spec.default_source(DATA)
    examples = spec.load(source)[:rows]
    table = []
    for i, ex in enumerate(examples):
        pair = spec.pair(ex)
        table.append({"id": f"{task}:{i}", "source_id": f"{task}:{i}", "language": "en", "variant": "english",
                      "prompt": pair.prompt, "target": pair.target, "fields": "{}"})
    write_parquet_atomic(pa.Table.from_pylist(table, schema=SET_SCHEMA), out / "set" / "data.parquet")
    mark_done(out / "set", "bench-set", ["data.parquet"])
    finetune("gemma3-270m", out / "set", out / "adapter",
             TrainConfig(rank=8, alpha=16, max_steps=steps, batch_size=4, max_length=256, learning_rate=5e-4))
    return out / "adapter"


def engine(kind: str, adapter: Path | None, batch: int = 8):
    cls = TransformersEngine if kind == "transformers" else LlamaCppEngine
    return cls(MODEL, engine_config(kind=kind, adapter=adapter, batch_size=batch, reuse_prefix_cache=False))


def per_token(adapter: Path, text: str, prefix: int = 24, repeats: int = 3) -> dict:
    def tf(a):
        e = engine("transformers", a)
        ids = e.tokenizer(text)["input_ids"]
        with torch.no_grad():
            lp = e.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        return ids, np.array([lp[i - 1, ids[i]].item() for i in range(1, len(ids))])

    def ll(a, ids, shared: int):
        e = engine("llama-cpp", a, batch=2)
        if shared:  # the prefix decoded into sequence 0, its cells shared into sequence 1, as generation does
            e._decode([(t, p, 0, False) for p, t in enumerate(ids[:shared])])
            e.L.llama_memory_seq_cp(e._mem, 0, 1, 0, shared)
        e._decode([(t, p, 1, True) for p, t in enumerate(ids) if p >= shared])
        out = np.array([e._log_softmax(e._logits(i - 1 - shared))[ids[i]] for i in range(shared + 1, len(ids))])
        del e
        gc.collect()
        return out

    ids, tb = tf(None)
    _, ta = tf(adapter)
    lb = ll(None, ids, 0)
    shift_tf = ta - tb
    runs = []
    for shared in (0, prefix):
        for _ in range(repeats):
            la = ll(adapter, ids, shared)
            shift = la - lb[shared:]
            ref = shift_tf[shared:]
            runs.append({"shared_prefix_tokens": shared, "shift_ratio": float(shift.sum() / ref.sum()),
                         "slope": float(np.polyfit(ref, shift, 1)[0]),
                         "mean_abs_shift_difference": float(np.abs(shift - ref).mean())})
    return {"tokens": len(ids), "base_mean_abs_engine_difference": float(np.abs(lb - tb).mean()),
            "base_max_abs_engine_difference": float(np.abs(lb - tb).max()),
            "transformers_mean_abs_shift": float(np.abs(shift_tf).mean()), "runs": runs}


def both_engines(task: str, adapter: Path, n: int, same: str) -> dict:
    """The task's first n German test items evaluated with the adapter on each engine: items/s, accuracy, and
    the share of items whose `same` column (prediction, or the whole greedy output) is identical."""
    spec = get_task(task)
    items = spec.test_items(DATA, "de")[:n]
    config = EvalConfig(limit=n, batch_size=8)
    out = {}
    for kind in ("transformers", "llama-cpp"):
        e = engine(kind, adapter)
        t0 = time.perf_counter()
        rows = spec.eval_rows(e, items, config, "de")
        out[kind] = {"seconds": time.perf_counter() - t0, "rows": rows}
        del e
        gc.collect()
    identical = np.mean([a[same] == b[same] for a, b in
                         zip(out["transformers"]["rows"], out["llama-cpp"]["rows"], strict=True)])
    return {"items": n, f"identical_{same}": float(identical),
            **{k: {"items_per_s": n / v["seconds"],
                   "accuracy": 100 * float(np.mean([spec.score_row("de", r) for r in v["rows"]]))}
               for k, v in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--nli-items", type=int, default=200)
    ap.add_argument("--mgsm-items", type=int, default=40)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    nli_adapter = train("mnli", args.out / "mnli", 120, args.steps)
    math_adapter = train("gsm8k", args.out / "gsm8k", 120, args.steps)
    text = ("Premise: Der Mann ging gestern Abend mit seinem Hund im Park spazieren, obwohl es stark regnete.\n"
            "Hypothesis: Der Mann blieb den ganzen Abend zu Hause.\nRelation: contradiction")
    figures = {"per_token_nli_adapter": per_token(nli_adapter, text)}
    print(json.dumps(figures, indent=1), flush=True)
    figures["xnli_de"] = both_engines("mnli", nli_adapter, args.nli_items, "prediction")
    print(json.dumps(figures["xnli_de"], indent=1), flush=True)
    figures["mgsm_de"] = both_engines("gsm8k", math_adapter, args.mgsm_items, "output")
    print(json.dumps(figures["mgsm_de"], indent=1), flush=True)
    (args.out / "lora_parity.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
