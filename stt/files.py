"""Files every stage writes: atomically (a reader sees a whole file or none), hashed, and locked.

One way to write a file whole: a temp name in the same folder, fsync, rename. A failure mid-write (a full
disk above all) removes the temp file and names the folder; the kill trials may end the process between
the write and the rename (`write:<path>`, stt/faults.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import pyarrow as pa
import pyarrow.parquet as pq

from stt import faults
from stt.errors import disk_full, is_disk_full


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path` to write to; on success it is fsynced and renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread: a flow's jobs run in threads of one process, and two may write one file (an adopted unit)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.crash_point(f"write:{path}")
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(path.parent, path.name) from exc
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def write_parquet_atomic(table: pa.Table, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Write `table` (with `metadata` added to its schema's) whole; return the file's sha256."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return file_sha256(path)


def exclusive(lock_file: Path, timeout_s: float = -1) -> filelock.BaseFileLock:
    """An exclusive lock between threads and processes (flock: the kernel drops it when its holder dies, even
    by SIGKILL). timeout_s -1: wait as long as it takes; past a timeout, acquiring raises filelock.Timeout."""
    Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
    # thread_local=False: a lock taken in one thread may be released in another (Prefect's task threads).
    return filelock.FileLock(str(lock_file), timeout=timeout_s, thread_local=False)
