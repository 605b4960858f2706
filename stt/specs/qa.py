"""Extractive QA (SQuAD format): translate context, question and answer; the answer must stay a span."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stt.loaders import XQUAD_TRAIN_ARTICLES, Example, load_squad
from stt.specs.base import TaskSpec


@dataclass(frozen=True)
class QASpec(TaskSpec):
    def default_source(self, data_dir: Path) -> Path:
        # SQuAD train is not available offline: English XQuAD, training half of the articles.
        return data_dir / "xquad" / "xquad.en.json"

    def load(self, path: Path) -> list[Example]:
        if path.name == "xquad.en.json":
            return load_squad(path, split="train", dataset="xquad.en", articles=XQUAD_TRAIN_ARTICLES)
        return load_squad(path)

    def check(self, example: Example, translated: Example) -> list[str]:
        context, answer = translated["context"], translated["answer_text"]
        start = context.find(answer)
        if start < 0:
            start = context.casefold().find(answer.casefold())
            if start >= 0:  # keep the context's own spelling so that context[start:end] is the answer
                translated["answer_text"] = context[start : start + len(answer)]
        translated["answer_start"] = start
        return [] if start >= 0 and answer else ["answer_not_in_context"]


SQUAD = QASpec(
    "squad", "qa", {"context": "sentences", "question": "whole", "answer_text": "whole"},
    ("id", "source_id", "title", "paragraph"),
    (("context", "answer_text", "answer_start"), ("question",)),
)
