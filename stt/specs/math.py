"""Math word problems (GSM8K; MGSM): translate question and rationale, keep the final answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from stt.badrows import BadRows
from stt.loaders import Example, load_gsm8k
from stt.numbers import numbers_in
from stt.segments import SplitMode
from stt.specs.answers import NUMBER
from stt.specs.base import TaskSpec
from stt.templates import Pair, math_pair, math_prompt
from stt.testsets import load_mgsm


@dataclass(frozen=True)
class MathSpec(TaskSpec):
    test_set = "mgsm"
    answer = NUMBER
    reference_field = "question"
    translate_test_fields: ClassVar[dict[str, SplitMode] | None] = {"question": "whole"}

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

    def pair(self, example: Example) -> Pair:
        return math_pair(example)

    def test_items(self, data_dir: Path, language: str, split: str = "test") -> list[Example]:
        return load_mgsm(data_dir, language)

    def prompt(self, example: Example) -> str:
        return math_prompt(example["question"])

    def gold(self, example: Example) -> str:
        return example["answer"]


GSM8K = MathSpec("gsm8k", {"question": "whole", "rationale": "lines"}, ("id", "answer"),
                 (("question",), ("rationale",)))
