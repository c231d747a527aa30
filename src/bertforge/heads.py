"""Pretraining models: the masked-language-model (MLM) and next-sentence-prediction (NSP) heads over BertModel.

The MLM head predicts only where it must (Cramming, Geiping & Goldstein 2022; also NVIDIA's BERT): with labels,
hidden vectors at masked positions are gathered *before* the vocabulary projection, so the (H × V) matmul runs
on ~15% of the tokens. In a small BERT that projection over every position is more than half of the forward
compute.

Shape legend: B batch, T sequence length, H hidden size, V vocabulary size, M number of predicted positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.config import BertConfig
from bertforge.kernels import Dropout, compiles_kernels_per_shape, stable_row_count
from bertforge.model import ACTIVATION_FUNCTIONS, BertModel, BertPreTrainedModel

IGNORE_INDEX = -100  # label of positions that carry no MLM target (PyTorch's cross-entropy default)


@dataclass
class PreTrainingOutput:
    """What the pretraining models return.

    ``mlm_logits`` is (M, V) over the predicted positions when ``mlm_labels`` or ``mlm_positions`` were given
    (in row-major order of the (B, T) grid), and (B, T, V) over every position otherwise. Training with labels
    (gradients on) returns no logits: the loss is computed without keeping them (see
    :class:`VocabularyCrossEntropyFunction`).
    """

    mlm_logits: Tensor | None
    nsp_logits: Tensor | None = None  # (B, 2): index 0 = B continues A, 1 = B is a random segment
    loss: Tensor | None = None  # mlm_loss + nsp_loss (whichever were computed)
    mlm_loss: Tensor | None = None  # mean cross-entropy over masked positions
    nsp_loss: Tensor | None = None  # mean cross-entropy over the batch
    mlm_correct: Tensor | None = None  # number of masked positions predicted right (for accuracy without sync)
    mlm_count: Tensor | None = None  # number of masked positions


LOGITS_PER_CHUNK = 1 << 22  # (rows × V) logits computed at once by the chunked vocabulary cross-entropy


class VocabularyCrossEntropyFunction(torch.autograd.Function):
    """Mean cross-entropy of ``x @ weight.T + bias`` against ``targets``, without keeping the (M, V) logits.

    Autograd would keep the logits' log-softmax for the backward pass and then build an (M, V) gradient: three
    (M, V) tensors alive at the peak of a training step (240 MB for 640 predictions over 30k words). Here the
    gradient is computed chunk by chunk during the forward pass (softmax minus the one-hot target, Bridle 1990),
    so only the (M, H) input gradient and the (V, H) weight gradient are kept; the backward pass scales them.
    The softmax is taken in fp32 as in the autograd path; matmuls run in the forward's (autocast) dtype. When the
    tied table is frozen (``freeze_word_embeddings``) its (V, H) gradient is not computed: a third of the head's
    matmuls; 10 minutes of `pretrain-cpu` on a 2-core AVX2 CPU made 2,271 steps instead of 2,010 (bench/RESULTS.md,
    2026-12-07, session 38).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, targets, count):
        """(M, H) ``x`` whose first ``count`` rows are predicted as the (count,) ``targets``; the rows after them
        are padding (:func:`~bertforge.kernels.stable_row_count`), with no loss and no gradient."""
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        rows = max(1, LOGITS_PER_CHUNK // weight.shape[0])
        grad_x = torch.empty_like(x)
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if ctx.needs_input_grad[1] else None
        )
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=x.device)
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        with torch.autocast(device, enabled=False):  # each operand cast once, here, rather than per matmul
            x_cast, weight_cast, bias_cast = x.to(dtype), weight.to(dtype), bias.to(dtype)
            for start in range(0, x.shape[0], rows):
                chunk = x_cast[start : start + rows]  # (R, H)
                real = max(0, min(len(chunk), count - start))
                logits = torch.addmm(bias_cast, chunk, weight_cast.t())  # (R, V)
                # The loss is -log of the target's probability, floored at fp32's smallest normal number (at
                # most 87.3 per prediction): one pass over the logits fewer than a log-softmax and an exp.
                probs = torch.softmax(logits, -1, dtype=torch.float32)
                picked = torch.arange(real, device=x.device), targets[start : start + real]
                loss -= probs[picked].clamp_min(torch.finfo(torch.float32).tiny).log().sum()
                probs[picked] -= 1.0
                probs[real:] = 0.0
                grad_logits = probs.to(dtype)
                grad_x[start : start + rows] = (grad_logits @ weight_cast).to(x.dtype)
                if grad_weight is not None:
                    grad_weight += grad_logits.t() @ chunk
                grad_bias += grad_logits.sum(0, dtype=torch.float32)
        ctx.save_for_backward(grad_x, grad_weight, grad_bias)
        ctx.dtypes, ctx.count = (weight.dtype, bias.dtype), count
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_loss / ctx.count
        weight_dtype, bias_dtype = ctx.dtypes
        return (
            grad_x * scale.to(grad_x.dtype),
            None if grad_weight is None else (grad_weight * scale).to(weight_dtype),
            (grad_bias * scale).to(bias_dtype),
            None,
            None,
        )


class MaskedLMHead(nn.Module):
    """dense → activation → LayerNorm → decoder tied to the word embeddings, plus a per-token output bias."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACTIVATION_FUNCTIONS[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        """(..., H) → (..., V) logits. The decoder is tied to the (V, H) input embeddings (Press & Wolf, 2017),
        passed in rather than held, so the weight has one name in the state dict."""
        return F.linear(self.features(hidden), word_embeddings, self.bias)

    def features(self, hidden: Tensor) -> Tensor:
        """(..., H) → (..., H): the transform before the decoder."""
        return self.norm(self.activation(self.transform(hidden)))


def masked_lm(
    head: MaskedLMHead, word_embeddings: Tensor, hidden: Tensor, labels: Tensor | None, positions: Tensor | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Logits, loss, correct count and count of the MLM head, evaluated only where predictions are needed.

    Args:
        word_embeddings: (V, H) the tied decoder weight.
        hidden: (B, T, H) encoder output.
        labels: (B, T) target ids, IGNORE_INDEX where nothing is predicted; None for inference.
        positions: (B, T) bool, where to predict; defaults to ``labels != IGNORE_INDEX`` (or everywhere).
    """
    if positions is None and labels is not None:
        positions = labels != IGNORE_INDEX
    if positions is None:
        return head(hidden, word_embeddings), None, None, None  # (B, T, V)
    if labels is not None and torch.is_grad_enabled():  # training: the loss without keeping (M, V) logits
        positions = positions & (labels != IGNORE_INDEX)
        targets = labels[positions]  # (M,)
        rows = hidden[positions]  # (M, H)
        if compiles_kernels_per_shape(rows.device):  # padded to a row count that repeats between steps
            rows = torch.cat([rows, rows.new_zeros(stable_row_count(len(rows)) - len(rows), rows.shape[1])])
        loss = VocabularyCrossEntropyFunction.apply(head.features(rows), word_embeddings, head.bias, targets,
                                                    len(targets))  # fmt: skip
        return None, loss, None, targets.new_tensor(targets.numel())
    logits = head(hidden[positions], word_embeddings)  # (M, H) → (M, V)
    if labels is None:
        return logits, None, None, None
    targets = labels[positions]  # (M,)
    loss = F.cross_entropy(logits.float(), targets)
    correct = None if torch.is_grad_enabled() else (logits.argmax(-1) == targets).sum()  # for evaluation only
    return logits, loss, correct, targets.new_tensor(targets.numel())


class BertForPreTraining(BertPreTrainedModel):
    """BERT's pretraining model: MLM head over every token vector, NSP head over the pooled [CLS] vector.

    Loss = MLM cross-entropy over masked positions + NSP cross-entropy (Devlin et al., 2019, appendix A.2).
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = MaskedLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        mlm_labels: Tensor | None = None,
        next_sentence_label: Tensor | None = None,
        mlm_positions: Tensor | None = None,
    ) -> PreTrainingOutput:
        """Args as :meth:`BertModel.forward`, plus (B, T) ``mlm_labels``, (B,) ``next_sentence_label`` and an
        optional (B, T) bool ``mlm_positions`` selecting where to predict at inference."""
        encoded = self.bert(input_ids, attention_mask, token_type_ids)
        mlm_logits, mlm_loss, correct, count = masked_lm(
            self.mlm, self.bert.embeddings.word.weight, encoded.last_hidden_state, mlm_labels, mlm_positions
        )
        nsp_logits = self.nsp(encoded.pooler_output)  # (B, 2)
        nsp_loss = None if next_sentence_label is None else F.cross_entropy(nsp_logits.float(), next_sentence_label)
        losses = [part for part in (mlm_loss, nsp_loss) if part is not None]
        return PreTrainingOutput(
            mlm_logits=mlm_logits,
            nsp_logits=nsp_logits,
            loss=sum(losses[1:], losses[0]) if losses else None,
            mlm_loss=mlm_loss,
            nsp_loss=nsp_loss,
            mlm_correct=correct,
            mlm_count=count,
        )


class BertForMaskedLM(BertPreTrainedModel):
    """MLM-only pretraining (as RoBERTa and later recipes do): no NSP head and no pooler."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.mlm = MaskedLMHead(config)
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        mlm_labels: Tensor | None = None,
        mlm_positions: Tensor | None = None,
    ) -> PreTrainingOutput:
        """Args as :meth:`BertForPreTraining.forward`, without the NSP label."""
        encoded = self.bert(input_ids, attention_mask, token_type_ids)
        mlm_logits, mlm_loss, correct, count = masked_lm(
            self.mlm, self.bert.embeddings.word.weight, encoded.last_hidden_state, mlm_labels, mlm_positions
        )
        return PreTrainingOutput(
            mlm_logits=mlm_logits, loss=mlm_loss, mlm_loss=mlm_loss, mlm_correct=correct, mlm_count=count
        )


# ---- task heads ----------------------------------------------------------------------------------------------


@dataclass
class SequenceClassifierOutput:
    """What :class:`BertForSequenceClassification` returns."""

    logits: Tensor  # (B, num_labels); for regression (num_labels == 1) the predicted value
    loss: Tensor | None = None  # cross-entropy (classes) or mean-squared error (regression), when labels given
    hidden_states: tuple[Tensor, ...] | None = None  # L + 1 tensors (B, T, H), with output_hidden_states


def mean_over_tokens(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(B, H) mean of (B, T, H) ``hidden`` over the real tokens that (B, T) ``attention_mask`` marks."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class BertForSequenceClassification(BertPreTrainedModel):
    """Text or sentence-pair classification: dropout + linear over the pooled [CLS] vector (BERT, section 4.1),
    or over the mean of the token vectors when ``config.classifier_pooling`` is "mean".

    ``config.id2label`` sets the classes; a single label means regression (mean-squared error on a float).
    """

    # Missing from a plain encoder or a pretraining checkpoint: created fresh, and the user is told once.
    initialised_if_missing = ("classifier.", "bert.pooler.")

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.num_labels = max(1, len(config.id2label)) if config.id2label else 2
        self.bert = BertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        class_weights: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> SequenceClassifierOutput:
        """Args as :meth:`BertModel.forward`, plus (B,) ``labels`` (class ids, or floats for regression) and
        optional (num_labels,) ``class_weights`` that up-weight rare classes in the loss."""
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states)
        if self.config.classifier_pooling == "mean":
            pooled = mean_over_tokens(out.last_hidden_state, attention_mask)  # (B, H)
        else:
            pooled = out.pooler_output  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.float().squeeze(-1), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels, weight=class_weights)
        return SequenceClassifierOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


@dataclass
class TokenClassifierOutput:
    """What :class:`BertForTokenClassification` returns."""

    logits: Tensor  # (B, T, num_labels)
    loss: Tensor | None = None  # mean cross-entropy over labelled tokens (label IGNORE_INDEX is skipped)
    hidden_states: tuple[Tensor, ...] | None = None  # L + 1 tensors (B, T, H), with output_hidden_states


class BertForTokenClassification(BertPreTrainedModel):
    """Named-entity recognition and other tagging: dropout + linear over every token vector (BERT, section 4.3)."""

    initialised_if_missing = ("classifier.",)

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.num_labels = len(config.id2label) if config.id2label else 2
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> TokenClassifierOutput:
        """Args as :meth:`BertModel.forward`, plus (B, T) ``labels`` (IGNORE_INDEX on tokens without a label,
        such as special tokens and the second and later pieces of a word)."""
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return TokenClassifierOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


@dataclass
class QuestionAnsweringOutput:
    """What :class:`BertForQuestionAnswering` returns."""

    start_logits: Tensor  # (B, T) score of each token as the answer's first token
    end_logits: Tensor  # (B, T) score of each token as the answer's last token
    loss: Tensor | None = None  # mean of the start and end cross-entropies, when positions are given


class BertForQuestionAnswering(BertPreTrainedModel):
    """Extractive question answering: a linear layer gives every token a start and an end score (BERT, 4.2)."""

    initialised_if_missing = ("qa_outputs.",)

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
    ) -> QuestionAnsweringOutput:
        """Args as :meth:`BertModel.forward`, plus (B,) answer ``start_positions`` / ``end_positions`` (token
        indices; 0, the [CLS] token, marks "no answer in this window")."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        start_logits, end_logits = self.qa_outputs(hidden).unbind(-1)  # 2 × (B, T)
        loss = None
        if start_positions is not None and end_positions is not None:
            length = start_logits.shape[1]
            # Positions outside the window (clamped to T) are ignored, as in the original implementation.
            start = start_positions.clamp(0, length)
            end = end_positions.clamp(0, length)
            start_scores, end_scores = start_logits.float(), end_logits.float()
            if attention_mask is not None:
                # An answer never starts or ends in padding. transformers leaves padding in the softmax, where
                # its scores depend on how the padding was computed; here they are out of it, so the loss is
                # the same on the padded and the unpadded paths (and, without padding, transformers' loss).
                padding = ~attention_mask.bool()
                start_scores = start_scores.masked_fill(padding, torch.finfo(torch.float32).min)
                end_scores = end_scores.masked_fill(padding, torch.finfo(torch.float32).min)
            loss = (
                F.cross_entropy(start_scores, start, ignore_index=length)
                + F.cross_entropy(end_scores, end, ignore_index=length)
            ) / 2
        return QuestionAnsweringOutput(start_logits=start_logits, end_logits=end_logits, loss=loss)
