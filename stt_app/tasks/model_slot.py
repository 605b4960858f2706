"""One model-holding task at a time per machine (a GPU, or the CPU, holds one model)."""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

# Renewed while the task lives; a killed run's slot frees itself within this time.
SLOT_LEASE_SECONDS = 60  # Prefect accepts no shorter lease


def model_slot_name() -> str:
    return os.environ.get("STT_MODEL_SLOT", f"stt-model-{socket.gethostname()}")


def ensure_model_slot(limit: int = 1) -> str:
    """Create the machine's global concurrency limit unless it exists (then the user's value stands)."""
    _slot_limit(limit)
    return model_slot_name()


def _slot_limit(limit: int = 1) -> int:
    """The machine's limit, created with `limit` unless it exists."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = model_slot_name()
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            # A stage's tasks start together: on a fresh server several find no limit and create it at
            # once. Whoever loses that race finds it made, which is all it wanted.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return client.read_global_concurrency_limit_by_name(name).limit


# The tasks of one process queue here before they ask the server. The server answers a task that finds
# the slot taken "retry in N s", N up to 30 s (its average slot occupancy times the tasks waiting), so
# with ten jobs queued at the server the slot sat idle for 10-20 s after each job (the demo's evaluation
# stage lost about a quarter of its time that way). Queued here, first come first served (jobs run in the
# order the stage submitted them), the next job asks the moment the slot is given back. The server's
# limit still rules between processes and machines.
class _Queue:
    def __init__(self, limit: int):
        self.free = max(limit, 1)
        self.waiting: deque[object] = deque()
        self.changed = threading.Condition()

    @contextmanager
    def turn(self) -> Iterator[None]:
        ticket = object()
        with self.changed:
            self.waiting.append(ticket)
            try:
                while not (self.free and self.waiting[0] is ticket):
                    self.changed.wait(timeout=1.0)  # bounded, so that a task's timeout can still end the wait
            finally:
                self.waiting.remove(ticket)
                self.changed.notify_all()
            self.free -= 1
        try:
            yield
        finally:
            with self.changed:
                self.free += 1
                self.changed.notify_all()


_queues: dict[tuple[str, int], _Queue] = {}
_queues_lock = threading.Lock()


def _process_queue(name: str, limit: int) -> _Queue:
    with _queues_lock:
        return _queues.setdefault((name, limit), _Queue(limit))


@contextmanager
def model_slot() -> Iterator[None]:
    name = model_slot_name()
    with _process_queue(name, _slot_limit()).turn(), concurrency(name, occupy=1, lease_duration=SLOT_LEASE_SECONDS):
        yield
