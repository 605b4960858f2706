"""Extractive QA (SQuAD format; XQuAD): translate context, question and answer; the answer must stay a span."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stt.badrows import BadRows
from stt.loaders import XQUAD_TRAIN_ARTICLES, Example, load_squad
from stt.spans import find_span
from stt.specs.answers import SPAN
from stt.specs.base import TaskSpec
from stt.templates import Pair, qa_pair, qa_prompt
from stt.testsets import load_xquad_eval


@dataclass(frozen=True)
class QASpec(TaskSpec):
    test_set = "xquad"
    answer = SPAN
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

    def prompt(self, example: Example) -> str:
        return qa_prompt(example["context"], example["question"])

    def gold(self, example: Example) -> str:
        return json.dumps(example["answers"], ensure_ascii=False)


SQUAD = QASpec(
    "squad", {"context": "sentences", "question": "whole", "answer_text": "whole"},
    ("id", "source_id", "title", "paragraph"),
    (("context", "answer_text", "answer_start"), ("question",)),
)
