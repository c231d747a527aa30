"""Masked-language-model masking (Devlin et al., 2019, section 3.1 and appendix A.1), vectorised over a batch.

Of the candidate tokens (everything but [CLS], [SEP] and [PAD]) a fixed share is chosen per sequence, as Google's
``create_pretraining_data.py`` does: ``round(mlm_probability × candidates)``, at least 1 and at most
``max_predictions_per_seq``. Of the chosen tokens 80% become [MASK], 10% a random ordinary token, 10% stay — so
the model cannot rely on seeing [MASK] to know where to predict. With whole-word masking all pieces of a word
(``play ##ing``) are chosen together.

Shape legend: B batch, T sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertforge.settings import MAX_PREDICTIONS_PER_SEQ, MLM_PROBABILITY

IGNORE_INDEX = -100  # label of positions without a prediction target (PyTorch's cross-entropy default)


@dataclass(frozen=True)
class MaskingConfig:
    """How tokens are chosen and replaced."""

    mask_token_id: int  # id of [MASK]
    replacement_ids: np.ndarray  # ids a chosen token may be randomly replaced by: ordinary tokens only
    mlm_probability: float = MLM_PROBABILITY  # share of candidate tokens chosen for prediction
    max_predictions_per_seq: int = MAX_PREDICTIONS_PER_SEQ  # cap on chosen tokens per sequence
    mask_fraction: float = 0.8  # of the chosen: share replaced by [MASK]
    random_fraction: float = 0.1  # of the chosen: share replaced by a random token; the rest stay unchanged


def mask_tokens(
    input_ids: np.ndarray,
    candidates: np.ndarray,
    config: MaskingConfig,
    rng: np.random.Generator,
    word_starts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose and corrupt tokens for MLM.

    Args:
        input_ids: (B, T) token ids.
        candidates: (B, T) bool, True where a token may be chosen (not [CLS]/[SEP]/[PAD]).
        rng: the source of randomness; the same generator state gives the same masks.
        word_starts: (B, T) bool, True at the first piece of each word; given, whole words are masked.

    Returns:
        (B, T) corrupted ids and (B, T) labels: the original id where chosen, IGNORE_INDEX elsewhere.
    """
    counts = candidates.sum(axis=1)  # (B,)
    wanted = np.minimum(config.max_predictions_per_seq, np.maximum(1, np.rint(counts * config.mlm_probability)))
    wanted = np.where(counts > 0, wanted, 0).astype(np.int64)
    if word_starts is None:
        chosen = _choose_tokens(candidates, wanted, rng)
    else:
        chosen = _choose_whole_words(candidates, word_starts, wanted, rng)

    labels = np.where(chosen, input_ids, IGNORE_INDEX)
    draw = rng.random(input_ids.shape)
    to_mask = chosen & (draw < config.mask_fraction)
    to_random = chosen & (draw >= config.mask_fraction) & (draw < config.mask_fraction + config.random_fraction)
    corrupted = input_ids.copy()
    corrupted[to_mask] = config.mask_token_id
    corrupted[to_random] = rng.choice(config.replacement_ids, size=int(to_random.sum()))
    return corrupted, labels


def _choose_tokens(candidates: np.ndarray, wanted: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row, the ``wanted`` candidates with the smallest random keys: a uniform sample without replacement."""
    keys = np.where(candidates, rng.random(candidates.shape), np.inf)  # (B, T); non-candidates sort last
    ranks = keys.argsort(axis=1).argsort(axis=1)  # (B, T): rank of each position's key within its row
    return ranks < wanted[:, None]


def _choose_whole_words(
    candidates: np.ndarray, word_starts: np.ndarray, wanted: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per row, whole words in random order while their pieces fit in ``wanted`` (at least one word)."""
    chosen = np.zeros_like(candidates)
    for row in range(candidates.shape[0]):
        positions = np.flatnonzero(candidates[row])
        if positions.size == 0:
            continue
        # A word starts at a word start or after a non-candidate (so [SEP] always ends a word).
        starts = word_starts[row, positions] | np.r_[True, np.diff(positions) > 1]
        word_of = np.cumsum(starts) - 1  # (candidates,) word index of each candidate token
        lengths = np.bincount(word_of)
        order = rng.permutation(lengths.size)
        fits = np.cumsum(lengths[order]) <= wanted[row]
        fits[0] = True  # a word longer than the budget is still masked rather than none at all
        picked = np.zeros(lengths.size, dtype=bool)
        picked[order[fits]] = True
        chosen[row, positions[picked[word_of]]] = True
    return chosen
