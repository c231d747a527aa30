"""Chinese end to end: what pretraining is worth for MSRA NER.

Runs the README's "Chinese end to end" commands with the bundled configs: MSRA's training sentences (its test
sentences never) → a character vocabulary → shards → a tiny BERT pretrained from scratch (pretrain-zh-cpu) →
fine-tuned on MSRA NER (ner-msra-cpu), and the same fine-tuning from random weights. Prints both test entity F1s
and the time of each stage.

    .venv/bin/python -m bench.chinese_ner [--out runs/chinese] [--pretrain-steps N] [--epochs 2]

Pretraining runs the config's 12-minute budget, or ``--pretrain-steps`` steps instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/chinese")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="a step budget instead of the time budget")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--vocab-size", type=int, default=6000)
    args = parser.parse_args()
    from bertforge.cli import main as bertforge

    out = Path(args.out)
    print(machine(), flush=True)
    corpus, tokenizer, shards = str(out / "corpus.txt"), str(out / "tokenizer"), str(out / "shards")
    pretrained = str(out / "pretrain")
    steps = args.pretrain_steps
    step_budget = [] if steps is None else ["--max-minutes", "null", "--max-steps", str(steps)]
    stages = {
        "corpus": ["data", "text", "--dataset", "msra_ner", "--out", corpus],
        "vocabulary": [
            "tokenizer",
            "train",
            "--files",
            corpus,
            "--vocab-size",
            str(args.vocab_size),
            "--out",
            tokenizer,
        ],
        "shards": ["data", "prepare", "--corpus", corpus, "--tokenizer", tokenizer, "--out", shards],
        "pretraining": [
            "pretrain",
            "--config",
            "pretrain-zh-cpu",
            "--data",
            shards,
            "--out",
            pretrained,
            "--progress",
            "false",
            *step_budget,
        ],
    }
    for arm in ("pretrained", "random"):
        stages[f"NER from {arm} weights"] = [
            "finetune", "ner", "--config", "ner-msra-cpu", "--model", str(out / "pretrain" / "model"), "--out",
            str(out / f"ner-{arm}"), "--epochs", str(args.epochs), "--random-init", str(arm == "random").lower(),
            "--progress", "false",
        ]  # fmt: skip
    for name, command in stages.items():
        started = time.perf_counter()
        if bertforge(command) != 0:
            raise SystemExit(f"stage {name} failed: bertforge {' '.join(command)}")
        print(f"  {name:<26} {time.perf_counter() - started:7.1f} s", flush=True)
    scores = {
        arm: json.loads((out / f"ner-{arm}" / "report.json").read_text())["test"] for arm in ("pretrained", "random")
    }
    for arm, score in scores.items():
        print(f"  MSRA test entity F1, {arm:<10} {score['f1']:.4f} (precision {score['precision']:.4f}, recall "
              f"{score['recall']:.4f})")  # fmt: skip
    print(f"  pretraining adds {scores['pretrained']['f1'] - scores['random']['f1']:+.4f} entity F1")


if __name__ == "__main__":
    main()
