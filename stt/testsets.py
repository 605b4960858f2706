"""Evaluation sets in the target languages: MGSM, XQuAD (held-out articles), XNLI (read by the tasks' specs).

Each test example has a stable id `<dataset>:<language>:<index>`; row i of every language is the
same item (the sets are parallel), so `index` also joins a language to its English original.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stt.errors import ConfigError, DataError
from stt.loaders import XQUAD_EVAL_ARTICLES, load_squad
from stt.templates import NLI_LABELS

Example = dict[str, Any]

def _read_tsv(path: Path, columns: int) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"test file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < columns:
                raise DataError(f"{path} line {lineno}: expected {columns} tab-separated columns, got {len(parts)}")
            rows.append(parts)
    return rows


def load_mgsm(data_dir: Path, language: str) -> list[Example]:
    """MGSM: 250 problems per language, `question<TAB>answer_number`."""
    rows = _read_tsv(data_dir / "mgsm" / f"mgsm_{language}.tsv", 2)
    return [{"id": f"mgsm:{language}:{i}", "index": i, "question": q, "answer": a.strip()}
            for i, (q, a, *_) in enumerate(rows)]


def load_xquad_eval(data_dir: Path, language: str) -> list[Example]:
    """XQuAD, only the held-out articles (the other half is the default QA training data)."""
    path = data_dir / "xquad" / f"xquad.{language}.json"
    rows = load_squad(path, split=language, dataset="xquad", articles=XQUAD_EVAL_ARTICLES, all_answers=True)
    for r in rows:
        r["index"] = int(r["id"].rsplit(":", 1)[1])
    return rows


def load_xnli(data_dir: Path, language: str, split: str = "test") -> list[Example]:
    """XNLI dev (labels inline) or test (labels from xnli_test_labels.txt, row-aligned)."""
    folder = data_dir / "xnli"
    if split == "dev":
        rows = _read_tsv(folder / f"xtreme_dev-{language}.tsv", 3)
        labels = [r[2] for r in rows]
    elif split == "test":
        rows = _read_tsv(folder / f"xtreme_test-{language}.tsv", 2)
        labels = [x.strip() for x in (folder / "xnli_test_labels.txt").read_text(encoding="utf-8").splitlines()]
        if len(labels) != len(rows):
            raise DataError(f"{folder}: {len(labels)} test labels for {len(rows)} rows of {language}")
    else:
        raise ConfigError(f"XNLI split '{split}': use dev or test")
    out = []
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        if label not in NLI_LABELS:
            raise DataError(f"XNLI {split} {language} row {i}: unknown label '{label}'")
        out.append({"id": f"xnli-{split}:{language}:{i}", "index": i, "premise": row[0], "hypothesis": row[1],
                    "label": label})
    return out


def subset(rows: list[Example], limit: int | None, seed: int | None = None) -> list[Example]:
    """`limit` items: the first ones, or with `seed` a seeded random draw kept in file order.

    The test sets are parallel (item i is the same in every language), so either way every language
    and every column gets the same items. XNLI groups 3 hypotheses (one per label) under each premise,
    so a prefix stays balanced; a draw spreads over all premises (a study's fixed sample).
    """
    if not limit or limit >= len(rows):
        return rows
    if seed is None:
        return rows[:limit]
    import numpy as np

    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
    return [rows[i] for i in keep]
