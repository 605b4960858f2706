"""vLLM (CPU build), the llama.cpp engine and transformers on the same work, in one run (issue 34's benchmark).

    python benchmarks/vllm_engines.py ADAPTER [--segments 25] [--xnli 30] [--mgsm 10] [--out FILE.json]

ADAPTER: a peft adapter folder of Gemma 3 270M (the demo's `runs/demo/gsm8k/adapters/english`, say).
Each engine runs in a fresh process of its own, one after the other, through the project's own engine classes
(`stt.engines.load_inline`, as a stage calls them), on:
  1. translation: the first N GSM8K training questions into German, the translate stage's 8-shot prompt, greedy,
     96 new tokens at most, stop at the line's end (base model): generated tokens/s;
  2. XNLI label scoring with the adapter: the first N German test items x 3 labels (the task's eval_rows): items/s;
  3. MGSM generation with the adapter: the first N German items (the task's eval_rows): items/s.
"load" is the seconds to the first answer of a one-token request (the model, the engine process, vLLM's engine
core); each workload's time starts after it. Peak memory is the largest resident size of the engine's process
tree (vLLM's runner, engine core and worker together), sampled every 0.2 s. vLLM runs in float32 on a CPU
(engine dtype auto), transformers in float32, llama.cpp on the Q4_K_M GGUF.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STT_DATA_DIR", ROOT.parent / "shared" / "data"))
ENGINES = ("transformers", "llama-cpp", "vllm-batch")


class PeakRSS:
    """The largest summed resident size of this process and its descendants, sampled in a thread."""

    def __init__(self) -> None:
        import psutil

        self.root = psutil.Process()
        self.peak = 0
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        import psutil

        while self.running:
            total = 0
            for p in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a process that ended between the two calls
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return round(self.peak / 2**30, 2)


def one_engine(kind: str, adapter: Path, n_segments: int, n_xnli: int, n_mgsm: int) -> dict:
    from stt.config import EvalConfig, GenerationParams, PromptConfig
    from stt.engine_settings import engine_config
    from stt.engines import Request, load_inline
    from stt.loaders import load_gsm8k
    from stt.prompts import build_prompt_builder
    from stt.specs import get_task

    peak = PeakRSS()
    extra = {"max_model_len": 2048, "max_lora_rank": 8} if kind == "vllm-batch" else {}
    if kind == "transformers":
        extra["dtype"] = "float32"
    base = engine_config(kind=kind, model="gemma3-270m", batch_size=8, process="inline", **extra)
    out: dict = {"engine": kind}
    t0 = time.perf_counter()
    engine = load_inline(base, GenerationParams())
    engine.generate([Request("English: Good morning.\nGerman:", 1, ("\n",))])
    out["load_s"] = round(time.perf_counter() - t0, 1)

    builder = build_prompt_builder("de", PromptConfig(), DATA)
    questions = [ex["question"] for ex in load_gsm8k(DATA / "gsm8k" / "train.jsonl")[:n_segments]]
    t0 = time.perf_counter()
    done = engine.generate([Request(builder.completion_prompt(q), 96, ("\n",)) for q in questions])
    seconds = time.perf_counter() - t0
    tokens = sum(c.completion_tokens for c in done)
    out["translate"] = {"segments": n_segments, "seconds": round(seconds, 1), "tokens": tokens,
                        "tokens_per_s": round(tokens / seconds, 1), "texts": [c.text for c in done]}

    with_adapter = base.model_copy(update={"adapter": adapter, "reuse_prefix_cache": False, "batch_size": 10})
    for task, n, key in (("mnli", n_xnli, "xnli"), ("gsm8k", n_mgsm, "mgsm")):
        if kind == "vllm-batch":
            engine = load_inline(with_adapter, GenerationParams())  # the same runner process: no reload
            t_load = 0.0
        else:
            del engine
            t_load0 = time.perf_counter()
            engine = load_inline(with_adapter, GenerationParams())
            t_load = time.perf_counter() - t_load0
        spec = get_task(task)
        items = spec.test_items(DATA, "de")[:n]
        config = EvalConfig(limit=n, batch_size=10, max_new_tokens={"gsm8k": 96})
        t0 = time.perf_counter()
        rows = spec.eval_rows(engine, items, config, "de")
        seconds = time.perf_counter() - t0
        out[key] = {"items": n, "seconds": round(seconds, 1), "items_per_s": round(n / seconds, 3),
                    "adapter_load_s": round(t_load, 1), "outputs": [r["output"] for r in rows],
                    "accuracy": round(100 * sum(spec.score_row("de", r) for r in rows) / n, 1)}
    if kind == "vllm-batch":
        from stt.engines.vllm_batch import stop_runner

        stop_runner()
    out["peak_gb"] = peak.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter", type=Path)
    ap.add_argument("--segments", type=int, default=25)
    ap.add_argument("--xnli", type=int, default=30)
    ap.add_argument("--mgsm", type=int, default=10)
    ap.add_argument("--engine", choices=ENGINES, help="(internal) run one engine in this process")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summarize", type=Path, help="print the table of an earlier run's --out file")
    args = ap.parse_args()
    if args.engine:
        print(json.dumps(one_engine(args.engine, args.adapter.resolve(), args.segments, args.xnli, args.mgsm)))
        return
    if args.summarize:
        results = json.loads(args.summarize.read_text())
    else:
        results = []
        for kind in ENGINES:
            done = subprocess.run([sys.executable, __file__, str(args.adapter), "--engine", kind, "--segments",
                                   str(args.segments), "--xnli", str(args.xnli), "--mgsm", str(args.mgsm)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    summarize(results)


def summarize(results: list[dict]) -> None:
    """Speeds as ratios to transformers (the first engine), and how far each engine's answers are from its."""
    ref = results[0]
    for r in results:
        t = r["translate"]
        t["identical_to_transformers"] = sum(a == b for a, b in zip(t["texts"], ref["translate"]["texts"],
                                                                       strict=True))
        t["ratio_to_transformers"] = round(t["tokens_per_s"] / ref["translate"]["tokens_per_s"], 2)
        for key in ("xnli", "mgsm"):
            r[key]["ratio_to_transformers"] = round(r[key]["items_per_s"] / ref[key]["items_per_s"], 2)
        r["mgsm"]["identical_to_transformers"] = sum(
            a == b for a, b in zip(r["mgsm"]["outputs"], ref["mgsm"]["outputs"], strict=True))
        # XNLI's output is each label's log-likelihood: the same prediction, and the largest difference.
        mine, theirs = ([json.loads(o) for o in x["xnli"]["outputs"]] for x in (r, ref))
        r["xnli"]["same_prediction"] = sum(max(a, key=a.get) == max(b, key=b.get) for a, b in zip(mine, theirs,
                                                                                                  strict=True))
        r["xnli"]["max_logprob_diff"] = round(max(abs(a[k] - b[k]) for a, b in zip(mine, theirs, strict=True)
                                                  for k in a), 4)
    print("| engine | load s | translation tok/s (x transformers) | identical translations "
          "| XNLI + adapter items/s (x) | same XNLI predictions, largest logprob diff | MGSM + adapter items/s (x) "
          "| identical MGSM outputs | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t, x, m = r["translate"], r["xnli"], r["mgsm"]
        print(f"| {r['engine']} | {r['load_s']} | {t['tokens_per_s']} ({t['ratio_to_transformers']}x) | "
              f"{t['identical_to_transformers']}/{t['segments']} | "
              f"{x['items_per_s']} ({x['ratio_to_transformers']}x) | "
              f"{x['same_prediction']}/{x['items']}, {x['max_logprob_diff']} | {m['items_per_s']} "
              f"({m['ratio_to_transformers']}x) | {m['identical_to_transformers']}/{m['items']} | {r['peak_gb']} |")


if __name__ == "__main__":
    main()
