"""Copy a finished study's results out of its run folder into a committed folder (experiments/<study>/).

    python scripts/export_study.py runs/xnli-study experiments/xnli-study [--config configs/xnli-study.yaml]

What is copied: report.md, results.parquet, plot.png, config.json, the config file, every stage manifest
(`_manifest.json`, under manifests/ with its path in the run), the model's translations behind each chrF / BLEU
(`translations/<task>-<language>.parquet`), and the per-item predictions of every
evaluation (`predictions/<model>-<language>.parquet`: id, index, prediction, gold, score; the full files with
prompts and outputs are listed with their SHA-256 in `predictions/full_checksums.json` when all of them
together are over the size limit). `results.parquet`'s prediction paths are rewritten to the copies, so the
committed scores can be recomputed from the committed predictions (tests/test_study_recompute.py does, without stt).
`timings.md` gives the wall time of each stage, from the manifests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

LIMIT_BYTES = 5_000_000
COMPACT = ["id", "index", "prediction", "gold", "score"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(run: Path, out: Path, config_file: Path | None) -> None:
    if not (run / "results.parquet").is_file():
        raise SystemExit(f"{run}: no results.parquet (the study has not finished; rerun its command)")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("report.md", "plot.png", "config.json"):
        shutil.copy2(run / name, out / name)
    if config_file:
        shutil.copy2(config_file, out / config_file.name)
    manifests = out / "manifests"
    shutil.rmtree(manifests, ignore_errors=True)
    for marker in sorted(run.rglob("_manifest.json")):
        if "checkpoints" in marker.parts:
            continue
        target = manifests / marker.relative_to(run)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(marker, target)
    predictions = out / "predictions"
    shutil.rmtree(predictions, ignore_errors=True)
    predictions.mkdir()
    df = pd.read_parquet(run / "results.parquet")
    full_files = {}
    def copy(value: str) -> str:
        source = Path(value)
        if not source.is_file():  # a path recorded relative to another working directory
            source = run / Path(*Path(value).parts[-4:])
        name = f"{source.parent.name}.parquet"
        if name not in full_files:
            pq.write_table(pq.read_table(source, columns=COMPACT), predictions / name)
            full_files[name] = {"file": str(source.relative_to(run)), "sha256": _sha256(source),
                                "bytes": source.stat().st_size}
        return f"predictions/{name}"

    for column in [c for c in df.columns if c.endswith("_predictions")]:
        df[column] = [copy(v) if isinstance(v, str) else v for v in df[column]]
    for column in [c for c in df.columns if c.endswith("_predictions_by_seed")]:  # every training seed's file
        df[column] = [json.dumps({k: copy(p) for k, p in json.loads(v).items()}) if isinstance(v, str) else v
                      for v in df[column]]
    # Evaluations outside the table's columns (the English reference of target-language adapters), too.
    for source in sorted(run.glob("*/eval/*/predictions.parquet")):
        copy(str(source))
    # The model's translations behind each row's chrF / BLEU (small), so those recompute too.
    translations = out / "translations"
    shutil.rmtree(translations, ignore_errors=True)
    translated = {}
    for source in sorted(run.glob("*/quality/*/translations.parquet")):
        translations.mkdir(exist_ok=True)
        name = f"{source.parts[-4]}-{source.parent.name}.parquet"
        shutil.copy2(source, translations / name)
        translated[name] = {"file": str(source.relative_to(run)), "sha256": _sha256(source)}
    total = sum(f["bytes"] for f in full_files.values())
    if total <= LIMIT_BYTES:
        for name, f in full_files.items():
            shutil.copy2(run / f["file"], predictions / name.replace(".parquet", ".full.parquet"))
    (predictions / "full_checksums.json").write_text(json.dumps(
        {"total_bytes": total, "copied": total <= LIMIT_BYTES, "files": full_files, "translations": translated},
        indent=2))
    df.to_parquet(out / "results.parquet", index=False)
    (out / "timings.md").write_text(timings(run))
    print(f"exported {run} -> {out}: {len(full_files)} prediction files ({total / 1e6:.1f} MB full)")


def timings(run: Path) -> str:
    """Wall time per stage job, from the seconds each manifest recorded."""
    lines = ["| stage | job | seconds |", "|---|---|---|"]
    totals: dict[str, float] = {}
    for marker in sorted(run.rglob("_manifest.json")):
        if "checkpoints" in marker.parts:
            continue
        m = json.loads(marker.read_text())
        rel = marker.parent.relative_to(run)
        if "translate" in rel.parts:
            stage = "translate"
            seconds = sum(e.get("generate_seconds", 0) + e.get("back_seconds", 0) for e in m.get("shards", {}).values())
        else:
            stage = rel.parts[1] if len(rel.parts) > 1 else str(rel)
            metrics = m.get("metrics") or {}
            seconds = m.get("seconds") or metrics.get("seconds") or (m.get("throughput") or {}).get("seconds") or 0
        totals[stage] = totals.get(stage, 0) + float(seconds)
        lines.append(f"| {stage} | {rel} | {float(seconds):.0f} |")
    lines += ["", "| stage | total seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in totals.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--config", type=Path)
    args = ap.parse_args()
    export(args.run, args.out, args.config)


if __name__ == "__main__":
    main()
