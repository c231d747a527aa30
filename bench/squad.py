"""Fine-tuning MiniLM-L6 for SQuAD v1.1: bertforge's recipe vs transformers' BertForQuestionAnswering.

Both sides: the first 4,000 training questions, 1 epoch, batch 32, AdamW lr 5e-5 (no decay on biases/LayerNorm,
weight decay 0.01, eps 1e-6, fused kernel), 10% linear warm-up then linear decay, gradient clipping 1.0, each seed of
--seeds (initialisation of the head, window order, dropout), the same precision, the same device; evaluated on the
first 1,000 dev questions with the official exact match / F1. Both read the same windows (max_length 256,
doc_stride 128, max_query_length 64: bertforge's preprocessing, whose token ids equal transformers'
BertTokenizer, see tests/test_tokenizer.py) and share one post-processing and its batching (dev windows sorted by
length, 64 per forward pass; n-best 20, max_answer_length 30), so the comparison is about the model and training
loop. Both train on random batches of windows, each padded to its longest; transformers in a plain loop in the
style of its examples. What only one side gets is printed next to the ratio (ONLY_BERTFORGE).

    .venv/bin/python -m bench.squad [--precision fp32|bf16] [--seeds 0 1 2] [--device cpu|cuda]
        [--train-limit 4000] [--eval-limit 1000]
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

from bench.common import machine, peak_rss_mb, run_child, transformers_adamw

BATCH, LEARNING_RATE, WARMUP = 32, 5e-5, 0.1
MAX_LENGTH, DOC_STRIDE, MAX_QUERY_LENGTH = 256, 128, 64
# What one side gets and the other does not, printed beside the ratio: the rest (batches, optimizer, schedule,
# windows, evaluation batching and post-processing) is the same on both sides.
ONLY_BERTFORGE = {
    "cpu": "bertforge alone runs each batch on its real tokens only (unpadded; attention per window beyond 128 "
    "tokens), in training and evaluation, and keeps padding out of the answer-position softmax of its loss "
    "(transformers' BertForQuestionAnswering scores padding positions too)",
    "cuda": "bertforge alone keeps padding out of the answer-position softmax of its loss (transformers' "
    "BertForQuestionAnswering scores padding positions too); both run padded batches on a GPU",
}


def bertforge_side(precision: str, train_limit: int, eval_limit: int, seed: int, device: str) -> dict:
    from bertforge.finetune_qa import finetune_qa
    from bertforge.settings import QaConfig

    with tempfile.TemporaryDirectory() as out:
        settings = QaConfig(
            model="all-MiniLM-L6-v2", train="squad_v1", out=out, train_limit=train_limit, eval_limit=eval_limit,
            max_length=MAX_LENGTH, doc_stride=DOC_STRIDE, max_query_length=MAX_QUERY_LENGTH, epochs=1,
            batch_size=BATCH, learning_rate=LEARNING_RATE, warmup=WARMUP, seed=seed, precision=precision,
            progress=False, device=device,
        )  # fmt: skip
        started = time.perf_counter()
        finetune_qa(settings)
        seconds = time.perf_counter() - started  # includes the dev evaluation, as a user waits
        scores = json.loads((Path(out) / "report.json").read_text())["dev"]
    return {"exact_match": scores["exact_match"], "f1": scores["f1"], "seconds": seconds}


def transformers_side(precision: str, train_limit: int, eval_limit: int, seed: int, device: str) -> dict:
    import transformers

    from bertforge.assets import fetch
    from bertforge.data.squad import read_squad, resolve_squad
    from bertforge.inference import collate
    from bertforge.qa import answer_positions, encode_questions, predict_answers
    from bertforge.settings import QaConfig
    from bertforge.squad_metrics import squad_scores
    from bertforge.tokenizer import BertTokenizer

    folder = fetch("all-MiniLM-L6-v2")
    tokenizer = BertTokenizer.from_pretrained(folder)
    train = read_squad(resolve_squad("squad_v1", "train"), train_limit).examples
    dev = read_squad(resolve_squad("squad_v1", "dev"), eval_limit).examples
    torch.manual_seed(seed)
    model = transformers.BertForQuestionAnswering.from_pretrained(folder).to(device)
    device_type = torch.device(device).type
    optimizer = transformers_adamw(model, LEARNING_RATE)
    started = time.perf_counter()
    windows = encode_questions(
        tokenizer, [e.question for e in train], [e.context for e in train], max_length=MAX_LENGTH,
        doc_stride=DOC_STRIDE, max_query_length=MAX_QUERY_LENGTH,
    )  # fmt: skip
    starts, ends = answer_positions(windows, train)
    total = math.ceil(len(windows) / BATCH)
    warmup = WARMUP * total
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    model.train()
    order = np.random.default_rng(seed).permutation(len(windows))
    for first in range(0, len(order), BATCH):
        rows = order[first : first + BATCH]
        batch = {k: v.to(device) for k, v in collate(windows.inputs, rows, tokenizer.pad_token_id).items()}
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch, start_positions=torch.as_tensor(starts[rows], device=device),
                         end_positions=torch.as_tensor(ends[rows], device=device)).loss  # fmt: skip
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    class Reader(torch.nn.Module):  # transformers' model behind the calling convention of bertforge's post-processing
        def forward(self, input_ids, attention_mask, token_type_ids):
            return model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    model.eval()
    settings = QaConfig(model=str(folder), train="squad_v1", max_length=MAX_LENGTH, doc_stride=DOC_STRIDE,
                        max_query_length=MAX_QUERY_LENGTH)  # fmt: skip
    predictions = predict_answers(Reader(), tokenizer, dev, settings, device=torch.device(device),
                                  precision=precision)  # fmt: skip
    seconds = time.perf_counter() - started
    scores = squad_scores(predictions, {e.id: [a.text for a in e.answers] for e in dev})
    return {"exact_match": scores["exact_match"], "f1": scores["f1"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--train-limit", type=int, default=4000)
    parser.add_argument("--eval-limit", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="head initialisation, window order and dropout; each seed runs both sides")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument("--child", choices=("bertforge", "transformers"))
    args = parser.parse_args()
    if args.child:
        side = bertforge_side if args.child == "bertforge" else transformers_side
        result = side(args.precision, args.train_limit, args.eval_limit, args.seeds[0], args.device)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    print(machine())
    if args.device != "cpu":
        print(torch.cuda.get_device_name(args.device))
    print(f"MiniLM-L6 on SQuAD v1.1: first {args.train_limit:,} training questions, 1 epoch, batch {BATCH}, "
          f"lr {LEARNING_RATE}, max_length {MAX_LENGTH}, doc_stride {DOC_STRIDE}; first {args.eval_limit:,} dev "
          f"questions; {args.precision}, {args.device}, seeds {' '.join(map(str, args.seeds))}")  # fmt: skip
    results: dict[str, list[dict]] = {"transformers": [], "bertforge": []}
    for seed in args.seeds:
        for side, runs in results.items():
            options = ["--train-limit", str(args.train_limit), "--eval-limit", str(args.eval_limit), "--seeds",
                       str(seed), "--device", args.device, "--precision", args.precision]  # fmt: skip
            r = run_child("bench.squad", "--child", side, *options)
            runs.append(r)
            print(f"  seed {seed} {side:<13} exact match {r['exact_match']:6.2f}  F1 {r['f1']:6.2f}  fine-tuning + "
                  f"evaluation {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    for side, runs in results.items():
        print(f"  {side:<13} exact match {spread([r['exact_match'] for r in runs])}  F1 "
              f"{spread([r['f1'] for r in runs])}  seconds {spread([r['seconds'] for r in runs], 1)}  "
              f"peak RSS (largest) {max(r['peak_rss_mb'] for r in runs):.0f} MB")  # fmt: skip
    ours, theirs = results["bertforge"], results["transformers"]
    print(f"  difference (bertforge - transformers), mean over seeds: exact match "
          f"{np.mean([r['exact_match'] for r in ours]) - np.mean([r['exact_match'] for r in theirs]):+.2f}, F1 "
          f"{np.mean([r['f1'] for r in ours]) - np.mean([r['f1'] for r in theirs]):+.2f}")  # fmt: skip
    print(f"  speed ratio (total seconds): {sum(r['seconds'] for r in theirs) / sum(r['seconds'] for r in ours):.2f}x; "
          f"only one side gets: {ONLY_BERTFORGE[torch.device(args.device).type]}")  # fmt: skip


def spread(values: list[float], digits: int = 2) -> str:
    """Mean ± sample standard deviation (the mean alone for one value)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


if __name__ == "__main__":
    main()
