"""Per-job figures of a finished run, read from its manifests: a Markdown table for benchmarks/RESULTS.md.

    python benchmarks/gpu_summary.py runs/gpu-transformers
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(run: Path) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for path in sorted(run.glob("*/translate/_manifest.json")):
        task = path.parts[-3]
        for shard, entry in json.loads(path.read_text())["shards"].items():
            secs, toks = entry.get("generate_seconds") or 0, entry.get("completion_tokens") or 0
            out.append((f"translate {task} {shard}", f"{entry['input_rows']} examples", f"{secs:.1f}",
                        f"{toks / secs:.0f} gen tok/s" if secs else "-"))
    for path in sorted(run.glob("*/quality/*/_manifest.json")):
        m = json.loads(path.read_text())
        out.append((f"quality {m['task']} {m['language']}", "-", f"{m['seconds']:.1f}", "-"))
    for path in sorted(run.glob("*/adapters/*/metrics.json")):
        m = json.loads(path.read_text())
        out.append((f"finetune {path.parts[-4]} {path.parts[-2]}",
                    f"{m['steps']} steps, {m['rows']} rows, {m['device']} {m['dtype']}", f"{m['seconds']:.1f}",
                    f"{m['seconds_per_step']:.3f} s/step, {m['tokens_per_epoch'] / m['seconds']:.0f} tok/s"))
    for path in sorted(run.glob("*/eval/*/_manifest.json")):
        m = json.loads(path.read_text())
        t = m["throughput"]
        rate = f"{t['items_per_s']:.1f} items/s" + (f", {t['tokens_per_s']:.0f} gen tok/s" if t.get("tokens_per_s")
                                                    else "")
        out.append((f"evaluate {m['task']} {m['model']}-{m['language']}",
                    f"{m['engine']['device']} {m['engine']['dtype']}", f"{t['seconds']:.1f}", rate))
    return out


def main() -> None:
    run = Path(sys.argv[1])
    print("| job | shape | seconds | throughput |\n|---|---|---|---|")
    for r in rows(run):
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
