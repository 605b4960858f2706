"""Evaluation on the real model and real test sets: label scoring, QA, saved predictions, reuse."""

import json

import pandas as pd
import pytest

from stt.config import EvalConfig
from stt.engine_settings import TransformersSettings as Engine  # the default kind
from stt.engines import get_engine
from stt.stages.evaluate import evaluate

from .conftest import DATA

pytestmark = pytest.mark.model


def _reference_logprob(engine, context, continuation):
    """Independent computation: one unpadded forward pass over the whole text, summed log-softmax over the
    tokens that the tokenisation of the context alone does not have."""
    import torch

    tok, model = engine.tokenizer, engine.model
    whole = tok(context + continuation, return_tensors="pt")["input_ids"]
    n_ctx = len(tok(context)["input_ids"])
    with torch.inference_mode():
        logits = model(input_ids=whole).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[t - 1, whole[0, t]] for t in range(n_ctx, whole.shape[1])))


def test_loglikelihood_matches_a_plain_forward_pass_and_ignores_padding():
    # In this process: the reference forward pass uses the engine's own model and tokenizer.
    engine = get_engine(Engine(batch_size=4, reuse_prefix_cache=False, process="inline"))
    pairs = [("The capital of France is", " Paris"), ("The capital of France is", " banana"),
             ("Premise: A man sleeps.\nHypothesis: Nobody sleeps.\nRelation:", " contradiction"),
             ("Question: What is two plus two?\nAnswer: The answer is", " 4")]
    batched = engine.loglikelihood(pairs)
    assert batched[0].logprob > batched[1].logprob
    for (context, continuation), score in zip(pairs, batched, strict=True):
        assert score.logprob == pytest.approx(_reference_logprob(engine, context, continuation), abs=2e-3)


def test_nli_predictions_are_the_argmax_of_the_saved_label_scores(tmp_path):
    info = evaluate("mnli", "de", Engine(), EvalConfig(limit=6, batch_size=3, bootstrap_resamples=200), DATA,
                    tmp_path / "nli")
    df = pd.read_parquet(tmp_path / "nli" / "predictions.parquet")
    # Gold labels straight from the data files (test rows 0-5 of de; labels file is row-aligned).
    labels = (DATA / "xnli" / "xnli_test_labels.txt").read_text().splitlines()[:6]
    assert list(df["gold"]) == labels
    for _, row in df.iterrows():
        lp = json.loads(row["output"])
        assert row["prediction"] == max(lp, key=lp.get)
    assert info["scores"]["accuracy"] == pytest.approx(100 * (df["prediction"] == df["gold"]).mean())
    assert info["scores"]["n"] == 6 and info["scores"]["ci_lo"] <= info["scores"]["accuracy"] <= info["scores"]["ci_hi"]
    again = evaluate("mnli", "de", Engine(), EvalConfig(limit=6, batch_size=1, bootstrap_resamples=200), DATA,
                     tmp_path / "nli")
    assert again["reused"]  # batch size does not change what is scored
    other = evaluate("mnli", "de", Engine(), EvalConfig(limit=5, batch_size=3, bootstrap_resamples=200), DATA,
                     tmp_path / "nli")
    assert not other["reused"] and len(pd.read_parquet(tmp_path / "nli" / "predictions.parquet")) == 5


def test_qa_generates_short_answers_on_held_out_xquad(tmp_path):
    info = evaluate("squad", "th", Engine(), EvalConfig(limit=2, batch_size=2, max_new_tokens={"squad": 12},
                                                              bootstrap_resamples=200), DATA, tmp_path / "qa")
    df = pd.read_parquet(tmp_path / "qa" / "predictions.parquet")
    assert len(df) == 2 and (df["completion_tokens"] <= 12).all()
    assert not df["output"].str.contains("\n").any()
    assert list(df["prediction"]) == [o.strip() for o in df["output"]]
    # Held-out articles only: the first evaluated question is XQuAD article 24's, in Thai.
    xquad = json.loads((DATA / "xquad" / "xquad.th.json").read_text())["data"]
    first_q = xquad[24]["paragraphs"][0]["qas"][0]
    assert json.loads(df["gold"].iloc[0]) == [a["text"] for a in first_q["answers"]]
    assert set(info["scores"]) >= {"f1", "exact_match", "char_f1", "n", "ci_lo", "ci_hi"}
