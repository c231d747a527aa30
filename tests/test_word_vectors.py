"""Co-occurrence word vectors (PPMI + SVD): words used alike end up alike, deterministically."""

import numpy as np

from bertforge.data.word_vectors import ppmi_svd_vectors


def synthetic_corpus(seed: int = 0, sentences: int = 3000) -> np.ndarray:
    """Ids 10-14 are "good" words and 20-24 "bad" ones; each kind shares its own context words (30-34 with good,
    40-44 with bad), and filler words 50-59 go everywhere. Id 99 never occurs."""
    rng = np.random.default_rng(seed)
    stream = []
    for _ in range(sentences):
        kind = rng.integers(2)
        word = rng.integers(10, 15) if kind == 0 else rng.integers(20, 25)
        context = rng.integers(30, 35, size=2) if kind == 0 else rng.integers(40, 45, size=2)
        stream += [rng.integers(50, 60), context[0], word, context[1], rng.integers(50, 60)]
    return np.asarray(stream)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_words_sharing_contexts_get_similar_vectors_and_absent_words_none():
    vectors = ppmi_svd_vectors(synthetic_corpus(), vocab_size=100, dim=8, window=2)
    assert vectors.shape == (100, 8) and vectors.dtype == np.float32
    same_kind = [cosine(vectors[a], vectors[b]) for a in range(10, 15) for b in range(10, 15) if a < b]
    other_kind = [cosine(vectors[a], vectors[b]) for a in range(10, 15) for b in range(20, 25)]
    assert min(same_kind) > 0.8 > 0.2 > max(other_kind)
    assert not vectors[99].any() and not vectors[:10].any()  # never seen: zero rows, left to the caller


def test_the_same_corpus_gives_the_same_vectors():
    corpus = synthetic_corpus(1, 500)
    np.testing.assert_array_equal(ppmi_svd_vectors(corpus, 100, 8), ppmi_svd_vectors(corpus, 100, 8))


def test_pretraining_starts_seen_words_from_the_vectors_and_keeps_the_rest(tmp_path):
    import torch

    from bertforge import BertConfig
    from bertforge.heads import BertForMaskedLM
    from bertforge.pretrain import start_word_embeddings_from_corpus

    class Corpus:  # the part of ShardedCorpus the function reads
        def __init__(self, tokens):
            self.stream, self.num_tokens = tokens, tokens.size

        def tokens(self, start, stop):
            return self.stream[start:stop]

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))  # fmt: skip
    before = model.bert.embeddings.word.weight.detach().clone()
    start_word_embeddings_from_corpus(model, Corpus(synthetic_corpus()))
    after = model.bert.embeddings.word.weight.detach()
    torch.testing.assert_close(after[99], before[99])  # never in the corpus: its random start stays
    assert not torch.allclose(after[10:15], before[10:15])
    assert cosine(after[10].numpy(), after[11].numpy()) > 0.6 > 0.2 > cosine(after[10].numpy(), after[20].numpy())
    seen = after[10:60]
    assert abs(float(seen.pow(2).mean().sqrt()) - float(before.pow(2).mean().sqrt())) < 0.005  # BERT's scale kept
