"""Check the data folder against the sha256 checksums its SOURCE.md files publish."""

from __future__ import annotations

import re
from pathlib import Path

from stt.files import file_sha256

# A table row naming a file and, further on, its 64-hex-digit sha256.
_ROW = re.compile(r"^\|\s*([\w.\-]+\.\w+)\s*\|.*?\b([0-9a-f]{64})\b", re.MULTILINE)


def check_data(data_dir: Path) -> list[dict[str, str]]:
    """One row per published file: folder, file, status (ok | mismatch | missing)."""
    rows = []
    for source in sorted(Path(data_dir).glob("*/SOURCE.md")):
        for name, sha in _ROW.findall(source.read_text(encoding="utf-8")):
            path = source.parent / name
            status = "missing" if not path.is_file() else "ok" if file_sha256(path) == sha else "mismatch"
            rows.append({"folder": source.parent.name, "file": name, "status": status})
    return rows
