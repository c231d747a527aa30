"""Evaluation metrics for classification and regression, in plain numpy.

Classification metrics take integer class ids (``predictions`` and gold ``labels`` of equal length, ids counted
from 0); regression metrics take real numbers. Each function returns a Python ``float`` (or an ``np.ndarray`` for
the confusion matrix) so results go straight into JSON logs. Every definition follows the one scikit-learn and
SciPy use, so numbers match what papers and leaderboards report (GLUE scores CoLA with Matthews correlation,
MRPC and QQP with F1, STS-B with Pearson and Spearman correlation). Where a score is undefined (a constant input
leaves a correlation without a denominator) it is 0.0, not NaN: a NaN would poison best-checkpoint comparisons
and is not valid JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of examples whose predicted class equals the gold class: ``mean(pred == gold)``."""
    predicted, gold = _class_ids(predictions, labels)
    return float(np.mean(predicted == gold))


def confusion_matrix(predictions: ArrayLike, labels: ArrayLike, num_labels: int) -> np.ndarray:
    """Counts of (gold, predicted) class pairs: ``matrix[g, p]`` examples of class ``g`` were predicted as ``p``.

    Rows are gold classes and columns predicted ones, as in scikit-learn. Returns an ``(num_labels, num_labels)``
    int64 array; class ids must lie in ``[0, num_labels)``.
    """
    predicted, gold = _class_ids(predictions, labels)
    largest = int(max(predicted.max(), gold.max()))
    if largest >= num_labels:
        raise ValueError(f"class id {largest} is out of range for num_labels={num_labels}")
    # Each (gold, predicted) pair becomes one cell index of the flattened matrix, so one bincount fills it.
    cells = np.bincount(gold * num_labels + predicted, minlength=num_labels * num_labels)
    return cells.reshape(num_labels, num_labels)


def macro_f1(predictions: ArrayLike, labels: ArrayLike, num_labels: int | None = None) -> float:
    """Unweighted mean of the per-class F1 scores, ``F1_c = 2 P_c R_c / (P_c + R_c)``.

    Averages over the classes that occur among the gold labels or the predictions (scikit-learn's default, which
    infers the classes from their union): a class absent from both says nothing about the model and is left out.
    A class that occurs but is never predicted correctly scores 0. ``num_labels`` only sizes the confusion
    matrix; by default it is one more than the largest class id seen.
    """
    return _macro_f1_of(_matrix(predictions, labels, num_labels))


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation coefficient in its multi-class form (Gorodkin 2004; scikit-learn's definition).

    With confusion matrix ``C``, ``t_k`` examples of gold class ``k``, ``p_k`` predictions of class ``k``,
    ``c = trace(C)`` correct predictions and ``s`` examples::

        MCC = (c·s − Σ_k p_k t_k) / sqrt((s² − Σ_k p_k²) (s² − Σ_k t_k²))

    For two classes this is the familiar ``(TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))``. It ranges
    from −1 to 1, with 0 for chance level; it is 0 when undefined (all gold labels or all predictions one class).
    """
    return _matthews_corrcoef_of(_matrix(predictions, labels, None))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson's linear correlation ``r = Σ (x−x̄)(y−ȳ) / sqrt(Σ (x−x̄)² Σ (y−ȳ)²)``; 0 if either input is constant."""
    first, second = _real_pairs(x, y)
    first = first - first.mean()
    second = second - second.mean()
    denominator = np.sqrt((first @ first) * (second @ second))
    if denominator == 0:
        return 0.0
    # Rounding can push a perfect correlation a hair past ±1.
    return float(np.clip((first @ second) / denominator, -1.0, 1.0))


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation: Pearson's ``r`` of the ranks, tied values sharing their average rank.

    Equal to ``scipy.stats.spearmanr``; 0 if either input is constant.
    """
    first, second = _real_pairs(x, y)
    return pearson(_average_ranks(first), _average_ranks(second))


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support of every class, from a confusion matrix (rows gold, columns predicted).

    ``precision_c = C[c,c] / Σ_g C[g,c]``, ``recall_c = C[c,c] / Σ_p C[c,p]``, ``F1_c`` their harmonic mean and
    ``support_c = Σ_p C[c,p]`` (gold examples of class ``c``). A ratio whose denominator is 0 is 0, as with
    scikit-learn's ``zero_division=0``. Returns four ``(num_labels,)`` arrays (support is int64).
    """
    true_positives = np.diag(matrix).astype(np.float64)
    predicted_counts = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = _safe_ratio(true_positives, predicted_counts)
    recall = _safe_ratio(true_positives, support)
    f1 = _safe_ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1, support.astype(np.int64)


def classification_report(predictions: ArrayLike, labels: ArrayLike, label_names: Sequence[str]) -> dict[str, Any]:
    """Every classification metric at once, as plain Python values ready for JSON.

    Returns ``{"accuracy", "macro_f1", "matthews_corrcoef": float, "support": int, "per_class": {name:
    {"precision", "recall", "f1": float, "support": int}}, "confusion_matrix": list of rows}``, where class id
    ``i`` is called ``label_names[i]`` and the confusion matrix has gold classes as rows (see
    :func:`confusion_matrix`).
    """
    num_labels = len(label_names)
    matrix = confusion_matrix(predictions, labels, num_labels)
    precision, recall, f1, support = per_class_scores(matrix)
    return {
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "macro_f1": _macro_f1_of(matrix),
        "matthews_corrcoef": _matthews_corrcoef_of(matrix),
        "support": int(support.sum()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": matrix.tolist(),
    }


def format_confusion_matrix(matrix: ArrayLike, label_names: Sequence[str]) -> str:
    """Render a confusion matrix as an aligned text table, gold classes down the side and predictions across.

    Example::

        gold \\ predicted  negative  positive
        negative               412        88
        positive                75       425
    """
    counts = np.asarray(matrix)
    if counts.shape != (len(label_names), len(label_names)):
        raise ValueError(f"a {counts.shape} matrix does not fit {len(label_names)} label names")
    rows = [["gold \\ predicted", *label_names]]
    rows += [[name, *map(str, counts[i].tolist())] for i, name in enumerate(label_names)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    # Names are text and read best flush left; counts are numbers and line up by their last digit.
    lines = [
        "  ".join(
            [row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))]
        )
        for row in rows
    ]
    return "\n".join(lines)


def _class_ids(predictions: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as 1-D int64 arrays of equal, non-zero length and no negative ids."""
    predicted = np.asarray(predictions).reshape(-1)
    gold = np.asarray(labels).reshape(-1)
    if predicted.shape != gold.shape:
        raise ValueError(f"{predicted.size} predictions for {gold.size} labels; they must pair up")
    if predicted.size == 0:
        raise ValueError("no predictions to score")
    for name, values in (("predictions", predicted), ("labels", gold)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be integer class ids, not {values.dtype}")
        if values.min() < 0:
            raise ValueError(f"{name} hold a negative class id ({values.min()})")
    return predicted.astype(np.int64), gold.astype(np.int64)


def _matrix(predictions: ArrayLike, labels: ArrayLike, num_labels: int | None) -> np.ndarray:
    """The confusion matrix, sized by ``num_labels`` or else by the largest class id present."""
    predicted, gold = _class_ids(predictions, labels)
    if num_labels is None:
        num_labels = int(max(predicted.max(), gold.max())) + 1
    return confusion_matrix(predicted, gold, num_labels)


def _macro_f1_of(matrix: np.ndarray) -> float:
    """Macro F1 over the classes that occur in a confusion matrix's rows or columns (see :func:`macro_f1`)."""
    _, _, f1, _ = per_class_scores(matrix)
    occurring = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    return float(f1[occurring].mean())


def _matthews_corrcoef_of(matrix: np.ndarray) -> float:
    """Matthews correlation of a confusion matrix (see :func:`matthews_corrcoef` for the formula)."""
    counts = matrix.astype(np.float64)  # float64: s² of a large evaluation set would overflow int32 on some platforms
    gold_counts = counts.sum(axis=1)
    predicted_counts = counts.sum(axis=0)
    correct = np.trace(counts)
    total = counts.sum()
    numerator = correct * total - predicted_counts @ gold_counts
    denominator_squared = (total**2 - predicted_counts @ predicted_counts) * (total**2 - gold_counts @ gold_counts)
    if denominator_squared == 0:
        return 0.0
    return float(numerator / np.sqrt(denominator_squared))


def _real_pairs(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as 1-D float64 arrays of equal length (at least 2) holding only finite numbers."""
    first = np.asarray(x, dtype=np.float64).reshape(-1)
    second = np.asarray(y, dtype=np.float64).reshape(-1)
    if first.shape != second.shape:
        raise ValueError(f"{first.size} values paired with {second.size}; they must pair up")
    if first.size < 2:
        raise ValueError(f"a correlation needs at least 2 pairs of values, got {first.size}")
    if not (np.isfinite(first).all() and np.isfinite(second).all()):
        raise ValueError("values must be finite numbers (found NaN or infinity)")
    return first, second


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, each group of ties getting the mean of the ranks it spans."""
    _, group, group_sizes = np.unique(values, return_inverse=True, return_counts=True)
    # The distinct values in ascending order occupy consecutive rank ranges; a group ending at rank e with n members
    # spans ranks e−n+1 … e, whose mean is e − (n − 1)/2.
    last_rank = np.cumsum(group_sizes)
    return (last_rank - (group_sizes - 1) / 2.0)[group.reshape(-1)]


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ``numerator / denominator``, 0 where the denominator is 0."""
    denominator = np.asarray(denominator, dtype=np.float64)
    result = np.zeros_like(denominator)
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result
