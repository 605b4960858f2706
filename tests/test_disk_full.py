"""A full disk: the run stops with the folder named, leaves no partial file a rerun would trust, and the
rerun on a disk with space completes with the same rows as a run that never hit the limit."""

import json
import shutil
import subprocess

import pandas as pd
import pytest

from stt import jobs, shards
from stt.config import GenerationParams, TranslateConfig
from stt.engine_settings import LlamaCppSettings
from stt.errors import DiskFull

pytestmark = pytest.mark.model


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _config(out):
    return TranslateConfig(task="gsm8k", languages=("de",), limit=4, shard_size=2, out_dir=out,
                           engine=LlamaCppSettings(batch_size=4),
                           generation=GenerationParams(max_new_tokens_cap=40))


def _rows(out):
    frames = [pd.read_parquet(out)] + ([pd.read_parquet(out / "_rejects")] if (out / "_rejects").exists() else [])
    return pd.concat(frames).sort_values("id").reset_index(drop=True)


@pytest.mark.full  # a fault trial of the full tier
def test_disk_full_is_reported_with_the_folder_and_the_rerun_completes(tmp_path, small_disk):
    reference = jobs.translate(_config(tmp_path / "reference"))
    needed = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file())
    filler = small_disk / "filler"
    out = small_disk / "run"
    # Leave room for about a third of what the run writes (tmpfs counts whole 4 KB pages).
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(0, free - needed // 3))
    with pytest.raises(DiskFull, match=rf"{out}.*no space left on the device while writing"):
        jobs.translate(_config(out))
    assert not list(out.rglob("*.tmp")), "a partial temp file was left behind"
    manifest = json.loads((out / "_manifest.json").read_text()) if (out / "_manifest.json").exists() else {"shards": {}}
    for entry in manifest["shards"].values():  # whatever the manifest trusts is intact
        for name, sha in ((entry["file"], entry["sha256"]), (entry["rejects_file"], entry["rejects_sha256"])):
            assert name is None or shards.file_ok(out / name, sha)
    assert len(manifest["shards"]) < 2  # it did stop part-way
    filler.unlink()  # space again: the same command finishes the run
    jobs.translate(_config(out))
    pd.testing.assert_frame_equal(_rows(out), _rows(reference))
