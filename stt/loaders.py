"""Training data loaders for the standard release formats.

Every example gets a stable id `<dataset>:<split>:<index>` (index = position in the source file),
which every later stage joins on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from stt.errors import DataError

Example = dict[str, Any]

# XQuAD has 48 articles; QA training uses the first half, the second half is held out for evaluation.
XQUAD_ARTICLES = 48
XQUAD_TRAIN_ARTICLES = range(0, 24)
XQUAD_EVAL_ARTICLES = range(24, 48)

_CALC = re.compile(r"<<[^>]*>>")
MNLI_LABELS = ("entailment", "neutral", "contradiction")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {lineno}: not valid JSON ({exc.msg})") from exc
    return rows


def load_gsm8k(path: Path, split: str = "train") -> list[Example]:
    """GSM8K jsonl: question, step-by-step answer ending in `#### <number>`."""
    examples = []
    for i, row in enumerate(_read_jsonl(path)):
        try:
            question, answer = row["question"], row["answer"]
        except KeyError as exc:
            raise DataError(f"{path} row {i}: missing key {exc} (GSM8K rows have 'question' and 'answer')") from exc
        body, sep, final = answer.rpartition("####")
        if not sep:
            raise DataError(f"{path} row {i}: answer has no '#### <number>' line")
        examples.append({
            "id": f"gsm8k:{split}:{i}",
            "question": question.strip(),
            # Calculator annotations (<<48/2=24>>) are tool markup, not language: drop them.
            "rationale": _CALC.sub("", body).strip(),
            "answer": final.strip().replace(",", ""),
        })
    return examples


def load_squad(path: Path, split: str = "train", dataset: str = "squad",
               articles: range | None = None, all_answers: bool = False) -> list[Example]:
    """SQuAD v1.1 JSON: one example per question (first answer), optionally only some articles.

    `all_answers` adds `answers` (every gold answer text), which SQuAD scoring takes the best of.
    """
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a SQuAD v1.1 file (expected {{'data': [...]}}): {exc}") from exc
    examples = []
    index = 0
    for a, article in enumerate(data):
        for p, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                if articles is None or a in articles:
                    if not qa.get("answers"):
                        raise DataError(f"{path} question {qa.get('id')}: no answers")
                    answer = qa["answers"][0]
                    examples.append({
                        "id": f"{dataset}:{split}:{index}",
                        "source_id": qa["id"],
                        "title": article.get("title", ""),
                        "paragraph": f"{a}:{p}",
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answer_text": answer["text"],
                        "answer_start": int(answer["answer_start"]),
                    })
                    if all_answers:
                        examples[-1]["answers"] = [a["text"] for a in qa["answers"]]
                index += 1
    return examples


def load_mnli(path: Path, split: str = "train") -> list[Example]:
    """MultiNLI jsonl (sentence1, sentence2, gold_label); rows without a gold label ('-') are skipped."""
    examples = []
    for i, row in enumerate(_read_jsonl(path)):
        try:
            premise, hypothesis, label = row["sentence1"], row["sentence2"], row["gold_label"]
        except KeyError as exc:
            raise DataError(f"{path} row {i}: missing key {exc} (MultiNLI rows have sentence1/2, gold_label)") from exc
        if label == "-":
            continue  # no annotator majority: MultiNLI's own convention is to leave these out
        if label not in MNLI_LABELS:
            raise DataError(f"{path} row {i}: unknown label '{label}'")
        examples.append({
            "id": f"mnli:{split}:{i}",
            "source_id": str(row.get("pairID", i)),
            "premise": premise,
            "hypothesis": hypothesis,
            "label": label,
        })
    return examples


def load_xnli_dev(path: Path, split: str = "train") -> list[Example]:
    """XNLI dev (`xtreme_dev-<lang>.tsv`: premise, hypothesis, label) as NLI *training* data.

    The declared stand-in for MultiNLI, which is not available offline: 2,490 items, disjoint from the
    XNLI test set, human-translated into every XNLI language (the human translate-train control uses
    those). Row i is the same item in every language, so the id carries the row, not the language.
    """
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    examples = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                raise DataError(f"{path} line {i + 1}: expected premise<TAB>hypothesis<TAB>label")
            if parts[2] not in MNLI_LABELS:
                raise DataError(f"{path} line {i + 1}: unknown label '{parts[2]}'")
            examples.append({"id": f"xnli-dev:{split}:{i}", "source_id": str(i), "premise": parts[0],
                             "hypothesis": parts[1], "label": parts[2]})
    return examples
