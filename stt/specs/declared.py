"""A task declared in a YAML file: the user's own classification dataset, no code.

    # configs/tasks/pawsx.yaml
    name: pawsx
    answer: label                    # one label of a fixed set, scored by each label word's log-likelihood
    fields: [sentence1, sentence2]   # translated (split into sentences), in the prompt's order
    labels: {"0": "no", "1": "yes"}  # a label as written in the files -> the word the model answers
    prompt: "Sentence 1: {sentence1}\\nSentence 2: {sentence2}\\nSame meaning:"
    train: {path: pawsx/xtreme_dev-en.tsv, header: false, columns: [sentence1, sentence2, label]}
    test: {path: "pawsx/hf_test-{language}.tsv"}
    human: {path: "pawsx/xtreme_dev-{language}.tsv", header: false, columns: [sentence1, sentence2, label]}

A file is JSONL, CSV, TSV or Parquet (by its suffix, or `format:`). `columns` maps task fields to the file's
column names ({text: review_body}), or names a header-less file's columns in order. Relative paths are read
beside the YAML file first, then in the data directory. `human` (optional): human translations of the training
items, row i translating row i: the human translate-train control and translation quality (chrF) use it.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from stt.badrows import BadRows, read_jsonl, read_lines, strict
from stt.errors import ConfigError, DataError
from stt.loaders import Example
from stt.specs import labels as label_scoring
from stt.specs.base import TaskSpec
from stt.templates import TEMPLATE_VERSION, Pair

FORMATS = ("jsonl", "csv", "tsv", "parquet")


class FileSpec(BaseModel):
    """One data file of a declared task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # may hold {language}
    format: Literal["jsonl", "csv", "tsv", "parquet"] | None = None  # default: from the suffix
    header: bool = True  # csv/tsv: the first line names the columns
    columns: dict[str, str] | list[str] = {}  # task field -> file column; or a header-less file's columns

    @model_validator(mode="after")
    def _columns_fit_the_header(self) -> FileSpec:
        if isinstance(self.columns, list) and self.header and self.columns:
            raise ValueError("a list of columns names a file without a header (header: false); with a header, "
                             "map fields to column names: {field: column}")
        if not self.header and not isinstance(self.columns, list):
            raise ValueError("a file without a header needs its columns listed in order (columns: [a, b, label])")
        return self


class TaskFile(BaseModel):
    """The YAML file's schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    answer: Literal["label"]  # math (a final number) and QA (a span) are the built-in gsm8k and squad
    fields: list[str]
    label: str = "label"
    labels: dict[str, str]
    prompt: str
    train: FileSpec
    test: FileSpec
    human: FileSpec | None = None
    description: str = ""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value.replace("_", "").replace("-", "").isalnum() or not value[0].isalpha():
            raise ValueError("letters, digits, - and _ only, starting with a letter")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, value: Any) -> Any:
        # YAML reads {0: no, 1: yes} with integer keys; the files' labels are compared as text.
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _consistent(self) -> TaskFile:
        if not self.fields:
            raise ValueError("fields: at least one field to translate")
        if self.label in self.fields:
            raise ValueError(f"label: '{self.label}' is also in fields (the label is kept, not translated)")
        if len(self.labels) < 2:
            raise ValueError("labels: at least two")
        words = list(self.labels.values())
        if len(set(words)) != len(words):
            raise ValueError("labels: two labels map to the same word")
        for f in self.fields:
            if "{" + f + "}" not in self.prompt:
                raise ValueError(f"prompt: no {{{f}}} placeholder for field '{f}'")
        try:
            self.prompt.format(**{f: "" for f in self.fields})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt: a placeholder that is not a field ({exc})") from None
        for where, spec in (("train", self.train), ("test", self.test), ("human", self.human)):
            if spec is None:
                continue
            mapped = set(spec.columns) if isinstance(spec.columns, dict) else set(spec.columns)
            needed = {*self.fields, self.label}
            if isinstance(spec.columns, list) and not needed <= mapped:
                raise ValueError(f"{where}.columns: no column for {sorted(needed - mapped)}")
            if isinstance(spec.columns, dict) and mapped - needed:
                raise ValueError(f"{where}.columns: unknown field {sorted(mapped - needed)[0]!r} "
                                 f"(fields: {', '.join(sorted(needed))})")
        return self


def _format(path: Path, spec: FileSpec) -> str:
    if spec.format:
        return spec.format
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "json":
        suffix = "jsonl"
    if suffix not in FORMATS:
        raise ConfigError(f"{path}: cannot tell the format from '.{suffix}': set format: ({', '.join(FORMATS)})")
    return suffix


def read_table(path: Path, spec: FileSpec, bad: BadRows) -> list[tuple[int, int, dict[str, Any]]]:
    """(line, row index, {column: value}) for every row of a data file; unreadable rows go to `bad`."""
    fmt = _format(path, spec)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if fmt == "jsonl":
        return list(read_jsonl(path, bad))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return [(i + 1, i, row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    delimiter = "\t" if fmt == "tsv" else ","
    rows: list[tuple[int, int, dict[str, Any]]] = []
    names: list[str] | None = list(spec.columns) if isinstance(spec.columns, list) else None
    for lineno, index, line in read_lines(path, bad):
        cells = next(csv.reader(io.StringIO(line), delimiter=delimiter,
                                quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL), [])
        if names is None:  # the header line
            names = [c.strip() for c in cells]
            continue
        if len(cells) != len(names):
            bad.reject(path, lineno, f"expected {len(names)} {fmt} fields, got {len(cells)}", line)
            continue
        rows.append((lineno, index - (1 if spec.header else 0), dict(zip(names, cells, strict=True))))
    return rows


@dataclass(frozen=True)
class DeclaredTask(TaskSpec):
    """A classification task from a YAML file (see the module's docstring)."""

    definition: TaskFile | None = None
    source: Path = Path()  # the YAML file
    fingerprint: str = ""
    primary_choices: ClassVar[tuple[str, ...]] = label_scoring.LABEL_METRICS
    words: tuple[str, ...] = field(default=())

    @property
    def key_id(self) -> str:
        return f"{self.name}@{self.fingerprint[:16]}"

    @property
    def template_version(self) -> str:
        return f"{TEMPLATE_VERSION}+{self.name}@{self.fingerprint[:16]}"

    @property
    def test_set(self) -> str:  # type: ignore[override]
        return f"{self.name} ({self.definition.test.path})"

    @property
    def reference_field(self) -> str:  # type: ignore[override]
        return self.definition.fields[-1] if self.definition.human else ""

    # --- files -------------------------------------------------------------------------------------------
    def resolve(self, spec: FileSpec, data_dir: Path, language: str = "en") -> Path:
        relative = Path(spec.path.format(language=language))
        if relative.is_absolute():
            return relative
        for folder in (self.source.parent, Path(data_dir)):
            if (folder / relative).is_file():
                return folder / relative
        return Path(data_dir) / relative  # not found: the reader names this path

    def read(self, path: Path, spec: FileSpec, split: str, bad: BadRows | None = None) -> list[Example]:
        bad = bad or strict()
        d = self.definition
        mapping = {f: spec.columns.get(f, f) for f in (*d.fields, d.label)} if isinstance(spec.columns, dict) \
            else {f: f for f in (*d.fields, d.label)}
        table = read_table(path, spec, bad)
        if table:
            present = set(table[0][2])
            for f, column in mapping.items():
                if column not in present:
                    raise ConfigError(f"{self.source}: {split}: column '{column}' (field '{f}') is not in {path} "
                                      f"(its columns: {', '.join(sorted(map(str, present)))})")
        out = []
        for lineno, index, row in table:
            value = row.get(mapping[d.label])
            word = d.labels.get(str(value).strip()) if value is not None else None
            if word is None:
                bad.reject(path, lineno, f"label '{str(value)[:40]}' is not one of {', '.join(d.labels)} "
                                         f"({self.source.name}: labels)", json.dumps(row, default=str)[:300])
                continue
            texts = {f: row.get(mapping[f]) for f in d.fields}
            empty = [f for f, t in texts.items() if not isinstance(t, str) or not t.strip()]
            if empty:
                bad.reject(path, lineno, f"field '{empty[0]}' (column '{mapping[empty[0]]}') is empty or not text",
                           json.dumps(row, default=str)[:300])
                continue
            out.append({"id": f"{self.name}:{split}:{index}", "source_id": str(index), "index": index,
                        **{f: t.strip() for f, t in texts.items()}, "label": word})
        return out

    # --- TaskSpec --------------------------------------------------------------------------------------
    def default_source(self, data_dir: Path) -> Path:
        return self.resolve(self.definition.train, data_dir)

    def load(self, path: Path, bad: BadRows | None = None) -> list[Example]:
        return [{k: v for k, v in r.items() if k != "index"} for r in self.read(Path(path), self.definition.train,
                                                                                  "train", bad)]

    def has_human(self, source: Path | None) -> bool:
        return self.definition.human is not None

    def human_examples(self, source: Path, language: str) -> list[Example] | None:
        if self.definition.human is None:
            return None
        # The data directory the training file was found in (its path ends with train.path).
        train, source = Path(self.definition.train.path), Path(source)
        data_dir = Path(str(source)[: -len(str(train))]) if str(source).endswith(str(train)) else source.parent
        path = self.resolve(self.definition.human, data_dir, language)
        human = self.read(path, self.definition.human, "train")  # row i translates training row i
        return [{**{k: v for k, v in r.items() if k != "index"}, "language": language} for r in human]

    def pair(self, example: Example) -> Pair:
        return Pair(self.prompt(example), f" {example['label']}")

    def prompt(self, example: Example) -> str:
        return self.definition.prompt.format(**{f: example[f] for f in self.definition.fields})

    def test_items(self, data_dir: Path, language: str, split: str = "test") -> list[Example]:
        spec = self.definition.test
        rows = self.read(self.resolve(spec, data_dir, language), spec, f"test-{language}")
        return [{**r, "id": f"{self.name}-test:{language}:{r['index']}"} for r in rows]

    def reference_items(self, data_dir: Path, language: str) -> list[Example]:
        d = self.definition
        if d.human is None:
            return []
        if language == "en":
            return self.read(self.resolve(d.train, data_dir), d.train, "train")
        return self.read(self.resolve(d.human, data_dir, language), d.human, f"human-{language}")

    def eval_rows(self, engine: Any, items: list[Example], config: Any, language: str) -> list[dict[str, Any]]:
        return label_scoring.score_rows(engine, items, [self.prompt(it) for it in items], self.words)

    def item_scores(self, language: str, rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        return label_scoring.item_scores(rows, self.words)

    def score_row(self, language: str, row: dict[str, Any]) -> float:
        return float(row["prediction"] == row["gold"])

    def corpus_scores(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        return label_scoring.corpus_scores(rows, self.words)


def load_task_file(path: Path) -> DeclaredTask:
    """A declared task from its YAML file; a bad definition stops with one line naming the file and field."""
    path = Path(path)
    stat = path.stat()
    return _load(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _load(path: Path, size: int, mtime_ns: int) -> DeclaredTask:  # size, mtime: a changed file is read again
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a task definition is a mapping (name:, answer:, fields:, ...)")
    try:
        d = TaskFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {err['msg'].removeprefix('Value error, ')}") from None
    if d.name != path.stem:
        raise ConfigError(f"{path}: name: '{d.name}' differs from the file's name '{path.stem}' (the run config "
                          "names a task by its file)")
    fingerprint = hashlib.sha256(json.dumps(d.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    return DeclaredTask(d.name, "label", {f: "sentences" for f in d.fields}, ("id", "source_id", "label"),
                        tuple((f,) for f in d.fields), definition=d, source=path, fingerprint=fingerprint,
                        words=tuple(d.labels.values()))


def task_dirs() -> list[Path]:
    """Where declared tasks are found: $STT_TASK_DIRS (os.pathsep-separated), then the project's configs/tasks."""
    extra = [Path(p) for p in os.environ.get("STT_TASK_DIRS", "").split(os.pathsep) if p.strip()]
    return [*extra, Path(__file__).resolve().parents[2] / "configs" / "tasks"]


def find_task_file(name: str) -> Path | None:
    for folder in task_dirs():
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    return None
