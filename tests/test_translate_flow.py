"""End-to-end translate flow: real model, real GSM8K, real Prefect (test server)."""

import json

import datasets
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stt.config import GenerationParams, TranslateConfig
from stt.engine_settings import LlamaCppSettings
from stt.engines import loaded_engines
from stt.files import file_sha256
from stt.stages import translate as lib
from stt_app.flows.translate import translate

pytestmark = pytest.mark.model


def _calls() -> int:
    return sum(e.stats.calls for e in loaded_engines())


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return TranslateConfig(
        task="gsm8k", languages=("de", "th"), limit=2, shard_size=1,
        out_dir=tmp_path_factory.mktemp("translate") / "out",
        engine=LlamaCppSettings(batch_size=4), generation=GenerationParams(max_new_tokens_cap=40),
    )


@pytest.fixture(scope="module")
def first_run(prefect_server, config):
    return translate(config)


def test_flow_writes_shards_with_schema_and_manifest(first_run, config):
    out = config.out_dir
    assert first_run["out_dir"] == str(out)
    assert set(first_run["shards"]) == {"de-00000", "de-00001", "th-00000", "th-00001"}
    assert set(first_run["shards"].values()) == {"generated"}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model"]["model_id"] == "gemma3-270m"
    assert manifest["prompt_version"] == "translate-completion-v1"
    total = 0
    for entry in manifest["shards"].values():
        for kind, file_key, sha_key in (("rows", "file", "sha256"), ("rejects", "rejects_file", "rejects_sha256")):
            if entry[kind]:  # a shard with nothing to write has no file
                assert file_sha256(out / entry[file_key]) == entry[sha_key]
                assert pq.read_table(out / entry[file_key]).num_rows == entry[kind]
            else:
                assert entry[file_key] is None
        assert entry["rows"] + entry["rejects"] == entry["input_rows"] == 1
        assert entry["completion_tokens"] > 0
        total += entry["rows"] + entry["rejects"]
    assert total == 4  # every example is either accepted or kept aside with a reason: none lost
    df = pd.read_parquet(out)
    rejects = pd.read_parquet(out / "_rejects")
    assert len(df) + len(rejects) == 4
    expected = {"id", "task", "language", "question", "rationale", "answer", "src_question", "src_rationale",
                "model_id", "weights_sha256", "prompt_version", "validation_version", "generation_key",
                "generation", "prompt_tokens", "completion_tokens", "segments"}
    assert expected <= set(df.columns)
    assert set(rejects["reason"]) <= {"empty", "no_stop", "identical_to_source", "still_english", "repetition",
                                      "length_ratio", "lost_numbers"}
    assert all(len(r) > 0 for r in rejects["reasons"])
    ds = datasets.load_dataset("parquet", data_files=str(out / "*.parquet"), split="train",
                               cache_dir=str(config.out_dir.parent / "hf"))
    assert ds.num_rows == len(df)
    raw = pd.read_parquet(out / "_raw")
    assert set(raw["finish_reason"]) <= {"stop", "length", "copied"}
    assert (raw.loc[raw["translate"], "completion"].str.len() > 0).any()


def test_rerun_skips_complete_shards_without_engine_calls(first_run, config):
    calls = _calls()
    again = translate(config)
    assert set(again["shards"].values()) == {"complete"}
    assert _calls() == calls


def _some_file(out, shard):
    entry = json.loads((out / "_manifest.json").read_text())["shards"][shard]
    return out / (entry["file"] or entry["rejects_file"])


def test_deleted_or_truncated_shard_is_redone_from_cached_generations(first_run, config):
    out = config.out_dir
    before = pd.read_parquet(out).sort_values(["language", "id"]).reset_index(drop=True)
    _some_file(out, "de-00000").unlink()
    truncated = _some_file(out, "th-00001")
    truncated.write_bytes(truncated.read_bytes()[:100])
    calls = _calls()
    result = translate(config)
    assert result["shards"]["de-00000"] == "cached" and result["shards"]["th-00001"] == "cached"
    assert result["shards"]["de-00001"] == "complete"
    assert _calls() == calls  # validation reran on the cached generations; the model did not
    after = pd.read_parquet(out).sort_values(["language", "id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)  # same rows, no duplicates


def test_changed_validation_rule_revalidates_without_model(first_run, config, monkeypatch):
    monkeypatch.setattr(lib, "VALIDATION_VERSION", "validate-test-bump")
    calls = _calls()
    result = translate(config)
    assert set(result["shards"].values()) == {"cached"}
    assert _calls() == calls
    assert set(pd.read_parquet(config.out_dir)["validation_version"]) <= {"validate-test-bump"}


def test_missing_raw_generations_rerun_the_model(first_run, config):
    (config.out_dir / "_raw" / "de-00001.parquet").unlink()
    _some_file(config.out_dir, "de-00001").unlink()
    calls = _calls()
    result = translate(config)
    assert result["shards"]["de-00001"] == "generated"
    assert _calls() == calls + 1


def test_a_failing_shard_fails_the_run_but_not_the_others(first_run, config, monkeypatch):
    from stt.config import TimeoutConfig
    from stt.jobs import ShardsFailed

    monkeypatch.setattr(lib, "VALIDATION_VERSION", "validate-test-failure")  # make every shard revalidate
    real = lib.validate_shard

    def broken(job, cfg):
        if job.shard == "th-00000":
            raise OSError("disk full")
        return real(job, cfg)

    monkeypatch.setattr(lib, "validate_shard", broken)
    quick = config.model_copy(update={"timeouts": TimeoutConfig(retry_delays_s=(0.1,))})  # not in any key
    with pytest.raises(ShardsFailed, match=r"1 shard\(s\) failed .*th-00000: .*disk full"):
        translate(quick)
    monkeypatch.setattr(lib, "validate_shard", real)
    result = translate(config)  # the rerun only redoes the failed shard
    assert result["shards"]["th-00000"] == "cached"
    assert [s for s, v in result["shards"].items() if v == "complete"] == ["de-00000", "de-00001", "th-00001"]
