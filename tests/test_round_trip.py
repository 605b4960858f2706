"""Round-trip filtering on the real model: back-translations, chrF per row, set-aside rows restorable."""

import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sacrebleu.metrics import CHRF

from stt import jobs
from stt.config import BuildConfig, GenerationParams, RoundTripConfig, TranslateConfig
from stt.engine_settings import LlamaCppSettings
from stt.errors import ConfigError
from stt.stages import translate as lib
from stt.stages.build import build_set

pytestmark = pytest.mark.model


def _config(tmp_path, enabled=True, threshold=40.0):
    return TranslateConfig(task="mnli", languages=("de",), limit=6, input_path="xnli/xtreme_dev-en.tsv",
                           out_dir=tmp_path / "nli", shard_size=3,
                           engine=LlamaCppSettings(batch_size=8),
                           generation=GenerationParams(max_new_tokens_cap=80),
                           round_trip=RoundTripConfig(enabled=enabled, min_chrf=threshold))


def test_round_trip_sets_low_rows_aside_with_their_chrf_and_keeps_them_restorable(tmp_path):
    config = _config(tmp_path)
    out = jobs.translate(config)
    raw = pd.concat(pd.read_parquet(p) for p in sorted((out / "_raw").glob("de-*[0-9].parquet")))
    back = pd.concat(pd.read_parquet(p) for p in sorted((out / "_raw").glob("*.back.parquet")))
    assert len(back) and back["back"].str.len().gt(0).all()
    back_of = dict(zip(back["translation"], back["back"], strict=True))
    accepted = pd.read_parquet(out) if list(out.glob("*.parquet")) else pd.DataFrame(columns=["id"])
    rejects = pd.read_parquet(out / "_rejects") if (out / "_rejects").exists() else pd.DataFrame(columns=["id"])
    assert sorted([*accepted["id"], *rejects["id"]]) == sorted(raw["id"].unique())  # every example accounted for

    def expected_chrf(ex_id, outputs):
        # Independent: sacrebleu chrF of the joined back-translations of the example's segments vs its English.
        segs = raw[(raw["id"] == ex_id) & raw["translate"]].sort_values(["field", "segment"])
        backs = [back_of.get(o, "") for o in outputs]
        return CHRF().sentence_score(" ".join(backs), [" ".join(segs["source"])]).score

    seen_filtered = 0
    for _, r in rejects.iterrows():
        if r["reasons"].tolist() != ["round_trip"]:
            continue
        seen_filtered += 1
        details = [d for d in json.loads(r["details"]) if d["translate"]]
        assert r["round_trip_chrf"] < 40.0
        assert r["round_trip_chrf"] == pytest.approx(expected_chrf(r["id"], [d["output"] for d in details]), abs=0.01)
        restored = json.loads(r["row"])
        assert restored["id"] == r["id"] and restored["label"] and restored["premise"]
    for _, r in accepted.iterrows():
        assert r["round_trip_chrf"] >= 40.0
    # Greedy decoding on this sample: 5 rows pass at chrF >= 40 and 1 is set aside (both sides exercised).
    assert (len(accepted), seen_filtered) == (5, 1)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert sum(e["round_trip_set_aside"] for e in manifest["shards"].values()) == seen_filtered
    assert lib.summarize(out)[0]["round_trip_set_aside"] == seen_filtered

    # A new threshold re-validates from the saved generations: the model is not run again.
    mtimes = {p: os.stat(p).st_mtime_ns for p in (out / "_raw").glob("*.parquet")}
    calls = []
    original = lib._generate_back
    lib._generate_back = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        lower = jobs.translate(_config(tmp_path, threshold=0.0))
    finally:
        lib._generate_back = original
    assert not calls and {p: os.stat(p).st_mtime_ns for p in (out / "_raw").glob("*.parquet")} == mtimes
    everything = pd.read_parquet(lower)
    assert len(everything) == len(accepted) + seen_filtered  # threshold 0: nothing is set aside by the filter

    # Back at 40: the unfiltered set puts the set-aside rows back, the filtered one does not.
    jobs.translate(config)
    sets = build_set("mnli", "self-translate-train", "de", out, tmp_path / "sets", BuildConfig())
    unfiltered = build_set("mnli", "self-translate-train-unfiltered", "de", out, tmp_path / "sets", BuildConfig())
    assert sets["mixing"] == {"english": 6, "translated": len(accepted)}
    assert unfiltered["mixing"]["translated"] == len(accepted) + seen_filtered
    table = pq.read_table(tmp_path / "sets" / "self-translate-train-unfiltered-de" / "data.parquet").to_pandas()
    assert set(table[table["variant"] == "translated"]["source_id"]) == set(everything["id"])


def test_unfiltered_set_needs_the_filter_on(tmp_path):
    config = _config(tmp_path, enabled=False)
    config = config.model_copy(update={"limit": 3})
    out = jobs.translate(config)
    with pytest.raises(ConfigError, match="enable translate.round_trip"):
        build_set("mnli", "self-translate-train-unfiltered", "de", out, tmp_path / "sets", BuildConfig())
