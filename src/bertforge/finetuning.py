"""What the three fine-tuning recipes (classification, NER, QA) share: the run state, resumed from a checkpoint;
the loop over epochs (:func:`train_epochs`), made of optimizer steps over micro-batches (gradient accumulation,
several processes) and the end of each epoch — evaluate on dev, keep the best model, stop early, checkpoint.
Plain functions, called from each recipe's straight-line setup → loop → report.

The run state is a dict of plain Python values, saved in every checkpoint: ``epoch`` and ``step`` done, the best
dev score so far (``best``), its epoch (``best_epoch``), the scores a recipe keeps of that epoch for its
report (``best_scores``) and the epochs since it (``stale_epochs``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bertforge.data.classification import bucketed_batches, split_rows
from bertforge.distributed import (
    Processes,
    gather_objects,
    gradient_sync,
    micro_batches_per_step,
    my_share,
    restore_rank_rng,
    share_from_main,
    sum_across,
    unwrap,
)
from bertforge.runtime import autocast
from bertforge.settings import FineTuningSettings, save_run_settings
from bertforge.train import (
    MetricsLog,
    learning_rate_factor,
    load_training_state,
    optimizer_step,
    save_checkpoint,
    save_model_folder,
    set_learning_rate,
)

log = logging.getLogger("bertforge")


def start_run(
    settings: FineTuningSettings,
    checkpoint: Path | None,
    optimizer: torch.optim.Optimizer,
    processes: Processes,
) -> tuple[dict[str, Any], MetricsLog]:
    """The run state and metrics log of a fresh run, or of one resumed from ``checkpoint``
    (:func:`bertforge.train.checkpoint_to_resume`): the optimizer's and this process's random state come back, and
    the log drops what was written after the checkpoint. The main process saves ``settings`` beside the model."""
    state: dict[str, Any] = {
        "epoch": 0, "step": 0, "best": None, "best_epoch": None, "best_scores": None, "stale_epochs": 0,
    }  # fmt: skip
    if checkpoint is not None:
        state.update(load_training_state(checkpoint, optimizer))
        restore_rank_rng(state, processes, settings.seed, state["step"])
        log.info("resumed from %s (epoch %d, step %d)", checkpoint, state["epoch"], state["step"])
    run_dir = Path(settings.out)
    resumed_step = state["step"] if checkpoint is not None else None
    metrics = MetricsLog(run_dir, resume_from_step=resumed_step, write=processes.is_main)
    if processes.is_main:
        save_run_settings(settings, run_dir)
    return state, metrics


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rows: np.ndarray,
    counts: np.ndarray,
    loss_of: Callable[[np.ndarray], torch.Tensor],
    *,
    parts: int,
    max_grad_norm: float,
    processes: Processes,
    precision: str,
    device: torch.device,
) -> float:
    """One optimizer step on the global batch ``rows``, cut into ``parts`` micro-batches shared out among the
    processes (:func:`bertforge.distributed.micro_batches_per_step`: accumulation steps × processes).

    ``loss_of(micro_rows)`` is the model's loss on those rows, a mean over the items ``counts`` gives per row (1
    per input, labelled tokens per window, class weights); each micro-batch's loss is weighted by its share of the
    step's items, so the gradients add up to those of the mean over the whole batch
    (:func:`bertforge.distributed.my_share`), synchronised across processes once, in the last backward pass.
    Returns this process's part of that mean loss (:func:`bertforge.distributed.sum_across` adds the parts).
    """
    micro_batches = split_rows(rows, parts)
    share = my_share(micro_batches, [[counts[micro].sum()] for micro in micro_batches], processes)
    loss_value = 0.0
    for index, (micro, (weight,)) in enumerate(share):
        with gradient_sync(model, last=index == len(share) - 1):
            with autocast(precision, device):
                loss = loss_of(micro)
            (loss * weight).backward()
        loss_value += float(loss.detach()) * weight / processes.world_size
    optimizer_step(model, optimizer, max_grad_norm)
    return loss_value


@dataclass
class DevScores:
    """One evaluation on the dev set, as a recipe reports it to :func:`end_epoch`."""

    value: float  # what picks the best epoch: higher is better
    record: dict[str, float]  # the epoch's "valid" record in metrics.jsonl (step, split and epoch are added)
    summary: str  # one line for the progress bar, e.g. "dev entity F1 0.9123"
    best_files: dict[str, str] = field(default_factory=dict)  # file name → text, written to the run folder if best
    kept: dict[str, Any] | None = None  # scores the run state keeps of the best epoch, for the final report


def end_epoch(
    state: dict[str, Any],
    *,
    evaluate: Callable[[nn.Module], DevScores] | None,
    patience: int | None,
    metric: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Any,
    run_dir: Path,
    processes: Processes,
    metrics: MetricsLog,
    bar: tqdm,
) -> bool:
    """Close an epoch: evaluate, keep the best model in ``run_dir/model``, checkpoint; return whether to stop.

    The main process evaluates (``evaluate`` gets the unwrapped model; None when there is no dev set: every epoch
    then counts as the best, so the last one is kept), writes the epoch's record to ``metrics``, saves the model
    when its score beats every earlier epoch's, and replaces the previous epoch's checkpoint with this one, which
    holds every process's random state for ``--resume``. ``state`` is updated in place; every process ends with
    the main process's decisions. Training stops once ``patience`` epochs in a row (None: never) brought no better
    dev ``metric`` (its name, for the log).
    """
    state["epoch"] += 1
    random_states = gather_objects(torch.get_rng_state(), processes)  # a collective: every process takes part
    if processes.is_main:
        scores = evaluate(unwrap(model)) if evaluate is not None else None
        model.train()
        if scores is not None:
            metrics.write({"step": state["step"], "split": "valid", "epoch": state["epoch"], **scores.record})
            bar.write(f"epoch {state['epoch']}: {scores.summary}")
        if scores is None or state["best"] is None or scores.value > state["best"]:
            state.update(best=scores.value if scores else None, best_scores=scores.kept if scores else None,
                         best_epoch=state["epoch"], stale_epochs=0)  # fmt: skip
            save_model_folder(unwrap(model), tokenizer, run_dir / "model")
            for name, text in (scores.best_files if scores else {}).items():
                (run_dir / name).write_text(text, encoding="utf-8")
        else:
            state["stale_epochs"] += 1
        saved_state = {**state, "rank_torch_rng": random_states}
        save_checkpoint(run_dir, state["step"], unwrap(model), optimizer, saved_state, tokenizer, keep=1)
    state.update(share_from_main(state, processes))
    if patience is not None and state["stale_epochs"] >= patience:
        log.info("no better dev %s for %d epochs: stopping early", metric, state["stale_epochs"])
        return True
    return False


DEFAULT_EPOCHS = 3.0  # BERT's fine-tuning recipe used 2-4 (Devlin et al., 2019)
# Few-sample fine-tuning needs many more updates than 3 epochs give (Mosbach et al., 2021; Zhang et al., 2021,
# "Revisiting Few-sample BERT Fine-tuning"): 1,000 IMDB reviews in 3 epochs (96 steps) left bertforge's own
# BERT at 0.60 test accuracy, 10 epochs (320 steps) reached 0.73 (bench/RESULTS.md, 2026-12-06 session 31)
MIN_DEFAULT_STEPS = 300
MAX_DEFAULT_EPOCHS = 20.0  # Mosbach et al.'s budget for the small GLUE sets


def fine_tuning_epochs(settings: FineTuningSettings, inputs: int) -> float:
    """``settings.epochs``, or when unset :data:`DEFAULT_EPOCHS`, raised for a small training set of ``inputs`` so
    that the run makes at least :data:`MIN_DEFAULT_STEPS` optimizer steps, up to :data:`MAX_DEFAULT_EPOCHS`."""
    if settings.epochs is not None:
        return settings.epochs
    steps_per_epoch = math.ceil(inputs / settings.batch_size)
    return min(max(DEFAULT_EPOCHS, math.ceil(MIN_DEFAULT_STEPS / steps_per_epoch)), MAX_DEFAULT_EPOCHS)


def planned_steps(settings: FineTuningSettings, inputs: int) -> int:
    """Optimizer steps of a run: :func:`fine_tuning_epochs` passes over ``inputs`` in global batches, or
    ``max_steps`` if fewer."""
    epochs = fine_tuning_epochs(settings, inputs)
    if settings.epochs is None and epochs != DEFAULT_EPOCHS:
        log.info("%g epochs (chosen for %d training inputs: at least %d steps; --epochs sets another)", epochs,
                 inputs, MIN_DEFAULT_STEPS)  # fmt: skip
    steps_per_epoch = math.ceil(inputs / settings.batch_size)
    return int(min(settings.max_steps or math.inf, math.ceil(epochs * steps_per_epoch)))


def train_epochs(
    state: dict[str, Any],
    *,
    settings: FineTuningSettings,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lengths: list[int],
    counts: np.ndarray,
    loss_of: Callable[[np.ndarray], torch.Tensor],
    evaluate: Callable[[nn.Module], DevScores] | None,
    metric: str,
    total_steps: int,
    tokenizer: Any,
    run_dir: Path,
    metrics: MetricsLog,
    processes: Processes,
    precision: str,
    device: torch.device,
    description: str,
) -> None:
    """Train from ``state`` (fresh or resumed) until ``total_steps`` or the last epoch, closing each epoch with
    :func:`end_epoch`.

    Each epoch visits the training inputs (``lengths[i]`` tokens for input i) in a new order drawn from the seed
    and the epoch, so a resumed run sees the same batches as an uninterrupted one; ``batch_size`` is the global
    batch, the same steps and data order whatever the number of processes. ``counts`` and ``loss_of`` are
    :func:`train_step`'s. The learning rate warms up linearly and decays linearly to 0 at ``total_steps``.
    """
    parts = micro_batches_per_step(settings.batch_size, settings.gradient_accumulation_steps, processes)
    bar = tqdm(total=total_steps, initial=state["step"], desc=description, unit="step",
               disable=not (settings.progress and processes.is_main), mininterval=1.0)  # fmt: skip
    started = time.perf_counter()
    epochs = math.ceil(fine_tuning_epochs(settings, len(lengths)))
    while state["step"] < total_steps and state["epoch"] < epochs:
        steps = bucketed_batches(lengths, settings.batch_size, shuffle=True, seed=settings.seed, epoch=state["epoch"],
                                 bucket_batches=settings.bucket_batches)  # fmt: skip
        for step_rows in steps:
            if state["step"] >= total_steps:
                break
            lr = set_learning_rate(optimizer, settings.learning_rate,
                                   learning_rate_factor(state["step"] / total_steps, settings.warmup,
                                                        settings.cooldown))  # fmt: skip
            loss_value = train_step(model, optimizer, step_rows, counts, loss_of, parts=parts,
                                    max_grad_norm=settings.max_grad_norm, processes=processes, precision=precision,
                                    device=device)  # fmt: skip
            state["step"] += 1
            bar.update(1)
            if state["step"] % settings.log_every == 0:  # the same steps in every process: a safe collective
                (loss_value,) = sum_across([loss_value], processes)
                metrics.write({"step": state["step"], "split": "train", "epoch": state["epoch"], "lr": lr,
                               "loss": loss_value, "elapsed": time.perf_counter() - started})  # fmt: skip
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        if end_epoch(state, evaluate=evaluate, patience=settings.early_stopping_patience, metric=metric, model=model,
                     optimizer=optimizer, tokenizer=tokenizer, run_dir=run_dir, processes=processes, metrics=metrics,
                     bar=bar):  # fmt: skip
            break
    bar.close()
