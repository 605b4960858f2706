"""Evaluation on the real model and real test sets: label scoring, QA, saved predictions, reuse."""

import pandas as pd
import pytest

from stt.config import EngineConfig, EvalConfig
from stt.engines import get_engine
from stt.evaluate import evaluate, score_predictions

from .conftest import DATA

pytestmark = pytest.mark.model


def test_loglikelihood_prefers_the_right_word_and_ignores_padding():
    engine = get_engine(EngineConfig(batch_size=4, reuse_prefix_cache=False))
    pairs = [("The capital of France is", " Paris"), ("The capital of France is", " banana"),
             ("Question: What is two plus two?\nAnswer: The answer is", " 4")]
    batched = engine.loglikelihood(pairs)
    assert batched[0].logprob > batched[1].logprob
    assert batched[0].tokens == 1 and batched[0].logprob < 0
    one_by_one = [engine.loglikelihood([p])[0] for p in pairs]  # no padding at all
    for a, b in zip(batched, one_by_one, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)


def test_nli_scores_label_words_and_saves_auditable_predictions(tmp_path):
    info = evaluate("mnli", "de", EngineConfig(), EvalConfig(limit=3, batch_size=3), DATA, tmp_path / "nli")
    df = pd.read_parquet(tmp_path / "nli" / "predictions.parquet")
    assert len(df) == 3 and set(df["prediction"]) <= {"entailment", "neutral", "contradiction"}
    assert list(df["gold"]) == ["contradiction", "entailment", "neutral"]
    assert info["scores"] == score_predictions("mnli", "de", df.to_dict("records"))
    again = evaluate("mnli", "de", EngineConfig(), EvalConfig(limit=3, batch_size=1), DATA, tmp_path / "nli")
    assert again["reused"]  # batch size does not change what is scored


def test_qa_generates_short_answers_on_held_out_xquad(tmp_path):
    info = evaluate("squad", "th", EngineConfig(), EvalConfig(limit=2, batch_size=2, max_new_tokens_qa=12), DATA,
                    tmp_path / "qa")
    df = pd.read_parquet(tmp_path / "qa" / "predictions.parquet")
    assert len(df) == 2 and (df["completion_tokens"] <= 12).all()
    assert not df["output"].str.contains("\n").any()
    assert info["scores"] == score_predictions("squad", "th", df.to_dict("records"))
    assert info["metric"] == "f1" and 0 <= info["scores"]["f1"] <= 100
