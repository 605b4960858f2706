"""The comparison report: per task and language, base vs zero-shot transfer vs Self-Translate-Train.

Writes `results.parquet` (one row per task x language), `report.md` and `plot.png` into the run
directory. Every number comes from an evaluation manifest, whose predictions file holds the items.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

# Column of the table -> evaluation model label.
MODEL_COLUMNS = {"base": "base", "zero_shot": "zero-shot", "stt": "self-translate-train", "code_switch": "code-switch"}


def results_table(evaluations: list[dict[str, Any]], quality: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows: (task, language); columns: the models' main metric, gain of STT over zero-shot, chrF, BLEU."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for e in evaluations:
        row = rows.setdefault((e["task"], e["language"]), {"task": e["task"], "language": e["language"],
                                                           "metric": e["metric"], "n": e["scores"]["n"]})
        for column, label in MODEL_COLUMNS.items():
            if e["model"] == label:
                row[column] = round(e["scores"][e["metric"]], 2)
                row[f"{column}_predictions"] = str(Path(e["folder"]) / "predictions.parquet")
    for q in quality:
        row = rows.get((q["task"], q["language"]))
        if row is not None:
            row["chrf"], row["bleu"] = q["scores"]["chrf"], q["scores"]["bleu"]
    df = pd.DataFrame(list(rows.values()))
    for column in [*MODEL_COLUMNS, "chrf", "bleu"]:
        if column not in df:
            df[column] = float("nan")
    df["gain"] = (df["stt"] - df["zero_shot"]).round(2)
    order = ["task", "language", "metric", "n", "base", "zero_shot", "stt", "code_switch", "gain", "chrf", "bleu"]
    rest = [c for c in df.columns if c not in order]
    df["_en"] = df["language"] != "en"  # English first: the language the model was fine-tuned in
    df = df.sort_values(["task", "_en", "language"]).drop(columns="_en").reset_index(drop=True)
    return df[order + rest]


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    shown = df[["task", "language", "metric", "n", "base", "zero_shot", "stt", "code_switch", "gain", "chrf"]]
    if shown["code_switch"].isna().all():
        shown = shown.drop(columns="code_switch")
    return shown.rename(columns={"zero_shot": "zero-shot", "stt": "self-translate-train", "code_switch": "code-switch",
                                 "chrf": "translation chrF"})


def plot(df: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(df["task"]))
    quality = df[df["chrf"].notna()]
    panels = len(tasks) + (1 if len(quality) else 0)
    fig, axes = plt.subplots(1, panels, figsize=(max(6, 3 + 1.8 * len(df) + 1.2 * len(quality)), 4), squeeze=False)
    if len(quality):  # the paper's observation: the gain tracks how well the model translates
        ax = axes[0][-1]
        labels = [f"{t}\n{lang}" for t, lang in zip(quality["task"], quality["language"], strict=True)]
        ax.bar(labels, quality["chrf"], color="grey")
        ax.set_title("translation chrF (en->X)")
        ax.set_ylim(0, 100)
    for ax, task in zip(axes[0], tasks, strict=False):
        sub = df[df["task"] == task]
        columns = [c for c in ("base", "zero_shot", "stt", "code_switch") if sub[c].notna().any()]
        width = 0.8 / len(columns)
        x = range(len(sub))
        for k, column in enumerate(columns):
            ax.bar([i + k * width for i in x], sub[column].fillna(0), width,
                   label={"zero_shot": "zero-shot", "stt": "self-translate-train",
                          "code_switch": "code-switch"}.get(column, column))
        ax.set_xticks([i + width * (len(columns) - 1) / 2 for i in x])
        ax.set_xticklabels(sub["language"])
        ax.set_title(f"{task} ({sub['metric'].iloc[0]}, n={int(sub['n'].max())})")
        ax.set_ylabel("score (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown_table(df: pd.DataFrame) -> str:
    def cell(v: object) -> object:
        if isinstance(v, float):
            return "-" if v != v else f"{v:.2f}"  # a model not run for a language shows "-", not nan
        return v

    return df.map(cell).to_markdown(index=False, disable_numparse=True)


def markdown(df: pd.DataFrame, config: dict[str, Any], notes: list[str]) -> str:
    lines = [f"# Self-Translate-Train: {config.get('name', 'run')}", "",
             f"Model `{config['engine']['model']}`, languages {', '.join(config['languages'])}, "
             f"tasks {', '.join(config['tasks'])}.", "",
             "Columns: the task metric (%) of the base model, of zero-shot transfer (LoRA on English only), of "
             "Self-Translate-Train (LoRA on English + the model's own translations into the row's language); "
             "gain = Self-Translate-Train minus zero-shot; translation chrF = the model's en->X translation of "
             "human-translated test items, scored against the human translation.", "",
             _markdown_table(display_table(df)), ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "![results](plot.png)", "", "Per-item predictions: the `*_predictions` columns of "
              "`results.parquet`. Full config: `config.json`."]
    return "\n".join(lines)


def write_report(root: Path, evaluations: list[dict[str, Any]], quality: list[dict[str, Any]],
                 config: dict[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    df = results_table(evaluations, quality)
    df.to_parquet(root / "results.parquet", index=False)
    plot(df, root / "plot.png")
    md = markdown(df, config, notes or [])
    (root / "report.md").write_text(md)
    (root / "config.json").write_text(json.dumps(config, indent=2, default=str))
    return {"results": str(root / "results.parquet"), "report": str(root / "report.md"),
            "plot": str(root / "plot.png"), "markdown": md, "table": display_table(df)}
