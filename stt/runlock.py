"""One run per output folder at a time.

Two runs pointed at the same folder would both write its shards. The entry points (`run_pipeline`, the
end-to-end Prefect flow, the translate stage run on its own) hold an exclusive lock (filelock: `flock`) on
`<folder>/.stt-lock` for as long as they run; a second run fails at once with a message naming the
holder, or waits up to `wait_s` seconds for it. The kernel drops the lock when its process dies (even
by SIGKILL), so a crashed run never leaves a stale lock behind. Prefect workers running the tasks of a
locked run do not take it again.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from stt.errors import ConfigError
from stt.files import exclusive

LOCK_FILE = ".stt-lock"


class RunInUse(ConfigError):
    """Another run holds the output folder."""


@contextmanager
def run_lock(folder: Path, wait_s: float | None = None) -> Iterator[Path]:
    wait_s = float(os.environ.get("STT_LOCK_WAIT_S", 0)) if wait_s is None else wait_s
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    lock = exclusive(path, timeout_s=wait_s)
    try:
        lock.acquire(poll_interval=0.2)
    except filelock.Timeout:
        holder = path.read_text(encoding="utf-8").strip() or "unknown"
        raise RunInUse(f"{folder} is in use by another run ({holder}): wait for it to finish or stop it (set "
                       "STT_LOCK_WAIT_S to wait); two runs must not write the same shards") from None
    try:
        # Who holds it, for the message above; written in the lock file itself (filelock leaves its content).
        path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                    "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}), encoding="utf-8")
        yield path
    finally:
        lock.release()
