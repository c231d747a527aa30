"""Task distillation: a small student classifier (or tagger) trained on a fine-tuned teacher's softened predictions.

The student starts from the teacher itself — its embeddings and every k-th encoder layer — as DistilBERT does
(Sanh et al., 2019), so it begins close to the teacher's function instead of from random weights. The soft-target
loss is Hinton et al. (2015): KL divergence between the teacher's and the student's distributions at temperature
T, multiplied by T² so that its gradients keep the same scale as the gold-label loss when T changes. A tagger's
student learns it per labelled token (the first piece of each word), as its fine-tuning loss is.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.assets import model_architecture, resolve_model_dir
from bertforge.checkpoint import read_weights
from bertforge.classify import encode_texts
from bertforge.config import BertConfig
from bertforge.data.classification import ClassificationFile
from bertforge.distributed import join_processes, leave_processes, wrap_model
from bertforge.errors import BertforgeError, read_user_text
from bertforge.finetune import dev_scorer, encode_file, evaluate_model, print_report, read_split, report_skipped
from bertforge.finetune_ner import evaluate_tagger, print_tagger_test, read_tagging_splits, tagger_dev_scorer
from bertforge.finetuning import planned_steps, start_run, train_epochs
from bertforge.heads import IGNORE_INDEX, BertForSequenceClassification, BertForTokenClassification
from bertforge.inference import EncodedInputs, collate, forward_batches
from bertforge.model import BertModel
from bertforge.ner import encode_sentences, window_labels
from bertforge.quantize import quantize_encoder
from bertforge.runtime import pick_precision
from bertforge.settings import DistillationSettings, DistillConfig, DistillTaggerConfig
from bertforge.tokenizer import BertTokenizer
from bertforge.train import build_optimizer, checkpoint_to_resume, plot_metrics, seed_everything, with_learning_rate

log = logging.getLogger("bertforge")
Head = TypeVar("Head", BertForSequenceClassification, BertForTokenClassification)
HEADS = {"BertForSequenceClassification": BertForSequenceClassification,
         "BertForTokenClassification": BertForTokenClassification}  # fmt: skip


def kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Indices of the teacher layers the student copies: every k-th, ending at the top layer.

    The top layer is always kept because it is the one the classifier head was trained on; 2 of 6 gives [2, 5].
    """
    if not 1 <= student_layers <= teacher_layers:
        raise BertforgeError(
            f"--student-layers {student_layers}: the teacher has {teacher_layers} layers; choose 1 to {teacher_layers}"
        )
    step = teacher_layers / student_layers
    return [round(step * (i + 1)) - 1 for i in range(student_layers)]


def student_from_teacher(teacher: Head, student_layers: int) -> Head:
    """A copy of ``teacher`` keeping its embeddings, pooler, head and the layers :func:`kept_layers` picks."""
    layers = kept_layers(teacher.config.num_hidden_layers, student_layers)
    student = copy.deepcopy(teacher)
    student.config = copy.deepcopy(teacher.config)
    student.config.num_hidden_layers = student_layers
    student.bert.config = student.config
    student.bert.layers = nn.ModuleList(student.bert.layers[i] for i in layers)
    return student.train()


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T² · KL(p_teacher,T ‖ p_student,T), averaged over the batch (Hinton et al., 2015, section 2).

    (B, C) ``student_logits`` and ``teacher_logits``; computed in fp32 so bf16 autocast does not blunt small
    probabilities.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, C)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, C)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float,
    soft_weight: float,
    gold_weight: float,
) -> Tensor:
    """Mean over the batch of soft_weight · soft-target loss + gold_weight · cross-entropy on the gold label.

    (B,) ``labels`` holds -1 for unlabelled rows (``--unlabeled`` text): they add the soft-target term only, so
    every row counts once in the mean whether it has a label or not.
    """
    loss = soft_weight * soft_target_loss(student_logits, teacher_logits, temperature)
    labelled = labels >= 0  # (B,)
    if gold_weight > 0 and bool(labelled.any()):
        gold = F.cross_entropy(student_logits.float()[labelled], labels[labelled], reduction="sum")
        loss = loss + gold_weight * gold / len(labels)
    return loss


def hidden_state_loss(
    student_hidden: tuple[Tensor, ...], teacher_hidden: tuple[Tensor, ...], mask: Tensor, per_input: bool = True
) -> Tensor:
    """Mean squared error between the student's hidden states and the teacher's they map to, over real tokens.

    TinyBERT (Jiao et al., 2020, eqs. 7 and 9) without its projection, as both are equally wide: the embeddings
    match the teacher's embeddings, and student layer i the teacher layer :func:`kept_layers` copied into it
    (the same spacing for a student not made from the teacher). ``student_hidden`` holds S + 1 and
    ``teacher_hidden`` L + 1 tensors (B, T, H); (B, T) ``mask`` marks the tokens that count. ``per_input``: each
    input's error is a mean over its own tokens, and the batch's the mean over inputs, so every input weighs the
    same, as in a classifier's soft-target loss; otherwise the mean over all the batch's counted tokens, as in a
    tagger's. Either way micro-batches and processes add up to the whole batch's loss.
    """
    layers = kept_layers(len(teacher_hidden) - 1, len(student_hidden) - 1)
    pairs = [(student_hidden[0], teacher_hidden[0])]
    pairs += [(student_hidden[i + 1], teacher_hidden[layer + 1]) for i, layer in enumerate(layers)]
    weights = mask.float()  # (B, T)
    if per_input:
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1) / len(weights)
    else:
        weights = weights / weights.sum().clamp(min=1)
    squared = [(student.float() - teacher.float()).pow(2).mean(dim=-1) for student, teacher in pairs]  # (B, T) each
    return (torch.stack(squared).mean(dim=0) * weights).sum()


def check_teacher(model_dir: Path, head: type) -> BertConfig:
    """The teacher's config, after checking that it is a trained ``head``: its head weights and a label set."""
    config = BertConfig.load(model_dir)
    if (
        model_architecture(model_dir) not in HEADS
        or "classifier.weight" not in read_weights(model_dir)
        or not (config.id2label)
    ):
        raise BertforgeError(
            f"{model_dir}: the teacher is not a classifier or tagger (no classifier head or labels); "
            "pass a model from `bertforge finetune classification` or `bertforge finetune ner`"
        )
    if model_architecture(model_dir) != head.__name__:
        raise BertforgeError(f"{model_dir}: the teacher is a {model_architecture(model_dir)}, not a {head.__name__}")
    return config


def read_teacher(settings: DistillationSettings, head: type) -> tuple[Path, list[str], BertTokenizer]:
    """The teacher's folder (checked by :func:`check_teacher`), its labels in id order and its tokenizer."""
    teacher_dir = resolve_model_dir(settings.model)
    config = check_teacher(teacher_dir, head)
    return (
        teacher_dir,
        [config.id2label[i] for i in sorted(config.id2label)],
        BertTokenizer.from_pretrained(teacher_dir),
    )


def check_labels(data: ClassificationFile, teacher_labels: list[str]) -> None:
    """The data's labels must all be the teacher's: the student learns the teacher's classes, in its order."""
    unknown = [name for name in data.label_names if name not in teacher_labels]
    if unknown:
        raise BertforgeError(
            f"{data.path}: labels {unknown} are not among the teacher's {teacher_labels}; "
            "distil on data of the teacher's task"
        )


def build_student(settings: DistillationSettings, teacher: Head, tokenizer: BertTokenizer) -> Head:
    """The student: ``settings.student`` with a new head for the teacher's labels, else the teacher's layers."""
    if settings.student is None:
        return student_from_teacher(teacher, settings.student_layers)
    student_dir = resolve_model_dir(settings.student)
    if BertTokenizer.from_pretrained(student_dir).get_vocab() != tokenizer.get_vocab():
        raise BertforgeError(
            f"{student_dir}: its tokenizer's vocabulary differs from the teacher's; the student must read the same "
            "token ids (or start from the teacher's own layers with --student-layers)"
        )
    encoder = BertModel.from_pretrained(student_dir)
    if settings.hidden_weight > 0 and encoder.config.hidden_size != teacher.config.hidden_size:
        raise BertforgeError(
            f"{student_dir}: hidden_weight needs a student as wide as the teacher ({teacher.config.hidden_size}), "
            f"this one is {encoder.config.hidden_size} wide; set --hidden-weight 0 or choose an equally wide student"
        )
    if encoder.config.hidden_size > teacher.config.hidden_size:
        # Without a hidden-state loss there is no projection between the widths, and a wider student is no saving.
        raise BertforgeError(
            f"{student_dir}: the student ({encoder.config.hidden_size} wide) is wider than the teacher "
            f"({teacher.config.hidden_size}) and there is no projection between them; choose a narrower student"
        )
    labels = {"id2label": teacher.config.id2label, "label2id": teacher.config.label2id}
    student = type(teacher)(dataclasses.replace(encoder.config, **labels))
    student.bert.load_state_dict(encoder.state_dict(), strict=encoder.pooler is not None)
    return student


def teacher_and_student(
    settings: DistillationSettings,
    head: type[Head],
    teacher_dir: Path,
    tokenizer: BertTokenizer,
    device: torch.device,
) -> tuple[Head, Head, Path | None, torch.optim.Optimizer, float]:
    """The frozen teacher, the student (a checkpoint's on --resume), the checkpoint, the student's optimizer and its
    learning rate (the width rule's unless given)."""
    teacher = head.from_pretrained(teacher_dir).to(device).eval()
    checkpoint = checkpoint_to_resume(Path(settings.out), settings.resume)
    student = build_student(settings, teacher, tokenizer)  # also on --resume: its checks are the same
    if checkpoint is not None:
        student = head.from_pretrained(checkpoint)
    student.to(device).train()
    learning_rate = with_learning_rate(settings, student.config.hidden_size).learning_rate
    return teacher, student, checkpoint, build_optimizer(student, learning_rate, settings.weight_decay), learning_rate


def write_report(
    run_dir: Path,
    report: dict[str, Any],
    teacher: nn.Module,
    best: nn.Module,
    test_scores: Callable[[nn.Module, str, str], dict[str, Any]] | None,
    precision: str,
    timed: EncodedInputs | None,
    pad_id: int,
    batch_size: int,
) -> None:
    """Teacher and best student side by side in ``run_dir/report.json``: layers, parameters, test scores
    (``test_scores(model, name, precision)``: the run's precision, fp32 for int8), and inputs per second of
    ``timed`` (None: not timed), fp32 and the student in int8, measured one after the other in this process."""
    for name, trained in (("teacher", teacher), ("student", best)):
        report[name] = {"layers": trained.config.num_hidden_layers, "parameters": count_parameters(trained)}
        if test_scores is not None:
            report[name]["test"] = test_scores(trained, name, precision)
    if timed is not None:
        report["teacher"]["inputs_per_second"] = throughput(teacher, timed, pad_id, batch_size)
        report["student"]["inputs_per_second"] = throughput(best, timed, pad_id, batch_size)
        int8 = quantize_encoder(type(best).from_pretrained(run_dir / "model"))
        report["student"]["int8_inputs_per_second"] = throughput(int8, timed, pad_id, batch_size)
        if test_scores is not None:
            report["student"]["int8_test"] = test_scores(int8, "student in int8", "fp32")
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_metrics(run_dir)
    log.info("best student (epoch %s) saved to %s; report in %s", report["best_epoch"], run_dir / "model",
             run_dir / "report.json")  # fmt: skip


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def throughput(model: nn.Module, inputs: EncodedInputs, pad_id: int, batch_size: int) -> float:
    """Inputs per second of one pass over ``inputs`` in fp32, after a warm-up batch (first-call costs)."""

    def logits(out: Any, batch: dict[str, Tensor]) -> Tensor:
        return out.logits

    warm = EncodedInputs(inputs.input_ids[:batch_size], inputs.token_type_ids[:batch_size], inputs.source[:batch_size])
    forward_batches(model, warm, logits, pad_id=pad_id, batch_size=batch_size)
    started = time.perf_counter()
    forward_batches(model, inputs, logits, pad_id=pad_id, batch_size=batch_size)
    return len(inputs) / (time.perf_counter() - started)


def read_unlabeled(path: str, tokenizer: BertTokenizer, settings: DistillConfig) -> EncodedInputs:
    """One text a line (blank lines skipped), encoded as the training texts are."""
    texts = [line for line in read_user_text(path, "pass a text file, one text a line").splitlines() if line.strip()]
    return encode_texts(tokenizer, texts, max_length=settings.max_length, long_text=settings.long_text,
                        stride=settings.window_stride)  # fmt: skip


def distill_classification(settings: DistillConfig) -> Path:
    """Distil the teacher into a student; return the folder of the best student (a classifier like any other)."""
    # ---- setup: every check before any training ----
    run_dir = Path(settings.out)
    processes, device = join_processes(settings.device)
    seed_everything(settings.seed + processes.rank)
    precision = pick_precision(settings.precision, device)
    teacher_dir, names, tokenizer = read_teacher(settings, BertForSequenceClassification)
    check_labels(read_split(settings, "train", None), names)
    train, dev, test = (read_split(settings, split, names) for split in ("train", "dev", "test"))
    for data in (train, dev, test):
        if data is not None:
            report_skipped(data)
    teacher, student, checkpoint, optimizer, learning_rate = teacher_and_student(
        settings, BertForSequenceClassification, teacher_dir, tokenizer, device
    )
    settings = dataclasses.replace(settings, learning_rate=learning_rate)

    # Inputs: the labelled training texts, then any unlabelled ones (label -1: the soft-target loss only).
    inputs = encode_file(tokenizer, train, settings)
    targets = np.asarray([e.label for e in train.examples], dtype=np.int64)[inputs.source]
    if settings.unlabeled is not None:
        extra = read_unlabeled(settings.unlabeled, tokenizer, settings)
        inputs = EncodedInputs(inputs.input_ids + extra.input_ids, inputs.token_type_ids + extra.token_type_ids,
                               np.concatenate([inputs.source, extra.source + len(train.examples)]))  # fmt: skip
        targets = np.concatenate([targets, np.full(len(extra), -1, dtype=np.int64)])
    # The teacher is frozen and its dropout off, so its logits for an input never change: computed once, before
    # training, in fp32, instead of a teacher forward pass in every step.
    log.info("the teacher's logits for %d inputs, once", len(inputs))  # minutes for 100k inputs: say so first
    teacher_logits = forward_batches(teacher, inputs, lambda out, batch: out.logits, pad_id=tokenizer.pad_token_id,
                                     batch_size=settings.eval_batch_size, device=device,
                                     progress="teacher logits" if settings.progress else None)  # fmt: skip
    soft_targets = torch.from_numpy(np.stack(teacher_logits))  # (N, C)
    total_steps = planned_steps(settings, len(inputs))
    state, metrics = start_run(settings, checkpoint, optimizer, processes)
    model = wrap_model(student, processes, device)
    log.info("distilling %s (%d parameters) into a %d-layer student (%d parameters) on %d inputs; %d steps",
             teacher_dir, count_parameters(teacher), student.config.num_hidden_layers, count_parameters(student),
             len(inputs), total_steps)  # fmt: skip

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in collate(inputs, rows, tokenizer.pad_token_id).items()}
        out = model(**batch, output_hidden_states=settings.hidden_weight > 0)
        loss = distillation_loss(out.logits, soft_targets[rows].to(device),
                                 torch.from_numpy(targets[rows]).to(device), settings.temperature,
                                 settings.soft_weight, settings.gold_weight)  # fmt: skip
        if settings.hidden_weight > 0:
            with torch.no_grad():
                taught = teacher(**batch, output_hidden_states=True).hidden_states
            loss = loss + settings.hidden_weight * hidden_state_loss(out.hidden_states, taught,
                                                                     batch["attention_mask"])  # fmt: skip
        return loss

    dev_scores = dev_scorer(tokenizer, dev, settings, device, precision) if dev is not None else None

    # ---- loop ----
    train_epochs(state, settings=settings, model=model, optimizer=optimizer,
                 lengths=[len(ids) for ids in inputs.input_ids], counts=np.ones(len(inputs)), loss_of=loss_of,
                 evaluate=dev_scores, metric=settings.metric, total_steps=total_steps,
                 tokenizer=tokenizer, run_dir=run_dir, metrics=metrics, processes=processes, precision=precision,
                 device=device, description="distilling")  # fmt: skip

    # ---- teacher and best student side by side: test scores, sizes, speed ----
    if processes.is_main:
        best = BertForSequenceClassification.from_pretrained(run_dir / "model").to(device)

        def test_scores(trained: nn.Module, name: str, precision: str) -> dict[str, Any]:
            scores = evaluate_model(trained, tokenizer, test, settings, device, precision)
            print_report(scores, names, False, title=f"{name} test ({test.path})")
            return scores

        timed = encode_file(tokenizer, test, settings) if test is not None and device.type == "cpu" else None
        write_report(run_dir, {"best_epoch": state["best_epoch"], f"dev_{settings.metric}": state["best"]}, teacher,
                     best, test_scores if test is not None else None, precision, timed, tokenizer.pad_token_id,
                     settings.eval_batch_size)  # fmt: skip
    leave_processes()
    return run_dir / "model"


def distill_tagger(settings: DistillTaggerConfig) -> Path:
    """Distil a tagger: the soft-target loss per labelled token (the word pieces its fine-tuning loss reads);
    return the folder of the best student (a tagger like any other)."""
    # ---- setup: every check before any training ----
    run_dir = Path(settings.out)
    processes, device = join_processes(settings.device)
    seed_everything(settings.seed + processes.rank)
    precision = pick_precision(settings.precision, device)
    teacher_dir, labels, tokenizer = read_teacher(settings, BertForTokenClassification)
    train, dev, test, scheme = read_tagging_splits(settings)
    unknown = {tag for sentences in (train, dev or [], test or []) for s in sentences for tag in s.tags} - set(labels)
    if unknown:
        raise BertforgeError(
            f"{settings.train}: tags {sorted(unknown)} are not among the teacher's {labels}; distil on data of the "
            "teacher's task"
        )
    teacher, student, checkpoint, optimizer, learning_rate = teacher_and_student(
        settings, BertForTokenClassification, teacher_dir, tokenizer, device
    )
    settings = dataclasses.replace(settings, learning_rate=learning_rate)

    encoded = encode_sentences(tokenizer, [s.tokens for s in train], settings.max_length, settings.window_stride)
    targets = window_labels(encoded, [[labels.index(t) for t in s.tags] for s in train], settings.label_all_pieces)
    labelled = np.asarray([int((window != IGNORE_INDEX).sum()) for window in targets])  # (windows,) the loss's tokens
    # Computed once, as for classifiers: (T, C) per window, its own length.
    log.info("the teacher's logits for %d windows, once", len(encoded.inputs))
    teacher_logits = forward_batches(teacher, encoded.inputs, lambda out, batch: out.logits,
                                     pad_id=tokenizer.pad_token_id, per_token=True,
                                     batch_size=settings.eval_batch_size, device=device,
                                     progress="teacher logits" if settings.progress else None)  # fmt: skip
    total_steps = planned_steps(settings, len(encoded.inputs))
    state, metrics = start_run(settings, checkpoint, optimizer, processes)
    model = wrap_model(student, processes, device)
    log.info("distilling %s (%d parameters) into a %d-layer student (%d parameters) on %d sentences (%d windows, "
             "%s tags); %d steps", teacher_dir, count_parameters(teacher), student.config.num_hidden_layers,
             count_parameters(student), len(train), len(encoded.inputs), scheme, total_steps)  # fmt: skip

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in collate(encoded.inputs, rows, tokenizer.pad_token_id).items()}
        width = batch["input_ids"].shape[1]
        gold = torch.as_tensor(
            np.stack([np.pad(targets[r], (0, width - len(targets[r])), constant_values=IGNORE_INDEX) for r in rows]),
            device=device,
        )  # (B, T)
        # (B, T, C) teacher logits, zero rows at padding (never read: not counted)
        soft = torch.as_tensor(np.stack([np.pad(teacher_logits[r], ((0, width - len(teacher_logits[r])), (0, 0)))
                                         for r in rows]), device=device)  # fmt: skip
        counted = gold != IGNORE_INDEX  # (B, T): the tokens the loss reads, a mean over them as in fine-tuning
        out = model(**batch, output_hidden_states=settings.hidden_weight > 0)
        if not bool(counted.any()):  # no word starts in these windows: nothing to learn, and no 0/0
            return out.logits.sum() * 0.0
        loss = distillation_loss(out.logits[counted], soft[counted], gold[counted], settings.temperature,
                                 settings.soft_weight, settings.gold_weight)  # fmt: skip
        if settings.hidden_weight > 0:
            with torch.no_grad():
                taught = teacher(**batch, output_hidden_states=True).hidden_states
            loss = loss + settings.hidden_weight * hidden_state_loss(out.hidden_states, taught, counted,
                                                                     per_input=False)  # fmt: skip
        return loss

    # ---- loop ----
    train_epochs(state, settings=settings, model=model, optimizer=optimizer,
                 lengths=[len(ids) for ids in encoded.inputs.input_ids], counts=labelled, loss_of=loss_of,
                 evaluate=tagger_dev_scorer(tokenizer, dev, settings, device, precision) if dev else None,
                 metric="entity F1", total_steps=total_steps, tokenizer=tokenizer, run_dir=run_dir, metrics=metrics,
                 processes=processes, precision=precision, device=device, description="distilling")  # fmt: skip

    # ---- teacher and best student side by side: test scores, sizes, speed ----
    if processes.is_main:
        best = BertForTokenClassification.from_pretrained(run_dir / "model").to(device)

        def test_scores(trained: nn.Module, name: str, precision: str) -> dict[str, Any]:
            scores = evaluate_tagger(trained, tokenizer, test, settings, device, precision)
            print_tagger_test(scores, title=f"{name} test")
            return scores

        timed = None
        if test and device.type == "cpu":
            timed = encode_sentences(tokenizer, [s.tokens for s in test], settings.max_length,
                                     settings.window_stride).inputs  # fmt: skip
        write_report(run_dir, {"best_epoch": state["best_epoch"], "dev_entity_f1": state["best"]}, teacher, best,
                     test_scores if test else None, precision, timed, tokenizer.pad_token_id,
                     settings.eval_batch_size)  # fmt: skip
    leave_processes()
    return run_dir / "model"
