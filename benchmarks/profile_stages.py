"""Where the time goes in each stage on the CPU, at the demo's shapes (issue 10's profile).

    .venv/bin/python benchmarks/profile_stages.py [--examples 6] [--language de]

For each stage: wall seconds, and the part spent in the model (generation, scoring, optimizer steps)
versus everything around it (loading, planning, validation, writing). Training also gets an operator
profile of one step (torch.profiler): which kernels the step's time is spent in.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from stt.config import BuildConfig, EvalConfig, GenerationParams, TrainConfig, TranslateConfig
from stt.engine_settings import LlamaCppSettings, TransformersSettings
from stt.engines import release_engines


def _timed(fn):  # noqa: ANN001, ANN202
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def translate_stage(tmp: Path, args: argparse.Namespace) -> dict:
    from stt import jobs

    config = TranslateConfig(task="gsm8k", languages=(args.language,), limit=args.examples, shard_size=4,
                             out_dir=tmp / "translate", engine=LlamaCppSettings(batch_size=8),
                             generation=GenerationParams(max_new_tokens_cap=96))
    out, secs = _timed(lambda: jobs.translate(config))
    manifest = json.loads((out / "_manifest.json").read_text())
    generate = sum(e["generate_seconds"] for e in manifest["shards"].values())
    tokens = sum(e["completion_tokens"] for e in manifest["shards"].values())
    return {"seconds": round(secs, 1), "model_generate": round(generate, 1),
            "load_plan_validate_write": round(secs - generate, 1), "generated_tokens": tokens}


def build_stage(tmp: Path) -> dict:
    from stt.stages.build import build_set

    secs = 0.0
    for kind in ("english", "self-translate-train"):
        _, s = _timed(lambda kind=kind: build_set("gsm8k", kind, "de", tmp / "translate", tmp / "sets", BuildConfig()))
        secs += s
    return {"seconds": round(secs, 2)}


def train_stage(tmp: Path) -> dict:
    from stt.stages.finetune import finetune

    config = TrainConfig(rank=8, alpha=16, batch_size=4, max_length=192, learning_rate=3e-4, save_steps=4, epochs=1)
    info, secs = _timed(lambda: finetune("gemma3-270m", tmp / "sets" / "self-translate-train-de",
                                         tmp / "adapter", config))
    m = info["metrics"]
    steps = m["steps"] * m["seconds_per_step"]
    return {"seconds": round(secs, 1), "optimizer_steps": round(steps, 1), "steps": m["steps"],
            "load_tokenize_save": round(secs - steps, 1)}


def evaluate_stage(tmp: Path, task: str, limit: int) -> dict:
    from stt.stages.evaluate import evaluate

    engine = TransformersSettings(batch_size=10, reuse_prefix_cache=False)
    info, secs = _timed(lambda: evaluate(task, "de", engine, EvalConfig(limit=limit, max_new_tokens={"gsm8k": 96}),
                                         TranslateConfig().resolved_data_dir(), tmp / f"eval-{task}"))
    model = info["throughput"]["seconds"]
    release_engines()
    return {"items": limit, "seconds": round(secs, 1), "model": round(model, 1),
            "load_and_rest": round(secs - model, 1), "items_per_s_in_model": info["throughput"]["items_per_s"]}


def training_step_ops(rows: int = 4) -> list[dict]:
    """torch.profiler over one optimizer step's forward + backward (answer-only loss), top operators."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stt.loaders import load_gsm8k
    from stt.models import resolve_model
    from stt.stages.finetune import answer_only_loss, hf_folder, pad_collator, tokenize_pairs
    from stt.templates import math_pair

    folder = hf_folder(resolve_model("gemma3-270m"))
    tok = AutoTokenizer.from_pretrained(folder)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                      target_modules=list(TrainConfig().target_modules)))
    examples = load_gsm8k(TranslateConfig().resolved_data_dir() / "gsm8k" / "train.jsonl")[:rows]
    features, _, _ = tokenize_pairs(tok, [vars(math_pair(e)) for e in examples], 192)
    batch = pad_collator(tok)(features)
    model.train()

    def step() -> None:
        loss, n = answer_only_loss(model, batch)
        (loss / n).backward()

    step()  # warm up allocator and kernels
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:8]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=6)
    ap.add_argument("--language", default="de")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = {"translate": translate_stage(tmp, args)}
        release_engines()
        out["build"] = build_stage(tmp)
        out["train"] = train_stage(tmp)
        out["evaluate_mgsm_generation"] = evaluate_stage(tmp, "gsm8k", 5)
        out["evaluate_xnli_scoring"] = evaluate_stage(tmp, "mnli", 30)
        out["training_step_operators"] = training_step_ops()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
