"""SQuAD exact match and F1, as the official evaluation scripts define them.

An answer is normalised (lower-cased; ASCII punctuation, the articles a/an/the and extra whitespace removed)
before comparing. Exact match: the normalised prediction equals a normalised gold answer. F1: the harmonic mean of
precision and recall of the bag of normalised words shared with a gold answer. Each question takes its best score
over the gold answers; the totals are percentages over all questions, a question without a prediction scoring 0.
For SQuAD v2.0's unanswerable questions the only gold answer is "": an empty prediction scores 1 on it, any other
prediction 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, then the articles, then collapse whitespace (the official order)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def answer_f1(prediction: str, gold: str) -> float:
    """Word-overlap F1 of one prediction against one gold answer ("" for an unanswerable question)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if gold == "":
        return float(not predicted)
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], gold_answers: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """``exact_match`` and ``f1`` in percent over the questions of ``gold_answers`` (question id → answers)."""
    exact = f1 = 0.0
    for question_id, answers in gold_answers.items():
        if question_id not in predictions:
            continue
        prediction, golds = predictions[question_id], list(answers) or [""]
        exact += max(float(normalize_answer(prediction) == normalize_answer(gold)) for gold in golds)
        f1 += max(answer_f1(prediction, gold) for gold in golds)
    total = max(len(gold_answers), 1)
    return {"exact_match": 100 * exact / total, "f1": 100 * f1 / total, "questions": len(gold_answers)}
