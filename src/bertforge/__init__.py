"""bertforge: a complete BERT system from scratch — tokenizer, encoder, pretraining, fine-tuning, pipelines.

Public names are imported on first use, so ``import bertforge`` (and ``bertforge --help``) stays fast and does
not load PyTorch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BertConfig": "bertforge.config",
    "BertforgeError": "bertforge.errors",
    "BertModel": "bertforge.model",
    "BertModelOutput": "bertforge.model",
    "BertForPreTraining": "bertforge.heads",
    "BertForMaskedLM": "bertforge.heads",
    "BertForSequenceClassification": "bertforge.heads",
    "BertForTokenClassification": "bertforge.heads",
    "BertForQuestionAnswering": "bertforge.heads",
    "pipeline": "bertforge.pipelines",
    "BertTokenizer": "bertforge.tokenizer",
    "train_tokenizer": "bertforge.tokenizer",
    "embed_texts": "bertforge.embeddings",
}
__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertModelOutput",
    "BertTokenizer",
    "BertforgeError",
    "embed_texts",
    "pipeline",
    "train_tokenizer",
]

if TYPE_CHECKING:
    from bertforge.config import BertConfig
    from bertforge.embeddings import embed_texts
    from bertforge.errors import BertforgeError
    from bertforge.heads import (
        BertForMaskedLM,
        BertForPreTraining,
        BertForQuestionAnswering,
        BertForSequenceClassification,
        BertForTokenClassification,
    )
    from bertforge.model import BertModel, BertModelOutput
    from bertforge.pipelines import pipeline
    from bertforge.tokenizer import BertTokenizer, train_tokenizer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bertforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
