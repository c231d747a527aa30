"""Extractive question answering: question + context → windows → start/end scores → answer spans.

Preprocessing (BERT, section 4.2; the windowing of Google's run_squad.py). Each question is paired with its
context as ``[CLS] question [SEP] context [SEP]``. A context too long for ``max_length`` is cut into overlapping
windows that share ``doc_stride`` tokens, so every answer lies whole in at least one window. Questions longer
than ``max_query_length`` tokens are cut. Each context token keeps its character span in the context (the
tokenizer's offsets), so answers map back to exact character positions.

Training targets: the tokens where the first answer starts and ends, or [CLS] (position 0) in a window that does
not contain the whole answer (and for unanswerable questions).

Post-processing: in every window, the ``n_best`` highest start and end scores are paired; spans that leave the
context, end before they start or are longer than ``max_answer_length`` tokens are dropped; the best span of all
windows by start + end score is the answer, cut from the context by character offsets. For SQuAD v2.0 the
"no answer" score is the [CLS] start + end score (the lowest over windows); the answer is empty when it beats
the best span by more than ``null_threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bertforge.data.squad import QaExample
from bertforge.errors import BertforgeError
from bertforge.heads import BertForQuestionAnswering
from bertforge.inference import EncodedInputs, forward_batches
from bertforge.settings import EVAL_BATCH_SIZE, QaConfig
from bertforge.tokenizer import BertTokenizer

NOT_CONTEXT = -1  # offset of a token outside the context (question, specials)


@dataclass
class QaWindows:
    """Model inputs for question + context windows, and where each token sits in its context."""

    inputs: EncodedInputs  # ``source``: index of each window's example
    offsets: list[np.ndarray]  # per window (T, 2): the token's character span in the context, NOT_CONTEXT outside

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class Span:
    """A candidate answer: characters ``start:end`` of the context."""

    text: str
    start: int
    end: int
    score: float  # start + end logit (what spans are ranked by)
    probability: float  # P(start) · P(end) within its window, softmax over the window's context tokens


def encode_questions(
    tokenizer: BertTokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    *,
    max_length: int = QaConfig.max_length,
    doc_stride: int = QaConfig.doc_stride,
    max_query_length: int = QaConfig.max_query_length,
) -> QaWindows:
    """Cut every (question, context) into windows of at most ``max_length`` tokens (see the module notes)."""
    questions, longest = _cut_questions(tokenizer, questions, max_query_length)
    room = max_length - 3 - longest
    if room <= doc_stride:
        raise BertforgeError(
            f"max_length {max_length} leaves {room} context tokens per window next to the longest question, not "
            f"more than doc_stride {doc_stride}; raise max_length or lower doc_stride / max_query_length"
        )
    encoded = tokenizer(list(questions), list(contexts), truncation="only_second", max_length=max_length,
                        stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
    offsets = []
    for window in range(len(encoded["input_ids"])):
        in_context = np.asarray([s == 1 for s in encoded.sequence_ids(window)])
        spans = np.asarray(encoded["offset_mapping"][window], dtype=np.int64).reshape(-1, 2)
        offsets.append(np.where(in_context[:, None], spans, NOT_CONTEXT))
    source = np.asarray(encoded["overflow_to_sample_mapping"])
    return QaWindows(EncodedInputs(encoded["input_ids"], encoded["token_type_ids"], source), offsets)


def _cut_questions(tokenizer: BertTokenizer, questions: Sequence[str], max_query_length: int) -> tuple[list[str], int]:
    """Questions cut after their ``max_query_length``-th token, and the longest one's token count."""
    # Leading spaces would only waste room (some SQuAD questions have dozens).
    questions = [q.lstrip() for q in questions]
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    cut, longest = [], 0
    for question, ids, offsets in zip(questions, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        if len(ids) > max_query_length:  # cut at a token's last character, so it re-tokenizes the same
            question = question[: offsets[max_query_length - 1][1]]
        cut.append(question)
        longest = max(longest, min(len(ids), max_query_length))
    return cut, longest


def answer_positions(windows: QaWindows, examples: Sequence[QaExample]) -> tuple[np.ndarray, np.ndarray]:
    """(N,) start and end token of each window's target: the first gold answer, or 0 ([CLS]) when absent."""
    starts = np.zeros(len(windows), dtype=np.int64)
    ends = np.zeros(len(windows), dtype=np.int64)
    for window, example_index in enumerate(windows.inputs.source):
        example = examples[example_index]
        if not example.answers:
            continue
        answer, offsets = example.answers[0], windows.offsets[window]
        context = np.flatnonzero(offsets[:, 0] != NOT_CONTEXT)
        first, last = offsets[context[0], 0], offsets[context[-1], 1]
        if not (first <= answer.start and answer.end <= last):
            continue
        # The start token is the last one starting at or before the answer; the end token the first one
        # reaching its end (a piece may cover more than the answer, e.g. "1850s" for "1850").
        starts[window] = context[np.searchsorted(offsets[context, 0], answer.start, side="right") - 1]
        ends[window] = context[np.searchsorted(offsets[context, 1], answer.end, side="left")]
    return starts, ends


def best_spans(
    windows: QaWindows,
    logits: Sequence[np.ndarray],
    contexts: Sequence[str],
    *,
    n_best: int = QaConfig.n_best,
    max_answer_length: int = QaConfig.max_answer_length,
    top_k: int = 1,
) -> tuple[list[list[Span]], np.ndarray]:
    """The ``top_k`` best distinct spans of each example (best first), and its (E,) no-answer score."""
    candidates: list[dict[tuple[int, int], Span]] = [{} for _ in contexts]
    null_scores = np.full(len(contexts), np.inf)
    for window, example in enumerate(windows.inputs.source):
        offsets, start_logits, end_logits = windows.offsets[window], logits[window][:, 0], logits[window][:, 1]
        in_context = offsets[:, 0] != NOT_CONTEXT
        null_scores[example] = min(null_scores[example], start_logits[0] + end_logits[0])
        start_log_probs = _log_softmax(start_logits, in_context)
        end_log_probs = _log_softmax(end_logits, in_context)
        for start in np.argsort(-start_logits, kind="stable")[:n_best]:
            for end in np.argsort(-end_logits, kind="stable")[:n_best]:
                if not (in_context[start] and in_context[end] and start <= end < start + max_answer_length):
                    continue
                first, last = int(offsets[start, 0]), int(offsets[end, 1])
                score = float(start_logits[start] + end_logits[end])
                kept = candidates[example].get((first, last))
                if kept is None or score > kept.score:
                    probability = float(np.exp(start_log_probs[start] + end_log_probs[end]))
                    candidates[example][first, last] = Span(contexts[example][first:last], first, last, score,
                                                             probability)  # fmt: skip
    ranked = [sorted(found.values(), key=lambda span: -span.score)[:top_k] for found in candidates]
    return ranked, null_scores


def _log_softmax(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """log-softmax over the ``keep`` positions (others get -inf)."""
    masked = np.where(keep, logits.astype(np.float64), -np.inf)
    return masked - (masked.max() + np.log(np.exp(masked - masked.max()).sum()))


def find_spans(
    model: BertForQuestionAnswering,
    tokenizer: BertTokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    settings: QaConfig,
    *,
    top_k: int = 1,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> tuple[list[list[Span]], np.ndarray]:
    """Windows → start/end logits → the ``top_k`` best spans of each question (best first) and its (E,) no-answer
    score: what evaluation, ``predict`` and the pipeline all answer from. ``settings`` gives the windows
    (``max_length``, ``doc_stride``, ``max_query_length``) and the spans (``n_best``, ``max_answer_length``)."""
    windows = encode_questions(tokenizer, questions, contexts, max_length=settings.max_length,
                               doc_stride=settings.doc_stride, max_query_length=settings.max_query_length)  # fmt: skip
    logits = forward_batches(
        model, windows.inputs, lambda out, batch: torch.stack([out.start_logits, out.end_logits], -1),  # (B, T, 2)
        pad_id=tokenizer.pad_token_id, per_token=True, batch_size=batch_size, device=device, precision=precision,
    )  # fmt: skip
    return best_spans(windows, logits, contexts, n_best=settings.n_best, max_answer_length=settings.max_answer_length,
                      top_k=top_k)  # fmt: skip


def unanswered(best: Span | None, null_score: float, null_threshold: float) -> bool:
    """Whether "no answer" wins (SQuAD v2.0): no span at all, or a no-answer score above the best span's by more
    than ``null_threshold``."""
    return best is None or null_score - best.score > null_threshold


def predict_answers(
    model: BertForQuestionAnswering,
    tokenizer: BertTokenizer,
    examples: Sequence[QaExample],
    settings: QaConfig,
    *,
    with_unanswerable: bool = False,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> dict[str, str]:
    """Question id → predicted answer text: "" when no span fits, and, ``with_unanswerable``, when "no answer"
    wins by more than ``settings.null_threshold``."""
    spans, null_scores = find_spans(model, tokenizer, [e.question for e in examples], [e.context for e in examples],
                                    settings, batch_size=batch_size, device=device, precision=precision)  # fmt: skip
    predictions = {}
    for example, found, null_score in zip(examples, spans, null_scores, strict=True):
        best = found[0] if found else None
        no_answer = best is None or (with_unanswerable and unanswered(best, null_score, settings.null_threshold))
        predictions[example.id] = "" if no_answer else best.text
    return predictions
