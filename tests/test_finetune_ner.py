"""NER fine-tuning: word ↔ piece alignment through offsets, and a CLI run that learns a synthetic tagging task."""

import json

import numpy as np
import pytest
import torch

from bertforge import BertConfig, BertModel
from bertforge.cli import main
from bertforge.heads import IGNORE_INDEX, BertForTokenClassification
from bertforge.ner import encode_sentences, window_labels
from bertforge.tokenizer import train_tokenizer

FIRST = "anna boris chen dmitri elena farah".split()
LAST = "smith ivanova wong petrov garcia khan".split()
PLACES = "paris lima oslo cairo quito delhi".split()
FILLER = "the a met in visited near and with".split()


def sentence(rng):
    tokens, tags = [], []
    for _ in range(rng.integers(3, 7)):
        kind = rng.integers(3)
        if kind == 0:
            tokens += [str(rng.choice(FIRST)), str(rng.choice(LAST))]
            tags += ["B-PER", "I-PER"]
        elif kind == 1:
            tokens.append(str(rng.choice(PLACES)))
            tags.append("B-LOC")
        else:
            tokens.append(str(rng.choice(FILLER)))
            tags.append("O")
    return tokens, tags


@pytest.fixture(scope="module")
def ner_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    rng = np.random.default_rng(0)
    for split, count in (("train", 160), ("dev", 40)):
        blocks = ["-DOCSTART- O\r\n"]
        for _ in range(count):
            tokens, tags = sentence(rng)
            blocks.append("".join(f"{t} {g}\r\n" for t, g in zip(tokens, tags, strict=True)))
        (root / f"{split}.conll").write_text("\r\n".join(blocks), encoding="utf-8")
    corpus = root / "corpus.txt"
    corpus.write_text(" ".join(FIRST + LAST + PLACES + FILLER) + " u.s.\n")
    tokenizer = train_tokenizer([corpus], 60, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    BertModel(BertConfig.preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=64)).save_pretrained(
        root / "encoder"
    )
    tokenizer.save_pretrained(root / "encoder")
    return root


def test_each_word_has_exactly_one_labelled_first_piece(ner_workspace):
    from bertforge.tokenizer import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(ner_workspace / "encoder")
    words = ["U.S.", "visited", "Oslo", "quito-delhi"]
    encoded = encode_sentences(tokenizer, [words], 64, 8)
    firsts = encoded.first_piece_of[0]
    assert sorted(firsts[firsts >= 0].tolist()) == [0, 1, 2, 3]  # one first piece per word, however it splits
    assert (encoded.word_of[0] == 0).sum() > 1  # "U.S." became several pieces
    labels = window_labels(encoded, [[1, 0, 1, 1]], label_all_pieces=False)[0]
    assert (labels != IGNORE_INDEX).sum() == 4
    every_piece = window_labels(encoded, [[1, 0, 1, 1]], label_all_pieces=True)[0]
    assert (every_piece != IGNORE_INDEX).sum() == (encoded.word_of[0] >= 0).sum()


def test_long_sentences_are_windowed_and_every_word_is_labelled_once(ner_workspace):
    from bertforge.tokenizer import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(ner_workspace / "encoder")
    words = (FIRST + LAST + PLACES) * 4
    encoded = encode_sentences(tokenizer, [words], 24, 6)
    assert len(encoded.inputs) > 3
    seen = np.concatenate([f[f >= 0] for f in encoded.first_piece_of])
    assert set(seen.tolist()) == set(range(len(words)))  # overlap repeats some words, none is lost


def test_cli_learns_entities(ner_workspace, tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["finetune", "ner", "--model", str(ner_workspace / "encoder"), "--train",
                   str(ner_workspace / "train.conll"), "--dev", str(ner_workspace / "dev.conll"), "--test",
                   str(ner_workspace / "dev.conll"), "--out", str(out), "--epochs", "12", "--batch-size", "16",
                   "--learning-rate", "2e-3", "--max-length", "32", "--window-stride", "8", "--progress", "false",
                   "--precision", "fp32"])  # fmt: skip
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["f1"] > 0.8, report["test"]  # measured 0.92-0.97 (vocabulary training varies a little)
    config = json.loads((out / "model" / "config.json").read_text())
    assert set(config["id2label"].values()) == {"O", "B-PER", "I-PER", "B-LOC"}
    assert "entity F1" in capsys.readouterr().out

    assert main(["evaluate", "--model", str(out / "model"), "--data", str(ner_workspace / "dev.conll")]) == 0
    assert f"entity F1 {report['test']['f1']:.4f}" in capsys.readouterr().out  # the run's windows and scores
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\nsecond text\n")
    assert main(["predict", "--model", str(out / "model"), "--input", str(texts)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == ["first text", "second text"] and all("entities" in r for r in records)


def test_three_column_line_is_a_located_error(ner_workspace, tmp_path, capsys):
    bad = tmp_path / "bad.conll"
    bad.write_text("anna B-PER\nsmith I-PER extra\n", encoding="utf-8")
    status = main(["finetune", "ner", "--model", str(ner_workspace / "encoder"), "--train", str(bad),
                   "--out", str(tmp_path / "run"), "--max-steps", "1"])  # fmt: skip
    assert status == 2
    assert "bad.conll:2" in capsys.readouterr().err


def test_random_init_keeps_config_and_tokenizer_but_not_weights(ner_workspace, tmp_path):
    out = tmp_path / "run"
    status = main(["finetune", "ner", "--model", str(ner_workspace / "encoder"), "--train",
                   str(ner_workspace / "train.conll"), "--out", str(out), "--max-steps", "1", "--learning-rate",
                   "1e-12", "--random-init", "true", "--progress", "false", "--precision", "fp32"])  # fmt: skip
    assert status == 0
    base = BertModel.from_pretrained(ner_workspace / "encoder").state_dict()
    fresh = BertForTokenClassification.from_pretrained(out / "model").bert.state_dict()
    assert set(fresh) <= set(base)  # the same encoder (a tagger has no pooler)
    assert not torch.allclose(fresh["embeddings.word.weight"], base["embeddings.word.weight"])
    assert (out / "model" / "vocab.txt").read_text() == (ner_workspace / "encoder" / "vocab.txt").read_text()


def test_data_text_writes_msra_train_sentences_as_documents(msra_train, tmp_path):
    from bertforge.data.tagging import read_conll, resolve_tagging_dataset

    corpus = tmp_path / "corpus.txt"
    assert main(["data", "text", "--dataset", "msra_ner", "--out", str(corpus), "--sentences-per-document", "7"]) == 0
    documents = corpus.read_text(encoding="utf-8").strip("\n").split("\n\n")
    sentences = ["".join(s.tokens) for s in read_conll(resolve_tagging_dataset("msra_ner", "train"))]
    assert [line for document in documents for line in document.split("\n")] == sentences
    assert all(len(document.split("\n")) <= 7 for document in documents)


def test_resume_after_a_crash_gives_the_same_tagger(ner_workspace, tmp_path, monkeypatch):
    common = ["finetune", "ner", "--model", str(ner_workspace / "encoder"), "--train",
              str(ner_workspace / "train.conll"), "--dev", str(ner_workspace / "dev.conll"), "--epochs", "2",
              "--batch-size", "16", "--learning-rate", "1e-3", "--max-length", "32", "--window-stride", "8",
              "--progress", "false", "--precision", "fp32"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a")]) == 0

    import bertforge.finetune_ner

    evaluate, calls = bertforge.finetune_ner.evaluate_tagger, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(bertforge.finetune_ner, "evaluate_tagger", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        main([*common, "--out", str(tmp_path / "b")])
    monkeypatch.setattr(bertforge.finetune_ner, "evaluate_tagger", evaluate)
    assert main([*common, "--out", str(tmp_path / "b"), "--resume", "true"]) == 0
    straight = BertForTokenClassification.from_pretrained(tmp_path / "a" / "model").state_dict()
    resumed = BertForTokenClassification.from_pretrained(tmp_path / "b" / "model").state_dict()
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, msg=name)
    assert (tmp_path / "b" / "metrics.jsonl").read_text().count("valid") == 2


@pytest.fixture
def random_tagger(ner_workspace, tmp_path):
    """An untrained tagger, saved as a run that read 12-token windows sharing 2: its tags depend on the windows."""
    torch.manual_seed(0)
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    model = BertForTokenClassification.from_pretrained(ner_workspace / "encoder", id2label=dict(enumerate(labels)),
                                                       label2id={t: i for i, t in enumerate(labels)})  # fmt: skip
    model.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "model" / "vocab.txt").write_bytes((ner_workspace / "encoder" / "vocab.txt").read_bytes())
    settings = {"model": "base", "train": "train.conll", "max_length": 12, "window_stride": 2}
    (tmp_path / "run" / "ner_config.json").write_text(json.dumps(settings))
    return tmp_path / "run" / "model"


def predicted(capsys, *argv):
    assert main(["predict", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_predict_tags_are_the_tags_evaluate_scores(ner_workspace, random_tagger, tmp_path, capsys):
    from bertforge.data.tagging import chunk_entities, read_conll
    from bertforge.ner_metrics import entity_scores

    dev = ner_workspace / "dev.conll"
    assert main(["evaluate", "--model", str(random_tagger), "--data", str(dev)]) == 0
    evaluated = capsys.readouterr().out
    records = predicted(capsys, "--model", str(random_tagger), "--input", str(dev), "--ner-output", "tags")
    gold = read_conll(dev)
    assert [r["tokens"] for r in records] == [s.tokens for s in gold]
    scores = entity_scores([s.tags for s in gold], [r["tags"] for r in records])
    assert (f"entity F1 {scores['f1']:.4f} (precision {scores['precision']:.4f}, recall {scores['recall']:.4f}), "
            f"token accuracy {scores['token_accuracy']:.4f}") in evaluated  # fmt: skip
    # The run's 12-token windows matter: read whole, some sentences get other tags.
    whole = predicted(capsys, "--model", str(random_tagger), "--input", str(dev), "--ner-output", "tags",
                      "--max-length", "64")  # fmt: skip
    assert [r["tags"] for r in whole] != [r["tags"] for r in records]

    # The same words as JSONL, or as plain text split at spaces, get the same tags; entities count tokens.
    tokens = tmp_path / "dev.jsonl"
    tokens.write_text("".join(json.dumps({"tokens": s.tokens}) + "\n" for s in gold))
    assert predicted(capsys, "--model", str(random_tagger), "--input", str(tokens), "--ner-output", "tags") == records
    text = tmp_path / "dev.txt"
    text.write_text("".join(" ".join(s.tokens) + "\n" for s in gold))
    assert predicted(capsys, "--model", str(random_tagger), "--input", str(text), "--ner-output", "tags") == records
    entities = predicted(capsys, "--model", str(random_tagger), "--input", str(tokens))
    for record, tagged in zip(entities, records, strict=True):
        spans = [(e["entity_group"], e["start_token"], e["end_token"]) for e in record["entities"]]
        assert spans == chunk_entities(tagged["tags"])
        words = [" ".join(record["tokens"][e["start_token"] : e["end_token"]]) for e in record["entities"]]
        assert [e["word"] for e in record["entities"]] == words
    assert any(record["entities"] for record in entities)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("s.jsonl", '{"tokens": ["anna"]}\n{"tokens": "anna smith"}\n', 's.jsonl:2: expected {"tokens": ['),
        ("s.jsonl", '{"tokens": ["anna smith"]}\n', "s.jsonl:1: a token contains a space or tab"),
        ("s.conll", "anna B-PER\nsmith I-PER extra\n", "s.conll:2: has 3 columns where the file's first line has 2"),
        ("s.json", "{}", "s.json: a BertForTokenClassification reads text, conll, jsonl, not squad"),
    ],
)
def test_bad_predict_input_for_a_tagger_is_one_located_line(random_tagger, tmp_path, capsys, name, content, message):
    (tmp_path / name).write_text(content)
    assert main(["predict", "--model", str(random_tagger), "--input", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bertforge: error: ") and message in err[0], err


def test_a_tagger_distils_into_one_layer_that_evaluate_and_predict_run(ner_workspace, tmp_path, capsys):
    train, dev = str(ner_workspace / "train.conll"), str(ner_workspace / "dev.conll")
    common = ["--train", train, "--dev", dev, "--test", dev, "--epochs", "12", "--batch-size", "16",
              "--learning-rate", "2e-3", "--max-length", "32", "--window-stride", "8", "--progress", "false",
              "--precision", "fp32"]  # fmt: skip
    assert main(["finetune", "ner", "--model", str(ner_workspace / "encoder"), "--out", str(tmp_path / "teacher"),
                 *common]) == 0  # fmt: skip
    student = tmp_path / "student"
    # the teacher named by its run folder, as for classifiers; hidden states need the teacher in every step
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--student-layers", "1", "--gold-weight", "0.5",
                 "--hidden-weight", "0.5", "--out", str(student), *common]) == 0  # fmt: skip
    report = json.loads((student / "report.json").read_text())
    assert report["teacher"]["test"]["f1"] > 0.8, report["teacher"]
    assert report["student"]["test"]["f1"] > 0.7, report["student"]  # one layer still finds names and places
    assert (report["teacher"]["layers"], report["student"]["layers"]) == (2, 1)
    assert report["student"]["inputs_per_second"] > 0 and "f1" in report["student"]["int8_test"]
    teacher_config = json.loads((tmp_path / "teacher" / "model" / "config.json").read_text())
    student_config = json.loads((student / "model" / "config.json").read_text())
    assert student_config["id2label"] == teacher_config["id2label"]
    assert student_config["architectures"] == ["BertForTokenClassification"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(student / "model"), "--data", dev]) == 0
    assert f"entity F1 {report['student']['test']['f1']:.4f}" in capsys.readouterr().out

    # Refused in one line before training: tags the teacher does not have, and unlabelled text
    other = tmp_path / "other.conll"
    other.write_text("anna B-ORG\nsmith I-ORG\n", encoding="utf-8")
    distil = ["distill", "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "bad")]
    assert main([*distil, "--train", str(other)]) == 2
    assert "are not among the teacher's" in capsys.readouterr().err
    assert main([*distil, "--train", train, "--unlabeled", dev]) == 2
    assert "--unlabeled is for classifiers" in capsys.readouterr().err
