"""Reading Gemma 3's tokenizer in a fresh process: through AutoTokenizer against stt's kept copy.

    .venv/bin/python benchmarks/tokenizer_load.py [--rounds 3] [--out benchmarks/tokenizer-load]

Every engine process, fine-tuning job and `stt` command reads the model's tokenizer once. Each round starts
two fresh Python processes, alternating which goes first: one reads it with `AutoTokenizer.from_pretrained`
(Gemma's own class), the other through `stt.engines.tokenizer` from the copy kept in a throwaway cache. Timed
inside the process (the read alone, imports excluded); both must give the same ids on a probe.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = "Natalia sold clips to 48 of her friends in April. Natalia verkaufte im April Clips an 48 Freunde."

READ = """
import json, sys, time
from stt.models import hf_folder, resolve_model
folder = str(hf_folder(resolve_model("gemma3-270m")))
if sys.argv[1] == "auto":
    from transformers import AutoTokenizer
    import transformers.models.gemma.tokenization_gemma  # imports outside the timed read, as for the copy
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
else:
    from stt.engines.tokenizer import _tokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend  # noqa: F401
    t0 = time.perf_counter()
    tokenizer = _tokenizer(folder)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "class": type(tokenizer).__name__, "ids": tokenizer(sys.argv[2])["input_ids"]}))
"""


def read(how: str, env: dict[str, str]) -> dict:
    done = subprocess.run([str(ROOT / ".venv/bin/python"), "-c", READ, how, PROBE], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"reading the tokenizer ({how}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "tokenizer-load")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "STT_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
        # The model's conversion lives in the usual cache: link it in, so only the tokenizer copy is new.
        from stt.models import cache_dir, hf_folder, resolve_model

        converted = hf_folder(resolve_model("gemma3-270m"))
        (Path(cache) / "models").mkdir()
        os.symlink(converted, Path(cache) / "models" / converted.name)
        first = read("copy", env)  # no copy yet: reads through AutoTokenizer and keeps one
        assert first["class"] == "GemmaTokenizer", first["class"]
        rows = []
        for k in range(args.rounds):
            order = ("auto", "copy") if k % 2 == 0 else ("copy", "auto")
            got = {how: read(how, env) for how in order}
            assert got["copy"]["class"] == "TokenizersBackend" and got["auto"]["class"] == "GemmaTokenizer"
            assert got["copy"]["ids"] == got["auto"]["ids"], "the copy tokenises differently"
            rows.append({"round": k + 1, "auto_s": got["auto"]["seconds"], "copy_s": got["copy"]["seconds"]})
            print(rows[-1], flush=True)
    auto, copy = (statistics.median(r[f"{how}_s"] for r in rows) for how in ("auto", "copy"))
    summary = {"rounds": rows, "first_read_with_copy_kept_s": first["seconds"], "median_auto_s": auto,
               "median_copy_s": copy, "ratio_copy_over_auto": copy / auto, "cpu_count": os.cpu_count(),
               "cache_dir_default": str(cache_dir())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"median read: AutoTokenizer {auto:.2f} s, kept copy {copy:.2f} s, ratio {copy / auto:.2f}; "
          f"first read (keeping the copy) {first['seconds']:.2f} s")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
