"""Training data loaders for the standard release formats.

Every example gets a stable id `<dataset>:<split>:<index>` (index = position in the source file),
which every later stage joins on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from stt.badrows import BadRows, read_jsonl, read_lines, strict, text_fields
from stt.errors import DataError

Example = dict[str, Any]

# XQuAD has 48 articles; QA training uses the first half, the second half is held out for evaluation.
XQUAD_TRAIN_ARTICLES = range(0, 24)
XQUAD_EVAL_ARTICLES = range(24, 48)

_CALC = re.compile(r"<<[^>]*>>")
MNLI_LABELS = ("entailment", "neutral", "contradiction")


_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def load_gsm8k(path: Path, split: str = "train", bad: BadRows | None = None) -> list[Example]:
    """GSM8K jsonl: question, step-by-step answer ending in `#### <number>`.

    Row ids count every non-blank line, so a row set aside does not shift the ids of the others.
    """
    bad = bad or strict()
    examples = []
    for lineno, i, row in read_jsonl(Path(path), bad):
        if not text_fields(row, ("question", "answer"), bad, path, lineno, allowed_extra=False):
            continue
        body, sep, final = row["answer"].rpartition("####")
        final = final.strip().replace(",", "")
        if not sep:
            bad.reject(path, lineno, "answer has no '#### <number>' line", row["answer"])
            continue
        if not _NUMBER.fullmatch(final):
            bad.reject(path, lineno, f"final answer '{final[:40]}' is not a number", row["answer"])
            continue
        examples.append({
            "id": f"gsm8k:{split}:{i}",
            "question": row["question"].strip(),
            # Calculator annotations (<<48/2=24>>) are tool markup, not language: drop them.
            "rationale": _CALC.sub("", body).strip(),
            "answer": final,
        })
    return examples


def load_squad(path: Path, split: str = "train", dataset: str = "squad",
               articles: range | None = None, all_answers: bool = False, bad: BadRows | None = None
               ) -> list[Example]:
    """SQuAD v1.1 JSON: one example per question (first answer), optionally only some articles.

    `all_answers` adds `answers` (every gold answer text), which SQuAD scoring takes the best of.
    A question that cannot be used (no answers, empty text, an offset that is not an integer, a
    repeated id) is set aside with its id in place of a line number.
    """
    bad = bad or strict()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        if not isinstance(data, list):
            raise TypeError("'data' is not a list")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start})") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a SQuAD v1.1 file (expected {{'data': [...]}}): {exc}") from exc
    examples = []
    seen: set[str] = set()
    index = 0
    for a, article in enumerate(data):
        for p, paragraph in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            for qa in paragraph.get("qas", []) if isinstance(paragraph, dict) else []:
                where = f"question {qa.get('id') if isinstance(qa, dict) else index}"
                if articles is None or a in articles:
                    row = _squad_row(qa, paragraph, bad, path, where, seen)
                    if row is not None:
                        answer = row["answers"][0]
                        examples.append({
                            "id": f"{dataset}:{split}:{index}",
                            "source_id": row["id"],
                            "title": article.get("title", ""),
                            "paragraph": f"{a}:{p}",
                            "context": paragraph["context"],
                            "question": row["question"],
                            "answer_text": answer["text"],
                            "answer_start": int(answer["answer_start"]),
                        })
                        if all_answers:
                            examples[-1]["answers"] = [x["text"] for x in row["answers"]]
                index += 1
    return examples


def _squad_row(qa: Any, paragraph: dict[str, Any], bad: BadRows, path: Path, where: str,
               seen: set[str]) -> dict[str, Any] | None:
    def reject(reason: str) -> None:
        bad.reject(path, where, reason, json.dumps(qa, ensure_ascii=False)[:300])

    if not isinstance(qa, dict) or not isinstance(qa.get("id"), str):
        reject("not a question object with a string id")
        return None
    if not isinstance(paragraph.get("context"), str) or not paragraph["context"].strip():
        reject("empty or missing context")
        return None
    if qa["id"] in seen:
        reject(f"duplicate id {qa['id']}")
        return None
    seen.add(qa["id"])
    if not isinstance(qa.get("question"), str) or not qa["question"].strip():
        reject("empty or missing question")
        return None
    answers = qa.get("answers")
    if not answers or not isinstance(answers, list):
        reject("no answers")
        return None
    for answer in answers:
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str) or \
                not isinstance(answer.get("answer_start"), int) or isinstance(answer.get("answer_start"), bool):
            reject("answer without text and an integer answer_start")
            return None
    return qa


def load_mnli(path: Path, split: str = "train", bad: BadRows | None = None) -> list[Example]:
    """MultiNLI jsonl (sentence1, sentence2, gold_label); rows without a gold label ('-') are skipped."""
    bad = bad or strict()
    examples = []
    seen: dict[str, int] = {}
    for lineno, i, row in read_jsonl(Path(path), bad):
        if not text_fields(row, ("sentence1", "sentence2", "gold_label"), bad, path, lineno):
            continue
        label = row["gold_label"]
        if label == "-":
            continue  # no annotator majority: MultiNLI's own convention is to leave these out
        if label not in MNLI_LABELS:
            bad.reject(path, lineno, f"unknown label '{label[:40]}'", label)
            continue
        source_id = str(row.get("pairID", i))
        if source_id in seen:
            bad.reject(path, lineno, f"duplicate pairID {source_id} (first on line {seen[source_id]})")
            continue
        seen[source_id] = lineno
        examples.append({
            "id": f"mnli:{split}:{i}",
            "source_id": source_id,
            "premise": row["sentence1"],
            "hypothesis": row["sentence2"],
            "label": label,
        })
    return examples


def load_xnli_dev(path: Path, split: str = "train", bad: BadRows | None = None) -> list[Example]:
    """XNLI dev (`xtreme_dev-<lang>.tsv`: premise, hypothesis, label) as NLI *training* data.

    The declared stand-in for MultiNLI, which is not available offline: 2,490 items, disjoint from the
    XNLI test set, human-translated into every XNLI language (the human translate-train control uses
    those). Row i is the same item in every language, so the id carries the row, not the language.
    """
    bad = bad or strict()
    path = Path(path)
    examples = []
    for lineno, i, line in read_lines(path, bad):  # row i is the same item in every language's file
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 3:
            bad.reject(path, lineno, f"expected premise<TAB>hypothesis<TAB>label, got {len(parts)} fields", line)
            continue
        row = dict(zip(("premise", "hypothesis", "label"), parts, strict=True))
        if not text_fields(row, ("premise", "hypothesis", "label"), bad, path, lineno):
            continue
        if row["label"] not in MNLI_LABELS:
            bad.reject(path, lineno, f"unknown label '{row['label'][:40]}'", line)
            continue
        examples.append({"id": f"xnli-dev:{split}:{i}", "source_id": str(i), **row})
    return examples
