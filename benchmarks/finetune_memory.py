"""Peak resident memory of one fine-tuning job, and what the process keeps after it (issue 23).

Each configuration trains the same adapter in a fresh process (so one peak does not hide another) at the
demo's training settings, on a training set of a finished run:

    python benchmarks/finetune_memory.py runs/demo/gsm8k/sets/self-translate-train-de [--chunks 0 256 128 64]

Chunk 0 is autograd over the whole batch (the loss before issue 23: every answer token's 262k-word logits,
their softmax and their gradients alive at once). For each: the job's seconds, the process's peak resident
memory (ru_maxrss), and its resident memory after the job, before and after `give_memory_back()`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path

import stt.stages.finetune as ft
from stt.config import TrainConfig
from stt.engines import give_memory_back

set_folder, out, chunk = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
if chunk == 0:  # autograd over the whole batch: the output layer's loss as it was before chunking
    import torch
    import torch.nn.functional as F

    def whole(hidden, head, targets, cap=None, chunk=0):
        logits = head(hidden).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits, targets, reduction="sum")

    ft.output_layer_loss = whole
else:
    defaults = ft.output_layer_loss.__defaults__
    ft.output_layer_loss.__defaults__ = (defaults[0], chunk)

def rss_mb():
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024

config = TrainConfig(rank=8, alpha=16, epochs=1, batch_size=4, max_length=192, learning_rate=3e-4, save_steps=4)
t0 = time.perf_counter()
info = ft.finetune("gemma3-270m", set_folder, out, config)
seconds = time.perf_counter() - t0
after = rss_mb()
give_memory_back()
print(json.dumps({"chunk": chunk, "seconds": round(seconds, 1), "steps": info["metrics"]["steps"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "after_job_mb": after, "after_give_back_mb": rss_mb()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set_folder", type=Path)
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 256, 128, 64])
    args = parser.parse_args()
    rows = []
    for chunk in args.chunks:
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([sys.executable, "-c", CHILD, str(args.set_folder), str(Path(tmp) / "adapter"),
                                   str(chunk)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| loss chunk (answer tokens) | s | steps | peak MB | after the job MB | after give_memory_back MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "whole batch (autograd)" if r["chunk"] == 0 else str(r["chunk"])
        print(f"| {name} | {r['seconds']} | {r['steps']} | {r['peak_mb']} | {r['after_job_mb']} | "
              f"{r['after_give_back_mb']} |")


if __name__ == "__main__":
    main()
