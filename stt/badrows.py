"""Bad input rows: set aside with file, line and reason (the default for training data), or stop at
the first one (`strict`, and the benchmark test sets, where a broken file is an install problem).

A loader calls `bad.reject(path, line, reason, text)` for each row it cannot use and goes on; the
caller writes `bad.rows` next to its outputs and calls `bad.check(total)`, which fails the run only
when more than `max_share` of the rows were bad (a file in the wrong format, not a few messy lines).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stt.errors import DataError

Mode = Literal["set_aside", "strict"]


@dataclass
class BadRows:
    mode: Mode = "strict"
    max_share: float = 0.01
    max_chars: int = 20_000  # longer than any model context this project runs; a sign of a broken row
    rows: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, path: Path | str, line: int | str, reason: str, text: str = "") -> None:
        """`line`: the line number, or where in a whole-file format (`question <id>` in SQuAD)."""
        if self.mode == "strict":
            raise DataError(f"{path} {_where(line)}: {reason}")
        self.rows.append({"file": str(path), "line": line, "reason": reason, "text": text[:300]})

    def check(self, total: int, where: Path | str, rejects_file: Path | None = None) -> None:
        """Fail when the share of bad rows is above the limit (total = good + bad rows read)."""
        if not self.rows:
            return
        share = len(self.rows) / max(total, 1)
        if share > self.max_share:
            first = self.rows[0]
            see = f"; all of them: {rejects_file}" if rejects_file else ""
            raise DataError(f"{where}: {len(self.rows)} of {total} rows are bad ({share:.1%}, above "
                            f"bad_rows.max_share={self.max_share:.1%}); first: {_where(first['line'])}: "
                            f"{first['reason']}{see}")

    def write(self, path: Path) -> Path | None:
        """JSON lines, one per bad row (file, line, reason, start of the text); None when there are none."""
        path.unlink(missing_ok=True)
        if not self.rows:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        # In file order (a line that is not UTF-8 is found before the JSON of the lines around it is read).
        ordered = sorted(self.rows, key=lambda r: (r["file"], r["line"] if isinstance(r["line"], int) else 0))
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered), encoding="utf-8")
        tmp.replace(path)
        return path


def _where(line: int | str) -> str:
    return f"line {line}" if isinstance(line, int) else str(line)


def strict() -> BadRows:
    return BadRows("strict")


def read_lines(path: Path, bad: BadRows) -> Iterator[tuple[int, int, str]]:
    """(line number, row index, text) of each non-blank line; a line that is not UTF-8 is set aside.

    The row index counts every non-blank line, bad ones included, so the ids made from it do not shift
    when a row elsewhere in the file is set aside. Lazy, so rows are checked in file order (strict mode
    stops at the first bad line).
    """
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    index = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            index += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad.reject(path, lineno, f"not UTF-8 (byte {exc.start})", raw[:80].decode("utf-8", "replace"))
                continue
            yield lineno, index - 1, line


def read_jsonl(path: Path, bad: BadRows) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(line number, row index, object) of each line that is a JSON object; others are set aside."""
    for lineno, index, line in read_lines(path, bad):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.reject(path, lineno, f"not valid JSON ({exc.msg})", line)
            continue
        if not isinstance(row, dict):
            bad.reject(path, lineno, f"not a JSON object ({type(row).__name__})", line)
            continue
        yield lineno, index, row


def text_fields(row: dict[str, Any], required: tuple[str, ...], bad: BadRows, path: Path, lineno: int,
                allowed_extra: bool = True) -> bool:
    """Required fields present, strings, not empty, not absurdly long; extra fields only where allowed."""
    missing = [k for k in required if k not in row]
    if missing:
        bad.reject(path, lineno, f"missing field {', '.join(repr(k) for k in missing)}", json.dumps(row)[:300])
        return False
    if not allowed_extra and set(row) - set(required):
        extra = sorted(set(row) - set(required))
        bad.reject(path, lineno, f"unexpected field {', '.join(repr(k) for k in extra)}", json.dumps(row)[:300])
        return False
    for k in required:
        if not isinstance(row[k], str):
            bad.reject(path, lineno, f"field '{k}' is {type(row[k]).__name__}, not text", json.dumps(row)[:300])
            return False
        if not row[k].strip():
            bad.reject(path, lineno, f"field '{k}' is empty", json.dumps(row)[:300])
            return False
        if len(row[k]) > bad.max_chars:
            bad.reject(path, lineno, f"field '{k}' is {len(row[k])} characters (limit {bad.max_chars})",
                       row[k][:300])
            return False
    return True
