"""One run per output folder at a time.

Two runs pointed at the same folder would both write its shards. The entry points (`run_pipeline`, the
end-to-end Prefect flow, the translate stage run on its own) hold an exclusive `flock` on
`<folder>/.stt-lock` for as long as they run; a second run fails at once with a message naming the
holder, or waits up to `wait_s` seconds for it. The kernel drops the lock when its process dies (even
by SIGKILL), so a crashed run never leaves a stale lock behind. Prefect workers running the tasks of a
locked run do not take it again.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stt.errors import ConfigError

LOCK_FILE = ".stt-lock"


class RunInUse(ConfigError):
    """Another run holds the output folder."""


@contextmanager
def run_lock(folder: Path, wait_s: float | None = None) -> Iterator[Path]:
    wait_s = float(os.environ.get("STT_LOCK_WAIT_S", 0)) if wait_s is None else wait_s
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the lock's lifetime
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    raise RunInUse(f"{folder} is in use by another run ({holder}): wait for it to finish or stop "
                                   f"it (set STT_LOCK_WAIT_S to wait); two runs must not write the same shards") \
                        from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        handle.flush()
        yield path
    finally:
        handle.close()  # closing the descriptor releases the lock
