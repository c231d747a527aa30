"""Metrics: golden values worked out by hand, randomised checks against direct loop-based definitions, and parity
with scikit-learn and SciPy where they are installed (they are not dependencies of bertforge).
"""

import math

import numpy as np
import pytest

from bertforge.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    format_confusion_matrix,
    macro_f1,
    matthews_corrcoef,
    pearson,
    spearman,
)

# Binary case: TP=3, FN=1, FP=2, TN=4 (class 1 is "positive").
BINARY_GOLD = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
BINARY_PRED = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
# scikit-learn's confusion_matrix documentation example: [[2, 0, 0], [0, 0, 1], [1, 0, 2]].
MULTI_GOLD = [2, 0, 2, 2, 0, 1]
MULTI_PRED = [0, 0, 2, 2, 0, 2]


def test_binary_golden_values():
    assert accuracy(BINARY_PRED, BINARY_GOLD) == pytest.approx(0.7)
    # F1 of class 1: P=3/5, R=3/4 -> 2/3; of class 0: P=4/5, R=4/6 -> 8/11.
    assert macro_f1(BINARY_PRED, BINARY_GOLD) == pytest.approx((2 / 3 + 8 / 11) / 2)
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 10 / sqrt(600).
    assert matthews_corrcoef(BINARY_PRED, BINARY_GOLD) == pytest.approx(10 / math.sqrt(600))
    assert confusion_matrix(BINARY_PRED, BINARY_GOLD, 2).tolist() == [[4, 2], [1, 3]]


def test_multiclass_golden_values():
    assert confusion_matrix(MULTI_PRED, MULTI_GOLD, 3).tolist() == [[2, 0, 0], [0, 0, 1], [1, 0, 2]]
    # t = (2, 1, 3), p = (3, 0, 3), c = 4, s = 6: (24 − 15) / sqrt((36 − 18)(36 − 14)).
    assert matthews_corrcoef(MULTI_PRED, MULTI_GOLD) == pytest.approx(9 / math.sqrt(396))
    # Class 0: P=2/3, R=1 -> 4/5; class 1: never predicted -> 0; class 2: P=2/3, R=2/3 -> 2/3.
    assert macro_f1(MULTI_PRED, MULTI_GOLD) == pytest.approx((4 / 5 + 0 + 2 / 3) / 3)
    # scikit-learn's f1_score documentation example, macro average 0.26666...
    assert macro_f1([0, 2, 1, 0, 0, 1], [0, 1, 2, 0, 1, 2]) == pytest.approx(0.2666666666)


def test_macro_f1_leaves_out_classes_absent_from_both_sides():
    # Classes 1 and 3 appear nowhere; classes 0 and 2 both score F1 2/3.
    assert macro_f1([0, 2, 2], [0, 0, 2], num_labels=4) == pytest.approx(2 / 3)


def test_perfect_and_degenerate_scores():
    assert matthews_corrcoef([0, 1, 2, 1], [0, 1, 2, 1]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0  # constant predictions: undefined, reported as 0
    assert macro_f1([1, 1], [1, 1]) == 1.0
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_correlation_golden_values():
    # Means 3 and 4; Σdxdy = 6, Σdx² = 10, Σdy² = 6.
    assert pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(6 / math.sqrt(60))
    # Ranks of y with ties averaged: (1, 2.5, 4.5, 2.5, 4.5); Σdxdr = 7, Σdr² = 9.
    assert spearman([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(7 / math.sqrt(90))
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="pair up"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="no predictions"):
        accuracy([], [])
    with pytest.raises(ValueError, match="out of range"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="integer"):
        accuracy([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        pearson([1.0, float("nan")], [1.0, 2.0])


def test_classification_report_and_table():
    report = classification_report(BINARY_PRED, BINARY_GOLD, ["negative", "positive"])
    assert report["accuracy"] == pytest.approx(0.7)
    assert report["macro_f1"] == pytest.approx(macro_f1(BINARY_PRED, BINARY_GOLD))
    assert report["matthews_corrcoef"] == pytest.approx(10 / math.sqrt(600))
    assert report["support"] == 10
    assert report["per_class"]["positive"] == pytest.approx(
        {"precision": 0.6, "recall": 0.75, "f1": 2 / 3, "support": 4}
    )
    assert report["per_class"]["negative"]["support"] == 6
    assert report["confusion_matrix"] == [[4, 2], [1, 3]]
    table = format_confusion_matrix(report["confusion_matrix"], ["negative", "positive"])
    assert table.splitlines() == [
        "gold \\ predicted  negative  positive",
        "negative                 4         2",
        "positive                 1         3",
    ]
    wide = format_confusion_matrix([[1200, 3], [7, 5]], ["a", "b"])
    assert wide.splitlines() == ["gold \\ predicted     a  b", "a                 1200  3", "b                    7  5"]


def _loop_scores(predicted: list[int], gold: list[int]) -> tuple[float, float]:
    """Macro F1 and MCC computed the long way, as a reference independent of the library's algebra."""
    classes = sorted(set(predicted) | set(gold))
    f1s = []
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    # MCC as Pearson's correlation of the one-hot vectors (Gorodkin's definition).
    n = max(classes) + 1
    pred_hot = np.eye(n)[predicted]
    gold_hot = np.eye(n)[gold]
    pred_hot -= pred_hot.mean(axis=0)
    gold_hot -= gold_hot.mean(axis=0)
    denominator = math.sqrt((pred_hot**2).sum() * (gold_hot**2).sum())
    mcc = (pred_hot * gold_hot).sum() / denominator if denominator else 0.0
    return sum(f1s) / len(f1s), mcc


def _loop_ranks(values: list[float]) -> list[float]:
    """Average 1-based ranks by counting: rank = (number smaller) + (number equal + 1) / 2."""
    return [sum(v < x for v in values) + (sum(v == x for v in values) + 1) / 2 for x in values]


@pytest.mark.parametrize("seed", range(5))
def test_random_cases_match_loop_definitions(seed: int):
    rng = np.random.default_rng(seed)
    num_labels = int(rng.integers(2, 6))
    gold = rng.integers(0, num_labels, size=60).tolist()
    predicted = [g if rng.random() < 0.6 else int(rng.integers(0, num_labels)) for g in gold]
    expected_f1, expected_mcc = _loop_scores(predicted, gold)
    assert macro_f1(predicted, gold) == pytest.approx(expected_f1)
    assert matthews_corrcoef(predicted, gold) == pytest.approx(expected_mcc)
    x = rng.integers(0, 8, size=40).astype(float).tolist()  # few distinct values, so many ties
    y = (np.asarray(x) + rng.normal(size=40)).round().tolist()
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert spearman(x, y) == pytest.approx(np.corrcoef(_loop_ranks(x), _loop_ranks(y))[0, 1])


def test_parity_with_scikit_learn_and_scipy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed (optional)")
    stats = pytest.importorskip("scipy.stats", reason="SciPy is not installed (optional)")
    rng = np.random.default_rng(100)
    for _ in range(5):
        num_labels = int(rng.integers(2, 6))
        gold = rng.integers(0, num_labels, size=80)
        predicted = np.where(rng.random(80) < 0.5, gold, rng.integers(0, num_labels, size=80))
        assert accuracy(predicted, gold) == pytest.approx(sklearn_metrics.accuracy_score(gold, predicted))
        assert macro_f1(predicted, gold) == pytest.approx(sklearn_metrics.f1_score(gold, predicted, average="macro"))
        assert matthews_corrcoef(predicted, gold) == pytest.approx(sklearn_metrics.matthews_corrcoef(gold, predicted))
        assert np.array_equal(
            confusion_matrix(predicted, gold, num_labels),
            sklearn_metrics.confusion_matrix(gold, predicted, labels=list(range(num_labels))),
        )
        x = rng.integers(0, 10, size=50).astype(float)
        y = x + rng.normal(size=50).round()
        assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
