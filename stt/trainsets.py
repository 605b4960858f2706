"""Training sets from the translate stage's output.

- `english`: the English examples that were translated (the zero-shot-transfer baseline);
- `self-translate-train`: English + the accepted self-translations into one target language;
- `code-switch`: additionally, for each translated example, two mixed copies (one field group in the
  target language, the rest in English, and the reverse);
- `self-translate-train-unfiltered`: with round-trip filtering on, the same without the filter (the rows
  it set aside added back);
- `human-translate-train` (a control, the upper bound): English + the *human* translations of the
  same items whose self-translation was accepted, where the training data has them (XNLI dev, XQuAD);
- `english-equal-data` (a control, one per language): English only, with as many distinct rows as that
  language's self-translate-train set: the translated English items plus as many further English items,
  in file order, as there are accepted translations (items no other arm uses). Separates "more distinct
  training rows" from "rows in the target language";
- `human-translate-train-all` (the positive control that does not depend on the model's translations):
  English + the human translations of *every* translated English item, 1:1, whatever the filter accepted;
- `human-only` (its target-language-only twin): the human translations of every translated item, no English.

Each set is a folder with `data.parquet` (one row per training pair: prompt, target, provenance)
and `_manifest.json` (how the set was mixed, from what, with checksums).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stt import markers, shards
from stt.config import SetKind, TranslateConfig
from stt.errors import ConfigError, DataError
from stt.specs import TaskSpec, get_task

SET_SCHEMA = pa.schema([
    ("id", pa.string()), ("source_id", pa.string()), ("language", pa.string()), ("variant", pa.string()),
    ("prompt", pa.string()), ("target", pa.string()), ("fields", pa.string()),
])


def translate_fingerprint(translate_dir: Path) -> str:
    """A content hash of a finished translate stage: every planned shard's files and checksums."""
    manifest = shards.read_manifest(Path(translate_dir))
    planned = manifest.get("plan")
    if not planned:
        raise DataError(f"{translate_dir}: no translate manifest (run the translate stage first)")
    missing = [s for s in planned if s not in manifest["shards"]]
    if missing:
        raise DataError(f"{translate_dir}: translate stage incomplete, shards missing: {', '.join(missing)}")
    parts = {s: (manifest["shards"][s]["sha256"], manifest["shards"][s]["rejects_sha256"],
                 manifest["shards"][s]["input_sha256"]) for s in sorted(planned)}
    return markers.stage_key(shards=parts)


def english_examples(translate_dir: Path) -> list[dict[str, Any]]:
    """The English examples the translate stage read, in their original order."""
    manifest = shards.read_manifest(Path(translate_dir))
    inputs = sorted({manifest["shards"][s]["input_file"] for s in manifest["plan"]})
    rows: list[dict[str, Any]] = []
    for name in inputs:
        rows += pq.read_table(Path(translate_dir) / name).to_pylist()
    return rows


def translated_examples(translate_dir: Path, language: str, unfiltered: bool = False) -> list[dict[str, Any]]:
    """The accepted translations into `language`; `unfiltered` adds back the rows that only the
    round-trip filter set aside (kept whole in the rejects), in the shards' id order."""
    manifest = shards.read_manifest(Path(translate_dir))
    entries = [e for s, e in sorted(manifest["shards"].items()) if s in manifest["plan"] and e["language"] == language]
    rows: list[dict[str, Any]] = []
    for e in entries:
        part = pq.read_table(Path(translate_dir) / e["file"]).to_pylist() if e["file"] else []
        if unfiltered and e.get("rejects_file"):
            rejects = pq.read_table(Path(translate_dir) / e["rejects_file"]).to_pylist()
            part += [json.loads(r["row"]) for r in rejects if r.get("row") and r["reasons"] == ["round_trip"]]
        rows += sorted(part, key=lambda r: r["id"]) if unfiltered else part
    return rows


def round_trip_enabled(translate_dir: Path) -> bool:
    manifest = shards.read_manifest(Path(translate_dir))
    return bool(manifest.get("config", {}).get("round_trip", {}).get("enabled"))


def training_source(config: TranslateConfig) -> Path | None:
    """The English training file the translate stage reads (None when the task has no default)."""
    try:
        return config.resolved_input() or get_task(config.task).default_source(config.resolved_data_dir())
    except ConfigError:
        return None


def has_human(task: str, source: Path | None) -> bool:
    """Whether the training file's items have human translations (XNLI dev, XQuAD, a declared `human:` file)."""
    return get_task(task).has_human(source)


def human_examples(task: str, source: Path, language: str) -> list[dict[str, Any]]:
    """Human translations of the training file's items into `language`, with the training ids."""
    rows = get_task(task).human_examples(Path(source), language)
    if rows is None:
        raise DataError(f"human-translate-train needs human translations of the training items: they exist for "
                        f"NLI trained on XNLI dev (inputs: {{mnli: xnli/xtreme_dev-en.tsv}}), QA on XQuAD and "
                        f"declared tasks with a `human:` file, not for {task} from {Path(source).name}")
    return rows


def set_name(kind: SetKind, language: str | None) -> str:
    return f"{kind}-{language}" if RECIPES[kind].per_language else kind


def _row(spec: TaskSpec, ex: dict[str, Any], language: str, variant: str) -> dict[str, Any]:
    fields = {k: ex[k] for k in (*spec.kept, *spec.translated, "answer_start") if k in ex}
    pair = spec.pair(fields)
    return {"id": ex["id"], "source_id": ex["id"], "language": language, "variant": variant,
            "prompt": pair.prompt, "target": pair.target, "fields": json.dumps(fields, ensure_ascii=False)}


def _switched(spec: TaskSpec, english: dict[str, Any], translated: dict[str, Any], target_group: int) -> dict:
    """One field group from the translation, the others from the English original."""
    mixed = dict(english)
    for field in spec.switch_groups[target_group]:
        if field in translated:
            mixed[field] = translated[field]
    return mixed


def build_rows(spec: TaskSpec, kind: SetKind, language: str | None, english: list[dict[str, Any]],
               translated: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    recipe = RECIPES[kind]
    rows = [_row(spec, ex, "en", "english") for ex in english] if recipe.english else []
    if recipe.target:
        assert language is not None
        rows += [_row(spec, ex, language, recipe.variant) for ex in translated]
    if recipe.code_switch:
        by_id = {ex["id"]: ex for ex in english}
        for tr in translated:
            for g in range(len(spec.switch_groups)):
                mixed = _switched(spec, by_id[tr["id"]], tr, g)
                rows.append(_row(spec, mixed, f"{language}+en", f"code-switch-{g}"))
    random.Random(seed).shuffle(rows)  # one language per batch would bias early steps
    return rows


def _human_for_accepted(task: str, source: Path | None, language: str, translate_dir: Path) -> list[dict[str, Any]]:
    if source is None:
        raise DataError("human-translate-train needs the training file the translate stage read (inputs:)")
    accepted = {r["id"] for r in translated_examples(translate_dir, language)}
    return [r for r in human_examples(task, source, language) if r["id"] in accepted]


def _human_for_all(task: str, source: Path | None, language: str, translate_dir: Path) -> list[dict[str, Any]]:
    if source is None:
        raise DataError("human-translate-train-all needs the training file the translate stage read (inputs:)")
    read = {r["id"] for r in english_examples(translate_dir)}
    rows = [r for r in human_examples(task, source, language) if r["id"] in read]
    if len(rows) < len(read):
        raise DataError(f"{len(read) - len(rows)} of the {len(read)} translated items have no human translation "
                        f"into '{language}' in {Path(source).name}: the all-items control needs every one")
    return rows


def unused_english(task: str, source: Path | None, language: str, translate_dir: Path) -> list[dict[str, Any]]:
    """The equal-data control's extra rows: the first k English items of the training file that the translate
    stage did not read, k = the accepted translations into `language`."""
    if source is None:
        raise DataError("english-equal-data needs the training file the translate stage read (inputs:)")
    k = len(translated_examples(translate_dir, language))
    used = {r["id"] for r in english_examples(translate_dir)}
    pool = [r for r in get_task(task).load(Path(source)) if r["id"] not in used]
    if len(pool) < k:
        raise DataError(f"english-equal-data for '{language}': {k} more English items needed, {Path(source).name} "
                        f"has {len(pool)} the other arms do not use; lower `limit` or drop the set")
    return pool[:k]


def _accepted(translate_dir: Path, language: str, side: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return translated_examples(translate_dir, language)


def _unfiltered(translate_dir: Path, language: str, side: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if not round_trip_enabled(translate_dir):
        raise ConfigError("the self-translate-train-unfiltered set is the 'without the filter' control of "
                          "round-trip filtering: enable translate.round_trip (it would equal self-translate-train)")
    return translated_examples(translate_dir, language, unfiltered=True)


def _the_side(translate_dir: Path, language: str, side: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return side or []


SideRows = Callable[[str, Path | None, str, Path], list[dict[str, Any]]]
TargetRows = Callable[[Path, str, list[dict[str, Any]] | None], list[dict[str, Any]]]


@dataclass(frozen=True)
class Recipe:
    """What a kind of training set is made of, besides the translated English items."""

    # The target-language rows (from the translate folder, the language and the side rows). None: English only.
    target: TargetRows | None = None
    variant: str = "translated"  # the target rows' `variant` column
    # Rows read from the training file itself, part of the set's key under `side_key`: the human side, or the
    # English items no other arm uses (the equal-data control, `side_is_english`).
    side: SideRows | None = None
    side_key: str = ""
    side_is_english: bool = False
    code_switch: bool = False  # each translated example also as mixed copies (one field group switched)
    english: bool = True  # the translated English items are in the set (human-only: none)

    @property
    def per_language(self) -> bool:
        return self.target is not None or self.side is not None


RECIPES: dict[str, Recipe] = {
    "english": Recipe(),
    "self-translate-train": Recipe(target=_accepted),
    "self-translate-train-unfiltered": Recipe(target=_unfiltered),
    "code-switch": Recipe(target=_accepted, code_switch=True),
    "human-translate-train": Recipe(target=_the_side, variant="human", side=_human_for_accepted, side_key="rows"),
    "english-equal-data": Recipe(side=unused_english, side_key="extra_english", side_is_english=True),
    "human-translate-train-all": Recipe(target=_the_side, variant="human", side=_human_for_all, side_key="rows"),
    "human-only": Recipe(target=_the_side, variant="human", side=_human_for_all, side_key="rows", english=False),
}



def side_rows(task: str, kind: SetKind, language: str | None, translate_dir: Path, source: Path | None
               ) -> list[dict[str, Any]] | None:
    """The rows a set takes from the training file itself: the human side (human-translate-train) or the
    unused English items (english-equal-data); None for the other kinds."""
    side = RECIPES[kind].side
    if side is None:
        return None
    assert language is not None
    return side(task, source, language, translate_dir)
