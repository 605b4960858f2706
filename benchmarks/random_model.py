"""A model of Gemma 3 270M's shape with random weights, for GPU code-path and throughput checks where the
real weights cannot travel (benchmarks/gpu_transformers.sh). Scores from it measure nothing.

    python benchmarks/random_model.py --source ~/.cache/stt/models/<id> --out /tmp/gemma3-random [--layers 2]

--source: a folder with Gemma 3 270M's config.json and tokenizer files (the converted GGUF's HF folder);
--layers: fewer layers for a CPU dry run of the same script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = AutoConfig.from_pretrained(args.source)
    if args.layers:
        config.num_hidden_layers = args.layers
        config.layer_types = config.layer_types[: args.layers]
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (args.source / name).exists():
            shutil.copy(args.source / name, args.out / name)
    params = sum(p.numel() for p in model.parameters())
    (args.out / "random_model.json").write_text(json.dumps(
        {"source_config": str(args.source), "layers": config.num_hidden_layers, "params": params,
         "dtype": args.dtype, "seed": args.seed, "weights": "random (torch.manual_seed)"}, indent=1))
    print(f"random model: {params / 1e6:.1f}M parameters, {config.num_hidden_layers} layers, {args.dtype}, "
          f"written to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
