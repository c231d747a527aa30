"""What every training recipe shares: AdamW groups, the learning-rate schedule, atomic resumable checkpoints,
the metrics log and its plots (device and precision choice: :mod:`bertforge.runtime`). The loops themselves live
in the recipes (:mod:`bertforge.pretrain`, fine-tuning), straight-line from setup to save.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from bertforge.errors import BertforgeError

log = logging.getLogger("bertforge")

SettingsT = TypeVar("SettingsT")  # a recipe's settings dataclass

TRAINING_STATE_NAME = "training_state.pt"


# ---- memory and seeds ------------------------------------------------------------------------------------


# Allocations above this size get their own memory map, returned to the system when freed.
HEAP_MMAP_THRESHOLD = 1 << 20


def return_freed_memory_to_the_system() -> bool:
    """Stop glibc's heap from holding on to freed activations: ~30% lower peak memory in CPU training.

    Each training step frees and reallocates hundreds of MB of activations. glibc serves big blocks with their
    own memory maps, but after the first such block is freed it raises that threshold (up to 32 MiB), so later
    activations come from the heap, whose freed holes are reused badly and never given back: resident memory
    grows by a third over the live tensors. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``) keeps every
    block of 1 MiB or more in its own map. The price: fresh pages fault in on every allocation, measured 10-20%
    slower steps (bench/RESULTS.md), so recipes do this only on request (``low_memory``). Returns whether the
    setting took effect (glibc on Linux only); it lasts for the life of the process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, HEAP_MMAP_THRESHOLD))  # -3 = M_MMAP_THRESHOLD in glibc's malloc.h
    except (OSError, AttributeError):  # another C library (musl) or none: keep its defaults
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- optimisation ---------------------------------------------------------------------------------------------


def build_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and LayerNorm parameters, as in BERT's optimizer.

    The fused kernel (one pass over each parameter's memory) where this PyTorch has it for the parameters' device:
    the default CPU implementation makes about ten passes. For MiniLM-L6 (22.7M parameters, one thread) a step of
    it took 164-249 ms against 19-29 ms fused, and a Rotten Tomatoes fine-tuning step fell from 1,140 to 785 ms
    (bench/RESULTS.md, eighth session). Same update rule; only the rounding differs.
    """
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_norm_or_bias = parameter.ndim < 2 or "norm" in name.split(".")[-2]
        (no_decay if is_norm_or_bias else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=True)
    except RuntimeError:  # no fused kernel for this device in this PyTorch
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


def fine_tuning_learning_rate(hidden_size: int) -> float:
    """The peak fine-tuning learning rate a recipe uses when none is given: 5e-5 × (384 / ``hidden_size``)²,
    within [2e-5, 5e-4]. It passes through the two widths measured here: 5e-5 for MiniLM-L6 (384), and about 5e-4
    for bertforge's own BERT-tiny (128), whose pretrained arm scored 0.71 at 1.5e-4, 0.76 at 5e-4 and 0.74 at 1e-3
    on Rotten Tomatoes (bench/RESULTS.md, 2026-12-04). BERT-base (768) gets 2e-5, the low end of what Devlin et al.
    (2019) searched."""
    return min(max(5e-5 * (384 / hidden_size) ** 2, 2e-5), 5e-4)


def with_learning_rate(settings: SettingsT, hidden_size: int) -> SettingsT:
    """Fine-tuning ``settings`` with ``learning_rate`` filled in from the model's width when it was left unset."""
    if settings.learning_rate is not None:
        return settings
    rate = fine_tuning_learning_rate(hidden_size)
    log.info("learning rate %.2g (chosen for hidden size %d; --learning-rate sets another)", rate, hidden_size)
    return dataclasses.replace(settings, learning_rate=rate)


def learning_rate_factor(progress: float, warmup: float, cooldown: float = 1.0) -> float:
    """Linear warm-up over the first ``warmup`` share of training, then linear decay to zero over the last
    ``cooldown`` share, at the peak in between (warm-up, stable, decay: Hu et al., 2024, MiniCPM). With
    ``cooldown`` 1 the decay starts right after warm-up, as in BERT.

    ``progress`` in [0, 1] is steps done / total steps, or, on a time budget, minutes spent / budget.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    decay_start = max(warmup, 1.0 - cooldown)
    if progress < decay_start:
        return 1.0
    return max(0.0, (1.0 - progress) / max(1e-12, 1.0 - decay_start))


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float) -> None:
    """Clip the gradients' global norm to ``max_grad_norm`` (0: no clipping), update, and clear the gradients."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def set_learning_rate(optimizer: torch.optim.Optimizer, peak: float, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = peak * factor
    return peak * factor


# ---- checkpoints ----------------------------------------------------------------------------------------------


def save_model_folder(
    model: nn.Module, tokenizer: Any, folder: Path, extra_state: dict[str, Any] | None = None
) -> Path:
    """Write model + tokenizer (+ an optional training-state file) into ``folder``, replacing it atomically.

    Everything is written under a temporary name beside ``folder`` and renamed when complete, so a crash
    mid-write never leaves a folder that looks whole.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    if extra_state is not None:
        torch.save(extra_state, temporary / TRAINING_STATE_NAME)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temporary, folder)
    return folder


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    tokenizer: Any,
    keep: int,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNNN`` (model folder + training state) atomically; keep the last ``keep``.

    ``optimizer_state``: the state keyed by parameter names (``distributed.optimizer_state_by_name``) in place of
    ``optimizer.state_dict()``, which numbers parameters by position.
    """
    root = run_dir / "checkpoints"
    final = save_model_folder(
        model,
        tokenizer,
        root / f"step-{step:07d}",
        {
            **state,
            "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
            "optimizer_by_name": optimizer_state is not None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    )
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    return checkpoints[-1] if checkpoints else None


def checkpoint_to_resume(run_dir: Path, resume: bool) -> Path | None:
    """The latest complete checkpoint (weights and training state) of ``run_dir`` when ``resume``, else None."""
    if not resume:
        return None
    found = latest_checkpoint(run_dir)
    if found is None or not (found / TRAINING_STATE_NAME).is_file():
        log.info("%s has no checkpoint yet; starting from scratch", run_dir)
        return None
    return found


def load_training_state(
    checkpoint: Path, optimizer: torch.optim.Optimizer, model: nn.Module | None = None
) -> dict[str, Any]:
    """Restore optimizer and RNG states from a checkpoint folder; return the recipe's own saved state.

    ``model`` (wrapped for several processes or not) is needed for an optimizer state saved by parameter name.
    """
    path = checkpoint / TRAINING_STATE_NAME
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.pop("optimizer_by_name", False):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            if model is None:
                raise ValueError("this checkpoint's optimizer state is keyed by parameter name; pass the model")
            options = StateDictOptions(full_state_dict=True)
            set_optimizer_state_dict(model, optimizer, optim_state_dict=state.pop("optimizer"), options=options)
        else:
            optimizer.load_state_dict(state.pop("optimizer"))
    except FileNotFoundError:
        raise BertforgeError(f"{path}: missing; {checkpoint} is not a complete checkpoint") from None
    except Exception as error:  # a truncated or foreign file fails in many ways; all mean "cannot resume"
        raise BertforgeError(
            f"{path}: cannot be read ({str(error).splitlines()[0]}); delete {checkpoint} to resume from the one "
            "before it"
        ) from None
    torch.set_rng_state(state.pop("torch_rng"))
    cuda_states = state.pop("cuda_rng")
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return state


# ---- metrics ----------------------------------------------------------------------------------------------


class MetricsLog:
    """Appends one JSON object per line to ``run_dir/metrics.jsonl``; a resumed run continues the same file."""

    def __init__(self, run_dir: Path, resume_from_step: int | None = None, write: bool = True) -> None:
        """``write=False`` (the other processes of a distributed run) makes a log that writes nothing."""
        self.path = run_dir / "metrics.jsonl"
        self.enabled = write
        if not write:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from_step is None:
            self.path.write_text("")
        elif self.path.exists():  # drop lines logged after the checkpoint we resume from: they will be redone
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_from_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise BertforgeError(f"{path}: no metrics log; is {run_dir} a training run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


EVAL_PANEL_TITLES = {"seq_length": "validation examples' length (tokens)"}  # pretraining's phases


def plot_metrics(run_dir: Path) -> Path:
    """Render training loss, learning rate and every evaluation metric of a run to ``run_dir/curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("split") == "train"]
    evaluation = [r for r in records if r.get("split") == "valid"]
    loss_keys = sorted({k for r in train for k in r if k.endswith("loss")})
    eval_keys = sorted({k for r in evaluation for k in r if k not in ("step", "split", "epoch", "elapsed")})
    panels = [("training loss", train, loss_keys), ("learning rate", train, ["lr"])]
    panels += [(EVAL_PANEL_TITLES.get(key, key), evaluation, [key]) for key in eval_keys]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    for axis, (title, data, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            points = [(r["step"], r[key]) for r in data if key in r]
            if points:
                axis.plot(*zip(*points, strict=True), label=key, marker="o" if data is evaluation else None)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if len(keys) > 1:
            axis.legend()
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.tight_layout()
    output = Path(run_dir) / "curves.png"
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(array).to(device, non_blocking=True) for name, array in batch.items()}
