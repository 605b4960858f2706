"""What a task family translates, keeps, and how a translated example is put back together."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from stt import segments
from stt.badrows import BadRows
from stt.loaders import Example
from stt.segments import SplitMode


@dataclass(frozen=True)
class Segment:
    field: str
    index: int
    text: str
    translate: bool  # False: copied as is (no letters to translate)


@dataclass(frozen=True)
class TaskSpec(ABC):
    name: str  # registry key, e.g. "gsm8k"
    family: str  # "math" | "qa" | "nli"
    translated: dict[str, SplitMode]  # field -> how it is split into segments
    kept: tuple[str, ...]  # copied unchanged (labels, numeric answers, ids)
    # Code-switched training pairs swap these groups between English and the target language
    # (fields that must agree, such as a QA context and its answer span, stay in one group).
    switch_groups: tuple[tuple[str, ...], ...] = ()

    @abstractmethod
    def default_source(self, data_dir: Path) -> Path:
        """The training file used when the user names none."""

    @abstractmethod
    def load(self, path: Path, bad: BadRows | None = None) -> list[Example]:
        """Examples of a file in this family's release format; unusable rows go to `bad` (default: stop)."""

    def segments(self, example: Example) -> list[Segment]:
        out = []
        for field, mode in self.translated.items():
            for i, text in enumerate(segments.split(example[field], mode)):
                out.append(Segment(field, i, text, segments.needs_translation(text)))
        return out

    def assemble(self, example: Example, parts: dict[str, list[str]], language: str) -> Example:
        """The translated example: translated fields joined back, kept fields copied."""
        row = {k: example[k] for k in self.kept}
        for field, mode in self.translated.items():
            row[field] = segments.join(parts.get(field, []), mode, language)
        return row

    def check(self, example: Example, translated: Example, language: str) -> list[str]:
        """Task-specific reasons to reject a reassembled example (may also add fields to it)."""
        return []
