"""The arms of the comparison, each declared once: the training set its adapter learns from, its model's
name in the evaluations, its column and header in the report, and the paired comparisons it is the new
side of. The plan (which adapters and evaluations exist), the training sets and the report all read this.

A new control arm: one entry in ARMS (and, when it trains on a new kind of set, that set's recipe in
stt.trainsets.RECIPES).
"""

from __future__ import annotations

from dataclasses import dataclass

from stt.config import SetKind


@dataclass(frozen=True)
class Comparison:
    name: str  # its column in the results (the gain, new - baseline, on the same items)
    baseline: str  # the baseline arm's column
    shown: str  # its header in the report


@dataclass(frozen=True)
class Arm:
    column: str  # its column in results.parquet
    model: str  # the evaluation's model label (eval/<model>-<language>/)
    shown: str  # its header in the report and the plot's legend
    # The training set its adapter is trained on, for the arms the plan trains one per set (a language's
    # set, or English); None for the arms the plan adds on its own terms (base, equal steps, translate-test).
    set_kind: SetKind | None = None
    comparisons: tuple[Comparison, ...] = ()  # this arm against a baseline, paired on the same items


ARMS: tuple[Arm, ...] = (
    Arm("base", "base", "base"),
    Arm("zero_shot", "zero-shot", "zero-shot", set_kind="english"),
    Arm("zero_shot_steps", "zero-shot-equal-steps", "zero-shot (equal steps)"),
    Arm("zero_shot_data", "zero-shot-equal-data", "zero-shot (equal data)", set_kind="english-equal-data"),
    Arm("stt", "self-translate-train", "self-translate-train", set_kind="self-translate-train", comparisons=(
        Comparison("gain", "zero_shot", "gain (STT - zero-shot)"),
        Comparison("gain_vs_equal_steps", "zero_shot_steps", "STT - zero-shot (equal steps)"),
        Comparison("gain_vs_translate_test", "translate_test", "STT - translate-test"),
        Comparison("filter_gain", "stt_unfiltered", "STT - STT unfiltered"),
        Comparison("gain_vs_equal_data", "zero_shot_data", "STT - zero-shot (equal data)"),
    )),
    Arm("stt_unfiltered", "self-translate-train-unfiltered", "STT without round-trip filter",
        set_kind="self-translate-train-unfiltered"),
    Arm("code_switch", "code-switch", "code-switch", set_kind="code-switch"),
    Arm("human_tt", "human-translate-train", "human translate-train", set_kind="human-translate-train",
        comparisons=(Comparison("human_gain", "zero_shot", "human TT - zero-shot"),)),
    Arm("translate_test", "translate-test", "translate-test"),
    # The positive control independent of the model's translations (issue 37): every translated item's human
    # translation, with English 1:1 and alone. Built when build.sets names them.
    Arm("human_all", "human-translate-train-all", "human TT (all items)", set_kind="human-translate-train-all",
        comparisons=(Comparison("human_all_gain", "zero_shot", "human TT (all items) - zero-shot"),)),
    Arm("human_only", "human-only", "human target only (all items)", set_kind="human-only",
        comparisons=(Comparison("human_only_gain", "zero_shot", "human target only - zero-shot"),)),
)

# Column -> evaluation model label, in the report's order.
MODEL_COLUMNS = {a.column: a.model for a in ARMS}
SHOWN = {a.column: a.shown for a in ARMS}
# Paired comparisons on the same items: (name, new model column, baseline column).
COMPARISONS = [(c.name, a.column, c.baseline) for a in ARMS for c in a.comparisons]
GAIN_SHOWN = {c.name: c.shown for a in ARMS for c in a.comparisons}
# Which evaluated model each training set's adapter is.
MODEL_OF_SET: dict[str, str] = {a.set_kind: a.model for a in ARMS if a.set_kind}
