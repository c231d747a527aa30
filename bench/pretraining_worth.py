"""What is a pretrained model worth downstream? Fine-tune it, and the same model from random weights, and compare.

For each task and seed, runs the fine-tuning command twice through the CLI, once from the model's weights and once
with ``--random-init true`` (same config, same vocabulary, same command otherwise), and prints the mean and
standard deviation of each arm's test score and the difference of the means. Pretraining is judged this way, not
by its MLM/NSP accuracy.

    .venv/bin/python -m bench.pretraining_worth --model runs/quickstart/pretrain/model \
        --tasks rotten_tomatoes imdb --seeds 0 1 2 [--jobs 2] [--out runs/worth] [-- --epochs 4]

The random arm depends only on the model's config, its vocabulary and the command, so a second model of the same
recipe can skip it: ``--arms pretrained --random-from runs/worth`` reads it from the first model's run.

Tasks: rotten_tomatoes, imdb and imdb_1000 (`finetune classification --max-length 64`, the last with
`--train-limit 1000`, and the recipe's defaults otherwise),
msra_ner (`finetune ner --config ner-msra-cpu`). Arguments after ``--`` go to every fine-tuning command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ARMS = ("pretrained", "random")
TASK_COMMANDS = {  # the fine-tuning command of each task, before --model, --out, --seed and --random-init
    "rotten_tomatoes": ["finetune", "classification", "--train", "rotten_tomatoes", "--max-length", "64"],
    "imdb": ["finetune", "classification", "--train", "imdb", "--max-length", "64"],
    # IMDB with 1,000 labelled reviews (the first of the shuffled training split, 493 positive): ULMFiT's
    # low-resource setting (Howard & Ruder, 2018), where what pretraining knows is not relearnt from the labels
    "imdb_1000": ["finetune", "classification", "--train", "imdb", "--train-limit", "1000", "--max-length", "64"],
    "msra_ner": ["finetune", "ner", "--config", "ner-msra-cpu"],
}


@dataclass
class Job:
    """One child process: a bertforge command, where it writes, and the jobs that must finish first."""

    name: str
    command: list[str]  # arguments of `bertforge`
    folder: Path
    after: list[Job] = field(default_factory=list)
    seconds: float | None = None  # wall time once finished
    failed: bool = False


def fine_tuning_jobs(
    model: Path,
    tasks: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    extra: Sequence[str] = (),
    after: Sequence[Job] = (),
    arms: Sequence[str] = ARMS,
) -> list[Job]:
    """The ``arms`` of every task and seed for ``model``; each writes ``out/TASK-ARM-sSEED``."""
    jobs = []
    for task in tasks:
        for arm in arms:
            for seed in seeds:
                folder = out / f"{task}-{arm}-s{seed}"
                command = [*TASK_COMMANDS[task], "--model", str(model), "--out", str(folder), "--seed", str(seed),
                           "--random-init", str(arm == "random").lower(), "--progress", "false", *extra]  # fmt: skip
                jobs.append(Job(folder.name, command, folder, list(after)))
    return jobs


def run_jobs(jobs: list[Job], parallel: int, deadline: float | None = None) -> None:
    """Run ``jobs`` with at most ``parallel`` at once, each after the jobs it waits for; a job whose prerequisite
    failed is skipped, and none starts after ``deadline`` (time.monotonic()). Logs go to FOLDER.log."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def run(job: Job) -> None:
        for prerequisite in job.after:
            while prerequisite.seconds is None and not prerequisite.failed:
                time.sleep(1)
        if any(p.failed for p in job.after) or (deadline is not None and time.monotonic() > deadline):
            job.failed = True
            return
        job.folder.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        limit = None if deadline is None else max(1.0, deadline - started)
        with open(f"{job.folder}.log", "w") as log:
            try:
                code = subprocess.run([sys.executable, "-m", "bertforge", *job.command], stdout=log,
                                      stderr=subprocess.STDOUT, env=environment, timeout=limit).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                code = -1
        job.failed = code != 0
        job.seconds = time.monotonic() - started
        print(f"  {'FAILED' if job.failed else 'done'} {job.name} ({job.seconds:.0f} s)", flush=True)

    # Jobs are queued in the given order; list prerequisites before the jobs that wait for them.
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(run, jobs))


def test_score(folder: Path) -> float | None:
    """Test accuracy (classification) or entity F1 (NER) from a fine-tuning run's report.json."""
    report = folder / "report.json"
    if not report.is_file():
        return None
    test = json.loads(report.read_text())["test"]
    return test["accuracy"] if "accuracy" in test else test["f1"]


def summary(out: Path, tasks: Sequence[str], seeds: Sequence[int], random_out: Path | None = None) -> dict[str, dict]:
    """Per task: each arm's scores, mean and standard deviation, and the difference of the means. The random arm
    is read from ``random_out`` where given: it depends only on the config, the vocabulary and the command."""
    table = {}
    for task in tasks:
        row: dict = {}
        for arm in ARMS:
            folder = random_out if arm == "random" and random_out is not None else out
            scores = [s for s in (test_score(folder / f"{task}-{arm}-s{seed}") for seed in seeds) if s is not None]
            row[arm] = {"scores": scores, "mean": statistics.fmean(scores) if scores else None,
                        "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0}  # fmt: skip
        if row["pretrained"]["mean"] is not None and row["random"]["mean"] is not None:
            row["difference"] = row["pretrained"]["mean"] - row["random"]["mean"]
        table[task] = row
    return table


def print_summary(title: str, table: dict[str, dict]) -> None:
    print(f"{title}:")
    for task, row in table.items():
        arms = "  ".join(
            f"{arm} {row[arm]['mean']:.4f} ± {row[arm]['sd']:.4f} (n={len(row[arm]['scores'])})"
            if row[arm]["mean"] is not None else f"{arm} -"
            for arm in ARMS
        )  # fmt: skip
        difference = f"  difference {row['difference']:+.4f}" if "difference" in row else ""
        print(f"  {task:<16} {arms}{difference}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pretrained model folder")
    parser.add_argument("--tasks", nargs="+", default=["rotten_tomatoes"], choices=sorted(TASK_COMMANDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="fine-tuning runs at once (threads are shared out)")
    parser.add_argument("--out", default="runs/worth")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="which arms to run")
    parser.add_argument(
        "--random-from",
        type=Path,
        help="read the random arm from this earlier --out (same config, vocabulary and command: the same runs)",
    )
    args = parser.parse_args(argv)
    from bench.common import machine

    print(machine(), flush=True)
    out = Path(args.out)
    jobs = fine_tuning_jobs(Path(args.model), args.tasks, args.seeds, out, extra, arms=args.arms)
    run_jobs(jobs, args.jobs)
    table = summary(out, args.tasks, args.seeds, random_out=args.random_from)
    (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    print_summary(f"{args.model} (test scores over seeds {args.seeds})", table)
    if any(job.failed for job in jobs):
        raise SystemExit(f"some runs failed: see the .log files in {out}")


if __name__ == "__main__":
    main()
