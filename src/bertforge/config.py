"""BertConfig: the architecture of a BERT encoder, stored as a Hugging Face compatible ``config.json``.

Field names are Hugging Face's, so a ``config.json`` written here loads in ``transformers`` and one written
there loads here. Keys that ``transformers`` writes but that do not change the architecture are accepted and
ignored (listed in :data:`IGNORED_HF_KEYS`); any other unknown key is an error, because a silently ignored
typo such as ``num_hidden_layer`` would train a different model than the user asked for.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertforge.errors import BertforgeError

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "reference")

# Keys found in Hugging Face BERT config.json files that carry no architecture: bookkeeping, generation
# settings, and options of transformers' BertModel that we do not support in their non-default form (checked
# in `_check_hf_options`).
IGNORED_HF_KEYS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "gradient_checkpointing",
        "use_cache",
        "position_embedding_type",
        "is_decoder",
        "add_cross_attention",
        "classifier_dropout",
        "directionality",
        "output_past",
        "bos_token_id",
        "eos_token_id",
        "tie_word_embeddings",
        "problem_type",
        "finetuning_task",
        "pooler_fc_size",
        "pooler_num_attention_heads",
        "pooler_num_fc_layers",
        "pooler_size_per_head",
        "pooler_type",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT encoder (Devlin et al., 2019, section 3), in Hugging Face's names."""

    vocab_size: int = 30522  # WordPiece vocabulary size; must match the tokenizer's vocab.txt
    hidden_size: int = 768  # width H of every token vector; the model's main capacity knob
    num_hidden_layers: int = 12  # number of encoder layers L
    num_attention_heads: int = 12  # heads A per layer; hidden_size must divide evenly (head size H/A, 64 in BERT)
    intermediate_size: int = 3072  # feed-forward inner width, 4H in all released BERTs
    hidden_act: str = "gelu"  # feed-forward activation; "gelu" is the exact erf form BERT was trained with
    hidden_dropout_prob: float = 0.1  # dropout on embeddings and on each sub-layer's output before the residual
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities
    max_position_embeddings: int = 512  # longest input; positions are learned, so this fixes the table size
    type_vocab_size: int = 2  # segment ids: 2 for sentence A / sentence B
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon; BERT's 1e-12 matters for bit-level parity
    initializer_range: float = 0.02  # std of the normal initialisation of weights
    pad_token_id: int = 0  # id of [PAD]; its embedding starts at zero and receives no gradient
    attention_implementation: str = "sdpa"  # "sdpa" (fused kernel) or "reference" (written out step by step)
    # What a sequence classifier reads: "cls", BERT's pooled [CLS] vector, or "mean", the mean of the last layer's
    # token vectors. MLM-only pretraining never trains [CLS] or the pooler, so the mean is what such a model offers
    # (bench/RESULTS.md). transformers' BertForSequenceClassification knows only "cls" and ignores this field.
    classifier_pooling: str = "cls"
    id2label: dict[int, str] = field(default_factory=dict)  # task heads: class index -> label name
    label2id: dict[str, int] = field(default_factory=dict)  # task heads: label name -> class index

    def __post_init__(self) -> None:
        self.id2label = {int(k): v for k, v in self.id2label.items()}  # JSON keys are strings
        self.validate()

    def validate(self) -> None:
        """Raise :class:`BertforgeError` when the fields do not describe a buildable model."""
        positive = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BertforgeError(f"config field {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise BertforgeError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; choose heads so that hidden_size / heads is a whole head size"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise BertforgeError(f"config field {name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise BertforgeError(f"hidden_act {self.hidden_act!r} is not supported; use one of {ACTIVATIONS}")
        check_classifier_pooling(self.classifier_pooling)
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise BertforgeError(
                f"attention_implementation {self.attention_implementation!r} is not one of {ATTENTION_IMPLEMENTATIONS}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise BertforgeError(
                f"pad_token_id {self.pad_token_id} is outside the vocabulary (0..{self.vocab_size - 1})"
            )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ---- presets ----------------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BertConfig:
        """A named size from Google's released BERT family (Turc et al., 2019, "Well-Read Students")."""
        layers, hidden = preset_size(name)
        sizes = dict(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=hidden // 64,
            intermediate_size=4 * hidden,
        )
        return cls(**{**sizes, **overrides})

    # ---- JSON ---------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Hugging Face ``config.json`` content (adds ``model_type`` so ``AutoConfig`` recognises it)."""
        data = dataclasses.asdict(self)
        data["id2label"] = {str(k): v for k, v in self.id2label.items()}
        if not self.id2label:
            del data["id2label"], data["label2id"]
        return {"model_type": "bert", **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> BertConfig:
        """Build from a ``config.json`` dictionary; ``source`` names the file in error messages."""
        if not isinstance(data, dict):
            raise BertforgeError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - IGNORED_HF_KEYS)
        if unknown:
            raise BertforgeError(f"{source}: unknown config field(s) {', '.join(unknown)}; check the spelling")
        _check_hf_options(data, source)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except BertforgeError as error:
            raise BertforgeError(f"{source}: {error}") from None
        except TypeError as error:
            raise BertforgeError(f"{source}: {error}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BertConfig:
        """Read a ``config.json`` file, or the one inside a checkpoint folder."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise BertforgeError(f"{path}: no such config file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BertforgeError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(data, source=str(path))


# name -> (layers, hidden); heads = hidden / 64 and FFN = 4 * hidden, as in Google's BERT release.
PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}

# Google's release names its 24 compact models by size, e.g. "bert_uncased_L-2_H-256_A-4"; "L2-H256" here.
GRID_NAME = re.compile(r"L(\d+)-H(\d+)")


def is_preset(name: str) -> bool:
    """Whether ``name`` is a named preset or a layers-hidden size such as "L2-H256"."""
    return name in PRESETS or GRID_NAME.fullmatch(name) is not None


def preset_size(name: str) -> tuple[int, int]:
    """(layers, hidden) of a named preset or of "L{layers}-H{hidden}" (hidden a multiple of 64, as in the grid)."""
    if name in PRESETS:
        return PRESETS[name]
    grid = GRID_NAME.fullmatch(name)
    if grid is None:
        raise BertforgeError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or a size like L2-H256")
    layers, hidden = int(grid[1]), int(grid[2])
    if layers < 1 or hidden < 64 or hidden % 64:
        raise BertforgeError(f"preset {name!r}: needs at least 1 layer and a hidden size that is a multiple of 64")
    return layers, hidden


CLASSIFIER_POOLINGS = ("cls", "mean")  # what a sequence classifier reads: the pooled [CLS] vector, or the token mean


def check_classifier_pooling(value: str | None, unset_allowed: bool = False) -> None:
    """Raise :class:`BertforgeError` unless ``value`` is one of :data:`CLASSIFIER_POOLINGS` (or None, if allowed)."""
    if not (value in CLASSIFIER_POOLINGS or (unset_allowed and value is None)):
        raise BertforgeError(f"classifier_pooling must be {' or '.join(CLASSIFIER_POOLINGS)}, got {value!r}")


def _check_hf_options(data: dict[str, Any], source: str) -> None:
    """Reject Hugging Face options whose non-default values would change the computation we implement."""
    expected = {
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "model_type": "bert",
    }
    for key, value in expected.items():
        if key in data and data[key] != value:
            raise BertforgeError(f"{source}: {key}={data[key]!r} is not supported (bertforge implements {value!r})")
