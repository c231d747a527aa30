"""Inference pipelines: ``pipeline(task, model=DIR)(inputs)`` = preprocess → forward → postprocess.

Inputs are batched internally and results come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertforge.assets import resolve_model_dir
from bertforge.embeddings import embed_texts
from bertforge.errors import BertforgeError
from bertforge.heads import BertForMaskedLM
from bertforge.model import BertModel
from bertforge.tokenizer import BertTokenizer
from bertforge.train import autocast, pick_device, pick_precision

TASKS = ("fill-mask", "feature-extraction")


def pipeline(
    task: str, model: str | Path | None = None, *, device: str = "auto", precision: str = "fp32"
) -> FillMaskPipeline | FeatureExtractionPipeline:
    """Build the pipeline for ``task`` from a checkpoint folder (or a packaged model's name)."""
    if task not in TASKS:
        raise BertforgeError(f"unknown task {task!r}; bertforge pipelines: {', '.join(TASKS)}")
    if model is None:
        raise BertforgeError(
            f"pipeline({task!r}) needs model=FOLDER: a checkpoint folder from `bertforge pretrain`, or a "
            "packaged model such as 'all-MiniLM-L6-v2' for feature-extraction (see README)"
        )
    folder = resolve_model_dir(model)
    tokenizer = BertTokenizer.from_pretrained(folder)
    target = pick_device(device)
    if task == "fill-mask":
        return FillMaskPipeline(BertForMaskedLM.from_pretrained(folder), tokenizer, target, precision)
    return FeatureExtractionPipeline(BertModel.from_pretrained(folder), tokenizer, target, precision)


class FillMaskPipeline:
    """Predict the tokens hidden behind ``[MASK]``: the top-k candidates with their probabilities."""

    def __init__(self, model: BertForMaskedLM, tokenizer: BertTokenizer, device: torch.device, precision: str):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.precision = pick_precision(precision, device)

    @torch.inference_mode()
    def __call__(self, inputs: str | Sequence[str], top_k: int = 5, batch_size: int = 32) -> list:
        """For one text with one [MASK]: a list of ``{"token_str", "token", "score", "sequence"}``, best first.

        Several [MASK]s give one such list per mask; a list of texts gives one result per text.
        """
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        results = []
        for start in range(0, len(texts), batch_size):
            results.extend(self._batch(texts[start : start + batch_size], top_k))
        return results[0] if isinstance(inputs, str) else results

    def _batch(self, texts: list[str], top_k: int) -> list:
        mask_id = self.tokenizer.mask_token_id
        encoded = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        positions = encoded["input_ids"] == mask_id  # (B, T)
        for text, count in zip(texts, positions.sum(1).tolist(), strict=True):
            if count == 0:
                raise BertforgeError(f"no [MASK] token in {text!r}; write [MASK] where a word should be predicted")
        inputs = {k: v.to(self.device) for k, v in encoded.items()}
        with autocast(self.precision, self.device):
            logits = self.model(**inputs, mlm_positions=positions.to(self.device)).mlm_logits  # (M, V)
        probabilities = logits.float().softmax(-1)
        scores, ids = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)  # (M, k)
        rows = positions.nonzero()[:, 0].tolist()  # text index of each predicted position, in order
        per_text: list[list[list[dict[str, Any]]]] = [[] for _ in texts]
        for mask_index, row in enumerate(rows):
            candidates = []
            for score, token_id in zip(scores[mask_index].tolist(), ids[mask_index].tolist(), strict=True):
                token = self.tokenizer.convert_ids_to_tokens(token_id)
                word = token.removeprefix("##")
                candidates.append(
                    {
                        "token_str": word,
                        "token": token_id,
                        "score": score,
                        "sequence": _fill(texts[row], len(per_text[row]), word),
                    }
                )
            per_text[row].append(candidates)
        return [masks[0] if len(masks) == 1 else masks for masks in per_text]


def _fill(text: str, occurrence: int, word: str) -> str:
    """``text`` with its ``occurrence``-th "[MASK]" replaced by ``word``, the rest of the text untouched."""
    parts = text.split("[MASK]")
    return "[MASK]".join(parts[: occurrence + 1]) + word + "[MASK]".join(parts[occurrence + 1 :])


class FeatureExtractionPipeline:
    """Sentence vectors (mean pooling, unit length): one (H,) array per text."""

    def __init__(self, model: BertModel, tokenizer: BertTokenizer, device: torch.device, precision: str):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.precision = pick_precision(precision, device)
        self.device = device

    def __call__(self, inputs: str | Sequence[str], pooling: str = "mean", normalize: bool = True) -> np.ndarray:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        with autocast(self.precision, self.device):
            vectors = embed_texts(self.model, self.tokenizer, texts, pooling=pooling, normalize=normalize)
        return vectors[0] if isinstance(inputs, str) else vectors
