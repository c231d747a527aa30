"""Sentence embeddings from a BERT encoder: the work behind ``bertforge embed``.

Texts go through the one length-sorted forward pass (:func:`bertforge.inference.forward_batches`); vectors come
back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bertforge.classify import encode_texts
from bertforge.errors import BertforgeError
from bertforge.heads import mean_over_tokens
from bertforge.inference import forward_batches
from bertforge.model import BertModel, BertModelOutput
from bertforge.runtime import pick_precision
from bertforge.settings import PREDICT_BATCH_SIZE
from bertforge.tokenizer import BertTokenizer

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


def embed_texts(
    model: BertModel,
    tokenizer: BertTokenizer,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    batch_size: int = PREDICT_BATCH_SIZE,
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
    precision = pick_precision(precision, next(model.parameters()).device)
    inputs = encode_texts(tokenizer, list(texts), max_length=max_length or model.config.max_position_embeddings)

    def pool(out: BertModelOutput, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H) sentence vectors of one batch."""
        if pooling == "mean":
            pooled = mean_over_tokens(out.last_hidden_state, batch["attention_mask"])
        elif pooling == "cls":
            pooled = out.last_hidden_state[:, 0]
        else:
            pooled = out.pooler_output
        return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    vectors = forward_batches(model, inputs, pool, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                              precision=precision, progress="embedding" if show_progress else None)  # fmt: skip
    return np.stack(vectors) if vectors else np.zeros((0, model.config.hidden_size), dtype=np.float32)
