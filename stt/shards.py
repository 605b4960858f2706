"""Parquet shards, atomic writes and the per-directory manifest.

Layout of an output directory (pandas.read_parquet(dir) reads only the translated rows, because
pyarrow skips paths starting with '_'):

    de-00000.parquet ...        translated rows, one file per (language, shard)
    _manifest.json              every shard: rows, checksums, input hash, generation key
    _config.json                the config of the latest run
    _input/shard-00000.parquet  English examples of each shard
    _raw/de-00000.parquet       raw generations, one row per segment (the model's cached work)
    _rejects/de-00000.parquet   rows that failed validation, with reasons
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stt.files import exclusive, file_sha256, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = "stt-shards-v1"


def shard_id(language: str, index: int) -> str:
    return f"{language}-{index:05d}"


def read_metadata(path: Path) -> dict[str, str]:
    """Schema metadata of a Parquet file; {} when it is missing or unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW")}


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    with exclusive(Path(out_dir) / ".manifest.lock"):  # shard tasks finish in parallel threads or processes
        yield


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The stage's manifest. One that is damaged (cut short, flipped bytes) is moved aside and treated as
    absent: every shard is then re-verified from its files and redone where needed, never trusted."""
    path = out_dir / MANIFEST
    if not path.exists():
        return {"format": MANIFEST_FORMAT, "shards": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), dict):
            raise ValueError("no shards table")
        return manifest
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        aside = path.with_name(f"{MANIFEST}.damaged-{time.strftime('%Y%m%d%H%M%S')}")
        os.replace(path, aside)
        log.warning("%s is damaged (%s): moved to %s; shards are re-verified and redone", path, exc, aside.name)
        return {"format": MANIFEST_FORMAT, "shards": {}}


def update_manifest(out_dir: Path, shard: str | None = None, entry: dict[str, Any] | None = None,
                    **top: Any) -> dict[str, Any]:
    """Read-modify-write under a file lock: set one shard's entry and/or top-level keys."""
    with _locked(out_dir):
        manifest = read_manifest(out_dir)
        manifest.update(top)
        if shard is not None:
            if entry is None:
                manifest["shards"].pop(shard, None)
            else:
                manifest["shards"][shard] = entry
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(out_dir / MANIFEST, manifest)
        return manifest


def file_ok(path: Path, sha256: str | None) -> bool:
    """The file exists, has the recorded checksum and is readable Parquet."""
    if not sha256 or not path.is_file() or file_sha256(path) != sha256:
        return False
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return False
    return True
