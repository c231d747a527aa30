"""The one batched forward pass every head's inference goes through: classification, tagging, question
answering, sentence embeddings, and the pipelines over them.

Inputs are token-id lists of any length (:class:`EncodedInputs`). They are batched in length order, so each
batch pads only to its own longest input and little compute goes to padding; results come back in input order.
What a head returns is read by a small function of the model's output, so this loop is written once.

Shape legend: N inputs, B batch, T sequence length (longest in the batch), C classes, H hidden size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bertforge.runtime import autocast
from bertforge.settings import EVAL_BATCH_SIZE


@dataclass
class EncodedInputs:
    """Token ids of every model input (a text, or one window of a long text), and which text it came from."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    source: np.ndarray  # (N,) index of the original text of each input; repeated for windows of one text

    def __len__(self) -> int:
        return len(self.input_ids)


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


# What to keep of a batch's output: (model output, the (B, T) batch it was computed from) → (B, ...) tensor.
Reader = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]


@torch.inference_mode()
def forward_batches(
    model: torch.nn.Module,
    inputs: EncodedInputs,
    read: Reader,
    *,
    pad_id: int,
    per_token: bool = False,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | None = None,
    precision: str = "fp32",
    progress: str | None = None,
    extra_inputs: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> list[np.ndarray]:
    """Run ``model`` over every input in length-sorted batches; one float32 array per input, in input order.

    Args:
        read: picks the result from the model's output, e.g. ``lambda out, batch: out.logits``; it returns
            (B, ...) per input or, with ``per_token``, (B, T, ...) per token.
        per_token: cut each input's (T, ...) rows to its own length, dropping the padding.
        device: where the batches go; default the model's device (the CPU for a model without parameters).
        precision: "fp32" or "bf16" (autocast), already resolved (:func:`bertforge.runtime.pick_precision`).
        progress: a progress-bar label, or None for no bar.
        extra_inputs: more keyword arguments of the model, made from each batch (e.g. fill-mask's positions).
    """
    model.eval()
    if device is None:
        device = next((parameter.device for parameter in model.parameters()), torch.device("cpu"))
    results: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(inputs)
    batches = length_sorted_batches([len(ids) for ids in inputs.input_ids], batch_size)
    for rows in tqdm(batches, desc=progress, unit="batch", disable=progress is None):
        batch = {name: tensor.to(device) for name, tensor in collate(inputs, rows, pad_id).items()}
        with autocast(precision, device):
            output = model(**batch, **(extra_inputs(batch) if extra_inputs else {}))
            values = read(output, batch).float().cpu().numpy()  # (B, ...) or (B, T, ...)
        for slot, row in enumerate(rows):
            results[row] = values[slot, : len(inputs.input_ids[row])] if per_token else values[slot]
    return results


def mean_over_windows(
    source: np.ndarray, keys: Sequence[np.ndarray], values: Sequence[np.ndarray], sizes: Sequence[int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Average per-token values over the windows of each text, for tokens that several windows see.

    Args:
        source: (W,) the text of each window.
        keys: per window (T,): the slot of each token in its text's result (0 ≤ slot < size), or -1 to skip it.
        values: per window (T, C): what to average, e.g. logits or probabilities.
        sizes: slots per text.

    Returns per text its (size, C) means (zeros where no window saw the slot) and (size,) window counts.
    """
    classes = values[0].shape[-1] if len(values) else 0
    totals = [np.zeros((size, classes), dtype=np.float32) for size in sizes]
    counts = [np.zeros(size, dtype=np.int64) for size in sizes]
    for window, text in enumerate(source):
        positions = np.flatnonzero(keys[window] >= 0)
        np.add.at(totals[text], keys[window][positions], values[window][positions])
        np.add.at(counts[text], keys[window][positions], 1)
    return [total / np.maximum(count, 1)[:, None] for total, count in zip(totals, counts, strict=True)], counts


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis, computed stably."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
