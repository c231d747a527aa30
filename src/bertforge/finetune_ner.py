"""The named-entity-recognition recipe: a pretrained encoder + a per-token classifier → a tagger.

Straight-line: read CoNLL files (tags converted to BIO) → encode sentences into windows, labelling the first
word piece of each word (the others are ignored, -100, unless ``label_all_pieces``; how words meet pieces:
:mod:`bertforge.ner`) → train, evaluating entity F1 (seqeval's definition) on dev after each epoch and keeping
the best → test → save.
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
from bertforge.config import BertConfig
from bertforge.data.tagging import (
    OUTSIDE,
    TaggedSentence,
    detect_scheme,
    read_tagging_file,
    resolve_tagging_dataset,
    to_bio,
)
from bertforge.distributed import (
    join_processes,
    leave_processes,
    wrap_model,
)
from bertforge.errors import BertforgeError
from bertforge.finetuning import DevScores, planned_steps, start_run, train_epochs
from bertforge.heads import IGNORE_INDEX, BertForTokenClassification
from bertforge.inference import collate
from bertforge.ner import encode_sentences, predict_tags, window_labels
from bertforge.ner_metrics import entity_scores
from bertforge.runtime import pick_precision
from bertforge.settings import NerConfig
from bertforge.tokenizer import BertTokenizer
from bertforge.train import (
    build_optimizer,
    checkpoint_to_resume,
    plot_metrics,
    seed_everything,
    with_learning_rate,
)

log = logging.getLogger("bertforge")


def evaluate_tagger(
    model: BertForTokenClassification,
    tokenizer: BertTokenizer,
    sentences: list[TaggedSentence],
    settings: NerConfig,
    device: torch.device,
    precision: str,
) -> dict[str, Any]:
    """Entity precision, recall and F1 (overall and per type, seqeval's definition) and token accuracy."""
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    unknown = {tag for s in sentences for tag in s.tags} - set(labels)
    if unknown:
        raise BertforgeError(f"the data has tags the model was not trained for: {', '.join(sorted(unknown))}")
    predicted, _ = predict_tags(model, tokenizer, [s.tokens for s in sentences], max_length=settings.max_length,
                                stride=settings.window_stride, batch_size=settings.eval_batch_size, device=device,
                                precision=precision)  # fmt: skip
    return entity_scores([s.tags for s in sentences], predicted)


def read_bio(name: str, split: str, settings: NerConfig, scheme: str | None) -> tuple[list[TaggedSentence], str]:
    """Read a split (a file, or the ``msra_ner`` recipe) and convert its tags to BIO."""
    path = resolve_tagging_dataset(name, split)
    sentences = read_tagging_file(path, token_column=settings.token_column, tag_column=settings.tag_column)
    scheme = scheme or detect_scheme(tag for s in sentences for tag in s.tags)
    return [dataclasses.replace(s, tags=to_bio(s.tags, scheme)) for s in sentences], scheme


def read_tagging_splits(
    settings: NerConfig,
) -> tuple[list[TaggedSentence], list[TaggedSentence] | None, list[TaggedSentence] | None, str]:
    """The train, dev and test sentences (BIO tags; dev and test None where not given) and the files' scheme."""
    train, scheme = read_bio(settings.train, "train", settings, None)
    train = train[: settings.train_limit]  # None: all of them
    named = settings.train == "msra_ner"  # a recipe name brings its own dev and test splits
    dev_name, test_name = (
        settings.dev or ("msra_ner" if named else None),
        settings.test or ("msra_ner" if named else None),
    )
    dev = read_bio(dev_name, "dev", settings, scheme)[0] if dev_name else None
    test = read_bio(test_name, "test", settings, scheme)[0] if test_name else None
    return train, dev, test, scheme


def tagger_dev_scorer(
    tokenizer: BertTokenizer, dev: list[TaggedSentence], settings: NerConfig, device: torch.device, precision: str
) -> Callable[[torch.nn.Module], DevScores]:
    """The end-of-epoch evaluation of a tagger on ``dev``: entity F1 picks the best epoch."""

    def dev_scores(trained: torch.nn.Module) -> DevScores:
        scores = evaluate_tagger(trained, tokenizer, dev, settings, device, precision)
        record = {"entity_f1": scores["f1"], "entity_precision": scores["precision"],
                  "entity_recall": scores["recall"], "token_accuracy": scores["token_accuracy"]}  # fmt: skip
        return DevScores(scores["f1"], record, f"dev entity F1 {scores['f1']:.4f}")

    return dev_scores


def print_tagger_test(scores: dict[str, Any], title: str = "test") -> None:
    print(f"{title}: entity F1 {scores['f1']:.4f} (precision {scores['precision']:.4f}, "
          f"recall {scores['recall']:.4f}), token accuracy {scores['token_accuracy']:.4f}")  # fmt: skip
    for kind, by_type in scores["per_type"].items():
        print(f"  {kind:<8} F1 {by_type['f1']:.4f}  ({by_type['support']} entities)")


def finetune_ner(settings: NerConfig) -> Path:
    """Fine-tune a tagger; return the folder of the best model (Hugging Face layout, tokenizer included)."""
    # ---- setup ----
    run_dir = Path(settings.out)
    processes, device = join_processes(settings.device)
    seed_everything(settings.seed + processes.rank)  # dropout differs between processes; rank 0 is a lone run
    precision = pick_precision(settings.precision, device)
    model_dir = resolve_model_dir(settings.model)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    train, dev, test, scheme = read_tagging_splits(settings)
    labels = [OUTSIDE, *sorted({tag for s in train for tag in s.tags} - {OUTSIDE})]
    for name, sentences in (("dev", dev), ("test", test)):
        unknown = {tag for s in sentences or [] for tag in s.tags} - set(labels)
        if unknown:
            raise BertforgeError(f"{name} file has tags the training file lacks: {', '.join(sorted(unknown))}")
    label_config = {"id2label": dict(enumerate(labels)), "label2id": {t: i for i, t in enumerate(labels)}}
    checkpoint = checkpoint_to_resume(run_dir, settings.resume)
    if checkpoint is None and settings.random_init:  # the from-scratch baseline that measures pretraining's worth
        model = BertForTokenClassification(dataclasses.replace(BertConfig.load(model_dir), **label_config))
    else:
        model = BertForTokenClassification.from_pretrained(checkpoint or model_dir, **label_config)
    model.to(device).train()
    settings = with_learning_rate(settings, model.config.hidden_size)
    optimizer = build_optimizer(model, settings.learning_rate, settings.weight_decay)

    encoded = encode_sentences(tokenizer, [s.tokens for s in train], settings.max_length, settings.window_stride)
    targets = window_labels(encoded, [[labels.index(t) for t in s.tags] for s in train], settings.label_all_pieces)
    labelled = np.asarray([int((window != IGNORE_INDEX).sum()) for window in targets])  # (windows,) the loss's tokens
    total_steps = planned_steps(settings, len(encoded.inputs))
    state, metrics = start_run(settings, checkpoint, optimizer, processes)
    model = wrap_model(model, processes, device)
    log.info(
        "fine-tuning %s for %d tags (%s in the files) on %d sentences (%d windows) on %s in %s; %d steps",
        model_dir, len(labels), scheme, len(train), len(encoded.inputs), device, precision, total_steps,
    )  # fmt: skip

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in collate(encoded.inputs, rows, tokenizer.pad_token_id).items()}
        width = batch["input_ids"].shape[1]
        label_rows = [np.pad(targets[r], (0, width - len(targets[r])), constant_values=IGNORE_INDEX) for r in rows]
        return model(**batch, labels=torch.as_tensor(np.stack(label_rows), device=device)).loss

    # ---- loop ----
    # The loss is a mean over labelled tokens, whose number differs between micro-batches of equal size.
    train_epochs(state, settings=settings, model=model, optimizer=optimizer,
                 lengths=[len(ids) for ids in encoded.inputs.input_ids], counts=labelled, loss_of=loss_of,
                 evaluate=tagger_dev_scorer(tokenizer, dev, settings, device, precision) if dev else None,
                 metric="entity F1", total_steps=total_steps,
                 tokenizer=tokenizer, run_dir=run_dir, metrics=metrics, processes=processes, precision=precision,
                 device=device, description="fine-tuning NER")  # fmt: skip

    # ---- test with the best model, report, save ----
    if processes.is_main:
        best = BertForTokenClassification.from_pretrained(run_dir / "model").to(device)
        report: dict[str, Any] = {"best_epoch": state["best_epoch"], "dev_entity_f1": state["best"]}
        if test:
            report["test"] = evaluate_tagger(best, tokenizer, test, settings, device, precision)
            print_tagger_test(report["test"])
        (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_metrics(run_dir)
        log.info("best model (epoch %s) saved to %s", state["best_epoch"], run_dir / "model")
    leave_processes()
    return run_dir / "model"
