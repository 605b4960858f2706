"""QA and NLI through the library path (no Prefect), on the real model."""

import pandas as pd
import pytest

from stt import jobs
from stt.config import GenerationParams, TranslateConfig
from stt.engine_settings import LlamaCppSettings
from stt.stages.translate import summarize

from .conftest import FIXTURES

pytestmark = pytest.mark.model


def _check_every_example_accounted_for(out, n):
    rows = pd.read_parquet(out) if list(out.glob("*.parquet")) else pd.DataFrame()
    rejects = pd.read_parquet(out / "_rejects") if list((out / "_rejects").glob("*.parquet")) else pd.DataFrame()
    assert len(rows) + len(rejects) == n
    return rows, rejects


def test_squad_translation_records_answer_offsets(tmp_path):
    config = TranslateConfig(task="squad", languages=("de",), limit=1, out_dir=tmp_path / "qa",
                             engine=LlamaCppSettings(batch_size=4),
                             generation=GenerationParams(max_new_tokens_cap=48))
    out = jobs.translate(config)
    rows, rejects = _check_every_example_accounted_for(out, 1)
    for _, r in rows.iterrows():
        assert r["context"][r["answer_start"] :].startswith(r["answer_text"])
    if len(rejects):
        assert rejects.iloc[0]["reasons"].tolist()
    raw = pd.read_parquet(out / "_raw")
    assert (raw["field"] == "context").sum() > 1  # the paragraph went sentence by sentence
    assert summarize(out)[0]["examples"] == 1


def test_mnli_translation_keeps_labels(tmp_path):
    config = TranslateConfig(task="mnli", languages=("de",), input_path=FIXTURES / "mnli_train_sample.jsonl",
                             out_dir=tmp_path / "nli", engine=LlamaCppSettings(batch_size=4),
                             generation=GenerationParams(max_new_tokens_cap=40))
    out = jobs.translate(config)
    rows, _ = _check_every_example_accounted_for(out, 3)
    labels = {"mnli:train:0": "neutral", "mnli:train:1": "entailment", "mnli:train:2": "contradiction"}
    for _, r in rows.iterrows():
        assert r["label"] == labels[r["id"]]
