"""Extractive QA (SQuAD format; XQuAD): translate context, question and answer; the answer must stay a span."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stt.badrows import BadRows
from stt.engines.base import Request
from stt.loaders import XQUAD_TRAIN_ARTICLES, Example, load_squad
from stt.metrics import CHAR_LEVEL, best_over_golds, char_f1, squad_exact_match, squad_f1
from stt.spans import find_span
from stt.specs.base import TaskSpec
from stt.templates import Pair, qa_pair, qa_prompt
from stt.testsets import load_xquad_eval

QA_STOPS = ("\n",)


def span_item_scores(language: str, rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Official SQuAD v1.1 F1 and exact match per item, best over the gold answers (a JSON list in `gold`);
    character F1 too for languages written without spaces."""
    golds = [json.loads(r["gold"]) for r in rows]
    out = {"f1": [best_over_golds(squad_f1, r["prediction"], g) for r, g in zip(rows, golds, strict=True)],
           "exact_match": [best_over_golds(squad_exact_match, r["prediction"], g)
                           for r, g in zip(rows, golds, strict=True)]}
    if language in CHAR_LEVEL:
        out["char_f1"] = [best_over_golds(char_f1, r["prediction"], g) for r, g in zip(rows, golds, strict=True)]
    return out


@dataclass(frozen=True)
class QASpec(TaskSpec):
    test_set = "xquad"
    primary_choices = ("f1", "exact_match")
    reference_field = "question"

    def default_source(self, data_dir: Path) -> Path:
        # SQuAD train is not available offline: English XQuAD, training half of the articles.
        return data_dir / "xquad" / "xquad.en.json"

    def load(self, path: Path, bad: BadRows | None = None) -> list[Example]:
        if path.name == "xquad.en.json":
            return load_squad(path, split="train", dataset="xquad.en", articles=XQUAD_TRAIN_ARTICLES, bad=bad)
        return load_squad(path, bad=bad)

    def check(self, example: Example, translated: Example, language: str) -> list[str]:
        span = find_span(translated["context"], translated["answer_text"])
        if span is None:
            translated["answer_start"] = -1
            return ["answer_not_in_context"]
        start, end = span
        # The context's own spelling, so that context[answer_start:][:len(answer_text)] is the answer.
        translated["answer_text"] = translated["context"][start:end]
        translated["answer_start"] = start
        return []

    added_int_fields = ("answer_start",)

    def notes(self, source: Path | None) -> list[str]:
        if source is None or Path(source).name != "xquad.en.json":
            return []
        return ["QA trains on the English XQuAD paragraphs of articles 0-23 (SQuAD train is not available offline) "
                "and is evaluated on articles 24-47 only."]

    def has_human(self, source: Path | None) -> bool:
        return source is not None and Path(source).name == "xquad.en.json"

    def human_examples(self, source: Path, language: str) -> list[Example] | None:
        # XQuAD is parallel: xquad.<lang>.json has the same question ids as xquad.en.json.
        if not self.has_human(source):
            return None
        english = {r["source_id"]: r["id"] for r in self.load(Path(source))}
        human = self.load(Path(source).with_name(f"xquad.{language}.json"))
        return [{**r, "id": english[r["source_id"]], "language": language} for r in human if r["source_id"] in english]

    def pair(self, example: Example) -> Pair:
        return qa_pair(example)

    def test_items(self, data_dir: Path, language: str, split: str = "test") -> list[Example]:
        return load_xquad_eval(data_dir, language)

    def eval_rows(self, engine: Any, items: list[Example], config: Any, language: str) -> list[dict[str, Any]]:
        prompts = [qa_prompt(it["context"], it["question"]) for it in items]
        outs = engine.generate([Request(p, config.max_new_tokens_qa, QA_STOPS) for p in prompts])
        return [{"prompt": p, "output": o.text, "prediction": o.text.strip(),
                 "gold": json.dumps(it["answers"], ensure_ascii=False), "prompt_tokens": o.prompt_tokens,
                 "completion_tokens": o.completion_tokens} for it, p, o in zip(items, prompts, outs, strict=True)]

    def item_scores(self, language: str, rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        return span_item_scores(language, rows)

    def answer_tokens(self, config: Any) -> int:
        return config.max_new_tokens_qa


SQUAD = QASpec(
    "squad", "qa", {"context": "sentences", "question": "whole", "answer_text": "whole"},
    ("id", "source_id", "title", "paragraph"),
    (("context", "answer_text", "answer_start"), ("question",)),
)
