"""Tokens/s of `bertforge pretrain` in 1 process vs 2 processes under torchrun, same global batch.

On a 2-core machine this measures the cost of DDP (gloo all-reduce, per-process work), not a speed-up: one
process uses both cores as threads, the two processes one core each.

    python -m bench.distributed_overhead --data SHARDS [--models tiny small] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import machine


def tokens_per_second(processes: int, model: str, data: str, steps: int, out: Path) -> float:
    """Median tokens/s over the logged windows after the first (which includes start-up)."""
    arguments = ["pretrain", "--config", "pretrain-cpu", "--data", data, "--out", str(out), "--model", model,
                 "--max-minutes", "0", "--max-steps", str(steps), "--eval-every", "100000", "--save-every", "100000",
                 "--log-every", "10", "--progress", "false"]  # fmt: skip
    if processes == 1:
        command = [sys.executable, "-m", "bertforge", *arguments]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", "bertforge", *arguments]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = sorted(r["tokens_per_second"] for r in records if r["split"] == "train")[1:]
    return rates[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="shards folder written by `bertforge data prepare`")
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], help="model presets to measure")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models:
            one = tokens_per_second(1, model, args.data, args.steps, Path(scratch) / f"{model}-1")
            two = tokens_per_second(2, model, args.data, args.steps, Path(scratch) / f"{model}-2")
            print(f"{model}: 1 process {one:,.0f} tokens/s, 2 processes {two:,.0f} tokens/s, ratio {two / one:.2f}")


if __name__ == "__main__":
    main()
