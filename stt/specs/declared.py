"""A task declared in a YAML file: the user's own dataset, no code. The answer is one of three kinds:
`label` (one of a fixed set, scored by each label word's log-likelihood), `span` (a short answer found in a
context field, generated and scored by SQuAD F1 / exact match) or `number` (a final number, generated and read
as MGSM reads it).

    # configs/tasks/pawsx.yaml
    name: pawsx
    answer: label                    # one label of a fixed set, scored by each label word's log-likelihood
    fields: [sentence1, sentence2]   # translated (split into sentences), in the prompt's order
    labels: {"0": "no", "1": "yes"}  # a label as written in the files -> the word the model answers
    prompt: "Sentence 1: {sentence1}\\nSentence 2: {sentence2}\\nSame meaning:"
    train: {path: pawsx/xtreme_dev-en.tsv, header: false, columns: [sentence1, sentence2, label]}
    test: {path: "pawsx/hf_test-{language}.tsv"}
    human: {path: "pawsx/xtreme_dev-{language}.tsv", header: false, columns: [sentence1, sentence2, label]}

For `span`: `context: <field>` names the field the answer (`label:`, default `answer`) is a span of; the answer
is translated too and must still be found in the translated context. For `number`: the answer field holds the
number (kept, not translated); every number of the translated fields must survive translation; `rationale:`
optionally names a worked-solution field, trained on before "The answer is N.". `fields` is a list (each split
into sentences) or a mapping {field: whole | lines | sentences}.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from stt.badrows import BadRows, read_jsonl, read_lines, strict
from stt.errors import ConfigError, DataError
from stt.loaders import Example
from stt.segments import SplitMode
from stt.specs.answers import KINDS, NUMBER, Answer
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
    answer: Literal["label", "span", "number"]  # a kind of stt.specs.answers.KINDS
    fields: dict[str, SplitMode]  # the prompt's fields, translated; a list means each is split into sentences
    label: str = "label"  # the field holding the answer: the label, the answer span or the final number
    labels: dict[str, str] = {}  # answer: label -- a label in the files -> the word the model answers
    context: str | None = None  # answer: span -- the field the answer is a span of
    rationale: str | None = None  # answer: number -- an optional worked solution (translated, trained on)
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

    @field_validator("fields", mode="before")
    @classmethod
    def _fields_as_mapping(cls, value: Any) -> Any:
        return {f: "sentences" for f in value} if isinstance(value, list) else value

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
            raise ValueError(f"label: '{self.label}' is also in fields (the answer is its own field)")
        problem = KINDS[self.answer].check_definition(self)
        if problem:
            raise ValueError(problem)
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
            needed = {*self.fields, self.label, *([self.rationale] if self.rationale and where != "test" else [])}
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
    names: list[str] | None = list(spec.columns) if isinstance(spec.columns, list) else None
    rows: list[tuple[int, int, dict[str, Any]]] = []
    if fmt == "tsv":  # one record per line, no quoting (the XTREME releases)
        # Row ids from read_lines' count of lines, so a line set aside (not UTF-8) does not shift the others.
        records = ((lineno, i - spec.header, line.rstrip("\r\n").split("\t"), line)
                   for lineno, i, line in read_lines(path, bad))
    else:  # CSV: a quoted field may hold line breaks, so the csv module reads the whole file
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        reader = csv.reader(io.StringIO(text, newline=""))
        records = ((reader.line_num, i - spec.header, cells, ",".join(cells))
                   for i, cells in enumerate(c for c in reader if any(x.strip() for x in c)))
    for lineno, index, cells, line in records:
        if names is None:  # the header line
            names = [c.strip() for c in cells]
            continue
        if len(cells) != len(names):
            bad.reject(path, lineno, f"expected {len(names)} {fmt} fields, got {len(cells)}", line)
        else:
            rows.append((lineno, index, dict(zip(names, cells, strict=True))))  # a bad record keeps its index
    return rows


@dataclass(frozen=True)
class DeclaredTask(TaskSpec):
    """A task from a YAML file (see the module's docstring)."""

    definition: TaskFile | None = None
    source: Path = Path()  # the YAML file
    fingerprint: str = ""
    answer: Answer = NUMBER  # the answer kind (stt.specs.answers), with a label task's words

    @property
    def words(self) -> tuple[str, ...]:  # answer: label -- the label words, in the file's order
        return getattr(self.answer, "words", ())

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
        return list(self.definition.fields)[-1] if self.definition.human else ""

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
        wanted = [*d.fields, *([d.rationale] if d.rationale and not split.startswith("test") else [])]
        mapping = {f: (spec.columns.get(f, f) if isinstance(spec.columns, dict) else f) for f in (*wanted, d.label)}
        table = read_table(path, spec, bad)
        if table:
            present = set(table[0][2])
            for f, column in mapping.items():
                if column not in present:
                    raise ConfigError(f"{self.source}: {split}: column '{column}' (field '{f}') is not in {path} "
                                      f"(its columns: {', '.join(sorted(map(str, present)))})")
        out = []
        for lineno, index, row in table:
            def reject(reason: str, row: dict[str, Any] = row, lineno: int = lineno) -> None:
                bad.reject(path, lineno, reason, json.dumps(row, default=str)[:300])

            texts = {f: row.get(mapping[f]) for f in wanted}
            empty = [f for f, t in texts.items() if not isinstance(t, str) or not t.strip()]
            if empty:
                reject(f"field '{empty[0]}' (column '{mapping[empty[0]]}') is empty or not text")
                continue
            answer = self._answer(row.get(mapping[d.label]), {f: t.strip() for f, t in texts.items()}, reject)
            if answer is None:
                continue
            out.append({"id": f"{self.name}:{split}:{index}", "source_id": str(index), "index": index,
                        **{f: t.strip() for f, t in texts.items()}, d.label: answer})
        return out

    def _answer(self, value: Any, texts: dict[str, str], reject: Any) -> str | None:
        """The row's answer as the task keeps it, or None (the row set aside, with the reason)."""
        d, text = self.definition, "" if value is None else str(value).strip()
        answer, why = self.answer.read(text, texts, d.context, self.source.name)
        if answer is None:
            reject({"empty": f"field '{d.label}' (the answer) is empty"}.get(why, why))
        return answer

    # --- TaskSpec --------------------------------------------------------------------------------------
    def default_source(self, data_dir: Path) -> Path:
        return self.resolve(self.definition.train, data_dir)

    def load(self, path: Path, bad: BadRows | None = None) -> list[Example]:
        return [{k: v for k, v in r.items() if k != "index"} for r in self.read(Path(path), self.definition.train,
                                                                                  "train", bad)]

    def check(self, example: Example, translated: Example, language: str) -> list[str]:
        d = self.definition
        return self.answer.check(example, translated, list(self.translated), d.label, d.context, language)

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

    def prompt(self, example: Example) -> str:
        return self.definition.prompt.format(**{f: example[f] for f in self.definition.fields})

    def pair(self, example: Example) -> Pair:
        d = self.definition
        return Pair(self.prompt(example), self.answer.target(example[d.label], example[d.rationale] if d.rationale
                                                             else None))

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

    def gold(self, example: Example) -> str:
        return self.answer.gold(example[self.definition.label])


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
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}") \
            from None
    if d.name != path.stem:
        raise ConfigError(f"{path}: name: '{d.name}' differs from the file's name '{path.stem}' (the run config "
                          "names a task by its file)")
    fingerprint = hashlib.sha256(json.dumps(d.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    answer = KINDS[d.answer].declared(d)
    translated = dict(d.fields)
    kept: tuple[str, ...] = ("id", "source_id")
    groups = [(f,) for f in d.fields]
    if answer.uses_context:  # the answer is translated with its context, and switched with it
        translated[d.label] = "whole"
        groups = [(d.context, d.label), *((f,) for f in d.fields if f != d.context)]
    else:
        kept = (*kept, d.label)
    if d.rationale:
        translated[d.rationale] = "lines"
        groups.append((d.rationale,))
    return DeclaredTask(d.name, translated, kept, tuple(groups), definition=d, source=path,
                        fingerprint=fingerprint, answer=answer)


def task_dirs() -> list[Path]:
    """Where declared tasks are found: $STT_TASK_DIRS (os.pathsep-separated), then the project's configs/tasks."""
    extra = [Path(p) for p in os.environ.get("STT_TASK_DIRS", "").split(os.pathsep) if p.strip()]
    return [*extra, Path(__file__).resolve().parents[2] / "configs" / "tasks"]


def find_task_file(name: str) -> Path | None:
    for folder in task_dirs():
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    return None
