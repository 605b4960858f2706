"""Raw vLLM baseline for vllm_throughput.py, run by the vLLM environment's Python: one LLM.generate call.

    <vllm-python> -P benchmarks/_raw_vllm.py <folder with in.parquet and settings.json>
Prints one JSON line: load_seconds, generate_seconds, gen_tokens, device, vllm version.
"""

import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import vllm
from vllm import LLM, SamplingParams

folder = Path(sys.argv[1])
settings = json.loads((folder / "settings.json").read_text())
rows = pq.read_table(folder / "in.parquet").to_pylist()
t0 = time.perf_counter()
llm = LLM(model=settings["model"], dtype=settings.get("dtype", "auto"),
          tensor_parallel_size=settings.get("tensor_parallel_size", 1),
          gpu_memory_utilization=settings.get("gpu_memory_utilization", 0.9),
          max_model_len=settings.get("max_model_len"), load_format=settings.get("load_format", "auto"),
          enable_prefix_caching=True, seed=settings.get("seed", 0))
load = time.perf_counter() - t0
params = [SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], stop=list(r["stop"]) or None) for r in rows]
t0 = time.perf_counter()
outs = llm.generate([r["prompt"] for r in rows], params, use_tqdm=False)
gen = time.perf_counter() - t0
print(json.dumps({"load_seconds": load, "generate_seconds": gen,
                  "gen_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
                  "device": torch.cuda.get_device_name(0), "vllm": vllm.__version__}))
