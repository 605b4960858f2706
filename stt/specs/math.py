"""Math word problems (GSM8K): translate question and rationale, keep the final answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stt.badrows import BadRows
from stt.loaders import Example, load_gsm8k
from stt.numbers import numbers_in
from stt.specs.base import TaskSpec


@dataclass(frozen=True)
class MathSpec(TaskSpec):
    def default_source(self, data_dir: Path) -> Path:
        return data_dir / "gsm8k" / "train.jsonl"

    def load(self, path: Path, bad: BadRows | None = None) -> list[Example]:
        return load_gsm8k(path, bad=bad)

    def check(self, example: Example, translated: Example, language: str) -> list[str]:
        # Every number of the English question and rationale must survive translation with its value:
        # "2.50" -> "2,50" (de) keeps it, "3.5" -> "35" loses it.
        reasons = []
        for field in ("question", "rationale"):
            missing = numbers_in(example[field], "en") - numbers_in(translated[field], language)
            if missing:
                reasons.append(f"lost_numbers:{field}")
        return reasons


GSM8K = MathSpec("gsm8k", "math", {"question": "whole", "rationale": "lines"}, ("id", "answer"),
                (("question",), ("rationale",)))
