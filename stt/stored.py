"""The runner's side of a run on object storage (stt.store): a job's inputs down before it, its unit up after.

The stages read and write local folders only; stt.jobs calls these around them when a job names a store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stt.errors import DataError
from stt.stages.base import Job, StageDef
from stt.store import RunStore

log = logging.getLogger(__name__)


def store_of(job: Job) -> RunStore:
    assert job.store and job.root, job.id
    return RunStore(job.store, Path(job.root))


def _paths(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _paths(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _paths(v)


def folders(job: Job) -> set[Path]:
    """The mirror folders a job may read: its own (a resumable job's progress, a shared folder's plan) and
    every folder named in its inputs that lies in the run (with the folders above it: a shard's input file
    sits below the folder whose units hold it)."""
    root = Path(job.root or ".")
    out: set[Path] = set()
    for text in (job.folder, *_paths(job.inputs)):
        path = Path(text)
        if path != root and path.is_relative_to(root):
            out.update(p for p in (path, *path.parents) if p != root and p.is_relative_to(root))
    return out


def pull_inputs(job: Job) -> int:
    return store_of(job).pull(folders(job))


def is_done(job: Job, stage: StageDef) -> bool:
    rs = store_of(job)
    rs.pull(folders(job))
    inputs = stage.inputs(job)
    try:
        key = stage.key(inputs)
    except DataError:  # an upstream output is not published yet
        return False
    return rs.claimed(Path(job.folder), stage.unit_name(inputs), key) is not None


def run(job: Job, stage: StageDef, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Do a job of a stored run: its inputs (and its own folder's published units) down, then a unit claimed
    under its key is adopted, or the job runs here and its unit is published. A worker that loses the race
    to claim adopts the winner's files: every worker ends with the published bits."""
    rs = store_of(job)
    folder, inputs = Path(job.folder), stage.inputs(job)
    pulled = rs.pull(folders(job))
    key = stage.key(inputs)
    claim = rs.claimed(folder, stage.unit_name(inputs), key)
    if claim:
        rs.adopt(folder, claim)
        return {**stage.result(inputs, folder), "reused": True, "pulled": pulled}
    resumed = rs.pull_progress(folder, key)
    if resumed:
        log.info("%s: %d files of its progress under this key pulled from the store (a worker stopped before "
                 "it finished)", job.id, resumed)
    watcher = Progress(rs, stage, inputs, folder, key)
    watcher.start()
    try:
        info = make()
    finally:
        watcher.stop()
    _, won = rs.publish(folder, stage.unit(inputs, folder, info), key, _small(info))
    rs.drop_progress(folder, key)
    return info if won else {**stage.result(inputs, folder), "reused": True}


class Progress(threading.Thread):
    """Publishes a running job's new progress (stage.progress: fine-tuning's complete checkpoints) every
    STT_PROGRESS_S seconds, so a job killed here resumes on another machine from its last checkpoint."""

    def __init__(self, rs: RunStore, stage: StageDef, inputs: Any, folder: Path, key: str) -> None:
        super().__init__(name=f"progress {folder.name}", daemon=True)
        self.rs, self.stage, self.inputs, self.folder, self.key = rs, stage, inputs, folder, key
        self.every = float(os.environ.get("STT_PROGRESS_S", "30"))
        self.halt = threading.Event()
        self.published: set[str] = set()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            self.sweep()

    def stop(self) -> None:
        self.halt.set()
        self.join()

    def sweep(self) -> None:
        try:
            units = list(self.stage.progress(self.inputs, self.folder, self.key))
        except OSError:  # the Trainer rotated a checkpoint away while it was listed: the next sweep sees it
            return
        for unit in units:
            if unit.name in self.published:
                continue
            try:
                self.rs.publish(self.folder, unit, self.key, {"progress": unit.name}, adopt=False)
                self.published.add(unit.name)
            except FileNotFoundError:
                continue  # the Trainer rotated that checkpoint away while it was being uploaded
            except Exception as exc:  # progress is an extra: a failure here must not end the thread or the job
                log.warning("%s: progress %s not published (%s); the job goes on", self.folder, unit.name, exc)


def _small(info: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in info.items() if k not in ("table",)}, default=str))


def publish_plans(rs: RunStore, planned: dict[str, list[Job]]) -> None:
    """Publish what planning wrote in job folders (translation's input shards and plan), once per content."""
    from stt.stages import REGISTRY

    seen: set[tuple[str, str]] = set()
    for stage_name, jobs in planned.items():
        for job in jobs:
            if (stage_name, job.folder) in seen:
                continue
            seen.add((stage_name, job.folder))
            folder = Path(job.folder)
            unit = REGISTRY[stage_name].planned(folder)
            if unit is None:
                continue
            digest = hashlib.sha256()
            for name in unit.files:
                digest.update(name.encode() + (folder / name).read_bytes())
            digest.update(json.dumps(unit.merge, sort_keys=True, default=str).encode())
            key = digest.hexdigest()
            if rs.claimed(folder, unit.name, key) is None:
                rs.publish(folder, unit, key, {"planned": stage_name})
