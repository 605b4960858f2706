"""Natural language inference (MultiNLI; XNLI): translate premise and hypothesis, keep the label."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from stt.badrows import BadRows
from stt.errors import ConfigError
from stt.loaders import Example, load_mnli, load_xnli_dev
from stt.segments import SplitMode
from stt.specs.answers import Label
from stt.specs.base import TaskSpec
from stt.templates import NLI_LABELS, Pair, nli_pair, nli_prompt
from stt.testsets import load_xnli


@dataclass(frozen=True)
class NLISpec(TaskSpec):
    test_set = "xnli"
    answer = Label(NLI_LABELS)
    reference_field = "hypothesis"
    quality_split = "dev"  # XNLI dev is parallel and human-translated (test items stay unseen)
    translate_test_fields: ClassVar[dict[str, SplitMode] | None] = {"premise": "sentences", "hypothesis": "sentences"}

    def default_source(self, data_dir: Path) -> Path:
        raise ConfigError(
            "MultiNLI train is not available offline: pass its jsonl with --input "
            "(multinli_1.0_train.jsonl), or use the English XNLI dev set as a declared stand-in: "
            "--input xnli/xtreme_dev-en.tsv (config: inputs: {mnli: xnli/xtreme_dev-en.tsv})"
        )

    def load(self, path: Path, bad: BadRows | None = None) -> list[Example]:
        if path.name.startswith("xtreme_dev-") and path.suffix == ".tsv":
            return load_xnli_dev(path, bad=bad)
        return load_mnli(path, bad=bad)

    def notes(self, source: Path | None) -> list[str]:
        if source is None or not Path(source).name.startswith("xtreme_dev-"):
            return []
        return ["NLI trains on the English XNLI dev set (2,490 items, disjoint from XNLI test), the declared "
                "stand-in for MultiNLI (not available offline)."]

    def has_human(self, source: Path | None) -> bool:
        return source is not None and Path(source).name == "xtreme_dev-en.tsv"

    def human_examples(self, source: Path, language: str) -> list[Example] | None:
        # XNLI dev is parallel: xtreme_dev-<lang>.tsv row i translates xtreme_dev-en.tsv row i.
        if not self.has_human(source):
            return None
        return [{**r, "language": language} for r in self.load(Path(source).with_name(f"xtreme_dev-{language}.tsv"))]

    def pair(self, example: Example) -> Pair:
        return nli_pair(example)

    test_splits = ("test", "dev")

    def test_items(self, data_dir: Path, language: str, split: str = "test") -> list[Example]:
        return load_xnli(data_dir, language, split)

    def prompt(self, example: Example) -> str:
        return nli_prompt(example["premise"], example["hypothesis"])

    def gold(self, example: Example) -> str:
        return example["label"]


MNLI = NLISpec("mnli", {"premise": "sentences", "hypothesis": "sentences"}, ("id", "source_id", "label"),
               (("premise",), ("hypothesis",)))
