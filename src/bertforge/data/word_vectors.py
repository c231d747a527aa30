"""Word vectors from co-occurrence counts: a start for the embedding table that costs seconds, not steps.

A short MLM run leaves BERT's word embeddings close to their random start: each token is predicted a few hundred
times at most, and what a word means is learned last. Counting which tokens occur near which (a window of a few
tokens), weighting the counts by positive pointwise mutual information and keeping the top singular directions
gives vectors in which words used alike lie close (Levy & Goldberg, 2014, "Neural Word Embedding as Implicit Matrix
Factorization"; Levy, Goldberg & Dagan, 2015, for the smoothed context distribution and the √S weighting). The
encoder then starts from them instead of N(0, 0.02); MLM goes on from there.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_CONTEXTS = 4096  # context columns: the most frequent tokens; bounds memory at vocab × 4096 counts
CONTEXT_SMOOTHING = 0.75  # context probabilities ∝ count^0.75, which tempers PMI's bias towards rare contexts


def ppmi_svd_vectors(tokens: np.ndarray, vocab_size: int, dim: int, window: int = 4, seed: int = 0) -> np.ndarray:
    """(vocab_size, dim) float32 word vectors from (N,) ``tokens`` (a stream of ids); rows of tokens that never
    occur are zero. Pairs up to ``window`` positions apart are counted with weight 1 / distance, both ways."""
    tokens = np.asarray(tokens, dtype=np.int64)
    frequency = np.bincount(tokens, minlength=vocab_size)
    contexts = np.argsort(-frequency, kind="stable")[: min(vocab_size, MAX_CONTEXTS)]
    contexts = contexts[frequency[contexts] > 0]
    column = np.full(vocab_size, -1, dtype=np.int64)
    column[contexts] = np.arange(contexts.size)
    counts = np.zeros(vocab_size * contexts.size, dtype=np.float64)  # (V·C,) flattened (word, context) matrix
    for distance in range(1, window + 1):
        for words, neighbours in ((tokens[:-distance], tokens[distance:]), (tokens[distance:], tokens[:-distance])):
            at = column[neighbours]
            keep = at >= 0
            counts += np.bincount(words[keep] * contexts.size + at[keep], minlength=counts.size) / distance
    matrix = torch.from_numpy(counts.reshape(vocab_size, contexts.size))  # (V, C)
    word_total = matrix.sum(1, keepdim=True)  # (V, 1)
    context_weight = matrix.sum(0, keepdim=True) ** CONTEXT_SMOOTHING  # (1, C)
    pmi = torch.log(matrix * context_weight.sum() / (word_total.clamp(min=1e-12) * context_weight.clamp(min=1e-12)))
    ppmi = torch.where(matrix > 0, pmi, torch.zeros(())).clamp(min=0).float()  # (V, C)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # svd_lowrank draws a random projection; the same corpus gives the same vectors
    U, S, _ = torch.svd_lowrank(ppmi, q=min(dim, *ppmi.shape), niter=4)  # U (V, q), S (q,)
    torch.random.set_rng_state(generator_state)
    vectors = np.zeros((vocab_size, dim), dtype=np.float32)
    vectors[:, : S.numel()] = (U * S.sqrt()).numpy()
    vectors[frequency == 0] = 0.0  # the random projection leaves rounding noise in rows that have no counts
    return vectors
