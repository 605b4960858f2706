"""What a task is: what it translates and keeps, how an example becomes a prompt and an answer, where its test
items come from, how a model's answers are made and scored, and where human translations exist.

Every stage asks the task's spec (stt.specs.get_task) rather than switching on task names: a new task is one
spec — a small module registered in stt/specs/__init__.py, or a YAML file under configs/tasks/ (specs/declared.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from stt import segments
from stt.badrows import BadRows
from stt.errors import ConfigError
from stt.loaders import Example
from stt.segments import SplitMode
from stt.templates import TEMPLATE_VERSION, Pair

if TYPE_CHECKING:
    from stt.specs.answers import Answer


@dataclass(frozen=True)
class Segment:
    field: str
    index: int
    text: str
    translate: bool  # False: copied as is (no letters to translate)


@dataclass(frozen=True)
class TaskSpec(ABC):
    name: str  # registry key, e.g. "gsm8k"
    translated: dict[str, SplitMode]  # field -> how it is split into segments
    kept: tuple[str, ...]  # copied unchanged (labels, numeric answers, ids)
    # Code-switched training pairs swap these groups between English and the target language
    # (fields that must agree, such as a QA context and its answer span, stay in one group).
    switch_groups: tuple[tuple[str, ...], ...] = ()

    # --- identity --------------------------------------------------------------------------------------
    @property
    def key_id(self) -> str:
        """The task in every stage key: its name, and for a declared task the hash of its definition (a
        changed definition redoes what it changes)."""
        return self.name

    @property
    def template_version(self) -> str:
        return TEMPLATE_VERSION

    # --- training data ---------------------------------------------------------------------------------
    @abstractmethod
    def default_source(self, data_dir: Path) -> Path:
        """The training file used when the user names none."""

    @abstractmethod
    def load(self, path: Path, bad: BadRows | None = None) -> list[Example]:
        """Examples of a file in this task's format; unusable rows go to `bad` (default: stop)."""

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

    def has_human(self, source: Path | None) -> bool:
        """Whether the training file's items have human translations (without reading them)."""
        return False

    # Integer fields that check() adds to a translated row (QA: answer_start), beside the kept and translated ones.
    added_int_fields: ClassVar[tuple[str, ...]] = ()

    def notes(self, source: Path | None) -> list[str]:
        """What a report should say about where this task's data came from (e.g. a declared stand-in)."""
        return []

    def human_examples(self, source: Path, language: str) -> list[Example] | None:
        """Human translations of the training file's items into `language`, with the training ids (the human
        translate-train control); None where the file has none."""
        return None

    # --- prompts -------------------------------------------------------------------------------------
    @abstractmethod
    def pair(self, example: Example) -> Pair:
        """(prompt, target) of a training example; evaluation uses the same prompt."""

    # --- evaluation ----------------------------------------------------------------------------------
    test_set: ClassVar[str] = ""  # the test set's name, recorded with every evaluation
    # The per-item metrics a primary metric may be (EvalConfig.primary_metric), the default first.
    @property
    def primary_choices(self) -> tuple[str, ...]:
        return self.answer.primary_choices

    # The labelled splits it can be tested on, the default first (eval.test_split chooses another).
    test_splits: ClassVar[tuple[str, ...]] = ("test",)

    def test_split(self, config: Any) -> str:
        """The split an evaluation reads: the task's default unless eval.test_split names another of its own."""
        split = config.test_split.get(self.name, self.test_splits[0])
        if split not in self.test_splits:
            raise ConfigError(f"eval.test_split: {self.name} has no labelled split '{split}' "
                              f"(choose from {', '.join(self.test_splits)})")
        return split

    @abstractmethod
    def test_items(self, data_dir: Path, language: str, split: str = "test") -> list[Example]:
        """Every test item in one language (`index`: the same item in every language)."""

    # The kind of answer (stt.specs.answers): how answers are made and scored. Set by each task.
    answer: ClassVar[Answer]

    @abstractmethod
    def prompt(self, example: Example) -> str:
        """The prompt an item is answered after (the training pair's prompt too)."""

    @abstractmethod
    def gold(self, example: Example) -> str:
        """A test item's `gold` in its prediction row."""

    def eval_rows(self, engine: Any, items: list[Example], config: Any, language: str) -> list[dict[str, Any]]:
        """The model's answer to each item: prompt, output, prediction, gold, token counts."""
        return self.answer.eval_rows(engine, [self.prompt(it) for it in items], [self.gold(it) for it in items],
                                     self.answer_tokens(config), language)

    def item_scores(self, language: str, rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        """Every per-item metric, recomputed from saved prediction rows."""
        return self.answer.item_scores(language, rows)

    def score_row(self, language: str, row: dict[str, Any]) -> float:
        """The `score` column of a prediction row (the default metric where one row decides it)."""
        return self.answer.score_row(language, row)

    def corpus_scores(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Metrics that are not means of per-item scores."""
        return self.answer.corpus_scores(rows)

    def answer_tokens(self, config: Any) -> int:
        """Tokens an answer may take (generation tasks: the answer kind's default, or eval.max_new_tokens for
        this task); 0 when answers are scored, not generated."""
        if not self.answer.max_new_tokens:
            return 0
        return config.max_new_tokens.get(self.name, self.answer.max_new_tokens)

    def stops(self) -> tuple[str, ...]:
        """Where a generated answer ends (none for scored answers)."""
        return getattr(self.answer, "stops", ())

    # --- translation quality and translate-test -------------------------------------------------------
    # A field of reference_items() that is a single-line human translation of the English item.
    reference_field: ClassVar[str] = ""
    quality_split: ClassVar[str] = "test"
    translate_test_fields: ClassVar[dict[str, SplitMode] | None] = None  # None: no translate-test for this task

    def reference_items(self, data_dir: Path, language: str) -> list[Example]:
        """Parallel items whose `reference_field` is human-translated (translation quality)."""
        return self.test_items(data_dir, language, self.quality_split)
