"""Token tagging (named entities) at the word-piece level: windows over long texts, words ↔ pieces, tags per word.

Windows. A text longer than ``max_length`` tokens is cut into overlapping windows that share ``stride`` tokens
(:func:`encode_windows`); a token that several windows see gets the mean of their outputs
(:func:`bertforge.inference.mean_over_windows`). The recipe, ``evaluate``, ``predict`` and the NER pipeline all
window this way.

Words. A sentence given as words (a CoNLL file) is rebuilt by joining its words with spaces, and a piece belongs
to the word whose characters contain the piece's first character (:func:`encode_sentences`). So a CoNLL word
that BERT's pre-tokenizer splits further ("U.S." → U . S .) still has exactly one first piece, which is the piece
a tagger is trained on and read from (:func:`predict_tags`).

Shape legend: W windows, T tokens of a window, C tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bertforge.data.tagging import OUTSIDE, repair_bio
from bertforge.heads import IGNORE_INDEX, BertForTokenClassification
from bertforge.inference import EncodedInputs, forward_batches, mean_over_windows, softmax
from bertforge.settings import EVAL_BATCH_SIZE
from bertforge.tokenizer import BertTokenizer

NO_WORD = -1  # word index of a special token ([CLS], [SEP]), and of pieces that start no word


@dataclass
class TagWindows:
    """Windows of word pieces over texts, and where each piece sits in its text."""

    inputs: EncodedInputs  # token ids per window; ``source`` is the text of each window
    offsets: list[np.ndarray]  # per window (T, 2): the piece's character span in its text
    word_ids: list[np.ndarray]  # per window (T,): the tokenizer's word of the piece, NO_WORD for specials

    def __len__(self) -> int:
        return len(self.inputs)


def encode_windows(tokenizer: BertTokenizer, texts: Sequence[str], max_length: int, stride: int) -> TagWindows:
    """Cut every text into windows of at most ``max_length`` tokens, consecutive ones sharing ``stride``."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
    offsets, word_ids = [], []
    for window in range(len(encoded["input_ids"])):
        offsets.append(np.asarray(encoded["offset_mapping"][window], dtype=np.int64).reshape(-1, 2))
        word_ids.append(np.asarray([NO_WORD if w is None else w for w in encoded.word_ids(window)], dtype=np.int64))
    source = np.asarray(encoded["overflow_to_sample_mapping"])
    return TagWindows(EncodedInputs(encoded["input_ids"], encoded["token_type_ids"], source), offsets, word_ids)


@dataclass
class EncodedSentences:
    """Windows of word pieces over sentences given as words, and for each piece the word it belongs to."""

    inputs: EncodedInputs  # token ids per window; ``source`` is the sentence of each window
    first_piece_of: list[np.ndarray]  # per window (T,): index of the word whose first piece this is, else NO_WORD
    word_of: list[np.ndarray]  # per window (T,): index of the word the piece belongs to, NO_WORD for specials


def encode_sentences(
    tokenizer: BertTokenizer, sentences: Sequence[Sequence[str]], max_length: int, stride: int
) -> EncodedSentences:
    """Windows over sentences of words, each piece matched to its word through character offsets."""
    word_starts = [np.cumsum([0] + [len(word) + 1 for word in words[:-1]]) for words in sentences]
    windows = encode_windows(tokenizer, [" ".join(words) for words in sentences], max_length, stride)
    first_piece_of, word_of = [], []
    for window, sentence in enumerate(windows.inputs.source):
        starts, special = word_starts[sentence], windows.word_ids[window] == NO_WORD
        piece_starts = windows.offsets[window][:, 0]  # (T,)
        words = np.where(special, NO_WORD, np.searchsorted(starts, piece_starts, side="right") - 1)
        starts_word = ~special & (piece_starts == starts[np.maximum(words, 0)])
        word_of.append(words)
        first_piece_of.append(np.where(starts_word, words, NO_WORD))
    return EncodedSentences(windows.inputs, first_piece_of, word_of)


def window_labels(encoded: EncodedSentences, tags: list[list[int]], label_all_pieces: bool) -> list[np.ndarray]:
    """Per window (T,): the tag id of the word each labelled piece belongs to, IGNORE_INDEX elsewhere."""
    labels = []
    for window, sentence in enumerate(encoded.inputs.source):
        pieces = encoded.word_of[window] if label_all_pieces else encoded.first_piece_of[window]
        sentence_tags = np.asarray(tags[sentence])
        labels.append(np.where(pieces >= 0, sentence_tags[np.maximum(pieces, 0)], IGNORE_INDEX))
    return labels


def predict_tags(
    model: BertForTokenClassification,
    tokenizer: BertTokenizer,
    sentences: Sequence[Sequence[str]],
    *,
    max_length: int,
    stride: int,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> tuple[list[list[str]], list[np.ndarray]]:
    """BIO tags per word and their (words, C) probabilities, per sentence.

    A word is read from its first piece; a word seen by several windows gets the mean of those pieces' logits.
    A word with no piece (its characters all removed by normalisation) is predicted outside any entity.
    """
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    outside = labels.index(OUTSIDE) if OUTSIDE in labels else 0
    encoded = encode_sentences(tokenizer, sentences, max_length, stride)
    logits = forward_batches(model, encoded.inputs, lambda out, batch: out.logits, pad_id=tokenizer.pad_token_id,
                             per_token=True, batch_size=batch_size, device=device, precision=precision)  # fmt: skip
    means, counts = mean_over_windows(encoded.inputs.source, encoded.first_piece_of, logits,
                                      [len(words) for words in sentences])  # fmt: skip
    tags, probabilities = [], []
    for mean, count in zip(means, counts, strict=True):
        probability = np.where(count[:, None] > 0, softmax(mean), np.eye(len(labels))[outside])  # (words, C)
        tags.append(repair_bio([labels[i] for i in probability.argmax(-1)]))
        probabilities.append(probability)
    return tags, probabilities
