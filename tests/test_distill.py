"""Distillation: the student's initialisation from the teacher's layers and the soft-target loss."""

import math

import pytest
import torch

from bertforge import BertConfig
from bertforge.distill import distillation_loss, kept_layers, soft_target_loss, student_from_teacher
from bertforge.errors import BertforgeError
from bertforge.heads import BertForSequenceClassification

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=37)


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**TINY, id2label={0: "neg", 1: "pos"})).eval()


def test_kept_layers_spread_evenly_and_end_at_the_top():
    assert kept_layers(6, 2) == [2, 5]
    assert kept_layers(6, 3) == [1, 3, 5]
    assert kept_layers(6, 1) == [5]
    assert kept_layers(6, 6) == list(range(6))


@pytest.mark.parametrize("layers", [0, 7])
def test_impossible_student_depth_is_a_one_line_error(layers):
    with pytest.raises(BertforgeError, match="teacher has 6 layers"):
        kept_layers(6, layers)


def test_student_copies_the_chosen_layers_exactly(teacher):
    student = student_from_teacher(teacher, 2)
    assert student.config.num_hidden_layers == 2 and len(student.bert.layers) == 2
    assert teacher.config.num_hidden_layers == 6 and len(teacher.bert.layers) == 6  # teacher untouched
    for mine, theirs in zip(student.bert.layers, [teacher.bert.layers[2], teacher.bert.layers[5]], strict=True):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
            assert a.data_ptr() != b.data_ptr()  # a copy: training the student leaves the teacher as it was
    assert torch.equal(student.bert.embeddings.word.weight, teacher.bert.embeddings.word.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    ids = torch.randint(0, 99, (3, 7))
    assert student.eval()(ids).logits.shape == (3, 2)


def test_soft_target_loss_matches_a_hand_computation():
    student, teacher, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), 2.0
    # At T = 2: student (0.5, 0) → p = (e^.5, 1)/(e^.5 + 1); teacher (0, 1) → q = (1, e)/(1 + e).
    p = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    q = [1 / (1 + math.e), math.e / (1 + math.e)]
    expected = t**2 * sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))
    assert soft_target_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-6)
    assert soft_target_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)


def test_gold_labels_add_cross_entropy_and_unlabelled_rows_do_not():
    student, teacher, labels = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([1])
    soft = soft_target_loss(student, teacher, 2.0)
    gold = -torch.log_softmax(student, -1)[0, 1]
    both = distillation_loss(student, teacher, labels, temperature=2.0, soft_weight=0.5, gold_weight=0.5)
    assert both.item() == pytest.approx((0.5 * soft + 0.5 * gold).item(), rel=1e-6)
    unlabelled = distillation_loss(student, teacher, None, temperature=2.0, soft_weight=0.5, gold_weight=0.5)
    assert unlabelled.item() == pytest.approx((0.5 * soft).item(), rel=1e-6)
