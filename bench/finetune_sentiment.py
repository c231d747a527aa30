"""Fine-tuning MiniLM-L6 for sentiment: bertforge's recipe vs transformers' BertForSequenceClassification.

Both sides: the same Rotten Tomatoes splits (bertforge's catalogue: seed 0, 6,530 / 1,000 / 1,000), the same
hyper-parameters (2 epochs, batch 32, AdamW lr 5e-5 with no decay on biases/LayerNorm, weight decay 0.01,
10% linear warm-up then linear decay, max_length 64, seed 0), the same precision. transformers gets a plain
training loop in the style of its examples: examples shuffled each epoch, each batch padded to its longest.
Prints test accuracy of both, fine-tuning examples/s, and pipeline inference sentences/s on the 1,000 test
sentences (transformers padding each batch of 32 to its longest, in file order, as its pipeline does).

    .venv/bin/python -m bench.finetune_sentiment [--precision fp32|bf16] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine, peak_rss_mb, run_child

MAX_LENGTH, BATCH, LEARNING_RATE, WARMUP, SEED = 64, 32, 5e-5, 0.1, 0


def rotten_tomatoes() -> dict:
    from bertforge.data.catalogue import resolve_dataset
    from bertforge.data.classification import read_classification_file

    splits = {}
    for split in ("train", "test"):
        data = read_classification_file(resolve_dataset("rotten_tomatoes", split))
        splits[split] = ([e.text for e in data.examples], np.array([e.label for e in data.examples]))
    return splits


def bertforge_side(precision: str, epochs: float) -> dict:
    from bertforge.finetune import finetune_classification
    from bertforge.pipelines import pipeline
    from bertforge.settings import FinetuneConfig

    with tempfile.TemporaryDirectory() as out:
        settings = FinetuneConfig(
            model="all-MiniLM-L6-v2", train="rotten_tomatoes", dev="rotten_tomatoes", test="rotten_tomatoes",
            out=out, epochs=epochs, batch_size=BATCH, learning_rate=LEARNING_RATE, warmup=WARMUP,
            max_length=MAX_LENGTH, seed=SEED, precision=precision, progress=False,
        )  # fmt: skip
        started = time.perf_counter()
        folder = finetune_classification(settings)
        train_seconds = time.perf_counter() - started  # includes the dev evaluation each epoch, as a user waits
        texts, labels = rotten_tomatoes()["test"]
        classify = pipeline("sentiment-analysis", model=folder, max_length=MAX_LENGTH, precision=precision)
        classify(texts[:64])  # warm-up
        started = time.perf_counter()
        results = classify(texts, batch_size=BATCH)
        infer_seconds = time.perf_counter() - started
        names = json.loads((Path(folder) / "config.json").read_text())["label2id"]
        accuracy = float(np.mean([names[r["label"]] == y for r, y in zip(results, labels, strict=True)]))
    return {"accuracy": accuracy, "train_seconds": train_seconds, "infer_seconds": infer_seconds}


def transformers_side(precision: str, epochs: float) -> dict:
    import transformers

    from bertforge.assets import fetch

    folder = fetch("all-MiniLM-L6-v2")
    data = rotten_tomatoes()
    texts, labels = data["train"]
    torch.manual_seed(SEED)
    tokenizer = transformers.BertTokenizer.from_pretrained(folder)
    model = transformers.BertForSequenceClassification.from_pretrained(folder, num_labels=2)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "LayerNorm" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=LEARNING_RATE,
        eps=1e-6,
    )  # fmt: skip
    steps_per_epoch = math.ceil(len(texts) / BATCH)
    total = math.ceil(epochs * steps_per_epoch)
    warmup = WARMUP * total
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    generator = np.random.default_rng(SEED)
    model.train()
    started = time.perf_counter()
    step = 0
    for _ in range(math.ceil(epochs)):
        order = generator.permutation(len(texts))
        for start in range(0, len(order), BATCH):
            if step >= total:
                break
            rows = order[start : start + BATCH]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=MAX_LENGTH,
                              return_tensors="pt")  # fmt: skip
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(**batch, labels=torch.as_tensor(labels[rows])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
    train_seconds = time.perf_counter() - started
    # Its dev evaluation is not timed above; add the same amount of inference work per epoch for fairness.
    test_texts, test_labels = data["test"]
    classify = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    model.eval()
    classify(test_texts[:64], batch_size=BATCH, truncation=True, max_length=MAX_LENGTH)
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        results = classify(test_texts, batch_size=BATCH, truncation=True, max_length=MAX_LENGTH)
    infer_seconds = time.perf_counter() - started
    predicted = [model.config.label2id[r["label"]] for r in results]
    accuracy = float(np.mean(np.asarray(predicted) == test_labels))
    return {"accuracy": accuracy, "train_seconds": train_seconds + math.ceil(epochs) * infer_seconds,
            "infer_seconds": infer_seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--child", choices=("bertforge", "transformers"))
    args = parser.parse_args()
    if args.child:
        side = bertforge_side if args.child == "bertforge" else transformers_side
        print(json.dumps({**side(args.precision, args.epochs), "peak_rss_mb": peak_rss_mb()}))
        return
    print(machine())
    print(f"MiniLM-L6 on Rotten Tomatoes: {args.epochs:g} epochs, batch {BATCH}, lr {LEARNING_RATE}, "
          f"max_length {MAX_LENGTH}, {args.precision}")  # fmt: skip
    examples = 6530 * args.epochs
    results = {}
    for side in ("transformers", "bertforge"):
        r = results[side] = run_child("bench.finetune_sentiment", "--child", side, "--precision", args.precision,
                                      "--epochs", str(args.epochs))  # fmt: skip
        print(f"  {side:<13} test accuracy {r['accuracy']:.4f}  fine-tuning {examples / r['train_seconds']:6.1f} "
              f"examples/s  inference {1000 / r['infer_seconds']:6.1f} sentences/s  "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    ours, theirs = results["bertforge"], results["transformers"]
    print(f"  accuracy difference (bertforge - transformers): {ours['accuracy'] - theirs['accuracy']:+.4f}")
    print(f"  fine-tuning speed ratio: {theirs['train_seconds'] / ours['train_seconds']:.2f}x")
    print(f"  inference speed ratio:   {theirs['infer_seconds'] / ours['infer_seconds']:.2f}x")


if __name__ == "__main__":
    main()
