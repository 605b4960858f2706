"""Natural language inference (MultiNLI): translate premise and hypothesis, keep the label."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stt.badrows import BadRows
from stt.errors import ConfigError
from stt.loaders import Example, load_mnli, load_xnli_dev
from stt.specs.base import TaskSpec


@dataclass(frozen=True)
class NLISpec(TaskSpec):
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


MNLI = NLISpec("mnli", "nli", {"premise": "sentences", "hypothesis": "sentences"}, ("id", "source_id", "label"),
             (("premise",), ("hypothesis",)))
