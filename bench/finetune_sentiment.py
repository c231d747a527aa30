"""Fine-tuning MiniLM-L6 for sentiment: bertforge's recipe vs transformers' BertForSequenceClassification.

Both sides: the same catalogue splits, the same hyper-parameters (2 epochs, batch 32, AdamW lr 5e-5 with no decay
on biases/LayerNorm, weight decay 0.01, 10% linear warm-up then linear decay, seed 0 or --seed), the same precision,
PyTorch's fused AdamW kernel (transformers' Trainer default on torch >= 2.8, and bertforge's).
- rotten_tomatoes: seed-0 splits 6,530 / 1,000 / 1,000, max_length 64.
- imdb: the first 5,000 reviews of the seed-0 training split, its 2,500 dev and 2,500 test reviews,
  max_length 256 (longer reviews truncated).
transformers gets a plain training loop in the style of its examples: examples shuffled each epoch, each batch
padded to its longest, its pipeline run on the dev split after each epoch and the best epoch's weights kept, as
bertforge's recipe does. ``--long-text window`` makes bertforge train and predict on overlapping windows of the
long reviews (logits averaged) where transformers keeps truncating: a different recipe, reported as such. Prints
test accuracy of both, fine-tuning examples/s (dev evaluations included), and pipeline inference texts/s on the
test split (transformers padding each batch of 32 to its longest, in file order, as its pipeline does); next to
each ratio, what only one side gets (ONLY_BERTFORGE).

    .venv/bin/python -m bench.finetune_sentiment [--dataset rotten_tomatoes|imdb] [--precision fp32|bf16] [--seed N]
        [--long-text truncate|window] [--sides transformers,bertforge]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine, peak_rss_mb, run_child, transformers_adamw

BATCH, LEARNING_RATE, WARMUP = 32, 5e-5, 0.1
MAX_LENGTH = {"rotten_tomatoes": 64, "imdb": 256}
TRAIN_SUBSET = {"rotten_tomatoes": None, "imdb": 5_000}  # first N rows of the (already shuffled) training split
# What one side gets and the other does not, printed beside each ratio (both sides: random training batches of
# 32, each padded to its longest; the same optimizer, schedule and epochs; pipelines in batches of 32).
ONLY_BERTFORGE = {
    "fine-tuning": "bertforge alone: batches run on their real tokens only on the CPU (unpadded), dev evaluated "
    "length-sorted in batches of 64 (theirs: the pipeline, file order, 32), and its time also holds checkpoints "
    "and the test evaluation",
    "inference": "bertforge alone: texts sorted by length, and on the CPU run on their real tokens only",
}


def splits(dataset: str) -> dict[str, tuple[list[str], list[str]]]:
    """(texts, label names) of each split, the training split cut to the benchmark's subset."""
    from bertforge.data.catalogue import resolve_dataset

    rows = {}
    for split in ("train", "dev", "test"):
        with open(resolve_dataset(dataset, split), encoding="utf-8", newline="") as file:
            table = list(csv.DictReader(file))
        if split == "train":
            table = table[: TRAIN_SUBSET[dataset]]
        rows[split] = ([row["text"] for row in table], [row["label"] for row in table])
    return rows


def bertforge_side(dataset: str, precision: str, epochs: float, seed: int, device: str, long_text: str) -> dict:
    from bertforge.finetune import finetune_classification
    from bertforge.pipelines import pipeline
    from bertforge.settings import FinetuneConfig

    data = splits(dataset)
    with tempfile.TemporaryDirectory() as out:
        files = {}
        for split, (texts, labels) in data.items():
            files[split] = Path(out) / f"{split}.csv"
            with open(files[split], "w", encoding="utf-8", newline="") as file:
                csv.writer(file).writerows([("text", "label"), *zip(texts, labels, strict=True)])
        settings = FinetuneConfig(
            model="all-MiniLM-L6-v2", train=str(files["train"]), dev=str(files["dev"]), test=str(files["test"]),
            out=str(Path(out) / "run"), epochs=epochs, batch_size=BATCH, learning_rate=LEARNING_RATE,
            warmup=WARMUP, max_length=MAX_LENGTH[dataset], seed=seed, precision=precision,
            progress=False, device=device, long_text=long_text,
        )  # fmt: skip
        started = time.perf_counter()
        folder = finetune_classification(settings)
        train_seconds = time.perf_counter() - started  # includes the dev evaluation each epoch, as a user waits
        texts, labels = data["test"]
        classify = pipeline("sentiment-analysis", model=folder, precision=precision, device=device)  # as trained
        classify(texts[:64])  # warm-up
        started = time.perf_counter()
        results = classify(texts, batch_size=BATCH)
        infer_seconds = time.perf_counter() - started
        accuracy = float(np.mean([r["label"] == y for r, y in zip(results, labels, strict=True)]))
    return {"accuracy": accuracy, "train_seconds": train_seconds, "infer_seconds": infer_seconds}


def transformers_side(dataset: str, precision: str, epochs: float, seed: int, device: str) -> dict:
    import transformers

    from bertforge.assets import fetch

    folder, max_length = fetch("all-MiniLM-L6-v2"), MAX_LENGTH[dataset]
    data = splits(dataset)
    names = sorted(set(data["train"][1]))  # bertforge's order for class names, so both heads agree on ids
    texts, labels = data["train"][0], np.array([names.index(y) for y in data["train"][1]])
    torch.manual_seed(seed)
    tokenizer = transformers.BertTokenizer.from_pretrained(folder)
    model = transformers.BertForSequenceClassification.from_pretrained(
        folder, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    ).to(device)
    classify = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer, device=device)
    device_type = torch.device(device).type

    def accuracy_on(split: str) -> tuple[float, float]:
        """Accuracy of the pipeline on ``split`` and the seconds it took."""
        model.eval()
        started = time.perf_counter()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            results = classify(data[split][0], batch_size=BATCH, truncation=True, max_length=max_length)
        seconds = time.perf_counter() - started
        model.train()
        return float(np.mean([r["label"] == y for r, y in zip(results, data[split][1], strict=True)])), seconds

    optimizer = transformers_adamw(model, LEARNING_RATE)
    steps_per_epoch = math.ceil(len(texts) / BATCH)
    total = math.ceil(epochs * steps_per_epoch)
    warmup = WARMUP * total
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    generator = np.random.default_rng(seed)
    model.train()
    started = time.perf_counter()
    step, best_dev, best_weights = 0, -1.0, None
    for _ in range(math.ceil(epochs)):
        order = generator.permutation(len(texts))
        for start in range(0, len(order), BATCH):
            if step >= total:
                break
            rows = order[start : start + BATCH]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)  # fmt: skip
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(**batch, labels=torch.as_tensor(labels[rows], device=device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        dev_accuracy, _ = accuracy_on("dev")  # timed with training, as bertforge's per-epoch evaluation is
        if dev_accuracy > best_dev:
            best_dev, best_weights = dev_accuracy, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_weights)
    train_seconds = time.perf_counter() - started
    classify(data["test"][0][:64], batch_size=BATCH, truncation=True, max_length=max_length)  # warm-up
    accuracy, infer_seconds = accuracy_on("test")
    return {"accuracy": accuracy, "train_seconds": train_seconds, "infer_seconds": infer_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=tuple(MAX_LENGTH), default="rotten_tomatoes")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0, help="initialisation, shuffling and dropout, both sides")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument("--long-text", choices=("truncate", "window"), default="truncate", help="bertforge only")
    parser.add_argument("--sides", default="transformers,bertforge", help="which to run, comma-separated")
    parser.add_argument("--child", choices=("bertforge", "transformers"))
    args = parser.parse_args()
    if args.child:
        common = (args.dataset, args.precision, args.epochs, args.seed, args.device)
        result = bertforge_side(*common, args.long_text) if args.child == "bertforge" else transformers_side(*common)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    print(machine())
    if args.device != "cpu":
        print(torch.cuda.get_device_name(args.device))
    data = splits(args.dataset)
    print(f"MiniLM-L6 on {args.dataset}: {len(data['train'][0]):,} training texts, {args.epochs:g} epochs, "
          f"batch {BATCH}, lr {LEARNING_RATE}, max_length {MAX_LENGTH[args.dataset]}, {args.precision}, "
          f"bertforge long texts: {args.long_text}, seed {args.seed}")  # fmt: skip
    examples, tests = len(data["train"][0]) * args.epochs, len(data["test"][0])
    results = {}
    sides = args.sides.split(",")
    if not set(sides) <= {"transformers", "bertforge"}:
        parser.error(f"--sides takes transformers and/or bertforge, got {args.sides!r}")
    for side in sides:
        r = results[side] = run_child("bench.finetune_sentiment", "--child", side, "--dataset", args.dataset,
                                      "--precision", args.precision, "--epochs", str(args.epochs),
                                      "--seed", str(args.seed), "--device", args.device,
                                      "--long-text", args.long_text)  # fmt: skip
        print(f"  {side:<13} test accuracy {r['accuracy']:.4f}  fine-tuning {examples / r['train_seconds']:6.1f} "
              f"examples/s  inference {tests / r['infer_seconds']:6.1f} texts/s  "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    if len(results) < 2:
        return
    ours, theirs = results["bertforge"], results["transformers"]
    print(f"  accuracy difference (bertforge - transformers): {ours['accuracy'] - theirs['accuracy']:+.4f}")
    for name, key in (("fine-tuning", "train_seconds"), ("inference", "infer_seconds")):
        print(f"  {name} speed ratio: {theirs[key] / ours[key]:.2f}x; {ONLY_BERTFORGE[name]}")


if __name__ == "__main__":
    main()
