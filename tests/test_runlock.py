"""Two runs on the same output folder: the second fails with the holder named (or waits); a killed
holder frees the folder at once. Real processes, real flock."""

import os
import signal
import subprocess
import sys
import time

import pytest

from stt import jobs
from stt.config import RunConfig, TranslateConfig
from stt.jobs import run_pipeline
from stt.runlock import LOCK_FILE, RunInUse, run_lock

HOLD = "import sys, time\nfrom stt.runlock import run_lock\nwith run_lock(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))\n"


def _holder(folder, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_the_same_folder_fails_naming_the_holder_and_writes_nothing(tmp_path):
    out = tmp_path / "translate"
    holder = _holder(out, 60)
    try:
        with pytest.raises(RunInUse, match=rf"in use by another run \(.*\"pid\": {holder.pid}"):
            jobs.translate(TranslateConfig(task="gsm8k", languages=("de",), limit=2, out_dir=out))
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # no shard, manifest or input written
        with pytest.raises(RunInUse):
            run_pipeline(RunConfig(run_dir=tmp_path / "translate", languages=("de",)))
        t0 = time.monotonic()
        with pytest.raises(RunInUse), run_lock(out, wait_s=0.5):
            pass
        assert 0.4 < time.monotonic() - t0 < 5
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a crash: the kernel drops the lock with the process
        holder.wait()
    t0 = time.monotonic()
    with run_lock(out, wait_s=5):
        assert time.monotonic() - t0 < 1.5  # no stale lock after SIGKILL


def test_a_run_told_to_wait_starts_when_the_first_finishes(tmp_path):
    holder = _holder(tmp_path, 1.5)
    t0 = time.monotonic()
    with run_lock(tmp_path, wait_s=30):
        waited = time.monotonic() - t0
    holder.wait()
    assert holder.returncode == 0 and 0.8 < waited < 20
