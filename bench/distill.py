"""Distilling a fine-tuned MiniLM-L6 sentiment classifier into 1-, 2- and 3-layer students, through the CLI.

Teacher: all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes (or ``--data imdb``) with README's recipe (2 epochs,
max_length 64). Students:
``bertforge distill --student-layers N`` (the teacher's embeddings + N of its 6 layers, DistilBERT's init). The
baseline: the same 2 layers taken from the pretrained (not fine-tuned) MiniLM and fine-tuned directly on the gold
labels with the teacher's recipe, no teacher. For each model: test accuracy (``bertforge evaluate``), parameters,
and ``bertforge predict`` throughput on the test+dev texts (2,000 for Rotten Tomatoes, 5,000 for IMDB; fp32, bf16,
and int8 with ``--quantize int8``):
the whole command's wall clock, and the rate predict reports for its tokenizing and forward passes once the model
is loaded; with the child process's peak memory. Timings are comparable within one run only.

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.distill [--out runs/bench-distill] [--layers 1,2,3]
        ["--distill-options=--epochs 6 --unlabeled FILE" --tag=-aug]  (= signs: the values start with -)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine
from bertforge.assets import fetch
from bertforge.data.catalogue import resolve_dataset
from bertforge.data.classification import read_classification_file
from bertforge.distill import count_parameters, kept_layers
from bertforge.heads import BertForSequenceClassification
from bertforge.model import BertModel
from bertforge.tokenizer import BertTokenizer

RECIPE = ["--epochs", "2", "--max-length", "64", "--progress", "false"]  # README's, after --train DATA


def bertforge(*arguments: str) -> tuple[str, float, float]:
    """Run the CLI in a child process: its standard output and error (together), wall seconds and its own peak
    resident memory (MB)."""
    started = time.perf_counter()
    # Output goes to files, not pipes: Popen.communicate would reap the child before os.wait4 could read its rusage.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-m", "bertforge", *arguments], stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bertforge {' '.join(arguments)} failed:\n{stderr[-3000:]}")
    return stdout + stderr, time.perf_counter() - started, usage.ru_maxrss / 1024


def accuracy(model: Path, data: str, *options: str) -> float:
    out, _, _ = bertforge("evaluate", "--model", str(model), "--data", f"{data}:test", *options)
    return float(re.search(r"accuracy (\d\.\d+)", out).group(1))


def speed(model: Path, texts: Path, *options: str) -> tuple[float, float, float]:
    """Texts per second of `bertforge predict` over ``texts``: the whole command (Python and model loading
    included) and the rate predict reports for its own tokenizing and forward passes; and its peak memory."""
    out, seconds, peak = bertforge("predict", "--model", str(model), "--input", str(texts), "--output", "/dev/null",
                                   *options)  # fmt: skip
    reported = float(re.search(r"predicted \d+ inputs in [\d.]+ s \((\d+) inputs/s\)", out).group(1))
    return len(texts.read_text().splitlines()) / seconds, reported, peak


def rate(measured: tuple[float, float, float], teacher: tuple[float, float, float]) -> str:
    """A table cell: whole-command texts/s and its ratio to the teacher's fp32, then predict's own rate [and ratio]."""
    return (f"{measured[0]:.0f} ({measured[0] / teacher[0]:.1f}×) "
            f"[{measured[1]:.0f}, {measured[1] / teacher[1]:.1f}×]")  # fmt: skip


def direct_student(out: Path, layers: int) -> Path:
    """The pretrained MiniLM's embeddings + the layers a distilled student keeps, saved for plain fine-tuning."""
    source = fetch("all-MiniLM-L6-v2")
    encoder = BertModel.from_pretrained(source)
    encoder.layers = torch.nn.ModuleList(encoder.layers[i] for i in kept_layers(len(encoder.layers), layers))
    encoder.config.num_hidden_layers = layers
    encoder.save_pretrained(out)
    BertTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-distill")
    parser.add_argument("--layers", default="1,2,3")
    parser.add_argument("--distill-options", default="", help='more `bertforge distill` options for the students, '
                        'e.g. "--epochs 6 --unlabeled FILE"; students go to OUT/student{N}{--tag}')  # fmt: skip
    parser.add_argument("--tag", default="", help="suffix of the students' run folders, to keep variants apart")
    parser.add_argument("--data", default="rotten_tomatoes", choices=("rotten_tomatoes", "imdb"),
                        help="the teacher's and students' data set (catalogue name)")  # fmt: skip
    args = parser.parse_args()
    recipe = ["--train", args.data, *RECIPE]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(machine())
    texts = out / f"{args.data}_test_dev.txt"
    rows = [" ".join(e.text.split()) for split in ("test", "dev")  # one text a line
            for e in read_classification_file(resolve_dataset(args.data, split)).examples]  # fmt: skip
    texts.write_text("\n".join(rows) + "\n")

    runs = {"teacher (6 layers)": out / "teacher"}
    if not (out / "teacher" / "model").is_dir():
        bertforge("finetune", "classification", "--model", "all-MiniLM-L6-v2", *recipe, "--out", str(out / "teacher"))
    for layers in map(int, args.layers.split(",")):
        name = out / f"student{layers}{args.tag}"
        if not (name / "model").is_dir():
            bertforge("distill", "--teacher", str(out / "teacher"), "--student-layers", str(layers), *recipe,
                      *args.distill_options.split(), "--out", str(name))  # fmt: skip
        runs[f"distilled, {layers} layers{' ' + args.distill_options if args.distill_options else ''}"] = name
    if not (out / "direct2" / "model").is_dir():
        start = direct_student(out / "direct2-start", 2)
        bertforge("finetune", "classification", "--model", str(start), *recipe, "--out", str(out / "direct2"))
    runs["direct, 2 layers (no teacher)"] = out / "direct2"

    print(f"{len(rows)} texts timed; other work may share the CPU: compare within this run only")
    print("texts/s: the whole `bertforge predict` command (Python start and model loading included), then in")
    print("brackets the rate predict reports for tokenizing and the forward passes alone; × = against the teacher")
    print(
        "| model | test acc | parameters | fp32 texts/s | bf16 texts/s | int8 texts/s | int8 acc | peak MB fp32/int8 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    teacher_speed = None
    for label, run in runs.items():
        model = run / "model"
        parameters = count_parameters(BertForSequenceClassification.from_pretrained(model))
        fp32 = speed(model, texts, "--precision", "fp32")
        bf16 = speed(model, texts, "--precision", "bf16")
        int8 = speed(model, texts, "--quantize", "int8")
        int8_acc = accuracy(model, args.data, "--quantize", "int8")
        teacher_speed = teacher_speed or fp32

        print(
            f"| {label} | {accuracy(model, args.data):.4f} | {parameters / 1e6:.1f} M | {rate(fp32, teacher_speed)} | "
            f"{rate(bf16, teacher_speed)} | {rate(int8, teacher_speed)} | {int8_acc:.4f} | "
            f"{fp32[2]:.0f} / {int8[2]:.0f} |",
            flush=True,
        )
        if (run / "report.json").is_file() and label.startswith("distilled"):
            report = json.loads((run / "report.json").read_text())
            print(
                f"  report.json: teacher {report['teacher']['test']['accuracy']:.4f}, "
                f"student {report['student']['test']['accuracy']:.4f}"
            )


if __name__ == "__main__":
    main()
