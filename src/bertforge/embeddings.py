"""Sentence embeddings from a BERT encoder: the work behind ``bertforge embed``.

Texts are sorted by token length before batching, so each batch pads only to its own longest text and little
compute goes to padding; vectors come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bertforge.classify import collate, encode_texts, length_sorted_batches
from bertforge.errors import BertforgeError
from bertforge.heads import mean_over_tokens
from bertforge.model import BertModel
from bertforge.tokenizer import BertTokenizer
from bertforge.train import autocast, pick_precision

POOLINGS = ("mean", "cls", "pooler")


def read_text_lines(path: str | Path) -> list[str]:
    """One text per line (UTF-8). Blank lines are kept as empty texts so that row i is always line i + 1."""
    path = Path(path)
    if not path.is_file():
        raise BertforgeError(f"{path}: no such file" if not path.exists() else f"{path}: is not a file")
    data = path.read_bytes()
    if not data.strip():
        raise BertforgeError(f"{path}: the file is empty; put one text per line")
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise BertforgeError(f"{path}:{line}: contains NUL bytes, so it looks binary; pass a UTF-8 text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise BertforgeError(f"{path}:{line}: not valid UTF-8 ({error.reason}); re-encode the file as UTF-8") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines are a file-ending habit, not texts
        lines.pop()
    return lines


@torch.inference_mode()
def embed_texts(
    model: BertModel,
    tokenizer: BertTokenizer,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool = False,
    show_progress: bool = False,
    precision: str = "fp32",
) -> np.ndarray:
    """Encode ``texts`` into an (N, H) float32 array.

    Args:
        pooling: "mean" (average of real-token vectors, as sentence-transformers models are trained),
            "cls" (the [CLS] vector of the last layer) or "pooler" (BERT's tanh pooler over [CLS]).
        max_length: longer texts are truncated; default the model's max_position_embeddings.
        normalize: scale every vector to unit L2 norm, so dot products are cosine similarities.
        precision: "fp32", "bf16" (autocast; fast on CPUs with AVX-512 BF16 and on GPUs) or "auto".
    """
    if pooling not in POOLINGS:
        raise BertforgeError(f"pooling {pooling!r} is not one of {POOLINGS}")
    if pooling == "pooler" and model.pooler is None:
        raise BertforgeError("this model has no pooler; use pooling 'mean' or 'cls'")
    if batch_size < 1:
        raise BertforgeError(f"batch size must be at least 1, got {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    precision = pick_precision(precision, device)
    inputs = encode_texts(tokenizer, list(texts), max_length=max_length or model.config.max_position_embeddings)
    vectors = np.zeros((len(inputs), model.config.hidden_size), dtype=np.float32)
    batches = length_sorted_batches([len(ids) for ids in inputs.input_ids], batch_size)
    for rows in tqdm(batches, desc="embedding", unit="batch", disable=not show_progress):
        batch = {name: tensor.to(device) for name, tensor in collate(inputs, rows, tokenizer.pad_token_id).items()}
        with autocast(precision, device):
            out = model(**batch)
        if pooling == "mean":
            pooled = mean_over_tokens(out.last_hidden_state, batch["attention_mask"])  # (B, H)
        elif pooling == "cls":
            pooled = out.last_hidden_state[:, 0]
        else:
            pooled = out.pooler_output
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        vectors[rows] = pooled.float().cpu().numpy()
    return vectors
