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
    pairs: Sequence[str] | None = None,
    *,
    max_length: int,
    long_text: str = "truncate",
    stride: int = WINDOW_STRIDE,
) -> EncodedInputs:
    """Tokenize texts (and optional second texts) into model inputs, truncated or windowed."""
    if long_text not in LONG_TEXT_MODES:
        raise BertforgeError(f"long_text {long_text!r} is not one of {LONG_TEXT_MODES}")
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
