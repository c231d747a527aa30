"""Task distillation: a small student classifier trained on a fine-tuned teacher's softened predictions.

The student starts from the teacher itself — its embeddings and every k-th encoder layer — as DistilBERT does
(Sanh et al., 2019), so it begins close to the teacher's function instead of from random weights. The soft-target
loss is Hinton et al. (2015): KL divergence between the teacher's and the student's distributions at temperature
T, multiplied by T² so that its gradients keep the same scale as the gold-label loss when T changes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.assets import resolve_model_dir
from bertforge.checkpoint import read_weights
from bertforge.classify import encode_texts
from bertforge.config import BertConfig
from bertforge.data.classification import ClassificationFile
from bertforge.distributed import join_processes, leave_processes, wrap_model
from bertforge.errors import BertforgeError, read_user_text
from bertforge.finetune import dev_scorer, encode_file, evaluate_model, print_report, read_split, report_skipped
from bertforge.finetuning import planned_steps, start_run, train_epochs
from bertforge.heads import BertForSequenceClassification
from bertforge.inference import EncodedInputs, collate, forward_batches
from bertforge.model import BertModel
from bertforge.quantize import quantize_encoder
from bertforge.runtime import pick_precision
from bertforge.settings import DistillConfig
from bertforge.tokenizer import BertTokenizer
from bertforge.train import build_optimizer, checkpoint_to_resume, plot_metrics, seed_everything, with_learning_rate

log = logging.getLogger("bertforge")


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


def student_from_teacher(teacher: BertForSequenceClassification, student_layers: int) -> BertForSequenceClassification:
    """A copy of ``teacher`` keeping its embeddings, pooler, classifier and the layers :func:`kept_layers` picks."""
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
    student_hidden: tuple[Tensor, ...], teacher_hidden: tuple[Tensor, ...], attention_mask: Tensor
) -> Tensor:
    """Mean squared error between the student's hidden states and the teacher's they map to, over real tokens.

    TinyBERT (Jiao et al., 2020, eqs. 7 and 9) without its projection, as both are equally wide: the embeddings
    match the teacher's embeddings, and student layer i the teacher layer :func:`kept_layers` copied into it
    (the same spacing for a student not made from the teacher). ``student_hidden`` holds S + 1 and
    ``teacher_hidden`` L + 1 tensors (B, T, H); (B, T) ``attention_mask`` marks the real tokens. Each input's error
    is a mean over its own tokens, and the batch's the mean over inputs: every input weighs the same, as in the
    soft-target loss, so micro-batches and processes add up to the whole batch's loss.
    """
    layers = kept_layers(len(teacher_hidden) - 1, len(student_hidden) - 1)
    pairs = [(student_hidden[0], teacher_hidden[0])]
    pairs += [(student_hidden[i + 1], teacher_hidden[layer + 1]) for i, layer in enumerate(layers)]
    real = attention_mask.float()  # (B, T)
    per_input = 0.0
    for student, teacher in pairs:
        squared = (student.float() - teacher.float()).pow(2).mean(dim=-1)  # (B, T)
        per_input = per_input + (squared * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)  # (B,)
    return (per_input / len(pairs)).mean()


def check_teacher(model_dir: Path) -> BertConfig:
    """The teacher's config, after checking that it is a trained classifier: a head and a label set."""
    config = BertConfig.load(model_dir)
    if "classifier.weight" not in read_weights(model_dir) or not config.id2label:
        raise BertforgeError(
            f"{model_dir}: the teacher is not a classifier (no classifier head or labels); "
            "pass a model from `bertforge finetune classification`"
        )
    return config


def check_labels(data: ClassificationFile, teacher_labels: list[str]) -> None:
    """The data's labels must all be the teacher's: the student learns the teacher's classes, in its order."""
    unknown = [name for name in data.label_names if name not in teacher_labels]
    if unknown:
        raise BertforgeError(
            f"{data.path}: labels {unknown} are not among the teacher's {teacher_labels}; "
            "distil on data of the teacher's task"
        )


def build_student(
    settings: DistillConfig, teacher: BertForSequenceClassification, tokenizer: BertTokenizer
) -> BertForSequenceClassification:
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
    student = BertForSequenceClassification(dataclasses.replace(encoder.config, **labels))
    student.bert.load_state_dict(encoder.state_dict(), strict=encoder.pooler is not None)
    return student


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
    teacher_dir = resolve_model_dir(settings.model)
    teacher_config = check_teacher(teacher_dir)
    names = [teacher_config.id2label[i] for i in sorted(teacher_config.id2label)]
    tokenizer = BertTokenizer.from_pretrained(teacher_dir)
    check_labels(read_split(settings, "train", None), names)
    train, dev, test = (read_split(settings, split, names) for split in ("train", "dev", "test"))
    for data in (train, dev, test):
        if data is not None:
            report_skipped(data)
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir).to(device).eval()
    checkpoint = checkpoint_to_resume(run_dir, settings.resume)
    student = build_student(settings, teacher, tokenizer)  # also on --resume: its checks are the same
    if checkpoint is not None:
        student = BertForSequenceClassification.from_pretrained(checkpoint)
    student.to(device).train()
    settings = with_learning_rate(settings, student.config.hidden_size)
    optimizer = build_optimizer(student, settings.learning_rate, settings.weight_decay)

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
        report: dict[str, Any] = {"best_epoch": state["best_epoch"], f"dev_{settings.metric}": state["best"]}
        for name, trained in (("teacher", teacher), ("student", best)):
            report[name] = {"layers": trained.config.num_hidden_layers, "parameters": count_parameters(trained)}
            if test is not None:
                report[name]["test"] = evaluate_model(trained, tokenizer, test, settings, device, precision)
                print_report(report[name]["test"], names, False, title=f"{name} test ({test.path})")
        if test is not None and device.type == "cpu":  # measured in this run, one after the other, fp32 and int8
            timed, pad, size = encode_file(tokenizer, test, settings), tokenizer.pad_token_id, settings.eval_batch_size
            report["teacher"]["inputs_per_second"] = throughput(teacher, timed, pad, size)
            report["student"]["inputs_per_second"] = throughput(best, timed, pad, size)
            int8 = quantize_encoder(BertForSequenceClassification.from_pretrained(run_dir / "model"))
            report["student"]["int8_inputs_per_second"] = throughput(int8, timed, pad, size)
            report["student"]["int8_test"] = evaluate_model(int8, tokenizer, test, settings, device, "fp32")
        (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_metrics(run_dir)
        log.info("best student (epoch %s) saved to %s; report in %s", state["best_epoch"], run_dir / "model",
                 run_dir / "report.json")  # fmt: skip
    leave_processes()
    return run_dir / "model"
