"""Entity-level precision, recall and F1 for token tagging, scored exactly as ``seqeval`` scores them by default.

An entity counts as found only if a predicted entity has the same type, start and end as a gold one. Entities
are chunked leniently, as ``seqeval``'s default mode (``mode=None``) does: an ``I-X`` after ``O`` or after another
type begins an entity, a change of type ends one, ``E`` and ``S`` close one (see
:func:`bertforge.data.tagging.chunk_entities` for the rule). For tags with prefixes B, I, E, S and O the numbers equal
``seqeval.metrics.classification_report`` and ``f1_score``: micro-averaged overall, 0 where a ratio's
denominator is 0 (where ``seqeval`` also warns). BMES's ``M`` is read as ``I``, which ``seqeval`` does not know.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from bertforge.data.tagging import chunk_entities
from bertforge.errors import BertforgeError


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Score ``predicted`` tag sequences against ``gold``, one sequence per sentence.

    Returns ``precision``, ``recall`` and ``f1`` over all entities (micro average), ``token_accuracy`` (the share
    of tokens whose tag is exactly right, ``O`` included; 0 when there are no tokens), and ``per_type``: for each
    entity type in either side, sorted, ``{"precision", "recall", "f1", "support"}`` with ``support`` the number
    of gold entities of that type.

    Raises :class:`BertforgeError` when the sides differ in sentence count or a sentence's length, or for a tag of
    unknown shape.
    """
    if len(gold) != len(predicted):
        raise BertforgeError(
            f"{len(gold)} gold sentences but {len(predicted)} predicted; score the same sentences on both sides"
        )
    gold_entities: set[tuple[str, int, int, int]] = set()
    predicted_entities: set[tuple[str, int, int, int]] = set()
    tokens = correct_tokens = 0
    for sentence, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted, strict=True)):
        if len(gold_tags) != len(predicted_tags):
            raise BertforgeError(
                f"sentence {sentence} has {len(gold_tags)} gold tags but {len(predicted_tags)} predicted; "
                "predict one tag per token"
            )
        gold_entities.update((type_, sentence, start, end) for type_, start, end in chunk_entities(gold_tags))
        predicted_entities.update((type_, sentence, start, end) for type_, start, end in chunk_entities(predicted_tags))
        tokens += len(gold_tags)
        correct_tokens += sum(g == p for g, p in zip(gold_tags, predicted_tags, strict=True))

    found = gold_entities & predicted_entities
    gold_counts = Counter(entity[0] for entity in gold_entities)
    predicted_counts = Counter(entity[0] for entity in predicted_entities)
    found_counts = Counter(entity[0] for entity in found)
    per_type = {
        type_: {
            **_precision_recall_f1(found_counts[type_], predicted_counts[type_], gold_counts[type_]),
            "support": gold_counts[type_],
        }
        for type_ in sorted(gold_counts.keys() | predicted_counts.keys())
    }
    return {
        **_precision_recall_f1(len(found), len(predicted_entities), len(gold_entities)),
        "token_accuracy": correct_tokens / tokens if tokens else 0.0,
        "per_type": per_type,
    }


def _precision_recall_f1(found: int, predicted: int, gold: int) -> dict[str, float]:
    """Precision, recall and their harmonic mean from counts, each 0 where its denominator is 0 (as seqeval)."""
    precision = found / predicted if predicted else 0.0
    recall = found / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
