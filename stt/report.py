"""The comparison report: per task and language, base vs zero-shot transfer vs Self-Translate-Train.

Writes `results.parquet` (one row per task x language), `report.md` and `plot.png` into the run
directory. Every number comes from an evaluation manifest, whose predictions file holds the items.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from stt.errors import DataError
from stt.shards import write_parquet_atomic, write_text_atomic
from stt.stats import RESAMPLES, SEED, Difference, paired_bootstrap

# Column of the table -> evaluation model label.
MODEL_COLUMNS = {"base": "base", "zero_shot": "zero-shot", "zero_shot_steps": "zero-shot-equal-steps",
                 "stt": "self-translate-train", "stt_unfiltered": "self-translate-train-unfiltered",
                 "code_switch": "code-switch", "human_tt": "human-translate-train", "translate_test": "translate-test"}
SHOWN = {"base": "base", "zero_shot": "zero-shot", "zero_shot_steps": "zero-shot (equal steps)",
         "stt": "self-translate-train", "stt_unfiltered": "STT without round-trip filter",
         "code_switch": "code-switch", "human_tt": "human translate-train", "translate_test": "translate-test"}
# Paired comparisons on the same items: (name, new model column, baseline column).
COMPARISONS = [("gain", "stt", "zero_shot"), ("gain_vs_equal_steps", "stt", "zero_shot_steps"),
               ("gain_vs_translate_test", "stt", "translate_test"), ("human_gain", "human_tt", "zero_shot"),
               ("filter_gain", "stt", "stt_unfiltered")]
GAIN_SHOWN = {"gain": "gain (STT - zero-shot)", "gain_vs_equal_steps": "STT - zero-shot (equal steps)",
              "gain_vs_translate_test": "STT - translate-test", "human_gain": "human TT - zero-shot",
              "filter_gain": "STT - STT unfiltered"}


def _item_scores(path: str) -> pd.Series:
    df = pd.read_parquet(path, columns=["index", "score"])
    return df.set_index("index")["score"]


def compare(new_predictions: str, baseline_predictions: str, resamples: int = RESAMPLES,
            seed: int = SEED) -> Difference:
    """Paired bootstrap of new - baseline over the items both predictions files scored."""
    new, base = _item_scores(new_predictions), _item_scores(baseline_predictions)
    common = new.index.intersection(base.index)
    if len(common) != len(new) or len(common) != len(base):
        raise DataError(f"{new_predictions} and {baseline_predictions} scored different items "
                        f"({len(new)} vs {len(base)}, {len(common)} shared): a gain needs the same items")
    return paired_bootstrap(base.loc[common].to_numpy(), new.loc[common].to_numpy(), resamples, seed)


def results_table(evaluations: list[dict[str, Any]], quality: list[dict[str, Any]], resamples: int = RESAMPLES,
                  seed: int = SEED) -> pd.DataFrame:
    """Rows: (task, language). Per model column: the main metric, its 95% interval and n; per comparison:
    the paired gain, its interval and p-value; translation chrF and BLEU."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    by_label = {label: column for column, label in MODEL_COLUMNS.items()}
    for e in evaluations:
        row = rows.setdefault((e["task"], e["language"]), {"task": e["task"], "language": e["language"],
                                                           "metric": e["metric"], "n": e["scores"]["n"]})
        column = by_label.get(e["model"])
        if column is None:
            continue
        sc = e["scores"]
        row[column] = round(sc[e["metric"]], 2)
        row[f"{column}_lo"], row[f"{column}_hi"] = sc.get("ci_lo"), sc.get("ci_hi")
        row[f"{column}_n"] = sc["n"]
        row[f"{column}_scores"] = json.dumps({k: v for k, v in sc.items() if isinstance(v, float)})
        row[f"{column}_predictions"] = str(Path(e["folder"]) / "predictions.parquet")
        row["n"] = max(row["n"], sc["n"])
    for row in rows.values():
        for name, new, baseline in COMPARISONS:
            if f"{new}_predictions" in row and f"{baseline}_predictions" in row:
                d = compare(row[f"{new}_predictions"], row[f"{baseline}_predictions"], resamples, seed)
                row[name], row[f"{name}_lo"], row[f"{name}_hi"] = round(d.value, 2), d.lo, d.hi
                row[f"{name}_p"], row[f"{name}_significant"] = d.p_value, d.significant
    for q in quality:
        row = rows.get((q["task"], q["language"]))
        if row is not None:
            row["chrf"], row["bleu"] = q["scores"]["chrf"], q["scores"]["bleu"]
    df = pd.DataFrame(list(rows.values()))
    for column in [*MODEL_COLUMNS, *(c for c, *_ in COMPARISONS), "chrf", "bleu"]:
        for suffix in ("", "_lo", "_hi") if column not in ("chrf", "bleu") else ("",):
            if column + suffix not in df:
                df[column + suffix] = float("nan")
    df["bootstrap_seed"], df["bootstrap_resamples"] = seed, resamples
    order = ["task", "language", "metric", "n", *MODEL_COLUMNS, *(c for c, *_ in COMPARISONS), "chrf", "bleu"]
    rest = [c for c in df.columns if c not in order]
    df["_en"] = df["language"] != "en"  # English first: the language the model was fine-tuned in
    df = df.sort_values(["task", "_en", "language"]).drop(columns="_en").reset_index(drop=True)
    return df[order + rest]


def _fmt(v: object, lo: object, hi: object, signed: bool = False) -> str:
    if not isinstance(v, int | float) or v != v:
        return "-"  # a model not run for a language shows "-", not nan
    sign = "+" if signed and v > 0 else ""
    if isinstance(lo, int | float) and lo == lo:
        return f"{sign}{v:.1f} [{lo:.1f}, {hi:.1f}]"
    return f"{sign}{v:.1f}"


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table people read: score [95% CI] per model, gains with CI, p-value and significance."""
    out = df[["task", "language", "metric", "n"]].copy()
    for column, title in SHOWN.items():
        if df[column].notna().any():
            out[title] = [_fmt(v, lo, hi) for v, lo, hi in zip(df[column], df[f"{column}_lo"], df[f"{column}_hi"],
                                                                strict=True)]
    for name, *_ in COMPARISONS:
        if df[name].notna().any():
            cells = []
            for v, lo, hi, p in zip(df[name], df[f"{name}_lo"], df[f"{name}_hi"], df.get(f"{name}_p", df[name]),
                                    strict=True):
                if v != v:
                    cells.append("-")
                    continue
                mark = "" if not (lo <= 0 <= hi) else " n.s."
                cells.append(f"{_fmt(v, lo, hi, signed=True)} p={p:.3f}{mark}")
            out[GAIN_SHOWN[name]] = cells
    out["translation chrF"] = [("-" if v != v else f"{v:.1f}") for v in df["chrf"]]
    return out


def plot(df: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(df["task"]))
    quality = df[df["chrf"].notna() & df["gain"].notna()]
    panels = len(tasks) + (1 if len(quality) else 0)
    fig, axes = plt.subplots(1, panels, figsize=(max(7, 3.5 + 2.2 * len(df) + 2 * bool(len(quality))), 4.2),
                             squeeze=False)
    if len(quality):  # the paper's observation: the gain tracks how well the model translates
        ax = axes[0][-1]
        err = [quality["gain"] - quality["gain_lo"], quality["gain_hi"] - quality["gain"]]
        ax.errorbar(quality["chrf"], quality["gain"], yerr=err, fmt="o", capsize=4)
        for _, r in quality.iterrows():
            ax.annotate(f"{r['task']} {r['language']}", (r["chrf"], r["gain"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("translation chrF (en->X)")
        ax.set_ylabel("gain over zero-shot (points, 95% CI)")
        ax.set_title("gain vs translation quality")
    for ax, task in zip(axes[0], tasks, strict=False):
        sub = df[df["task"] == task]
        columns = [c for c in MODEL_COLUMNS if sub[c].notna().any()]
        width = 0.8 / len(columns)
        x = range(len(sub))
        for k, column in enumerate(columns):
            values = sub[column]
            err = [(values - sub[f"{column}_lo"]).fillna(0).clip(lower=0),
                   (sub[f"{column}_hi"] - values).fillna(0).clip(lower=0)]
            ax.bar([i + k * width for i in x], values.fillna(0), width, yerr=err, capsize=2, label=SHOWN[column])
        ax.set_xticks([i + width * (len(columns) - 1) / 2 for i in x])
        ax.set_xticklabels(sub["language"])
        ax.set_title(f"{task} ({sub['metric'].iloc[0]}, n={int(sub['n'].max())}, 95% CI)")
        ax.set_ylabel("score (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_notes(root: Path) -> list[str]:
    """Rows set aside or shortened by train.max_length, per adapter (from the adapters' metrics)."""
    notes = []
    for marker in sorted(Path(root).glob("*/adapters/*/_manifest.json")):
        m = json.loads(marker.read_text()).get("metrics", {})
        aside, short = m.get("set_aside") or {}, m.get("prompts_shortened") or 0
        if aside or short:
            what = ", ".join(f"{v} {k}" for k, v in aside.items()) or "none"
            notes.append(f"Adapter `{marker.parent.parent.parent.name}/{marker.parent.name}`: {m.get('examples')} of "
                         f"{m.get('rows')} rows trained on; set aside (would lose the answer): {what}; prompts "
                         f"shortened to fit max_length: {short}.")
    return notes


def translation_notes(root: Path) -> list[str]:
    """Per task and language: examples translated, rows accepted, set aside by reason (from the manifests)."""
    from stt.translate import summarize

    notes = []
    for manifest in sorted(Path(root).glob("*/translate/_manifest.json")):
        config = json.loads(manifest.read_text()).get("config", {})
        filtering = config.get("round_trip", {})
        for s in summarize(manifest.parent):
            line = (f"Translation `{manifest.parent.parent.name}` into {s['language']}: {s['rows']} of {s['examples']} "
                    f"examples accepted; set aside: {s['rejects_by_reason']}.")
            if filtering.get("enabled"):
                limit = filtering.get("min_chrf_by_language", {}).get(s["language"], filtering.get("min_chrf"))
                line += (f" Round-trip filter (chrF < {limit}): {s['round_trip_set_aside']} rows "
                         f"set aside; mean round-trip chrF {s['round_trip_chrf']}.")
            notes.append(line)
    return notes


def _markdown_table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True)


def markdown(df: pd.DataFrame, config: dict[str, Any], notes: list[str]) -> str:
    lines = [f"# Self-Translate-Train: {config.get('name', 'run')}", "",
             f"Model `{config['engine']['model']}`, languages {', '.join(config['languages'])}, "
             f"tasks {', '.join(config['tasks'])}.", "",
             "Columns: the task metric (%) with its 95% bootstrap interval over test items, of the base model, "
             "zero-shot transfer (LoRA on English only), the controls that are enabled (zero-shot trained for as "
             "many optimizer steps as Self-Translate-Train; English + human translations of the same items; "
             "translate-test) and Self-Translate-Train (LoRA on English + the model's own translations into the "
             "row's language). Gains are paired over the same items: difference [95% CI], two-sided bootstrap "
             "p-value; `n.s.` = the interval contains 0 (not significant). Translation chrF = the model's en->X "
             "translation of human-translated test items, scored against the human translation.", "",
             "Metrics: MGSM accuracy (final number, read with the language's number format); XNLI accuracy "
             "(label with the highest summed log-likelihood, lm-evaluation-harness `acc`; `accuracy_norm` in "
             "`results.parquet`); XQuAD F1 with the official SQuAD v1.1 normalisation (exact match and, for "
             "zh/th, character F1 in `results.parquet`).", "",
             _markdown_table(display_table(df)), ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "![results](plot.png)", "", "Per-item predictions: the `*_predictions` columns of "
              "`results.parquet`. Full config: `config.json`."]
    return "\n".join(lines)


def write_report(root: Path, evaluations: list[dict[str, Any]], quality: list[dict[str, Any]],
                 config: dict[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ev = config.get("eval", {})
    resamples, seed = ev.get("bootstrap_resamples", RESAMPLES), ev.get("bootstrap_seed", SEED)
    df = results_table(evaluations, quality, resamples, seed)
    notes = [*(notes or []), *translation_notes(root), *training_notes(root),
             f"Intervals: percentile bootstrap over test items, {resamples} resamples, seed {seed}."]
    # Atomic writes (temp + rename): a run killed here leaves the previous report or none, never half of one.
    write_parquet_atomic(pa.Table.from_pandas(df, preserve_index=False), root / "results.parquet")
    tmp_plot = root / f".plot.{os.getpid()}.tmp.png"
    plot(df, tmp_plot)
    os.replace(tmp_plot, root / "plot.png")
    md = markdown(df, config, notes or [])
    write_text_atomic(root / "report.md", md)
    write_text_atomic(root / "config.json", json.dumps(config, indent=2, default=str))
    return {"results": str(root / "results.parquet"), "report": str(root / "report.md"),
            "plot": str(root / "plot.png"), "markdown": md, "table": display_table(df)}
