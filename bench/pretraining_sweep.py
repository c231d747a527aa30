"""Which short pretraining recipe pays off downstream? Many step-limited pretraining runs, then each model
fine-tuned against random weights (bench.pretraining_worth), all as parallel child processes.

Made for a lent GPU, where dozens of BERT-tiny runs fit in minutes: the runs are limited by optimizer steps sized
to what a 2-core CPU does in the named number of minutes (BERT-tiny, batch 32, seq 128: ~125 ms a step), so the
ranking carries over to the CPU recipes; the CPU figures themselves are measured on the CPU.

    python -m bench.pretraining_sweep --shards DIR --out runs/sweep --device cuda --parallel 14 --minutes 8

DIR holds `bertforge data prepare` folders: shards-imdb (`data text --dataset imdb`), shards-wiki (the
quickstart's SQuAD paragraphs) and shards-zh (`data text --dataset msra_ner`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.pretraining_worth import Job, fine_tuning_jobs, print_summary, run_jobs, summary

MLM_ONLY = ["--next-sentence-prediction", "false"]
CPU_STEPS_PER_MINUTE = 450  # BERT-tiny, batch 32 × 128, on the 2-core Zen 4 (bench/RESULTS.md)
ENGLISH = {  # name: (shards, steps, pretrain overrides on top of --config pretrain-cpu)
    "wiki-nsp-10min": ("wiki", 10, []),
    "imdb-nsp-10min": ("imdb", 10, []),
    "imdb-mlm-10min": ("imdb", 10, MLM_ONLY),
    "imdb-mlm30-10min": ("imdb", 10, [*MLM_ONLY, "--mlm-probability", "0.3", "--max-predictions-per-seq", "40"]),
    "imdb-mlm-lr2e-3-10min": ("imdb", 10, [*MLM_ONLY, "--learning-rate", "2e-3"]),
    "imdb-nsp-20min": ("imdb", 20, []),
    "imdb-mlm-20min": ("imdb", 20, MLM_ONLY),
}
CPU_RECIPE = ["--attention-heads", "4", "--attention-init", "mimetic", "--mlm-probability", "0.2",
              "--max-predictions-per-seq", "26", "--learning-rate", "1e-3", "--cooldown", "0.3"]  # fmt: skip
CHINESE = {  # name: (config, steps, overrides)
    "zh-shipped-11min": ("pretrain-zh-cpu", 5000, []),
    "zh-cpu-recipe-11min": ("pretrain-zh-cpu", 5000, CPU_RECIPE),
    "zh-cpu-recipe-15min": ("pretrain-zh-cpu", 6700, CPU_RECIPE),
}
# Task-adaptive pretraining (Gururangan et al., 2020): the task's own unlabelled training text in the corpus.
# shards-tapt = IMDB's training reviews + Rotten Tomatoes' 6,530 training sentences five times over (shuffled,
# ten to a document); its dev and test sentences never.
ADAPTIVE = {
    "imdb-nsp-10min": ("imdb", 10, []),
    "imdb-mlm-10min": ("imdb", 10, MLM_ONLY),
    "tapt-nsp-10min": ("tapt", 10, []),
    "tapt-mlm-10min": ("tapt", 10, MLM_ONLY),
    "imdb-nsp-mask40-10min": ("imdb", 10, ["--mlm-probability", "0.4", "--max-predictions-per-seq", "52"]),
}
SEEDS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=None, help="no job starts after this; running ones stop")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count (0.01: a dry run)")
    plans = "recipes: corpus, NSP, masking, length, Chinese; adaptive: task text and pooling"
    parser.add_argument("--plan", choices=("recipes", "adaptive"), default="recipes", help=plans)
    args = parser.parse_args()
    started = time.monotonic()
    deadline = started + args.minutes * 60 if args.minutes else None
    shards, out, device = Path(args.shards), Path(args.out), ["--device", args.device]
    common = ["--max-minutes", "null", "--progress", "false", "--save-every", "100000", *device]

    def steps(count: float) -> str:
        return str(max(2, round(count * args.scale)))

    pretraining, fine_tuning, reports = [], [], {}

    def english_job(name: str, corpus: str, minutes: float, overrides: list[str]) -> Job:
        command = ["pretrain", "--config", "pretrain-cpu", "--data", str(shards / f"shards-{corpus}"), "--out",
                   str(out / name), "--max-steps", steps(minutes * CPU_STEPS_PER_MINUTE), "--eval-every",
                   steps(1500), *common, *overrides]  # fmt: skip
        return Job(name, command, out / name)

    def compare(name: str, model_job: Job, tasks: list[str], seeds, folder: Path, extra: list[str], random_from: str):
        """Fine-tune ``model_job``'s model; the random arm runs once per (vocabulary and config, command), in the
        folder of the sweep entry named ``random_from``, since it does not depend on the pretraining."""
        model = model_job.folder / "model"
        own_random = random_from == model_job.name
        arms = ("pretrained", "random") if own_random else ("pretrained",)
        fine_tuning.extend(fine_tuning_jobs(model, tasks, seeds, folder, extra, [model_job], arms))
        random_folder = Path(str(folder).replace(model_job.name, random_from, 1))
        reports[name] = (folder, tasks, seeds, random_folder)

    if args.plan == "adaptive":
        # Fine-tuning as the README's recipe: mean pooling, the learning rate for BERT-tiny's width (5e-4).
        tune = [*device, "--classifier-pooling", "mean", "--learning-rate", "5e-4"]
        jobs = {}
        for name, (corpus, minutes, overrides) in ADAPTIVE.items():
            jobs[name] = english_job(name, corpus, minutes, overrides)
        pretraining = list(jobs.values())
        for name, (corpus, _, _) in ADAPTIVE.items():
            random_from = "imdb-nsp-10min" if corpus == "imdb" else "tapt-nsp-10min"
            compare(name, jobs[name], ["rotten_tomatoes"], SEEDS, out / f"{name}-rt", tune, random_from)
        compare("imdb-nsp-10min (cls pooling)", jobs["imdb-nsp-10min"], ["rotten_tomatoes"], SEEDS,
                out / "imdb-nsp-10min-rt-cls", [*device, "--learning-rate", "5e-4"], "imdb-nsp-10min")  # fmt: skip
    else:
        jobs = {}
        for name, (corpus, minutes, overrides) in ENGLISH.items():
            jobs[name] = english_job(name, corpus, minutes, overrides)
        for name, (config, count, overrides) in CHINESE.items():
            command = ["pretrain", "--config", config, "--data", str(shards / "shards-zh"), "--out", str(out / name),
                       "--max-steps", steps(count), *common, *overrides]  # fmt: skip
            jobs[name] = Job(name, command, out / name)
        pretraining = list(jobs.values())
        for name in ENGLISH:
            random_from = "wiki-nsp-10min" if name.startswith("wiki") else "imdb-mlm-10min"
            compare(name, jobs[name], ["rotten_tomatoes"], SEEDS, out / f"{name}-rt", device, random_from)
            if "mlm-" in name or name == "imdb-nsp-10min":
                compare(f"{name} imdb", jobs[name], ["imdb"], SEEDS[:2], out / f"{name}-imdb", device, random_from)
            if name in ("imdb-nsp-10min", "imdb-mlm-10min"):  # the fine-tuning learning rate around the default
                for rate in ("5e-5", "4e-4"):
                    folder, extra = out / f"{name}-rt-lr{rate}", [*device, "--learning-rate", rate]
                    compare(f"{name} (fine-tuning lr {rate})", jobs[name], ["rotten_tomatoes"], SEEDS, folder, extra,
                            "imdb-mlm-10min")  # fmt: skip
        for name in CHINESE:
            random_from = "zh-shipped-11min" if name == "zh-shipped-11min" else "zh-cpu-recipe-11min"
            for rate in ("1e-3", "3e-4"):
                extra = [*device, "--learning-rate", rate] + (["--max-steps", steps(3000)] if args.scale < 1 else [])
                compare(f"{name} (NER lr {rate})", jobs[name], ["msra_ner"], (0,), out / f"{name}-ner-lr{rate}", extra,
                        random_from)  # fmt: skip
    if args.scale < 1:  # a dry run checks the plumbing: a few fine-tuning steps are enough
        for job in fine_tuning:
            if "classification" in job.command:
                job.command += ["--max-steps", "3"]
    # Pretraining first: fine-tuning jobs wait for their model, so they fill the slots that pretraining leaves.
    run_jobs(pretraining + fine_tuning, args.parallel, deadline)

    results = {}
    for name, (folder, tasks, seeds, random_folder) in reports.items():
        results[name] = summary(folder, tasks, seeds, random_folder)
        print_summary(name, results[name])
    for job in pretraining:
        metrics = job.folder / "metrics.jsonl"
        if metrics.is_file():
            last = [json.loads(line) for line in metrics.read_text().splitlines() if '"valid"' in line][-1:]
            print(f"  {job.name}: {last[0] if last else 'no validation record'}")
    (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"sweep finished in {(time.monotonic() - started) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
