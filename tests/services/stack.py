"""Real services as processes: PostgreSQL, a Prefect server on it, process workers. Used by test_services.py.

Everything lives under one temporary folder and is stopped (and checked gone) at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    for found in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True):
        return found.parent
    return None


class Postgres:
    """A private PostgreSQL cluster on loopback (trust auth), as the postgres user when run as root."""

    def __init__(self):
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package 'postgresql'; .ci/run installs it)")
        # Its own folder in /tmp: the postgres user cannot enter pytest's root-only temp folders.
        self.folder = Path(tempfile.mkdtemp(prefix="stt-pg-"))
        self.data = self.folder / "pgdata"
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if self.as_root:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done

    def start(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.folder, "postgres")
        self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._start()
        self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "prefect")
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"

    def _start(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.folder / "pg.log", "-w", "start", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1")

    def restart(self, down_s: float = 0) -> None:
        """Stop (fast: open connections are cut, as in a database failover), stay down, start again."""
        self.stop()
        time.sleep(down_s)
        self._start()

    def query(self, sql: str) -> list[list[str]]:
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "prefect",
                              "-At", "-F", "\t", "-c", sql], check=True, capture_output=True, text=True, timeout=60)
        return [line.split("\t") for line in out.stdout.splitlines() if line]

    def stop(self) -> None:
        with suppress(RuntimeError, FileNotFoundError):
            self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


class Processes:
    """Background processes in their own process groups, stopped together."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def latest(self, name: str) -> subprocess.Popen:
        return [p for n, p in self.procs if n == name][-1]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the newest process of that name, its process group and every descendant (a worker's
        flow-run subprocesses too), and wait for it: a machine taken away, not a polite stop."""
        proc = self.latest(name)
        for pid in [*_descendants(proc.pid), proc.pid]:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=60)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop(self) -> list[str]:
        """SIGTERM each group, then SIGKILL what is left; returns the names that needed the kill."""
        killed = []
        for _, proc in reversed(self.procs):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                killed.append(name)
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        return killed

    def group_alive(self) -> list[str]:
        alive = []
        for name, proc in self.procs:
            try:
                os.killpg(proc.pid, 0)
                alive.append(name)
            except ProcessLookupError:
                pass
        return alive


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for child, parent in zip(map(int, out[::2]), map(int, out[1::2]), strict=True):
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120, path: str = "/health") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with suppress(OSError), urllib.request.urlopen(f"{url}{path}", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout}s")
