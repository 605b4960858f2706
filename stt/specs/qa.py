"""Extractive QA (SQuAD format): translate context, question and answer; the answer must stay a span."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stt.badrows import BadRows
from stt.loaders import XQUAD_TRAIN_ARTICLES, Example, load_squad
from stt.spans import find_span
from stt.specs.base import TaskSpec


@dataclass(frozen=True)
class QASpec(TaskSpec):
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


SQUAD = QASpec(
    "squad", "qa", {"context": "sentences", "question": "whole", "answer_text": "whole"},
    ("id", "source_id", "title", "paragraph"),
    (("context", "answer_text", "answer_start"), ("question",)),
)
