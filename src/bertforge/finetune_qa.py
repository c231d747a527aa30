"""The extractive question-answering recipe: a pretrained encoder + start/end scores → a SQuAD reader.

Straight-line: read SQuAD JSON → cut (question, context) pairs into windows and mark each window's answer tokens
(:mod:`bertforge.qa`) → train, evaluating exact match and F1 on dev after each epoch and keeping the best (with a
checkpoint per epoch for ``--resume``) → report → save. Settings: :class:`~bertforge.settings.QaConfig`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertforge.assets import resolve_model_dir
from bertforge.config import BertConfig
from bertforge.data.squad import SquadFile, read_squad, resolve_squad
from bertforge.distributed import (
    join_processes,
    leave_processes,
    wrap_model,
)
from bertforge.finetuning import DevScores, planned_steps, start_run, train_epochs
from bertforge.heads import BertForQuestionAnswering
from bertforge.inference import collate
from bertforge.qa import answer_positions, encode_questions, predict_answers
from bertforge.runtime import pick_precision
from bertforge.settings import QaConfig
from bertforge.squad_metrics import squad_scores
from bertforge.tokenizer import BertTokenizer
from bertforge.train import (
    build_optimizer,
    checkpoint_to_resume,
    plot_metrics,
    seed_everything,
    with_learning_rate,
)

log = logging.getLogger("bertforge")


def evaluate_qa(
    model: BertForQuestionAnswering,
    tokenizer: BertTokenizer,
    data: SquadFile,
    settings: QaConfig,
    device: torch.device,
    precision: str,
) -> tuple[dict[str, float], dict[str, str]]:
    """SQuAD exact match and F1 of ``model`` on ``data``, and its predictions (question id → answer)."""
    predictions = predict_answers(model, tokenizer, data.examples, settings, with_unanswerable=data.with_unanswerable,
                                  batch_size=settings.eval_batch_size, device=device, precision=precision)  # fmt: skip
    gold = {e.id: [a.text for a in e.answers] for e in data.examples}
    return squad_scores(predictions, gold), predictions


def finetune_qa(settings: QaConfig) -> Path:
    """Fine-tune a question-answering model; return the folder of the best one (Hugging Face layout)."""
    # ---- setup ----
    run_dir = Path(settings.out)
    processes, device = join_processes(settings.device)
    seed_everything(settings.seed + processes.rank)  # dropout differs between processes; rank 0 is a lone run
    precision = pick_precision(settings.precision, device)
    model_dir = resolve_model_dir(settings.model)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    train = read_squad(resolve_squad(settings.train, "train"), settings.train_limit)
    dev_name = settings.dev or ("squad_v1" if settings.train == "squad_v1" else None)
    dev = read_squad(resolve_squad(dev_name, "dev"), settings.eval_limit) if dev_name else None
    checkpoint = checkpoint_to_resume(run_dir, settings.resume)
    if checkpoint is None and settings.random_init:  # the from-scratch baseline that measures pretraining's worth
        model = BertForQuestionAnswering(BertConfig.load(model_dir))
    else:
        model = BertForQuestionAnswering.from_pretrained(checkpoint or model_dir)
    model.to(device).train()
    settings = with_learning_rate(settings, model.config.hidden_size)
    optimizer = build_optimizer(model, settings.learning_rate, settings.weight_decay)

    windows = encode_questions(
        tokenizer, [e.question for e in train.examples], [e.context for e in train.examples],
        max_length=settings.max_length, doc_stride=settings.doc_stride, max_query_length=settings.max_query_length,
    )  # fmt: skip
    starts, ends = answer_positions(windows, train.examples)
    total_steps = planned_steps(settings, len(windows))
    state, metrics = start_run(settings, checkpoint, optimizer, processes)
    model = wrap_model(model, processes, device)
    log.info(
        "fine-tuning %s for question answering on %d questions (%d windows, %d with the answer) on %s in %s; "
        "%d steps", model_dir, len(train.examples), len(windows), int((starts > 0).sum()), device, precision,
        total_steps,
    )  # fmt: skip

    # Every window has its start and end inside it ([CLS] when absent): the loss is a mean over windows.
    per_window = np.ones(len(windows))

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in collate(windows.inputs, rows, tokenizer.pad_token_id).items()}
        return model(**batch, start_positions=torch.as_tensor(starts[rows], device=device),
                     end_positions=torch.as_tensor(ends[rows], device=device)).loss  # fmt: skip

    def dev_scores(trained: torch.nn.Module) -> DevScores:
        scores, predictions = evaluate_qa(trained, tokenizer, dev, settings, device, precision)
        return DevScores(
            scores["f1"], {"exact_match": scores["exact_match"], "f1": scores["f1"]},
            f"dev exact match {scores['exact_match']:.2f}, F1 {scores['f1']:.2f}",
            best_files={"dev_predictions.json": json.dumps(predictions, indent=1, ensure_ascii=False) + "\n"},
            kept=scores,
        )  # fmt: skip

    # ---- loop ----
    train_epochs(state, settings=settings, model=model, optimizer=optimizer,
                 lengths=[len(ids) for ids in windows.inputs.input_ids], counts=per_window, loss_of=loss_of,
                 evaluate=dev_scores if dev else None, metric="F1", total_steps=total_steps, tokenizer=tokenizer,
                 run_dir=run_dir, metrics=metrics, processes=processes, precision=precision, device=device,
                 description="fine-tuning QA")  # fmt: skip

    # ---- report, save ----
    if processes.is_main:
        report: dict[str, Any] = {"best_epoch": state["best_epoch"], "dev": state["best_scores"]}
        if state["best_scores"] is not None:
            scores = state["best_scores"]
            print(f"dev (epoch {state['best_epoch']}): exact match {scores['exact_match']:.2f}, F1 {scores['f1']:.2f} "
                  f"on {scores['questions']} questions")  # fmt: skip
        (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_metrics(run_dir)
        log.info("best model (epoch %s) saved to %s", state["best_epoch"], run_dir / "model")
    leave_processes()
    return run_dir / "model"
