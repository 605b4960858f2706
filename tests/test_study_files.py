"""The committed studies' generated files are what their generators make from the committed study folder:
`power.md` (scripts/power_from_pilot.py) and `timings.md` (scripts/export_study.py's `timings`, from the
manifests). tests/test_study_recompute.py checks the numbers independently; this checks that the words
around them were made from them (issue 37: they were not checked at all)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The arguments each committed power.md was made with (its header says which comparison; the Holm family size
# is the study's).
POWER = {
    "xnli-pilot": [("human_gain", "human_tt", "mnli", "de", 6, "500,1500,5010")],
    "xnli-study-v2": [("gain", "stt", "mnli", "de", 2, "500,1500,5010"),
                      ("human_gain", "human_tt", "mnli", "de", 2, "500,1500,5010")],
    "xquad-study": [("human_gain", "human_tt", "squad", "de", 2, "120,558"),
                    ("gain", "stt", "squad", "de", 2, "120,558")],
    # Planned before the run from experiments/xquad-study's variances (one seed leaves none of its own), at the
    # seed counts considered and three effect sizes.
    "xquad-control": [("human_gain", "human_tt", "squad", "de", 2, "120,558", "xquad-study", effect, "1,2")
                      for effect in (3, 5, 8)],
}


@pytest.mark.parametrize("study,args", [(s, a) for s, runs in POWER.items() for a in runs],
                         ids=[f"{s}-{a[0]}-{a[7] if len(a) > 7 else 3}" for s, runs in POWER.items() for a in runs])
def test_power_md_is_what_the_script_makes_of_the_committed_study(study, args):
    gain, new, task, language, comparisons, items, *rest = args
    defaults = (study, 3, "3,5,8")  # the source folder, the effect and the seed counts, unless given
    source, effect, seeds = (*rest, *defaults[len(rest):])
    folder = ROOT / "experiments" / source
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "power_from_pilot.py"), str(folder), "--task", task,
                          "--language", language, "--gain", gain, "--new", new, "--baseline", "zero_shot",
                          "--effect", str(effect), "--comparisons", str(comparisons), "--items", items,
                          "--seeds", seeds], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    made = out.stdout.strip().replace(f"From `{folder}`", f"From `experiments/{source}`")
    assert made in (ROOT / "experiments" / study / "power.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("study", sorted(POWER) + ["xnli-study"])
def test_timings_md_gives_each_jobs_seconds_from_its_manifest(study):
    """Each row of timings.md (stage, job, seconds) against the seconds its committed manifest records, and each
    stage's total against the sum of its rows."""
    folder = ROOT / "experiments" / study
    cells = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in (folder / "timings.md").read_text().splitlines() if line.startswith("| ")]
    jobs = [c for c in cells if len(c) == 3 and c[0] != "stage"]
    totals = {c[0]: float(c[1]) for c in cells if len(c) == 2 and c[0] != "stage"}
    assert jobs and totals
    summed: dict[str, float] = {}
    for stage, job, shown in jobs:
        info = json.loads((folder / "manifests" / job / "_manifest.json").read_text())
        if stage == "translate":  # the translate manifest: one entry per shard, generation and round trip
            seconds = sum(e.get("generate_seconds", 0) + e.get("back_seconds", 0) for e in info["shards"].values())
        else:
            seconds = {"adapters": (info.get("metrics") or {}).get("seconds"),
                       "eval": (info.get("throughput") or {}).get("seconds")}.get(stage, info.get("seconds")) or 0
        assert f"{float(seconds):.0f}" == shown, (job, seconds, shown)
        summed[stage] = summed.get(stage, 0.0) + float(seconds)
    assert {k: f"{v:.0f}" for k, v in summed.items()} == {k: f"{v:.0f}" for k, v in totals.items()}
