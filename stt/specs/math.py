"""Math word problems (GSM8K; MGSM): translate question and rationale, keep the final answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from stt.badrows import BadRows
from stt.engines.base import Request
from stt.loaders import Example, load_gsm8k
from stt.metrics import extract_final_number, math_correct
from stt.numbers import numbers_in
from stt.segments import SplitMode
from stt.specs.base import TaskSpec
from stt.templates import Pair, math_pair, math_prompt
from stt.testsets import load_mgsm

# Base models run on past the answer into a new "Question:"; fine-tuned ones stop at EOS.
MATH_STOPS = ("\nQuestion:", "\n\n")


def number_item_scores(language: str, rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Accuracy of the final number per item, read in the language the model answered in (translate-test
    answers in English), and whether a number was found at all."""
    return {"accuracy": [float(math_correct(r["output"], r["gold"], r.get("output_language") or language))
                         for r in rows],
            "answered": [float(bool(r["prediction"])) for r in rows]}


@dataclass(frozen=True)
class MathSpec(TaskSpec):
    test_set = "mgsm"
    primary_choices = ("accuracy",)
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

    def eval_rows(self, engine: Any, items: list[Example], config: Any, language: str) -> list[dict[str, Any]]:
        prompts = [math_prompt(it["question"]) for it in items]
        outs = engine.generate([Request(p, config.max_new_tokens_math, MATH_STOPS) for p in prompts])
        return [{"prompt": p, "output": o.text, "prediction": extract_final_number(o.text, language) or "",
                 "gold": it["answer"], "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens}
                for it, p, o in zip(items, prompts, outs, strict=True)]

    def item_scores(self, language: str, rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        return number_item_scores(language, rows)

    def answer_tokens(self, config: Any) -> int:
        return config.max_new_tokens_math


GSM8K = MathSpec("gsm8k", "math", {"question": "whole", "rationale": "lines"}, ("id", "answer"),
                 (("question",), ("rationale",)))
