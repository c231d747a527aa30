"""Does `bertforge predict` give transformers' scores? One fine-tuned classifier, the same test texts, both sides.

    python -m bench.predict_parity --model runs/quickstart/sentiment/model [--data rotten_tomatoes --split test]

bertforge's side is the CLI with its default options (`bertforge predict --model M --input TEXTS --top-k C`):
fp32, the fine-tuning run's saved max_length, length-sorted unpadded batches. transformers' side is
`BertForSequenceClassification` with the `BertTokenizerFast` of the same folder, fp32, padded batches of 64 in
input order, inputs cut at the same max_length. Prints the largest difference in any class probability, the
labels that differ, and both sides' time (what only bertforge does: length sorting and unpadding; transformers
pads every batch to its longest input). Issue #20's floor: every probability within 1e-3.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine
from bertforge.assets import resolve_model_dir
from bertforge.config import BertConfig
from bertforge.data.catalogue import resolve_dataset
from bertforge.settings import FinetuneConfig, inference_settings

TOLERANCE = 1e-3


def read_texts(data: str, split: str) -> list[str]:
    with open(resolve_dataset(data, split), newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def bertforge_side(model: Path, texts: list[str], classes: int, scratch: Path) -> tuple[np.ndarray, list[str], float]:
    """(N, C) probabilities in label-id order, the labels, and the seconds the CLI took (start-up included)."""
    # JSONL, not one text a line: a few texts hold characters that count as line breaks (e.g. U+2028).
    inputs = scratch / "texts.jsonl"
    inputs.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    command = [sys.executable, "-m", "bertforge.cli", "predict", "--model", str(model), "--input", str(inputs)]
    command += ["--output", str(scratch / "out.jsonl"), "--top-k", str(classes)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    label_ids = BertConfig.load(model).label2id
    rows = [json.loads(line) for line in (scratch / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    probabilities = np.zeros((len(rows), classes))
    for row, result in zip(probabilities, rows, strict=True):
        for entry in result["scores"]:
            row[label_ids[entry["label"]]] = entry["score"]
    return probabilities, [result["label"] for result in rows], seconds


@torch.inference_mode()
def transformers_side(model: Path, texts: list[str], max_length: int) -> tuple[np.ndarray, list[str], float]:
    import transformers  # the reference, imported by the bench only

    started = time.perf_counter()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(model)
    classifier = transformers.BertForSequenceClassification.from_pretrained(model).eval()
    chunks = []
    for start in range(0, len(texts), 64):
        batch = tokenizer(texts[start : start + 64], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")  # fmt: skip
        chunks.append(classifier(**batch).logits.float().softmax(-1).numpy())
    probabilities = np.concatenate(chunks)
    labels = [classifier.config.id2label[int(i)] for i in probabilities.argmax(-1)]
    return probabilities, labels, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/quickstart/sentiment/model", help="a fine-tuned classifier folder")
    parser.add_argument("--data", default="rotten_tomatoes", help="a catalogue data set (default: rotten_tomatoes)")
    parser.add_argument("--split", default="test", help="train, dev or test (default: test)")
    args = parser.parse_args()
    model = resolve_model_dir(args.model)
    config = BertConfig.load(model)
    if config.classifier_pooling != "cls":
        raise SystemExit(f"{model}: pools the mean of token vectors; transformers' classifier reads [CLS] only")
    texts = read_texts(args.data, args.split)
    max_length = inference_settings(FinetuneConfig, model).max_length
    print(machine())
    print(f"{model}: {len(texts)} texts of {args.data}/{args.split}, max_length {max_length}, fp32 both sides")
    with tempfile.TemporaryDirectory() as scratch:
        ours, our_labels, our_seconds = bertforge_side(model, texts, len(config.id2label), Path(scratch))
    theirs, their_labels, their_seconds = transformers_side(model, texts, max_length)
    difference = np.abs(ours - theirs)
    differing = sum(a != b for a, b in zip(our_labels, their_labels, strict=True))
    print(f"largest probability difference {difference.max():.2e} (mean {difference.mean():.2e}; floor "
          f"{TOLERANCE:g}: {'met' if difference.max() <= TOLERANCE else 'NOT met'}); labels that differ: "
          f"{differing} of {len(texts)}")  # fmt: skip
    print(f"seconds, model loading included: bertforge predict (CLI process, length-sorted, unpadded) "
          f"{our_seconds:.1f}, transformers (in process, padded batches of 64) {their_seconds:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
