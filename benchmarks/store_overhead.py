"""The demo on object storage against a local disk (issue 38's goal: at most 10% more wall time).

    .venv/bin/python benchmarks/store_overhead.py [--rounds 1] [--out benchmarks/store-overhead]

Runs `stt run --no-prefect --config configs/demo.yaml` as a fresh process per run, alternating a local run
folder and `s3://` on a real S3 server on this machine (SeaweedFS, as the tests start it), each run from
nothing (fresh folder, fresh mirror, fresh prefix): wall time of the whole command. A local server has no
network latency: on a cloud store each published unit costs round trips more; the figure here is the runner's
own cost (pulls, checksums, uploads, claims).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(run_dir: str, cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([str(ROOT / ".venv/bin/stt"), "run", "--no-prefect", "--config",
                           str(ROOT / "configs/demo.yaml"), "--run-dir", run_dir], cwd=cwd, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"stt run --run-dir {run_dir} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    from tests.object_store import s3_server

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "store-overhead")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="stt-store-bench-") as tmp, s3_server(Path(tmp) / "s3") as server:
        env = {**os.environ, **server.env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        for r in range(args.rounds):
            for kind in ("local", "s3"):
                cwd = Path(tmp) / f"{kind}-{r}"
                cwd.mkdir()
                run_dir = str(cwd / "run") if kind == "local" else server.url()
                seconds = run(run_dir, cwd, env)
                rows.append({"round": r, "run_dir": kind, "seconds": round(seconds, 1)})
                print(rows[-1], flush=True)
    local = [x["seconds"] for x in rows if x["run_dir"] == "local"]
    s3 = [x["seconds"] for x in rows if x["run_dir"] == "s3"]
    summary = {"rows": rows, "local_s": local, "s3_s": s3,
               "ratio_s3_to_local": [round(b / a, 3) for a, b in zip(local, s3, strict=True)],
               "cpu_count": os.cpu_count()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
