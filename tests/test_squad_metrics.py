"""SQuAD exact match and F1 against the official evaluation algorithm, on varied predictions for real questions."""

import json
import re
import string
from collections import Counter

import numpy as np
import pytest

from bertforge.data.squad import read_squad
from bertforge.squad_metrics import answer_f1, normalize_answer, squad_scores


# ---- the reference: the published SQuAD v1.1 evaluation algorithm, step by step ----
def reference_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def reference_f1(prediction, ground_truth):
    prediction_tokens = reference_normalize(prediction).split()
    ground_truth_tokens = reference_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def reference_exact(prediction, ground_truth):
    return reference_normalize(prediction) == reference_normalize(ground_truth)


def reference_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue  # "Unanswered question will receive score 0."
                ground_truths = [answer["text"] for answer in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += max(reference_exact(prediction, gt) for gt in ground_truths)
                f1 += max(reference_f1(prediction, gt) for gt in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def varied_predictions(examples, seed):
    """Gold answers, with articles/punctuation/case changed, cut, widened, moved, emptied, or missing."""
    rng = np.random.default_rng(seed)
    predictions = {}
    for example in examples:
        gold, context = example.answers[int(rng.integers(len(example.answers)))], example.context
        kind = rng.integers(8)
        if kind == 0:
            predictions[example.id] = gold.text
        elif kind == 1:
            predictions[example.id] = f"The {gold.text.upper()}!"
        elif kind == 2:
            predictions[example.id] = gold.text[: max(1, len(gold.text) // 2)]
        elif kind == 3:
            predictions[example.id] = context[max(0, gold.start - 15) : gold.end + 15]
        elif kind == 4:
            start = int(rng.integers(len(context)))
            predictions[example.id] = context[start : start + int(rng.integers(1, 40))]
        elif kind == 5:
            predictions[example.id] = ""
        elif kind == 6:
            predictions[example.id] = "  a  " + " , ".join(gold.text.split()) + " .  "
        # kind 7: no prediction at all
    return predictions


def test_scores_equal_the_official_algorithm_on_real_questions(squad_dev):
    dataset = json.loads(squad_dev.read_text())["data"]
    examples = read_squad(squad_dev).examples
    for seed in range(3):
        predictions = varied_predictions(examples, seed)
        ours = squad_scores(predictions, {e.id: [a.text for a in e.answers] for e in examples})
        theirs = reference_evaluate(dataset, predictions)
        assert ours["exact_match"] == pytest.approx(theirs["exact_match"], abs=1e-9)
        assert ours["f1"] == pytest.approx(theirs["f1"], abs=1e-9)
        assert 10 < theirs["exact_match"] < 60 and theirs["f1"] > theirs["exact_match"]  # a varied mix
    for example in examples[:2000]:
        for answer in example.answers:
            assert normalize_answer(answer.text) == reference_normalize(answer.text)


@pytest.mark.parametrize(
    ("prediction", "gold", "f1"),
    [
        ("the Eiffel Tower", "Eiffel Tower.", 1.0),
        ("Eiffel", "the Eiffel Tower", 2 / 3),
        ("", "Paris", 0.0),
        ("Paris", "", 0.0),  # SQuAD v2.0: a question without an answer
        ("", "", 1.0),
        ("an", "", 1.0),  # normalises to nothing, i.e. "no answer"
    ],
)
def test_golden_f1(prediction, gold, f1):
    assert answer_f1(prediction, gold) == pytest.approx(f1)


def test_unanswerable_questions_score_only_an_empty_answer():
    gold = {"q1": [], "q2": ["Paris"]}
    assert squad_scores({"q1": "", "q2": "Paris"}, gold) == {"exact_match": 100.0, "f1": 100.0, "questions": 2}
    assert squad_scores({"q1": "Lyon", "q2": "Paris"}, gold)["exact_match"] == 50.0
