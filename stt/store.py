"""A run folder on object storage (S3 and anything fsspec opens): the store holds the run, each worker a mirror.

`run_dir: s3://bucket/prefix` makes the store the run's one source of truth. Every worker works in a local
mirror of it (`STT_MIRROR`, default `.stt-mirror/<scheme>/<bucket>/<prefix>` under the working directory:
relative, so a job planned on one machine names the same folders on another), and the runner (stt.jobs)
moves a job's inputs down before it and its outputs up after it. The stages never see the store.

What a job publishes is a *unit*: its files (a stage folder's outputs and marker, or one translation shard's
files and manifest entry), uploaded under names no other attempt uses, then claimed by creating
`<folder>/_units/<unit>/<key>.json` with a conditional write (S3 `If-None-Match: *`, GCS generation 0, O_EXCL
on a local path). The claim is the completion marker:

- a reader never sees a half-written output: objects appear whole, and a unit without its claim is not done;
- two workers racing on one job both upload, one claim wins; the other deletes its upload and adopts the
  winner's files, so every worker ends with the same bits and the store holds one result;
- a store without conditional writes (an fsspec backend that ignores `mode="create"`) would let the later
  claim overwrite the earlier: both are complete, so readers still see one whole result, but "exactly once"
  no longer holds under a race (docs/scaling.md).

Credentials and the endpoint come from the standard places (the environment: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ENDPOINT_URL; ~/.aws/config), never from the run's config.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from stt.errors import SttError
from stt.files import atomic_path, file_sha256

log = logging.getLogger(__name__)

UNITS = "_units"  # <folder>/_units/<unit>/<key>.json: the claims (completion markers on the store)
OBJECTS = "_objects"  # <folder>/_objects/<attempt>/<name>: each attempt's uploads, under a name of its own
PROGRESS = "progress-"  # units of a running job's progress (checkpoints), not of its result
T = TypeVar("T")


class StoreError(SttError):
    """The run's object store cannot be reached or refuses us (after retries)."""


def is_url(value: object) -> bool:
    """A run folder given as a URL other than a plain local path (s3://, gs://, memory://...)."""
    text = str(value or "")
    return "://" in text and not text.startswith("file://")


def mirror_root(url: str) -> Path:
    """This worker's local mirror of the run at `url`."""
    scheme, rest = url.split("://", 1)
    return Path(os.environ.get("STT_MIRROR", ".stt-mirror")) / scheme / rest.strip("/")


@dataclass(frozen=True)
class Unit:
    """What one job publishes: files of its folder (relative names) and, for a folder several jobs share
    (translation's shards), the manifest entry or top-level fields to merge into the reader's manifest."""

    name: str
    files: tuple[str, ...]
    merge: dict[str, Any] | None = None


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, StoreError)):
        return False
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ConnectionError", "TimeoutError", "EndpointConnectionError", "ConnectTimeoutError",
                         "ReadTimeoutError", "ClientConnectorError", "ServerDisconnectedError",
                         "ClientOSError"}) or (isinstance(exc, OSError) and "pre-condition" not in str(exc))


def _explained(url: str, exc: BaseException) -> StoreError:
    names = {c.__name__ for c in type(exc).__mro__}
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return StoreError(f"no credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                          "AWS_PROFILE, or ~/.aws/credentials) in the worker's environment")
    if isinstance(exc, PermissionError) or "AccessDenied" in str(exc) or "InvalidAccessKeyId" in str(exc):
        return StoreError(f"{url}: access denied ({type(exc).__name__}): check the worker's credentials and "
                          "the bucket's policy")
    return StoreError(f"{url}: the store cannot be reached or failed ({type(exc).__name__}: {exc}); nothing "
                      "published is lost: rerun the same config to resume")


def store_call(url: str, what: str, fn: Callable[[], T], attempts: int = 4) -> T:
    """An operation on the store at `url`, retried on what may pass (a dropped connection, a timeout, a server
    error), then failing with one line that names the store."""
    import tenacity

    try:
        for attempt in tenacity.Retrying(retry=tenacity.retry_if_exception(_transient),
                                         stop=tenacity.stop_after_attempt(attempts),
                                         wait=tenacity.wait_exponential(min=0.5, max=8), reraise=True,
                                         before_sleep=lambda s: log.warning(
                                             "store: %s failed (%s), retrying", what, s.outcome.exception())):
            with attempt:
                return fn()
    except (FileNotFoundError, FileExistsError):
        raise
    except Exception as exc:  # botocore's and aiohttp's errors do not share a base class with ours
        raise _explained(url, exc) from exc
    raise AssertionError("unreachable")


@dataclass
class RunStore:
    """The run at `url`, mirrored on this worker at `root`."""

    url: str
    root: Path
    attempts: int = 4

    @cached_property
    def fs(self) -> Any:
        import fsspec

        fs, _ = fsspec.core.url_to_fs(self.url)
        return fs

    @cached_property
    def base(self) -> str:
        return self.fs._strip_protocol(self.url).rstrip("/")

    def call(self, what: str, fn: Callable[[], T]) -> T:
        return store_call(self.url, what, fn, self.attempts)

    # --- paths ----------------------------------------------------------------------------------------------

    def remote(self, local: Path | str) -> str:
        rel = Path(local).relative_to(self.root).as_posix()
        return self.base if rel == "." else f"{self.base}/{rel}"

    def local(self, remote: str) -> Path:
        rel = remote[len(self.base):].lstrip("/")
        return self.root / rel

    def check(self) -> None:
        """Fail early, in one line, when the store is unreachable or the credentials are missing."""
        self.call(f"list {self.url}", lambda: self.fs.ls(self.base.split("/")[0], detail=False))

    # --- publishing -----------------------------------------------------------------------------------------

    def claim_path(self, folder: Path, unit: str, key: str) -> str:
        return f"{self.remote(folder)}/{UNITS}/{unit}/{key}.json"

    def claimed(self, folder: Path, unit: str, key: str) -> dict[str, Any] | None:
        """The published claim of this unit under this key, or None."""
        path = self.claim_path(folder, unit, key)
        try:
            return json.loads(self.call(f"read {path}", lambda: self.fs.cat_file(path)))
        except FileNotFoundError:
            return None

    def publish(self, folder: Path, unit: Unit, key: str, record: dict[str, Any], adopt: bool = True
                ) -> tuple[dict[str, Any], bool]:
        """Upload the unit's files under a fresh attempt name, then claim it under `key`. Returns the claim
        that holds and whether it is ours: if another worker claimed first, its files are adopted here (unless
        `adopt` is False: progress a running job must not have overwritten)."""
        folder = Path(folder)
        attempt = f"{time.strftime('%Y%m%dT%H%M%S')}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        prefix = f"{self.remote(folder)}/{OBJECTS}/{attempt}"
        objects, shas = {}, {}
        for name in unit.files:
            source, target = folder / name, f"{prefix}/{name}"
            shas[name] = file_sha256(source)
            self.call(f"upload {target}", lambda s=source, t=target: self.fs.put_file(str(s), t))
            objects[name] = f"{OBJECTS}/{attempt}/{name}"
        claim = {"unit": unit.name, "key": key, "files": shas, "objects": objects, "merge": unit.merge,
                 "record": record, "published": time.time(), "worker": socket.gethostname(), "attempt": attempt}
        path = self.claim_path(folder, unit.name, key)
        body = json.dumps(claim, indent=2, ensure_ascii=False, default=str).encode()
        try:
            self.call(f"claim {path}", lambda: self._create(path, body))
        except FileExistsError:
            winner = self.claimed(folder, unit.name, key)
            if winner is None:
                raise StoreError(f"{path}: the store refused the claim as existing but cannot read it; "
                                 "rerun the same config") from None
            if winner.get("attempt") == attempt:  # ours: the create succeeded, its answer was lost, the retry hit it
                return winner, True
            # Another worker did this job too and claimed it first: its result is the result.
            log.info("store: %s/%s under %s was published first by another worker; adopting it",
                     folder, unit.name, key[:12])
            uploaded = [f"{prefix}/{name}" for name in objects]  # by name: a listing may be stale
            self.call(f"remove {prefix}", lambda: self.fs.rm(uploaded))
            if adopt:
                self.adopt(folder, winner)
            return winner, False
        return claim, True

    def _create(self, path: str, body: bytes) -> None:
        """Create `path` only if no object has that name (the store's conditional write)."""
        try:
            self.fs.pipe_file(path, body, mode="create")
        except FileExistsError:
            raise
        except OSError as exc:
            # s3fs reports S3's 412 PreconditionFailed as an OSError (EINVAL); tell it from a failure.
            if "pre-condition" in str(exc) or "PreconditionFailed" in str(exc):
                raise FileExistsError(path) from exc
            raise

    # --- reading --------------------------------------------------------------------------------------------

    def claims(self) -> list[dict[str, Any]]:
        """Every claim in the run, each with its folder (local): one listing of the run's prefix."""
        self.fs.invalidate_cache(self.base)  # another worker may have published since this process listed
        found = self.call(f"list {self.url}", lambda: self.fs.find(self.base))
        out = []
        for path in found:
            parts = path[len(self.base):].strip("/").split("/")
            if len(parts) >= 3 and parts[-3] == UNITS and parts[-1].endswith(".json"):
                out.append(path)
        claims = []
        for path in out:
            try:
                claim = json.loads(self.call(f"read {path}", lambda p=path: self.fs.cat_file(p)))
            except FileNotFoundError:
                continue
            claim["folder"] = str(self.local(path.rsplit(f"/{UNITS}/", 1)[0]))
            claims.append(claim)
        return claims

    def pull(self, folders: Iterable[Path]) -> int:
        """Bring these folders' published units into the mirror (per unit, the latest claim), skipping files
        already here with the right checksum, and progress (pull_progress). Returns the files downloaded."""
        wanted = {Path(f) for f in folders}
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for claim in self.claims():
            if Path(claim["folder"]) in wanted and not claim["unit"].startswith(PROGRESS):
                slot = (claim["folder"], claim["unit"])
                if slot not in latest or claim["published"] > latest[slot]["published"]:
                    latest[slot] = claim
        # Folder-level plans first (translation's "plan" unit sets the manifest the shard entries join).
        ordered = sorted(latest.values(), key=lambda c: (c["folder"], c["unit"] != "plan", c["unit"]))
        return sum(self.adopt(Path(c["folder"]), c) for c in ordered)

    def progress_claims(self, folder: Path, key: str) -> list[dict[str, Any]]:
        return [c for c in self.claims() if Path(c["folder"]) == Path(folder) and c["unit"].startswith(PROGRESS)
                and c["key"] == key]

    def pull_progress(self, folder: Path, key: str) -> int:
        """This key's published progress (checkpoints of a job killed elsewhere) into the mirror. A unit whose
        objects are gone (deleted once another worker published the result) is skipped, its partial files
        removed: a checkpoint is used whole or not at all."""
        pulled = 0
        for claim in self.progress_claims(folder, key):
            try:
                pulled += self.adopt(Path(folder), claim)
            except StoreError as exc:
                log.warning("store: progress %s of %s not pulled: %s", claim["unit"], folder, exc)
                for name in claim["files"]:
                    (Path(folder) / name).unlink(missing_ok=True)
        return pulled

    def drop_progress(self, folder: Path, key: str) -> None:
        """Delete this key's progress from the store once its result is published (best effort): each claim
        first, then its objects, so no reader finds a claim whose objects are gone."""
        for claim in self.progress_claims(folder, key):
            paths = [f"{self.remote(folder)}/{obj}" for obj in claim["objects"].values()]
            try:
                self.call(f"remove progress {claim['unit']}",
                          lambda c=claim: self.fs.rm(self.claim_path(Path(folder), c["unit"], key)))
                self.call(f"remove progress {claim['unit']}", lambda p=paths: self.fs.rm(p))
            except (StoreError, FileNotFoundError) as exc:
                log.warning("store: progress %s of %s not removed: %s", claim["unit"], folder, exc)

    def adopt(self, folder: Path, claim: dict[str, Any]) -> int:
        """Make the mirror's folder hold a claim's files (downloaded whole, verified, renamed into place) and
        merge its manifest entry. Returns the files downloaded."""
        from stt import shards

        downloaded = 0
        for name, sha in claim["files"].items():
            target = Path(folder) / name
            if target.is_file() and file_sha256(target) == sha:
                continue
            source = f"{self.remote(folder)}/{claim['objects'][name]}"
            with atomic_path(target) as tmp:
                try:
                    self.call(f"download {source}", lambda s=source, t=tmp: self.fs.get_file(s, str(t)))
                except FileNotFoundError:
                    raise StoreError(f"{source}: missing, though the claim {claim['unit']} under "
                                     f"{claim['key'][:12]} names it; delete the claim "
                                     f"{self.claim_path(Path(folder), claim['unit'], claim['key'])} to redo "
                                     "it") from None
                if file_sha256(tmp) != sha:
                    raise StoreError(f"{source}: checksum differs from its claim ({claim['unit']} under "
                                     f"{claim['key'][:12]}): the store's copy is damaged; delete the claim "
                                     f"{self.claim_path(Path(folder), claim['unit'], claim['key'])} to redo it")
            downloaded += 1
        merge = claim.get("merge")
        if merge and "shard" in merge:
            shards.update_manifest(Path(folder), merge["shard"], merge["entry"])
        elif merge and "top" in merge:
            shards.update_manifest(Path(folder), **merge["top"])
        return downloaded

    def put_plain(self, folder: Path, names: Iterable[str]) -> None:
        """Upload files at their own names (the report, a copy for people to browse): not claims."""
        for name in names:
            source = Path(folder) / name
            if source.is_file():
                target = f"{self.remote(folder)}/{name}"
                self.call(f"upload {target}", lambda s=source, t=target: self.fs.put_file(str(s), t))

