"""MLM masking statistics over more than 100k candidate tokens, and whole-word masking."""

import numpy as np
import pytest

from bertforge.data.masking import IGNORE_INDEX, MaskingConfig, mask_tokens

CLS, SEP, PAD, MASK = 2, 3, 0, 4
SPECIAL = {0, 1, 2, 3, 4}
VOCAB = 1000


def synthetic_batch(rng, batch=256, width=128):
    """[CLS] A [SEP] B [SEP] [PAD]... rows of random ordinary tokens with random lengths."""
    ids = np.full((batch, width), PAD, dtype=np.int64)
    for row in range(batch):
        length = int(rng.integers(10, width + 1))
        ids[row, :length] = rng.integers(5, VOCAB, length)
        ids[row, 0] = CLS
        ids[row, length // 2] = SEP
        ids[row, length - 1] = SEP
    candidates = (ids != PAD) & (ids != CLS) & (ids != SEP)
    return ids, candidates


@pytest.fixture(scope="module")
def masked():
    rng = np.random.default_rng(0)
    config = MaskingConfig(MASK, np.arange(5, VOCAB), max_predictions_per_seq=128)
    rows = [synthetic_batch(rng) for _ in range(8)]
    results = [mask_tokens(ids, cand, config, rng) for ids, cand in rows]
    ids = np.concatenate([r[0] for r in rows])
    candidates = np.concatenate([r[1] for r in rows])
    corrupted = np.concatenate([r[0] for r in results])
    labels = np.concatenate([r[1] for r in results])
    return ids, candidates, corrupted, labels


def test_enough_candidates_for_the_statistics(masked):
    assert masked[1].sum() > 100_000


def test_fifteen_percent_of_candidates_are_chosen(masked):
    _, candidates, _, labels = masked
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.005


def test_eighty_ten_ten_split(masked):
    ids, _, corrupted, labels = masked
    chosen = labels != IGNORE_INDEX
    total = chosen.sum()
    as_mask = (corrupted[chosen] == MASK).mean()
    unchanged = (corrupted[chosen] == ids[chosen]).mean()
    replaced = 1 - as_mask - unchanged
    # A random replacement equals the original with probability 1/995; that small share is counted as unchanged.
    assert abs(as_mask - 0.8) < 0.01 and abs(replaced - 0.1) < 0.01 and abs(unchanged - 0.1) < 0.01, total


def test_specials_are_never_chosen_nor_used_as_replacements(masked):
    ids, candidates, corrupted, labels = masked
    chosen = labels != IGNORE_INDEX
    assert not (chosen & ~candidates).any()
    assert np.array_equal(corrupted[~chosen], ids[~chosen])
    replaced = chosen & (corrupted != MASK) & (corrupted != ids)
    assert not np.isin(corrupted[replaced], list(SPECIAL)).any()
    assert np.array_equal(labels[chosen], ids[chosen])


def test_cap_per_sequence_and_determinism():
    rng_data = np.random.default_rng(1)
    ids, candidates = synthetic_batch(rng_data, batch=32)
    config = MaskingConfig(MASK, np.arange(5, VOCAB), max_predictions_per_seq=5)
    first = mask_tokens(ids, candidates, config, np.random.default_rng(7))
    second = mask_tokens(ids, candidates, config, np.random.default_rng(7))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert ((first[1] != IGNORE_INDEX).sum(axis=1) <= 5).all()


def test_whole_word_masking_takes_every_piece_of_a_word():
    rng = np.random.default_rng(2)
    ids, candidates = synthetic_batch(rng, batch=64)
    word_starts = rng.random(ids.shape) < 0.6  # about 1.7 pieces per word
    config = MaskingConfig(MASK, np.arange(5, VOCAB), max_predictions_per_seq=40)
    _, labels = mask_tokens(ids, candidates, config, rng, word_starts=word_starts)
    chosen = labels != IGNORE_INDEX
    for row in range(ids.shape[0]):
        positions = np.flatnonzero(candidates[row])
        starts = word_starts[row, positions] | np.r_[True, np.diff(positions) > 1]
        words = np.cumsum(starts)
        for word in np.unique(words):
            picked = chosen[row, positions[words == word]]
            assert picked.all() or not picked.any()
    share = chosen.sum() / candidates.sum()
    assert 0.12 < share < 0.16  # whole words rarely fill the budget exactly, so a little under 15%
