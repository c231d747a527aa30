"""Checkpoint folders in the Hugging Face layout, and the one map between our parameter names and theirs.

A folder holds ``config.json`` and ``model.safetensors`` (tokenizer files beside them), so a model moves freely
between bertforge and the ``transformers`` ecosystem. Loading also accepts Hugging Face's older
``pytorch_model.bin`` (read with ``weights_only=True``, never unpickling arbitrary objects) and sharded
``model.safetensors.index.json`` folders.

Loading is strict: a weight the model needs but the file lacks, a weight the file has but no module uses, or
a shape that differs is an error listing the names. Two kinds of extra are known to be harmless and are
skipped: Hugging Face's constant ``position_ids``/``token_type_ids`` buffers, and task-head weights when only
the encoder is being loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bertforge.assets import resolve_model_dir
from bertforge.config import BertConfig
from bertforge.errors import BertforgeError

log = logging.getLogger("bertforge")

WEIGHTS_NAME = "model.safetensors"
SHARDED_INDEX_NAME = "model.safetensors.index.json"
PICKLED_WEIGHTS_NAME = "pytorch_model.bin"
ENCODER_PREFIX = "bert."  # where task models keep their encoder, in our names and in Hugging Face's

# ---- the name map ---------------------------------------------------------------------------------------
# (ours, Hugging Face's) for every encoder parameter; "{i}" stands for a layer index. Fused query/key/value
# is handled separately (one tensor of ours is three of theirs). Task heads append their pairs in HEAD_NAMES.
_ENCODER_MODULES = [
    ("embeddings.word", "embeddings.word_embeddings"),
    ("embeddings.position", "embeddings.position_embeddings"),
    ("embeddings.token_type", "embeddings.token_type_embeddings"),
    ("embeddings.norm", "embeddings.LayerNorm"),
    ("layers.{i}.attention.out", "encoder.layer.{i}.attention.output.dense"),
    ("layers.{i}.attention_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
    ("layers.{i}.feed_forward.up", "encoder.layer.{i}.intermediate.dense"),
    ("layers.{i}.feed_forward.down", "encoder.layer.{i}.output.dense"),
    ("layers.{i}.feed_forward_norm", "encoder.layer.{i}.output.LayerNorm"),
    ("pooler.dense", "pooler.dense"),
]
# (ours, Hugging Face's) full names of head parameters; the MLM decoder weight is tied to the word embeddings and
# stored once, under the embeddings, as transformers does.
HEAD_NAMES: list[tuple[str, str]] = [
    *((f"mlm.transform.{kind}", f"cls.predictions.transform.dense.{kind}") for kind in ("weight", "bias")),
    *((f"mlm.norm.{kind}", f"cls.predictions.transform.LayerNorm.{kind}") for kind in ("weight", "bias")),
    ("mlm.bias", "cls.predictions.bias"),
    *((f"nsp.{kind}", f"cls.seq_relationship.{kind}") for kind in ("weight", "bias")),
    *((f"classifier.{kind}", f"classifier.{kind}") for kind in ("weight", "bias")),
    *((f"qa_outputs.{kind}", f"qa_outputs.{kind}") for kind in ("weight", "bias")),
]

_QKV_OURS = re.compile(r"^(?P<prefix>(?:bert\.)?)layers\.(?P<i>\d+)\.attention\.qkv\.(?P<kind>weight|bias)$")
_QKV_HF = re.compile(
    r"^(?P<prefix>(?:bert\.)?)encoder\.layer\.(?P<i>\d+)\.attention\.self\.(?P<part>query|key|value)\."
    r"(?P<kind>weight|bias)$"
)
_QKV_PARTS = ("query", "key", "value")
# Copies that hold nothing of their own: constant buffers some transformers versions save (arange(T), zeros),
# and older checkpoints' explicit copies of the tied MLM decoder weight and bias.
_HARMLESS_HF_KEYS = re.compile(
    r"^(?:(?:bert\.)?embeddings\.(?:position_ids|token_type_ids)|cls\.predictions\.decoder\.(?:weight|bias))$"
)
_ENCODER_KEY = re.compile(r"^(?:bert\.)?(?:embeddings|layers|pooler)\.")
# Parts a checkpoint may have beyond what the model being loaded uses (ours and Hugging Face's names).
_HEAD_PREFIXES = ("mlm.", "nsp.", "classifier.", "qa_outputs.", "cls.", "pooler.")


def _head_of(name: str) -> str | None:
    """The head (or pooler) prefix a parameter name belongs to, if any."""
    bare = name.removeprefix(ENCODER_PREFIX)
    return next((prefix for prefix in _HEAD_PREFIXES if bare.startswith(prefix)), None)


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(rf"^(?P<prefix>(?:bert\.)?){pattern}\.(?P<kind>weight|bias)$")


def _rules(to_hf: bool) -> list[tuple[re.Pattern[str], str]]:
    rules = []
    for ours, theirs in _ENCODER_MODULES:
        source, target = (ours, theirs) if to_hf else (theirs, ours)
        rules.append((_compile(source), target))
    return rules


def _rename(name: str, rules: list[tuple[re.Pattern[str], str]], heads: dict[str, str]) -> str | None:
    if name in heads:
        return heads[name]
    for pattern, target in rules:
        match = pattern.match(name)
        if match:
            layer = match.groupdict().get("i")
            module = target.replace("{i}", layer) if layer is not None else target
            return f"{match['prefix']}{module}.{match['kind']}"
    return None


def to_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our parameter names → Hugging Face's (fused qkv split into query, key, value)."""
    rules, heads = _rules(to_hf=True), dict(HEAD_NAMES)
    converted: dict[str, Tensor] = {}
    for name, tensor in state.items():
        qkv = _QKV_OURS.match(name)
        if qkv:
            for part, piece in zip(_QKV_PARTS, tensor.chunk(3, dim=0), strict=True):
                converted[f"{qkv['prefix']}encoder.layer.{qkv['i']}.attention.self.{part}.{qkv['kind']}"] = piece
            continue
        renamed = _rename(name, rules, heads)
        if renamed is None:
            raise KeyError(f"parameter {name} has no Hugging Face name; add it to bertforge.checkpoint")
        converted[renamed] = tensor
    return converted


def from_hf_state_dict(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Hugging Face names → ours; returns the converted weights and the names nothing maps (harmless skipped).

    Older Google-converted checkpoints name LayerNorm parameters ``gamma``/``beta``; they are read as
    ``weight``/``bias``.
    """
    rules, heads = _rules(to_hf=False), {hf: ours for ours, hf in HEAD_NAMES}
    converted: dict[str, Tensor] = {}
    unmapped: list[str] = []
    qkv_parts: dict[tuple[str, str, str], dict[str, Tensor]] = {}
    for original, tensor in state.items():
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", original)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        if _HARMLESS_HF_KEYS.match(name):
            continue
        qkv = _QKV_HF.match(name)
        if qkv:
            qkv_parts.setdefault((qkv["prefix"], qkv["i"], qkv["kind"]), {})[qkv["part"]] = tensor
            continue
        renamed = _rename(name, rules, heads)
        if renamed is None:
            unmapped.append(original)
        else:
            converted[renamed] = tensor
    for (prefix, layer, kind), parts in qkv_parts.items():
        if len(parts) < 3:  # a partial triple cannot be fused; report the parts that are there
            unmapped.extend(f"{prefix}encoder.layer.{layer}.attention.self.{p}.{kind}" for p in parts)
            continue
        converted[f"{prefix}layers.{layer}.attention.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV_PARTS])
    return converted, unmapped


# ---- saving -------------------------------------------------------------------------------------------


def save_model(model: PretrainedModule, directory: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors``; each file appears atomically (temporary, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
    _write_atomically(directory / "config.json", lambda path: path.write_text(json.dumps(config, indent=2) + "\n"))
    # safetensors refuses tensors that share memory (views, tied weights): store independent copies.
    state = {name: t.detach().contiguous().clone() for name, t in to_hf_state_dict(model.state_dict()).items()}
    _write_atomically(directory / WEIGHTS_NAME, lambda path: save_file(state, str(path), metadata={"format": "pt"}))


def _write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---- loading ------------------------------------------------------------------------------------------


def read_weights(directory: Path) -> dict[str, Tensor]:
    """Read the weights of a checkpoint folder, whichever of the Hugging Face formats it uses."""
    single, index, pickled = (
        directory / WEIGHTS_NAME,
        directory / SHARDED_INDEX_NAME,
        directory / PICKLED_WEIGHTS_NAME,
    )
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as error:
            raise BertforgeError(f"{index}: not a valid sharded-checkpoint index ({error})") from None
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(_read_safetensors(directory / shard))
        return state
    if pickled.is_file():
        try:
            loaded = torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a bad pickle; all mean "unreadable file"
            raise BertforgeError(f"{pickled}: cannot be read as PyTorch weights ({error})") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
            raise BertforgeError(f"{pickled}: expected a dictionary of tensors")
        return loaded
    raise BertforgeError(
        f"{directory}: no weights found (expected {WEIGHTS_NAME}, {SHARDED_INDEX_NAME} or {PICKLED_WEIGHTS_NAME})"
    )


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise BertforgeError(f"{path}: weight file is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise BertforgeError(f"{path}: not a readable safetensors file ({error}); the file may be truncated") from None


def load_model(cls: type[ModelT], directory: str | Path, **config_overrides: object) -> ModelT:
    """Build ``cls`` from the folder's ``config.json`` and load its weights, strictly.

    ``config_overrides`` replace config fields (for example ``attention_implementation="reference"``).
    """
    directory = resolve_model_dir(directory)
    config = BertConfig.load(directory / "config.json")
    if config_overrides:
        unknown = sorted(set(config_overrides) - {f.name for f in dataclasses.fields(BertConfig)})
        if unknown:
            raise BertforgeError(f"unknown config field(s) {', '.join(unknown)}")
        config = dataclasses.replace(config, **config_overrides)
    state, unmapped = from_hf_state_dict(read_weights(directory))
    with _uninitialised():
        model = cls(config)  # random initialisation is wasted on weights the file replaces (a third of a second)
    state = _match_encoder_prefix(state, model)
    if any(name not in state for name in model.state_dict()):
        model = cls(config)  # a head the file lacks starts from BERT's initialisation, seeded as for any new model
    load_state_strictly(model, state, unmapped, source=directory)
    return model


_INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "zeros_", "ones_", "constant_")  # fmt: skip


@contextlib.contextmanager
def _uninitialised() -> Iterator[None]:
    """Modules built inside keep their parameters' memory as allocated: the ``torch.nn.init`` functions that
    ``nn.Linear`` and BERT's initialisation call do nothing (as ``transformers``' ``no_init_weights`` does). Only
    for models whose every weight is then loaded; not thread-safe while it lasts."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _match_encoder_prefix(state: dict[str, Tensor], model: torch.nn.Module) -> dict[str, Tensor]:
    """Move encoder weights under the prefix the model uses: a bare encoder loads into a task model and back."""
    wanted = ENCODER_PREFIX if f"{ENCODER_PREFIX}embeddings.word.weight" in model.state_dict() else ""
    found = ENCODER_PREFIX if f"{ENCODER_PREFIX}embeddings.word.weight" in state else ""
    if wanted == found:
        return state
    return {(wanted + name.removeprefix(found) if _ENCODER_KEY.match(name) else name): t for name, t in state.items()}


def load_state_strictly(model: nn.Module, state: dict[str, Tensor], unmapped: Iterable[str], source: Path) -> None:
    """Copy ``state`` into ``model``; differences in names or shapes are errors that list the names."""
    expected = model.state_dict()
    unexpected = [name for name in state if name not in expected] + list(unmapped)
    # Loading part of a bigger model is normal (an encoder from a task checkpoint, an MLM model from an MLM + NSP
    # one): weights of heads, or of a pooler, that this model does not have at all are skipped with a notice.
    absent = [p for p in _HEAD_PREFIXES if not any(_head_of(name) == p for name in expected)]
    skipped_heads = [name for name in unexpected if _head_of(name) in absent]
    unexpected = [name for name in unexpected if name not in skipped_heads]
    missing = [name for name in expected if name not in state]
    # A task model loaded from an encoder or a pretraining checkpoint keeps its freshly initialised head.
    fresh = [name for name in missing if name.startswith(getattr(model, "initialised_if_missing", ()))]
    missing = [name for name in missing if name not in fresh]
    problems = []
    if missing:
        problems.append(f"missing weights: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected weights: {_names(unexpected)}")
    wrong_shapes = [
        f"{name} {tuple(state[name].shape)} in the file vs {tuple(tensor.shape)} in the model"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    if wrong_shapes:
        problems.append(f"shape mismatch: {_names(wrong_shapes)}")
    if problems:
        raise BertforgeError(
            f"{source}: checkpoint does not fit {type(model).__name__} ({'; '.join(problems)}); "
            "check that config.json belongs to these weights"
        )
    if skipped_heads:
        heads = sorted({_head_of(name).rstrip(".") for name in skipped_heads})
        log.info("%s: %s not used by %s, skipped", source, ", ".join(heads), type(model).__name__)
    if fresh:
        parts = sorted({name.rsplit(".", 1)[0] for name in fresh})
        log.info("%s: %s initialised fresh (not in the checkpoint); fine-tune before use", source, ", ".join(parts))
    model.load_state_dict({name: t for name, t in state.items() if name in expected}, strict=not fresh)


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class PretrainedModule(nn.Module):
    """A module built from a :class:`BertConfig` that saves to and loads from Hugging Face-layout folders.

    The base of :class:`bertforge.model.BertPreTrainedModel`; living here, it lets the model import checkpoints
    without checkpoints importing the model.
    """

    config: BertConfig

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (Hugging Face names) into ``directory``."""
        save_model(self, directory)

    @classmethod
    def from_pretrained(cls: type[ModelT], directory: str | Path, **config_overrides: object) -> ModelT:
        """Load a bertforge or Hugging Face BERT folder; any missing or unexpected weight is an error."""
        return load_model(cls, directory, **config_overrides)


ModelT = TypeVar("ModelT", bound=PretrainedModule)
