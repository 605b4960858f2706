"""Stage outputs on disk: a content key says what made them, a marker file says they are complete.

Each later stage (build, fine-tune, evaluate, quality) writes its folder, then `_manifest.json` with
its key and the checksums of its files, last. A rerun with the same key and intact files reuses
the folder; anything else is redone. The same key is the Prefect cache key of the stage's task, so
caching works in Prefect and, without Prefect, on disk alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stt.config import stable_json
from stt.errors import ConfigError
from stt.files import file_sha256, write_text_atomic

log = logging.getLogger(__name__)

MARKER = "_manifest.json"


def stage_key(**parts: Any) -> str:
    return hashlib.sha256(stable_json(parts).encode()).hexdigest()


def read_done(folder: Path, key: str) -> dict[str, Any] | None:
    """The marker of a complete stage made under `key` whose files are intact, else None."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return None
    if info.get("key") != key:
        return None
    for name, sha in info.get("files", {}).items():
        path = Path(folder) / name
        if not path.is_file() or file_sha256(path) != sha:
            return None
    return info


def mark_done(folder: Path, key: str, files: list[str], **info: Any) -> dict[str, Any]:
    """Write the marker last: the stage counts as done only once every file is in place."""
    folder = Path(folder)
    record = {"key": key, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "files": {name: file_sha256(folder / name) for name in files}, **info}
    write_text_atomic(folder / MARKER, json.dumps(record, indent=2, ensure_ascii=False, default=str))
    return record


def clear(folder: Path, outputs: list[str] = (), keep: str | None = None) -> list[str]:  # type: ignore[assignment]
    """Forget a stale result before redoing it under a new key: the marker and every output it owned.

    `outputs` are the stage's files and folders (relative names); for a folder of per-key subfolders
    (fine-tuning's `checkpoints/`), everything but `keep` goes, so a resume only ever starts from a
    checkpoint made under the same key. Files the stage does not own are left alone (a user's --out
    folder may hold other things). Returns what was removed.
    """
    import shutil

    folder = Path(folder)
    removed = []
    (folder / MARKER).unlink(missing_ok=True)
    for name in outputs:
        path = folder / name
        if path.is_dir():
            children = [c for c in path.iterdir() if c.name != keep] if keep else [path]
            for child in children:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
                removed.append(str(child.relative_to(folder)))
        elif path.exists():
            path.unlink()
            removed.append(name)
    return removed


def made_once(folder: Path, key: str, outputs: list[str], stage: str,
              make: Callable[[], tuple[list[str], dict[str, Any]]], keep: str | None = None) -> dict[str, Any]:
    """A folder's outputs made under `key`, once: a folder done under it is reused (`reused`: True);
    otherwise the stale outputs are cleared, `make` writes the new ones and returns their names and what the
    marker records beside them, and the marker is written last. `keep`: the subfolder of an output folder that
    survives the clearing (fine-tuning's checkpoints of this key, to resume from). How the runner does a
    stage's job (stt.stages.base.StageDef.run), and how a stage's work does one inside a job (translate-test's
    answers)."""
    done = read_done(folder, key)
    if done:
        return {**done, "folder": str(folder), "reused": True}
    removed = clear(folder, outputs, keep)
    if removed:
        log.info("%s: removed stale outputs of another key: %s", folder, ", ".join(removed))
    files, record = make()
    info = mark_done(folder, key, files, stage=stage, **record)
    return {**info, "folder": str(folder), "reused": False}


def inside(root: Path, path: Path) -> Path:
    """`path`, refused if it resolves outside `root` (a `..` or a symlink out of the run folder):
    the project only ever writes inside the run folder it was given."""
    base, target = Path(root).resolve(), Path(path).resolve()
    if target != base and not target.is_relative_to(base):
        raise ConfigError(f"{path} resolves to {target}, outside the run folder {base} (a symlink or '..'): "
                          "refusing to write there")
    return Path(path)
