"""The kinds of answer a task has, each one object that built-in and declared tasks share: how the model is
asked for it (generated up to a cap, or each label word scored), how a prediction row is made and scored, and,
for a declared task, how its training rows are read, checked after translation and written as a target.

    number  a final number, generated and read as MGSM reads it (GSM8K/MGSM; declared `answer: number`)
    span    a short answer that is a span of a context, generated, SQuAD F1 / exact match (XQuAD; `span`)
    label   one label of a fixed set, each label word's log-likelihood (XNLI; `label`)

A new kind of answer: one class here and its entry in KINDS (declared tasks then accept `answer: <name>`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from stt.engines.base import Request
from stt.metrics import (
    CHAR_LEVEL,
    best_over_golds,
    char_f1,
    extract_final_number,
    math_correct,
    squad_exact_match,
    squad_f1,
)
from stt.numbers import numbers_in, parse_number
from stt.spans import find_span
from stt.specs import labels

Row = dict[str, Any]


class Answer(ABC):
    name: ClassVar[str]
    primary_choices: ClassVar[tuple[str, ...]]  # the per-item metrics a primary metric may be, default first
    # What a declared task of this kind names besides its fields: label words, the context the answer is a span
    # of (the answer is then translated with it), a worked solution trained on before the answer.
    uses_labels: ClassVar[bool] = False
    uses_context: ClassVar[bool] = False
    uses_rationale: ClassVar[bool] = False

    # Tokens an answer may take by default (a task's spec and eval.max_new_tokens may say otherwise); 0 when
    # answers are scored, not generated.
    max_new_tokens: ClassVar[int] = 0

    @abstractmethod
    def eval_rows(self, engine: Any, prompts: list[str], golds: list[str], max_new_tokens: int,
                  language: str) -> list[Row]:
        """The model's answer to each prompt (at most `max_new_tokens`): prompt, output, prediction, gold,
        token counts."""

    @abstractmethod
    def item_scores(self, language: str, rows: list[Row]) -> dict[str, list[float]]:
        """Every per-item metric, recomputed from saved prediction rows."""

    def score_row(self, language: str, row: Row) -> float:
        """The `score` column of a prediction row."""
        return self.item_scores(language, [row])[self.primary_choices[0]][0]

    def corpus_scores(self, rows: list[Row]) -> dict[str, float]:
        """Metrics that are not means of per-item scores."""
        return {}

    def gold(self, value: str) -> str:
        """A prediction row's `gold` from the item's answer."""
        return value

    # --- declared tasks ----------------------------------------------------------------------------------
    @classmethod
    def declared(cls, d: Any) -> Answer:
        """The answer of a declared task (stt.specs.declared.TaskFile)."""
        return cls()

    @classmethod
    def check_definition(cls, d: Any) -> str | None:
        """What is wrong with a declared task's answer settings (None: nothing)."""
        if cls.uses_labels:
            words = list(d.labels.values())
            if len(words) < 2:
                return "labels: at least two"
            if len(set(words)) != len(words):
                return "labels: two labels map to the same word"
        elif d.labels:
            return f"labels: only for answer: label (this task's answer is a {d.answer})"
        if cls.uses_context and d.context not in d.fields:
            return f"context: name the field the answer is a span of (one of {', '.join(d.fields)})"
        if not cls.uses_context and d.context:
            return "context: only for answer: span"
        if d.rationale and (not cls.uses_rationale or d.rationale in d.fields):
            return "rationale: only for answer: number, a field that is not in the prompt's fields"
        return None

    def read(self, text: str, texts: dict[str, str], context: str | None, source: str) -> tuple[str | None, str]:
        """A training or test row's answer as the task keeps it, or (None, why the row is set aside). `source`:
        the task's YAML file, which the reason may point at."""
        return (text, "") if text else (None, "empty")

    def check(self, example: Row, translated: Row, fields: list[str], answer: str, context: str | None,
              language: str) -> list[str]:
        """Why a translated example is rejected ([] when it is kept); may respell the answer in place."""
        return []

    def target(self, answer: str, rationale: str | None) -> str:
        """The training pair's target after the prompt."""
        return f" {answer}"


@dataclass(frozen=True)
class Generated(Answer, ABC):
    stops: ClassVar[tuple[str, ...]]

    def generate(self, engine: Any, prompts: list[str], limit: int) -> list[Any]:
        return engine.generate([Request(p, limit, self.stops) for p in prompts])


class Number(Generated):
    name = "number"
    primary_choices = ("accuracy",)
    uses_rationale = True
    # Base models run on past the answer into a new "Question:"; fine-tuned ones stop at EOS.
    stops = ("\nQuestion:", "\n\n")
    max_new_tokens = 256  # a worked solution, then the number

    def eval_rows(self, engine: Any, prompts: list[str], golds: list[str], max_new_tokens: int,
                  language: str) -> list[Row]:
        outs = self.generate(engine, prompts, max_new_tokens)
        return [{"prompt": p, "output": o.text, "prediction": extract_final_number(o.text, language) or "",
                 "gold": g, "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens}
                for p, g, o in zip(prompts, golds, outs, strict=True)]

    def item_scores(self, language: str, rows: list[Row]) -> dict[str, list[float]]:
        """Accuracy of the final number per item, read in the language the model answered in (translate-test
        answers in English), and whether a number was found at all."""
        return {"accuracy": [float(math_correct(r["output"], r["gold"], r.get("output_language") or language))
                             for r in rows],
                "answered": [float(bool(r["prediction"])) for r in rows]}

    def read(self, text: str, texts: dict[str, str], context: str | None, source: str) -> tuple[str | None, str]:
        if not text:
            return None, "empty"
        return (text, "") if parse_number(text, "en") is not None else (None, f"answer '{text[:40]}' is not a number")

    def check(self, example: Row, translated: Row, fields: list[str], answer: str, context: str | None,
              language: str) -> list[str]:
        # Every number must survive translation with its value: "2.50" -> "2,50" (de) keeps it, "3.5" -> "35" not.
        return [f"lost_numbers:{f}" for f in fields
                if numbers_in(example[f], "en") - numbers_in(translated[f], language)]

    def target(self, answer: str, rationale: str | None) -> str:
        worked = f" {rationale.strip()}\n" if rationale else " "
        return f"{worked}The answer is {answer}."


class Span(Generated):
    name = "span"
    primary_choices = ("f1", "exact_match")
    uses_context = True
    stops = ("\n",)
    max_new_tokens = 32  # a span of the context

    def gold(self, value: str) -> str:
        return json.dumps([value], ensure_ascii=False)  # a list of gold answers (one here), as XQuAD's

    def eval_rows(self, engine: Any, prompts: list[str], golds: list[str], max_new_tokens: int,
                  language: str) -> list[Row]:
        """`golds`: each item's gold answers, a JSON list."""
        outs = self.generate(engine, prompts, max_new_tokens)
        return [{"prompt": p, "output": o.text, "prediction": o.text.strip(), "gold": g,
                 "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens}
                for p, g, o in zip(prompts, golds, outs, strict=True)]

    def item_scores(self, language: str, rows: list[Row]) -> dict[str, list[float]]:
        """Official SQuAD v1.1 F1 and exact match per item, best over the gold answers (a JSON list in `gold`);
        character F1 too for languages written without spaces."""
        golds = [json.loads(r["gold"]) for r in rows]
        out = {"f1": [best_over_golds(squad_f1, r["prediction"], g) for r, g in zip(rows, golds, strict=True)],
               "exact_match": [best_over_golds(squad_exact_match, r["prediction"], g)
                               for r, g in zip(rows, golds, strict=True)]}
        if language in CHAR_LEVEL:
            out["char_f1"] = [best_over_golds(char_f1, r["prediction"], g) for r, g in zip(rows, golds, strict=True)]
        return out

    def read(self, text: str, texts: dict[str, str], context: str | None, source: str) -> tuple[str | None, str]:
        if not text:
            return None, "empty"
        assert context is not None
        found = find_span(texts[context], text) is not None
        return (text, "") if found else (None, f"answer '{text[:40]}' is not in the field '{context}'")

    def check(self, example: Row, translated: Row, fields: list[str], answer: str, context: str | None,
              language: str) -> list[str]:
        assert context is not None
        span = find_span(translated[context], translated[answer])
        if span is None:
            return ["answer_not_in_context"]
        translated[answer] = translated[context][span[0]:span[1]]  # the context's own spelling
        return []


@dataclass(frozen=True)
class Label(Answer):
    words: tuple[str, ...] = ()  # the label words the model is scored on, in the task's order
    file_labels: tuple[tuple[str, str], ...] = ()  # a declared task's labels as written in its files -> words

    name = "label"
    primary_choices = labels.LABEL_METRICS
    uses_labels = True

    @classmethod
    def declared(cls, d: Any) -> Answer:
        return cls(tuple(d.labels.values()), tuple(d.labels.items()))

    def eval_rows(self, engine: Any, prompts: list[str], golds: list[str], max_new_tokens: int,
                  language: str) -> list[Row]:
        return labels.score_rows(engine, [{"label": g} for g in golds], prompts, self.words)

    def item_scores(self, language: str, rows: list[Row]) -> dict[str, list[float]]:
        return labels.item_scores(rows, self.words)

    def score_row(self, language: str, row: Row) -> float:
        return float(row["prediction"] == row["gold"])  # raw accuracy: calibration needs every row

    def corpus_scores(self, rows: list[Row]) -> dict[str, float]:
        return labels.corpus_scores(rows, self.words)

    def read(self, text: str, texts: dict[str, str], context: str | None, source: str) -> tuple[str | None, str]:
        mapping = dict(self.file_labels)
        if text not in mapping:
            return None, f"label '{text[:40]}' is not one of {', '.join(mapping)} ({source}: labels)"
        return mapping[text], ""


NUMBER, SPAN = Number(), Span()
KINDS: dict[str, type[Answer]] = {k.name: k for k in (Number, Span, Label)}
