"""Pretraining step throughput and peak memory: bertforge vs transformers' BertForPreTraining, same run.

The bert-small configuration (4 layers, hidden 512, 8 heads, FFN 2048, vocab 30,522), seq 128, batch 32,
fp32, AdamW, 15% of tokens masked (at most 20 per sequence), NSP labels. Each side runs in its own child
process so that peak RSS is its own. Prints tokens/s, the ratio, and peak memory.

Two more runs show the allocator setting of bertforge's ``--low-memory true`` (``return_freed_memory_to_the_system``:
glibc keeps big blocks in their own maps) on both sides, so the table separates what the allocator gives from what
the model gives (sparse MLM head with a chunked loss, lean feed-forward backward, recomputed attention).

On CUDA (``--device cuda``) the two plain sides run and peak memory is the GPU's (``max_memory_allocated``);
the allocator setting is glibc's and does not apply.

    .venv/bin/python -m bench.pretrain_step [--steps 10] [--precision fp32|bf16] [--device cpu|cuda] [--batch 32]
        [--model small|base|...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.common import machine, peak_rss_mb, run_child

VOCAB = 30522


def sizes(preset: str) -> dict[str, int]:
    """The preset's shape (bert-small: 4 layers, hidden 512, 8 heads, FFN 2048) with the 30,522-token vocabulary."""
    from bertforge.config import PRESETS

    layers, hidden = PRESETS[preset]
    return dict(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                intermediate_size=4 * hidden)  # fmt: skip


LENGTH = 128
SIDES = ("transformers", "bertforge", "transformers+allocator", "bertforge+allocator")


def make_batches(count: int, batch_size: int, device: str) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(1000, VOCAB, (batch_size, LENGTH), generator=generator)
        ids[:, 0], ids[:, 63], ids[:, -1] = 101, 102, 102
        labels = torch.full((batch_size, LENGTH), -100)
        for row in range(batch_size):
            positions = torch.randperm(LENGTH - 2, generator=generator)[:19] + 1
            labels[row, positions] = ids[row, positions]
            ids[row, positions] = 103
        types = torch.zeros_like(ids)
        types[:, 64:] = 1
        nsp = torch.randint(0, 2, (batch_size,), generator=generator)
        batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids),
                 "labels": labels, "next_sentence_label": nsp}  # fmt: skip
        batches.append({name: tensor.to(device) for name, tensor in batch.items()})
    return batches


def child(side: str, steps: int, precision: str, device: str, batch_size: int, preset: str) -> None:
    if side.endswith("+allocator"):
        from bertforge.train import return_freed_memory_to_the_system

        return_freed_memory_to_the_system()
    torch.manual_seed(0)
    if side.startswith("bertforge"):
        from bertforge import BertConfig
        from bertforge.heads import BertForPreTraining

        model = BertForPreTraining(BertConfig(**sizes(preset)))

        def forward(batch):
            return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                         mlm_labels=batch["labels"], next_sentence_label=batch["next_sentence_label"]).loss  # fmt: skip
    else:
        import transformers

        model = transformers.BertForPreTraining(transformers.BertConfig(**sizes(preset)))

        def forward(batch):
            return model(**batch).loss

    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = make_batches(steps + 2, batch_size, device)
    cuda = device.startswith("cuda")
    times = []
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = forward(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()  # kernels run asynchronously: wait for them before reading the clock
        if index >= 2:  # the first steps allocate and warm caches
            times.append(time.perf_counter() - started)
    step = statistics.median(times)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    print(json.dumps({"side": side, "median_step_s": step, "min_step_s": min(times), "max_step_s": max(times),
                      "tokens_per_s": batch_size * LENGTH / step, "peak_mb": peak_mb}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step (the issue's figure is for 32)")
    parser.add_argument("--model", default="small", help="a preset: the issue's figure is for small; base on a GPU")
    parser.add_argument("--child", choices=SIDES)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.precision, args.device, args.batch, args.model)
        return
    cuda = args.device.startswith("cuda")
    print(machine())
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name(torch.device(args.device))}")
    print(f"pretraining step, bert-{args.model}, seq {LENGTH}, batch {args.batch}, {args.precision}, AdamW, "
          f"{args.steps} steps, {args.device}")  # fmt: skip
    memory = "peak GPU memory" if cuda else "peak RSS"
    results = {}
    for side in SIDES[:2] if cuda else SIDES:
        options = [
            "--steps",
            str(args.steps),
            "--precision",
            args.precision,
            "--device",
            args.device,
            "--model",
            args.model,
        ]
        results[side] = run_child("bench.pretrain_step", "--child", side, *options, "--batch", str(args.batch))
        r = results[side]
        print(f"  {side:<23} {r['tokens_per_s']:8.0f} tokens/s  (step median {r['median_step_s']:.4f} s, "
              f"min {r['min_step_s']:.4f}, max {r['max_step_s']:.4f})  {memory} {r['peak_mb']:.0f} MB")  # fmt: skip
    ours, theirs = results["bertforge"], results["transformers"]
    print(f"  speed ratio bertforge / transformers: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x")
    print(f"  {memory} ratio bertforge / transformers: {ours['peak_mb'] / theirs['peak_mb']:.2f}")
    if cuda:
        return
    lean, theirs_lean = results["bertforge+allocator"], results["transformers+allocator"]
    print(f"  bertforge --low-memory vs transformers: speed {lean['tokens_per_s'] / theirs['tokens_per_s']:.2f}x, "
          f"peak memory {lean['peak_mb'] / theirs['peak_mb']:.2f}")  # fmt: skip
    print(f"  both with the allocator setting: speed {lean['tokens_per_s'] / theirs_lean['tokens_per_s']:.2f}x, "
          f"peak memory {lean['peak_mb'] / theirs_lean['peak_mb']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
