"""Task distillation: a small student classifier trained on a fine-tuned teacher's softened predictions.

The student starts from the teacher itself — its embeddings and every k-th encoder layer — as DistilBERT does
(Sanh et al., 2019), so it begins close to the teacher's function instead of from random weights. The soft-target
loss is Hinton et al. (2015): KL divergence between the teacher's and the student's distributions at temperature
T, multiplied by T² so that its gradients keep the same scale as the gold-label loss when T changes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.errors import BertforgeError
from bertforge.heads import BertForSequenceClassification


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
    labels: Tensor | None,
    temperature: float,
    soft_weight: float,
    gold_weight: float,
) -> Tensor:
    """soft_weight · soft-target loss + gold_weight · cross-entropy on the gold ``labels`` (B,), where given.

    Unlabelled text (``labels`` None) contributes the soft-target term only.
    """
    loss = soft_weight * soft_target_loss(student_logits, teacher_logits, temperature)
    if labels is not None and gold_weight > 0:
        loss = loss + gold_weight * F.cross_entropy(student_logits.float(), labels)
    return loss


@torch.no_grad()
def teacher_logits(teacher: BertForSequenceClassification, batches: list[dict[str, Tensor]]) -> list[Tensor]:
    """The frozen teacher's (B, C) logits for each batch, computed once with dropout off and cached by the caller."""
    teacher.eval()
    return [teacher(**batch).logits.float() for batch in batches]
