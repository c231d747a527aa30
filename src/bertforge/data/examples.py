"""Pretraining examples built on the fly from token shards, so every epoch sees new pairs and new masks.

With next-sentence prediction (NSP), each example is ``[CLS] A [SEP] B [SEP]`` following Google's
``create_instances_from_document``: A is one or more consecutive sentences of a document, B is the actual
continuation half of the time and a segment of another document otherwise; with ``short_seq_prob`` a shorter
target length is drawn, so the model also sees short inputs; the longer side is truncated, from a random end.
Without NSP (as RoBERTa and later recipes do), text is packed contiguously into ``[CLS] ... [SEP]`` sequences.

Everything is a deterministic function of (seed, epoch): a resumed run re-creates the same batches and skips the
ones already trained on. Masks come from a generator seeded by (seed, epoch, batch index), so skipping batches
never changes the masks of the batches after them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bertforge.data.classification import split_rows
from bertforge.data.masking import MaskingConfig, mask_tokens
from bertforge.data.shard_reader import ShardedCorpus
from bertforge.errors import BertforgeError
from bertforge.settings import MAX_LENGTH


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the example builder writes."""

    cls: int
    sep: int
    pad: int


@dataclass(frozen=True)
class Pair:
    """One NSP example before special tokens: segment A, segment B, and whether B is a random segment."""

    tokens_a: np.ndarray
    tokens_b: np.ndarray
    is_random_next: bool


class PretrainingExamples:
    """Deterministic, epoch-by-epoch stream of masked pretraining batches from a :class:`ShardedCorpus`."""

    def __init__(
        self,
        corpus: ShardedCorpus,
        special: SpecialIds,
        masking: MaskingConfig,
        *,
        max_seq_length: int = MAX_LENGTH,
        short_seq_prob: float = 0.1,
        next_sentence_prediction: bool = True,
        word_start_table: np.ndarray | None = None,
        seed: int = 0,
        shuffle_buffer: int = 10_000,
    ) -> None:
        """``word_start_table`` (V,) bool marks tokens that begin a word (not ``##`` pieces) to turn on
        whole-word masking; ``shuffle_buffer`` examples are shuffled together, bounding memory."""
        if max_seq_length < 8:
            raise BertforgeError(f"max_seq_length {max_seq_length} is too short for pretraining; use at least 8")
        if next_sentence_prediction and corpus.num_documents < 2:
            raise BertforgeError(
                "next-sentence prediction needs at least 2 documents (negatives come from other documents); "
                "separate documents with blank lines, or turn NSP off"
            )
        self.corpus = corpus
        self.special = special
        self.masking = masking
        self.max_seq_length = max_seq_length
        self.short_seq_prob = short_seq_prob
        self.next_sentence_prediction = next_sentence_prediction
        self.word_start_table = word_start_table
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer

    def count(self, epoch: int) -> int:
        """Number of examples in epoch ``epoch`` (NSP pairs vary a little from epoch to epoch)."""
        return sum(1 for _ in (self.pairs(epoch) if self.next_sentence_prediction else self.packed(epoch)))

    # ---- batches ----------------------------------------------------------------------------------------

    def batches(self, epoch: int, batch_size: int, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Masked batches of epoch ``epoch``; the first ``skip`` batches are built but not masked or returned.

        Each batch holds (B, T) ``input_ids``, ``token_type_ids``, ``attention_mask``, ``mlm_labels`` and, with
        NSP, (B,) ``next_sentence_label`` (1 = B is random); T is the longest example in the batch.
        """
        examples = self.pairs(epoch) if self.next_sentence_prediction else self.packed(epoch)
        pending: list = []
        index = 0
        for example in examples:
            pending.append(example)
            if len(pending) == batch_size:
                if index >= skip:
                    yield self._collate(pending, np.random.default_rng([self.seed, epoch, index, 1]))
                index += 1
                pending = []
        if pending and index >= skip:  # the last, smaller batch still trains: no data is dropped
            yield self._collate(pending, np.random.default_rng([self.seed, epoch, index, 1]))

    def _collate(self, examples: list, rng: np.random.Generator) -> dict[str, np.ndarray]:
        special = self.special
        rows = []
        for example in examples:
            if isinstance(example, Pair):
                ids = np.concatenate(
                    [[special.cls], example.tokens_a, [special.sep], example.tokens_b, [special.sep]]
                ).astype(np.int64)
                types = np.zeros(ids.size, dtype=np.int64)
                types[example.tokens_a.size + 2 :] = 1
            else:
                ids = np.concatenate([[special.cls], example, [special.sep]]).astype(np.int64)
                types = np.zeros(ids.size, dtype=np.int64)
            rows.append((ids, types))
        width = max(ids.size for ids, _ in rows)
        input_ids = np.full((len(rows), width), special.pad, dtype=np.int64)
        token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, (ids, types) in enumerate(rows):
            input_ids[row, : ids.size] = ids
            token_type_ids[row, : ids.size] = types
            attention_mask[row, : ids.size] = 1
        candidates = (attention_mask == 1) & (input_ids != special.cls) & (input_ids != special.sep)
        word_starts = None if self.word_start_table is None else self.word_start_table[input_ids]
        corrupted, labels = mask_tokens(input_ids, candidates, self.masking, rng, word_starts)
        batch = {
            "input_ids": corrupted,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "mlm_labels": labels,
        }
        if examples and isinstance(examples[0], Pair):
            batch["next_sentence_label"] = np.array([int(e.is_random_next) for e in examples], dtype=np.int64)
        return batch

    # ---- NSP pairs ----------------------------------------------------------------------------------------

    def pairs(self, epoch: int) -> Iterator[Pair]:
        """All NSP pairs of one epoch, in a shuffled order that depends only on (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch, 0])
        buffer: list[Pair] = []
        for document in rng.permutation(self.corpus.num_documents):
            buffer.extend(self._document_pairs(int(document), rng))
            if len(buffer) >= self.shuffle_buffer:
                yield from _shuffled(buffer, rng)
                buffer = []
        yield from _shuffled(buffer, rng)

    def _document_pairs(self, document: int, rng: np.random.Generator) -> list[Pair]:
        sentences = self.corpus.document_sentences(document)
        max_tokens = self.max_seq_length - 3  # room for [CLS] A [SEP] B [SEP]
        target = max_tokens
        if rng.random() < self.short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        pairs: list[Pair] = []
        chunk: list[np.ndarray] = []
        length = 0
        i = 0
        while i < len(sentences):
            chunk.append(sentences[i])
            length += sentences[i].size
            if i == len(sentences) - 1 or length >= target:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                tokens_a = np.concatenate(chunk[:a_end])
                is_random_next = bool(rng.random() < 0.5)
                if is_random_next:
                    tokens_b = self._random_segment(document, target - tokens_a.size, rng)
                    i -= len(chunk) - a_end  # the unused sentences start the next chunk instead of being lost
                elif len(chunk) >= 2:
                    tokens_b = np.concatenate(chunk[a_end:])
                else:
                    # One long sentence: split it, so the continuation is still real and NSP labels stay 50/50
                    # (Google's recipe makes such chunks always random, skewing the labels).
                    cut = max(1, tokens_a.size // 2)
                    tokens_a, tokens_b = tokens_a[:cut], tokens_a[cut:]
                tokens_a, tokens_b = _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
                if tokens_a.size and tokens_b.size:
                    pairs.append(Pair(tokens_a, tokens_b, is_random_next))
                chunk, length = [], 0
            i += 1
        return pairs

    def _random_segment(self, document: int, target_length: int, rng: np.random.Generator) -> np.ndarray:
        """Consecutive sentences from a random other document, about ``target_length`` tokens."""
        other = int(rng.integers(self.corpus.num_documents - 1))
        other += other >= document  # uniform over every document but this one
        sentences = self.corpus.document_sentences(other)
        start = int(rng.integers(len(sentences)))
        taken, length = [], 0
        for sentence in sentences[start:]:
            taken.append(sentence)
            length += sentence.size
            if length >= max(1, target_length):
                break
        return np.concatenate(taken)

    # ---- packed MLM-only sequences --------------------------------------------------------------------------

    def packed(self, epoch: int) -> Iterator[np.ndarray]:
        """Contiguous text cut into ``max_seq_length - 2`` token pieces, documents in a per-epoch order."""
        rng = np.random.default_rng([self.seed, epoch, 0])
        width = self.max_seq_length - 2
        buffer: list[np.ndarray] = []
        carry = np.zeros(0, dtype=np.int64)
        for document in rng.permutation(self.corpus.num_documents):
            # [SEP] between documents marks the boundary inside a packed sequence (RoBERTa's FULL-SENTENCES).
            text = np.concatenate([carry, *self.corpus.document_sentences(int(document)), [self.special.sep]])
            full = text.size // width * width
            buffer.extend(text[start : start + width] for start in range(0, full, width))
            carry = text[full:]
            if len(buffer) >= self.shuffle_buffer:
                yield from _shuffled(buffer, rng)
                buffer = []
        if carry.size > 1:
            buffer.append(carry[:-1] if carry[-1] == self.special.sep else carry)
        yield from _shuffled(buffer, rng)


def _shuffled(items: list, rng: np.random.Generator) -> Iterator:
    for index in rng.permutation(len(items)):
        yield items[index]


def _truncate_pair(
    tokens_a: np.ndarray, tokens_b: np.ndarray, max_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Trim the longer segment one token at a time, each from a random end, until both fit (Google's recipe).

    Computed in closed form rather than token by token: the longer side is trimmed down to the shorter, then
    the two alternate (B first on ties); of each side's trimmed tokens a Binomial(n, 1/2) share come off the
    front.
    """
    excess = tokens_a.size + tokens_b.size - max_tokens
    if excess <= 0:
        return tokens_a, tokens_b
    gap = abs(tokens_a.size - tokens_b.size)
    from_longer = min(excess, gap)
    rest = excess - from_longer
    trim_a = rest // 2 + (from_longer if tokens_a.size > tokens_b.size else 0)
    trim_b = rest - rest // 2 + (from_longer if tokens_a.size <= tokens_b.size else 0)
    return _trim(tokens_a, trim_a, rng), _trim(tokens_b, trim_b, rng)


def _trim(tokens: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    front = int(rng.binomial(count, 0.5)) if count else 0
    return tokens[front : tokens.size - (count - front)]


def split_batch(batch: dict[str, np.ndarray], parts: int) -> list[dict[str, np.ndarray]]:
    """Rows of a batch in ``parts`` micro-batches of near-equal size (empty ones left out), each trimmed to its
    own longest example: the micro-batches of one optimizer step, for gradient accumulation and processes."""
    micro_batches = []
    for rows in split_rows(np.arange(len(batch["input_ids"])), parts):
        width = int(batch["attention_mask"][rows].sum(axis=1).max())
        micro_batches.append({name: array[rows, :width] if array.ndim == 2 else array[rows]
                              for name, array in batch.items()})  # fmt: skip
    return micro_batches
