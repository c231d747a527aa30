"""Sequence classification inputs and batched inference, shared by fine-tuning, evaluation, `predict` and the
text-classification pipelines.

Long texts are either truncated to ``max_length`` or, with ``long_text="window"``, cut into overlapping windows
of ``max_length`` tokens (consecutive windows share ``stride`` tokens); a text's logits are then the mean of its
windows' logits. Batches group inputs of similar length, so little compute is spent on padding.

Shape legend: B batch, T sequence length (longest in the batch), C classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bertforge.errors import BertforgeError
from bertforge.tokenizer import BertTokenizer
from bertforge.train import autocast

LONG_TEXT_MODES = ("truncate", "window")


@dataclass
class EncodedInputs:
    """Token ids of every model input (a text, or one window of a long text), and which text it came from."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    source: np.ndarray  # (N,) index of the original text of each input; repeated for windows of one text

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_texts(
    tokenizer: BertTokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    *,
    max_length: int = 128,
    long_text: str = "truncate",
    stride: int = 64,
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


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Deterministic batches of indices in length order (for inference: order does not matter, padding does)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def collate(inputs: EncodedInputs, rows: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the chosen inputs to the longest of them: (B, T) ids, segment ids and attention mask."""
    width = max(len(inputs.input_ids[i]) for i in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for slot, i in enumerate(rows):
        length = len(inputs.input_ids[i])
        input_ids[slot, :length] = inputs.input_ids[i]
        token_type_ids[slot, :length] = inputs.token_type_ids[i]
        attention_mask[slot, :length] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "attention_mask": torch.from_numpy(attention_mask),
    }


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    inputs: EncodedInputs,
    num_texts: int,
    *,
    pad_id: int,
    batch_size: int = 64,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """(num_texts, C) float32 logits; a text split into windows gets the mean of its windows' logits."""
    model.eval()
    device = device or next(model.parameters()).device
    window_logits: np.ndarray | None = None
    for rows in length_sorted_batches([len(ids) for ids in inputs.input_ids], batch_size):
        batch = {name: tensor.to(device) for name, tensor in collate(inputs, rows, pad_id).items()}
        with autocast(precision, device):
            logits = model(**batch).logits.float().cpu().numpy()  # (B, C)
        if window_logits is None:
            window_logits = np.zeros((len(inputs), logits.shape[1]), dtype=np.float32)
        window_logits[rows] = logits
    if window_logits is None:
        return np.zeros((0, 0), dtype=np.float32)
    totals = np.zeros((num_texts, window_logits.shape[1]), dtype=np.float32)
    np.add.at(totals, inputs.source, window_logits)
    counts = np.bincount(inputs.source, minlength=num_texts)[:, None]
    return totals / np.maximum(counts, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
