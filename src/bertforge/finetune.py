"""The text-classification fine-tuning recipe: a pretrained encoder + a new classifier head → a task model.

Straight-line: setup (data, model, optimizer) → loop over epochs (train, evaluate on dev, keep the best) →
test with the best checkpoint → save. Settings come from :class:`~bertforge.settings.FinetuneConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertforge.assets import resolve_model_dir
from bertforge.classify import encode_texts, predict_logits
from bertforge.config import BertConfig
from bertforge.data.catalogue import DATASETS, resolve_dataset
from bertforge.data.classification import (
    ClassificationFile,
    read_classification_file,
)
from bertforge.distributed import (
    join_processes,
    leave_processes,
    wrap_model,
)
from bertforge.errors import BertforgeError
from bertforge.finetuning import DevScores, planned_steps, start_run, train_epochs
from bertforge.heads import BertForSequenceClassification
from bertforge.inference import EncodedInputs, collate
from bertforge.metrics import classification_report, format_confusion_matrix, pearson, spearman
from bertforge.model import BertModel
from bertforge.runtime import pick_precision
from bertforge.settings import FinetuneConfig
from bertforge.tokenizer import BertTokenizer
from bertforge.train import (
    build_optimizer,
    checkpoint_to_resume,
    plot_metrics,
    seed_everything,
    with_learning_rate,
)

log = logging.getLogger("bertforge")


def read_split(settings: FinetuneConfig, split: str, label_names: list[str] | None) -> ClassificationFile | None:
    """Read the train/dev/test file named in the settings (a catalogue name defaults dev and test too)."""
    name = {"train": settings.train, "dev": settings.dev, "test": settings.test}[split]
    if name is None and settings.train in DATASETS:
        name = settings.train
    if name is None:
        return None
    data = read_classification_file(
        resolve_dataset(name, split),
        text_column=settings.text_column,
        text_pair_column=settings.text_pair_column,
        label_column=settings.label_column,
        label_names=label_names,
        regression=settings.regression,
        bad_rows=settings.bad_rows,
    )
    if split == "train" and settings.train_limit is not None:  # the label set is still the whole file's
        data = dataclasses.replace(data, examples=data.examples[: settings.train_limit])
    return data


def encode_file(tokenizer: BertTokenizer, data: ClassificationFile, settings: FinetuneConfig) -> EncodedInputs:
    pairs = [e.text_pair or "" for e in data.examples] if settings.text_pair_column else None
    return encode_texts(
        tokenizer,
        [e.text for e in data.examples],
        pairs,
        max_length=settings.max_length,
        long_text=settings.long_text,
        stride=settings.window_stride,
    )


def score(logits: np.ndarray, data: ClassificationFile, regression: bool) -> dict[str, Any]:
    """Metrics of predictions against the file's labels: classification report, or correlations."""
    labels = np.asarray([e.label for e in data.examples])
    if regression:
        predicted = logits[:, 0]
        return {
            "pearson": pearson(predicted, labels),
            "spearman": spearman(predicted, labels),
            "mse": float(np.mean((predicted - labels) ** 2)),
        }
    return classification_report(logits.argmax(-1), labels.astype(np.int64), data.label_names)


def evaluate_model(
    model: BertForSequenceClassification,
    tokenizer: BertTokenizer,
    data: ClassificationFile,
    settings: FinetuneConfig,
    device: torch.device,
    precision: str,
) -> dict[str, Any]:
    inputs = encode_file(tokenizer, data, settings)
    logits = predict_logits(
        model,
        inputs,
        len(data.examples),
        pad_id=tokenizer.pad_token_id,
        batch_size=settings.eval_batch_size,
        device=device,
        precision=precision,
    )
    return score(logits, data, settings.regression)


def dev_scorer(
    tokenizer: BertTokenizer, dev: ClassificationFile, settings: FinetuneConfig, device: torch.device, precision: str
) -> Callable[[torch.nn.Module], DevScores]:
    """The dev evaluation the shared training loop calls after each epoch: ``settings.metric`` decides the best."""

    def dev_scores(trained: torch.nn.Module) -> DevScores:
        scores = evaluate_model(trained, tokenizer, dev, settings, device, precision)
        value = scores[settings.metric]
        return DevScores(value, {k: v for k, v in scores.items() if isinstance(v, float)},
                         f"dev {settings.metric} {value:.4f}")  # fmt: skip

    return dev_scores


def report_skipped(data: ClassificationFile) -> None:
    if data.skipped:
        reasons = "; ".join(f"line {line}: {reason}" for line, reason in data.skipped[:3])
        more = f" and {len(data.skipped) - 3} more" if len(data.skipped) > 3 else ""
        log.warning("%s: skipped %d bad row(s) (%s%s)", data.path, len(data.skipped), reasons, more)


def finetune_classification(settings: FinetuneConfig) -> Path:
    """Fine-tune; return the folder of the best model (Hugging Face layout, tokenizer included)."""
    # ---- setup ----
    run_dir = Path(settings.out)
    processes, device = join_processes(settings.device)
    seed_everything(settings.seed + processes.rank)  # dropout differs between processes; rank 0 is a lone run
    precision = pick_precision(settings.precision, device)
    model_dir = resolve_model_dir(settings.model)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    train = read_split(settings, "train", None)
    labels = None if settings.regression else train.label_names
    dev, test = read_split(settings, "dev", labels), read_split(settings, "test", labels)
    for data in (train, dev, test):
        if data is not None:
            report_skipped(data)
    names = ["value"] if settings.regression else train.label_names
    head_config = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    if settings.classifier_pooling is not None:
        head_config["classifier_pooling"] = settings.classifier_pooling
    if settings.dropout is not None:
        head_config.update(hidden_dropout_prob=settings.dropout, attention_probs_dropout_prob=settings.dropout)
    base = BertConfig.load(model_dir)
    if base.id2label and base.id2label != head_config["id2label"] and not settings.resume:
        log.info("%s was trained for labels %s; a new head is made for %s", model_dir, base.id2label, names)
    checkpoint = checkpoint_to_resume(run_dir, settings.resume)
    start_dir = checkpoint or model_dir
    if checkpoint is None and settings.random_init:  # the from-scratch baseline that measures pretraining's worth
        model = BertForSequenceClassification(dataclasses.replace(base, **head_config))
    elif checkpoint is None and base.id2label and base.id2label != head_config["id2label"]:
        model = _fresh_head_model(model_dir, head_config)
    else:
        model = BertForSequenceClassification.from_pretrained(start_dir, **head_config)
    model.to(device).train()
    settings = with_learning_rate(settings, base.hidden_size)
    optimizer = build_optimizer(model, settings.learning_rate, settings.weight_decay)

    train_inputs = encode_file(tokenizer, train, settings)
    targets = np.asarray([e.label for e in train.examples])[train_inputs.source]
    class_weights = _class_weights(settings, targets, len(names), device)
    # What each input counts for in the loss, a mean: its class weight (a weighted cross-entropy divides by their
    # sum), else 1. Micro-batches of one step are weighted by their share of the step's total.
    counted = np.ones(len(targets)) if class_weights is None else class_weights.cpu().numpy()[targets.astype(int)]
    total_steps = planned_steps(settings, len(train_inputs))
    state, metrics = start_run(settings, checkpoint, optimizer, processes)
    model = wrap_model(model, processes, device)
    log.info(
        "fine-tuning %s for %s on %d examples (%d inputs) on %s in %s; %d steps",
        model_dir,
        "regression" if settings.regression else f"{len(names)} classes",
        len(train.examples),
        len(train_inputs),
        device,
        precision,
        total_steps,
    )

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in collate(train_inputs, rows, tokenizer.pad_token_id).items()}
        label_dtype = torch.float32 if settings.regression else torch.long
        batch_labels = torch.as_tensor(targets[rows], dtype=label_dtype, device=device)
        return model(**batch, labels=batch_labels, class_weights=class_weights).loss

    dev_scores = dev_scorer(tokenizer, dev, settings, device, precision) if dev is not None else None

    # ---- loop ----
    train_epochs(state, settings=settings, model=model, optimizer=optimizer,
                 lengths=[len(ids) for ids in train_inputs.input_ids], counts=counted, loss_of=loss_of,
                 evaluate=dev_scores, metric=settings.metric, total_steps=total_steps,
                 tokenizer=tokenizer, run_dir=run_dir, metrics=metrics, processes=processes, precision=precision,
                 device=device, description="fine-tuning")  # fmt: skip

    # ---- test with the best model, report, save ----
    if processes.is_main:
        best = BertForSequenceClassification.from_pretrained(run_dir / "model").to(device)
        report: dict[str, Any] = {"best_epoch": state["best_epoch"], f"dev_{settings.metric}": state["best"]}
        if test is not None:
            report["test"] = evaluate_model(best, tokenizer, test, settings, device, precision)
            print_report(report["test"], names, settings.regression, title=f"test ({test.path})")
        (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_metrics(run_dir)
        log.info("best model (epoch %s) saved to %s; curves in %s", state["best_epoch"], run_dir / "model", run_dir)
    leave_processes()
    return run_dir / "model"


def print_report(scores: dict[str, Any], names: list[str], regression: bool, title: str) -> None:
    """The metrics and, for classes, the confusion matrix, as a terminal table."""
    print(f"{title}:")
    if regression:
        print("  " + ", ".join(f"{k} {scores[k]:.4f}" for k in ("pearson", "spearman", "mse")))
        return
    print(f"  accuracy {scores['accuracy']:.4f}  macro-F1 {scores['macro_f1']:.4f}  "
          f"MCC {scores['matthews_corrcoef']:.4f}  ({scores['support']} examples)")  # fmt: skip
    print("  " + format_confusion_matrix(np.asarray(scores["confusion_matrix"]), names).replace("\n", "\n  "))


def _fresh_head_model(model_dir: Path, head_config: dict) -> BertForSequenceClassification:
    """A model whose classifier differs in shape from the checkpoint's: load the encoder, make a new head."""
    encoder = BertModel.from_pretrained(model_dir)
    model = BertForSequenceClassification(dataclasses.replace(encoder.config, **head_config))
    model.bert.load_state_dict(encoder.state_dict())
    return model


def _class_weights(
    settings: FinetuneConfig, targets: np.ndarray, classes: int, device: torch.device
) -> torch.Tensor | None:
    if settings.class_weights is None or settings.regression:
        return None
    if settings.class_weights != "balanced":
        raise BertforgeError(f"class_weights {settings.class_weights!r}: only 'balanced' is supported")
    counts = np.bincount(targets.astype(np.int64), minlength=classes).astype(np.float64)
    weights = len(targets) / (classes * np.maximum(counts, 1))  # inverse frequency, mean weight 1
    return torch.tensor(weights, dtype=torch.float32, device=device)
