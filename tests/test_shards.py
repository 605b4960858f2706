import hashlib

import pyarrow as pa

from stt import files, shards


def test_atomic_write_checksum_and_corruption_detection(tmp_path):
    table = pa.table({"id": ["a", "b"], "x": [1, 2]})
    path = tmp_path / "de-00000.parquet"
    sha = files.write_parquet_atomic(table, path, {"stt.k": "v"})
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert shards.read_metadata(path)["stt.k"] == "v"
    assert shards.file_ok(path, sha)
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
    path.write_bytes(path.read_bytes()[:-20])  # truncated
    assert not shards.file_ok(path, sha)
    assert shards.read_metadata(path) == {}
    assert not shards.file_ok(tmp_path / "missing.parquet", sha)


def test_manifest_updates_merge(tmp_path):
    shards.update_manifest(tmp_path, "de-00000", {"rows": 1}, task="gsm8k")
    shards.update_manifest(tmp_path, "th-00000", {"rows": 2})
    m = shards.read_manifest(tmp_path)
    assert m["task"] == "gsm8k" and set(m["shards"]) == {"de-00000", "th-00000"}
    shards.update_manifest(tmp_path, "de-00000", None)
    assert set(shards.read_manifest(tmp_path)["shards"]) == {"th-00000"}
