"""bertforge: a complete BERT system from scratch — tokenizer, encoder, pretraining, fine-tuning, pipelines."""

from bertforge.config import BertConfig
from bertforge.errors import BertforgeError
from bertforge.model import BertModel, BertModelOutput

__all__ = ["BertConfig", "BertModel", "BertModelOutput", "BertforgeError"]
__version__ = "0.1.0"
