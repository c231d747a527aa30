"""Sequence classification inputs and logits, shared by fine-tuning, evaluation, `predict` and the
text-classification pipelines (the forward pass itself: :func:`bertforge.inference.forward_batches`).

Long texts are either truncated to ``max_length`` or, with ``long_text="window"``, cut into overlapping windows
of ``max_length`` tokens (consecutive windows share ``stride`` tokens); a text's logits are then the mean of its
windows' logits.

Shape legend: C classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bertforge.errors import BertforgeError
from bertforge.inference import EncodedInputs, forward_batches
from bertforge.settings import EVAL_BATCH_SIZE, WINDOW_STRIDE
from bertforge.tokenizer import BertTokenizer

LONG_TEXT_MODES = ("truncate", "window")


def encode_texts(
    tokenizer: BertTokenizer,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None = None,
    *,
    max_length: int,
    long_text: str = "truncate",
    stride: int = WINDOW_STRIDE,
) -> EncodedInputs:
    """Tokenize texts (and optional second texts) into model inputs, truncated or windowed.

    A None in ``pairs`` marks a text without a second segment: it is encoded exactly as it would be alone
    ([CLS] text [SEP], not followed by an empty segment), so a text's answer does not depend on its company.
    """
    if long_text not in LONG_TEXT_MODES:
        raise BertforgeError(f"long_text {long_text!r} is not one of {LONG_TEXT_MODES}")
    if pairs is not None and any(pair is None for pair in pairs):
        if all(pair is None for pair in pairs):
            pairs = None
        else:
            return _encode_mixed(tokenizer, texts, pairs, max_length=max_length, long_text=long_text, stride=stride)
    if long_text == "truncate" or not texts:
        encoded = tokenizer(list(texts), list(pairs) if pairs else None, truncation=True, max_length=max_length)
        source = np.arange(len(texts))
    else:
        # Pairs keep their second text whole and window the first (only_first), as a premise is usually the long one.
        encoded = tokenizer(
            list(texts),
            list(pairs) if pairs else None,
            truncation="only_first" if pairs else True,
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
        )
        source = np.asarray(encoded["overflow_to_sample_mapping"])
    return EncodedInputs(encoded["input_ids"], encoded["token_type_ids"], source)


def _encode_mixed(
    tokenizer: BertTokenizer,
    texts: Sequence[str],
    pairs: Sequence[str | None],
    *,
    max_length: int,
    long_text: str,
    stride: int,
) -> EncodedInputs:
    """Texts alone and text pairs encoded apart and joined; ``source`` still names each input's text."""
    input_ids: list[list[int]] = []
    token_type_ids: list[list[int]] = []
    sources = []
    for with_pair in (False, True):
        rows = np.asarray([row for row, pair in enumerate(pairs) if (pair is not None) == with_pair])
        part = encode_texts(
            tokenizer,
            [texts[row] for row in rows],
            [pairs[row] for row in rows] if with_pair else None,
            max_length=max_length,
            long_text=long_text,
            stride=stride,
        )
        input_ids += part.input_ids
        token_type_ids += part.token_type_ids
        sources.append(rows[part.source])
    return EncodedInputs(input_ids, token_type_ids, np.concatenate(sources))


def predict_logits(
    model: torch.nn.Module,
    inputs: EncodedInputs,
    num_texts: int,
    *,
    pad_id: int,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """(num_texts, C) float32 logits; a text split into windows gets the mean of its windows' logits."""
    if not len(inputs):
        return np.zeros((0, 0), dtype=np.float32)
    window_logits = np.stack(forward_batches(model, inputs, lambda out, batch: out.logits, pad_id=pad_id,
                                             batch_size=batch_size, device=device, precision=precision))  # fmt: skip
    totals = np.zeros((num_texts, window_logits.shape[1]), dtype=np.float32)  # (num_texts, C)
    np.add.at(totals, inputs.source, window_logits)
    counts = np.bincount(inputs.source, minlength=num_texts)[:, None]
    return totals / np.maximum(counts, 1)
