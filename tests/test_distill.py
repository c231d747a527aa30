"""Distillation: the student's initialisation from the teacher's layers, the soft-target loss, the recipe through
the CLI (evaluate and predict load the student like any classifier) and its one-line errors on bad input."""

import json
import math
import re

import numpy as np
import pytest
import torch

from bertforge import BertConfig, BertModel
from bertforge.cli import main
from bertforge.distill import (
    distillation_loss,
    hidden_state_loss,
    kept_layers,
    soft_target_loss,
    student_from_teacher,
)
from bertforge.errors import BertforgeError
from bertforge.heads import BertForSequenceClassification
from bertforge.tokenizer import train_tokenizer

GOOD = "wonderful great moving superb charming delightful brilliant".split()
BAD = "awful boring dull terrible tedious clumsy bland".split()
FILLER = "the film was and a plot with acting story".split()
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
    unlabelled = distillation_loss(student, teacher, torch.tensor([-1]), temperature=2.0, soft_weight=0.5,
                                   gold_weight=0.5)  # fmt: skip
    assert unlabelled.item() == pytest.approx((0.5 * soft).item(), rel=1e-6)
    # One labelled and one unlabelled row: the gold term is the labelled row's, counted over both rows.
    pair = distillation_loss(student.repeat(2, 1), teacher.repeat(2, 1), torch.tensor([1, -1]), temperature=2.0,
                             soft_weight=0.5, gold_weight=0.5)  # fmt: skip
    assert pair.item() == pytest.approx((0.5 * soft + 0.5 * gold / 2).item(), rel=1e-6)


def review(rng, positive):
    words = [str(rng.choice(GOOD if positive else BAD)) for _ in range(2)] + [str(rng.choice(FILLER)) for _ in range(4)]
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Sentiment CSVs, unlabelled reviews, and a 2-layer teacher fine-tuned on them (run folder ``teacher``)."""
    root = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(0)
    for split, n in (("train", 96), ("dev", 24)):
        lines = ["text,label"] + [f"{review(rng, i % 2 == 0)},{'pos' if i % 2 == 0 else 'neg'}" for i in range(n)]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "unlabeled.txt").write_text("\n".join(review(rng, i % 2 == 0) for i in range(32)) + "\n")
    (root / "corpus.txt").write_text(" ".join(GOOD + BAD + FILLER) + "\n")
    tokenizer = train_tokenizer([root / "corpus.txt"], 60, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    encoder = BertModel(BertConfig.preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=64))
    encoder.save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    assert main(["finetune", "classification", "--model", str(root / "encoder"), "--train", str(root / "train.csv"),
                 "--dev", str(root / "dev.csv"), "--out", str(root / "teacher"), "--epochs", "6", "--batch-size", "8",
                 "--learning-rate", "1e-3", "--max-length", "32", "--progress", "false", "--precision", "fp32",
                 ]) == 0  # fmt: skip
    return root


def distill_args(root, out, *extra):
    return ["distill", "--teacher", str(root / "teacher"), "--train", str(root / "train.csv"), "--dev",
            str(root / "dev.csv"), "--test", str(root / "dev.csv"), "--out", str(out), "--student-layers", "1",
            "--epochs", "4", "--batch-size", "8", "--learning-rate", "1e-3", "--max-length", "32", "--progress",
            "false", "--precision", "fp32", *extra]  # fmt: skip


def test_hidden_state_loss_pairs_each_student_layer_with_the_teacher_layer_it_copies():
    # Teacher: embeddings and 6 layers, each state filled with its index; student: 3 states (a, b, c). 2 of 6
    # layers copies teacher layers 3 and 6 (kept_layers [2, 5]), so the pairs are (a, 0), (b, 3) and (c, 6).
    mask = torch.tensor([[1, 1, 0]])  # the padding position holds 100 in the student and must not count
    teacher = tuple(torch.full((1, 3, 4), float(k)) for k in range(7))
    student = tuple(torch.tensor([value, value, 100.0])[None, :, None].expand(1, 3, 4) for value in (1.0, 1.0, 4.0))
    expected = ((1 - 0) ** 2 + (1 - 3) ** 2 + (4 - 6) ** 2) / 3
    assert hidden_state_loss(student, teacher, mask).item() == pytest.approx(expected, rel=1e-6)
    assert hidden_state_loss(teacher, teacher, mask).item() == 0.0
    # Two inputs of different lengths: each input's mean over its own tokens, then the mean over inputs.
    two_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    wrong = tuple(torch.tensor([[0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])[:, :, None].expand(2, 3, 4) for _ in range(3))
    right = tuple(torch.zeros(2, 3, 4) for _ in range(7))
    assert hidden_state_loss(wrong, right, two_mask).item() == pytest.approx((9 / 3 + 1 / 1) / 2, rel=1e-6)


def test_distill_evaluate_predict_round_trip(workspace, tmp_path, capsys, caplog):
    out = tmp_path / "student"
    with caplog.at_level("INFO", logger="bertforge"):
        assert main(distill_args(workspace, out, "--unlabeled", str(workspace / "unlabeled.txt"), "--gold-weight",
                                 "0.5", "--hidden-weight", "0.5")) == 0  # fmt: skip
    # with the progress bars off, the minutes of teacher forwards before training are announced rather than silent
    assert "the teacher's logits for 128 inputs, once" in caplog.text  # 96 labelled + 32 unlabelled
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["test"]["accuracy"] >= 0.9, report
    assert report["student"]["test"]["accuracy"] >= 0.9, report  # the one kept layer still reads the telling words
    assert (report["teacher"]["layers"], report["student"]["layers"]) == (2, 1)
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    assert report["student"]["inputs_per_second"] > 0 and report["student"]["int8_test"]["support"] == 24
    teacher_config = json.loads((workspace / "teacher" / "model" / "config.json").read_text())
    student_config = json.loads((out / "model" / "config.json").read_text())
    assert student_config["id2label"] == teacher_config["id2label"] and student_config["num_hidden_layers"] == 1
    assert json.loads((out / "finetune_config.json").read_text())["max_length"] == 32  # predict cuts as in training
    assert (out / "curves.png").is_file()
    capsys.readouterr()

    assert main(["evaluate", "--model", str(out / "model"), "--data", str(workspace / "dev.csv")]) == 0
    assert f"accuracy {report['student']['test']['accuracy']:.4f}" in capsys.readouterr().out
    texts = tmp_path / "texts.txt"
    rng = np.random.default_rng(1)
    texts.write_text(f"{review(rng, True)}\n{review(rng, False)}\n")
    predictions = tmp_path / "predictions.jsonl"
    with caplog.at_level("INFO", logger="bertforge"):
        assert (
            main(["predict", "--model", str(out / "model"), "--input", str(texts), "--output", str(predictions)]) == 0
        )
    assert [json.loads(line)["label"] for line in predictions.read_text().splitlines()] == ["pos", "neg"]
    assert re.search(r"predicted 2 inputs in [\d.]+ s \(\d+ inputs/s\)", caplog.text)  # bench.distill reads it


def test_teacher_that_is_not_a_classifier_is_refused(workspace, tmp_path, capsys):
    args = distill_args(workspace, tmp_path / "out")
    args[args.index("--teacher") + 1] = str(workspace / "encoder")
    assert main(args) != 0
    assert "the teacher is not a classifier" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before the run folder was made


def test_labels_the_teacher_does_not_know_are_refused(workspace, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("text,label\ngreat film,pos\ndull film,meh\n")
    args = distill_args(workspace, tmp_path / "out")
    args[args.index("--train") + 1] = str(other)
    assert main(args) != 0
    assert "labels ['meh'] are not among the teacher's ['neg', 'pos']" in capsys.readouterr().err


def test_student_with_another_vocabulary_is_refused(workspace, tmp_path, capsys):
    tokenizer = train_tokenizer([workspace / "corpus.txt"], 50, min_frequency=1, show_progress=False)
    BertModel(BertConfig.preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=64)).save_pretrained(
        tmp_path / "student"
    )
    tokenizer.save_pretrained(tmp_path / "student")
    assert main([*distill_args(workspace, tmp_path / "out"), "--student", str(tmp_path / "student")]) != 0
    assert "vocabulary differs from the teacher's" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [((), "is wider than the teacher"), (("--hidden-weight", "1"), "needs a student as wide as the teacher")],
)
def test_student_wider_than_the_teacher_is_refused(workspace, tmp_path, capsys, extra, message):
    config = BertConfig.load(workspace / "encoder")
    wide = BertModel(BertConfig.preset("mini", vocab_size=config.vocab_size, max_position_embeddings=64))
    wide.save_pretrained(tmp_path / "student")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (workspace / "encoder" / name).is_file():
            (tmp_path / "student" / name).write_bytes((workspace / "encoder" / name).read_bytes())
    assert main([*distill_args(workspace, tmp_path / "out"), "--student", str(tmp_path / "student"), *extra]) != 0
    assert message in capsys.readouterr().err


def test_resume_after_a_crash_gives_the_same_student(workspace, tmp_path, monkeypatch):
    import bertforge.distill

    def args(out):
        return [*distill_args(workspace, out), "--epochs", "2"]

    assert main(args(tmp_path / "a")) == 0
    evaluate, calls = bertforge.distill.evaluate_model, []

    def crash_in_second_epoch(*arguments, **keywords):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return evaluate(*arguments, **keywords)

    monkeypatch.setattr(bertforge.distill, "evaluate_model", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        main(args(tmp_path / "b"))
    monkeypatch.setattr(bertforge.distill, "evaluate_model", evaluate)
    assert main([*args(tmp_path / "b"), "--resume"]) == 0
    straight = BertForSequenceClassification.from_pretrained(tmp_path / "a" / "model")
    resumed = BertForSequenceClassification.from_pretrained(tmp_path / "b" / "model")
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, msg=name)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--temperature", "0", "temperature must be above 0"), ("--soft-weight", "0", "not both 0"),
     ("--hidden-weight", "-1", "hidden_weight must be at least 0")],
)  # fmt: skip
def test_bad_loss_settings_are_one_line_errors(workspace, tmp_path, capsys, option, value, message):
    assert main([*distill_args(workspace, tmp_path / "out"), option, value]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
