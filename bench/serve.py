"""`bertforge serve` under load: throughput and latency with and without dynamic batching, against `predict`.

    python -m bench.serve --model runs/quickstart/sentiment/model [--clients 1 8 32 128] [--limit 0]

Sends the Rotten Tomatoes test+dev sentences, one sentence per request, from N concurrent clients (asyncio +
httpx over loopback) to a `bertforge serve` child process, first with dynamic batching (the defaults), then with
`--max-wait-ms 0 --max-batch-tokens 1` (one request per forward); `--server-options` adds options to both, e.g.
`--inference thread` for the model in the server's own process instead of a child process. Every answer's label
is checked against `bertforge predict`'s for that sentence; predict's throughput is one batched pass over the same
sentences (its wall time, model loading included, as a user would see it). Then, with dynamic batching, the same
load from 32 clients runs once more while another task sends bad requests at intervals (malformed JSON, {"inputs":
5}, an empty string, a 20 MB body): each must get a 4xx, and the good requests around them must still all succeed
with predict's labels. Issue #22's floors: 32 clients, zero failures, throughput >= 70 % of predict's, dynamic
batching >= 3x one-per-forward, bad requests refused without harm to the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import machine
from bertforge.data.catalogue import resolve_dataset

PORT = 18931
BAD_REQUESTS = {  # what the floor interleaves with the load → the raw body sent to /predict
    "malformed JSON": b'{"inputs": "unterminated',
    '{"inputs": 5}': b'{"inputs": 5}',
    "empty string": b'{"inputs": ""}',
    "20 MB body": b'{"inputs": "' + b"x" * 20_000_000 + b'"}',  # over serve's default --max-request-bytes (1 MiB)
}
BAD_CLIENTS = 32  # the good load that the bad requests are mixed into: the floor's 32 clients
BAD_INTERVAL = 0.25  # seconds between two bad requests


def sentences(limit: int) -> list[str]:
    texts: list[str] = []
    for split in ("test", "dev"):
        with open(resolve_dataset("rotten_tomatoes", split), encoding="utf-8", newline="") as f:
            texts += [row["text"] for row in csv.DictReader(f)]
    return texts[:limit] if limit else texts


def predict_labels(model: str, texts: list[str]) -> tuple[list[str], float]:
    """`bertforge predict`'s labels, its wall time for one batched pass, and the rate it reports for its own
    tokenizing and forward passes (model loading left out)."""
    with tempfile.TemporaryDirectory() as scratch:
        # JSONL, not plain lines: a few sentences hold characters that str.splitlines takes for line breaks
        source, out = Path(scratch) / "texts.jsonl", Path(scratch) / "out.jsonl"
        source.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bertforge", "predict", "--model", model, "--input", str(source),
                               "--output", str(out)], check=True, capture_output=True, text=True)  # fmt: skip
        took = time.perf_counter() - started
        reported = float(re.search(r"predicted \d+ inputs in [\d.]+ s \((\d+) inputs/s\)", done.stderr).group(1))
        return [json.loads(line)["label"] for line in out.read_text(encoding="utf-8").splitlines()], took, reported


async def load(
    texts: list[str], clients: int, bad: dict[str, bytes] | None = None
) -> tuple[list[str | None], list[float], float, dict[str, list[int]]]:
    """Each of ``clients`` workers sends the next unsent sentence until none is left; labels and latencies. With
    ``bad``, one more task sends those bodies in turn, ``BAD_INTERVAL`` apart, for as long as the load runs (each
    at least once); their status codes come back by name."""
    labels: list[str | None] = [None] * len(texts)
    latencies: list[float] = []
    statuses: dict[str, list[int]] = {name: [] for name in bad or {}}
    cursor = iter(range(len(texts)))
    done = asyncio.Event()  # set once every sentence is answered
    # One client (one keep-alive connection) per worker: a pool shared by 128 workers spent more CPU than the
    # server it measured (26.7 s against 17.8 s in one run; encode/httpx#3215), on the same 2 cores
    clients_of = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=120) for _ in range(clients + 1)]
    async with contextlib.AsyncExitStack() as stack:
        for each in clients_of:
            await stack.enter_async_context(each)
        client = clients_of[-1]  # the bad requests' own

        async def worker(client: httpx.AsyncClient) -> None:
            for index in cursor:
                started = time.perf_counter()
                response = await client.post("/predict", json={"inputs": texts[index]})
                latencies.append(time.perf_counter() - started)
                if response.status_code == 200:
                    labels[index] = response.json()["label"]

        async def good_load() -> None:
            await asyncio.gather(*(worker(each) for each in clients_of[:clients]))
            done.set()

        async def bad_requests() -> None:
            while True:
                for name, body in (bad or {}).items():
                    response = await client.post("/predict", content=body,
                                                 headers={"Content-Type": "application/json"})  # fmt: skip
                    statuses[name].append(response.status_code)
                    await asyncio.sleep(BAD_INTERVAL)
                if done.is_set():
                    return

        started = time.perf_counter()
        await asyncio.gather(good_load(), *([bad_requests()] if bad else []))
        return labels, latencies, time.perf_counter() - started, statuses


def server_counters(server: subprocess.Popen) -> dict[str, float]:
    """The server's batch counters from /metrics and its process's CPU seconds so far (user + system)."""
    text = httpx.get(f"http://127.0.0.1:{PORT}/metrics").text
    counters = {name: float(re.search(rf"^bertforge_{name} (\S+)$", text, re.M).group(1))
                for name in ("batch_size_sum", "batch_size_count", "inference_seconds_total")}  # fmt: skip
    counters["cpu_seconds"] = sum(cpu_seconds(pid) for pid in (server.pid, *children(server.pid)))
    return counters


def children(pid: int) -> list[int]:
    """The child processes of ``pid``: the server's model process (`--inference process`)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_seconds(pid: int) -> float:
    """A process's CPU seconds so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def where_the_time_went(before: dict[str, float], after: dict[str, float], seconds: float, client_cpu: float) -> str:
    """Mean batch size, the share of the wall time the model was running, and each side's CPU use, for one load:
    client and server share the cores, so a busy client slows the server it measures."""
    batches = after["batch_size_count"] - before["batch_size_count"]
    mean = (after["batch_size_sum"] - before["batch_size_sum"]) / max(batches, 1)
    busy = (after["inference_seconds_total"] - before["inference_seconds_total"]) / seconds
    server_cpu = after["cpu_seconds"] - before["cpu_seconds"]
    return (
        f"{'':16s} {batches:.0f} batches of {mean:.1f} requests on average; model running {busy:.0%} of the "
        f"time; CPU seconds: server {server_cpu:.1f}, client {client_cpu:.1f} over {seconds:.1f} s wall "
        f"({os.cpu_count()} cores)"
    )


def mistakes(labels: list[str | None], expected: list[str]) -> tuple[int, int]:
    """Failed requests, and answers whose label is not predict's."""
    failures = sum(label is None for label in labels)
    wrong = sum(label is not None and label != want for label, want in zip(labels, expected, strict=True))
    return failures, wrong


def serve(model: str, options: list[str], threads: int | None) -> subprocess.Popen:
    """A `bertforge serve` child; ``threads``: its PyTorch threads (OMP_NUM_THREADS), None for the default."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    server = subprocess.Popen([sys.executable, "-m", "bertforge", "serve", "--model", model, "--port", str(PORT),
                               *options], env=env)  # fmt: skip
    for _ in range(600):  # bounded: 60 s for the model to load
        try:
            if httpx.get(f"http://127.0.0.1:{PORT}/health").status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("server did not come up in 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--limit", type=int, default=0, help="first N sentences only (0: all)")
    parser.add_argument(
        "--server-threads",
        type=int,
        default=None,
        help="the server's PyTorch threads (default: all cores; the clients run on them too)",
    )
    parser.add_argument(
        "--dynamic-options",
        default="",
        help='more `bertforge serve` options for the dynamic mode, e.g. "--max-batch-tokens 1024"',
    )
    parser.add_argument(
        "--server-options",
        default="",
        help='`bertforge serve` options for both modes, e.g. "--inference thread" (the model in the server\'s process)',
    )
    parser.add_argument("--modes", nargs="+", default=["dynamic", "one-per-forward"],
                        choices=["dynamic", "one-per-forward"])  # fmt: skip
    args = parser.parse_args()
    print(machine())
    texts = sentences(args.limit)
    expected, predict_seconds, predict_alone = predict_labels(args.model, texts)
    predict_rate = len(texts) / predict_seconds
    print(f"predict: {len(texts)} sentences in {predict_seconds:.1f} s = {predict_rate:.1f}/s (model load included);"
          f" {predict_alone:.0f}/s by its own count (tokenizing and forward passes only)")  # fmt: skip
    modes = {
        "dynamic": args.server_options.split() + args.dynamic_options.split(),
        "one-per-forward": [*args.server_options.split(), "--max-wait-ms", "0", "--max-batch-tokens", "1"],
    }
    print(f"server threads: {args.server_threads or 'default (all cores)'}; server options: "
          f"{args.server_options or 'the defaults'}; dynamic mode options: "
          f"{args.dynamic_options or 'the defaults'}")  # fmt: skip
    for mode, options in modes.items():
        if mode not in args.modes:
            continue
        server = serve(args.model, options, args.server_threads)
        try:
            for clients in args.clients:
                before, client_started = server_counters(server), time.process_time()
                labels, latencies, seconds, _ = asyncio.run(load(texts, clients))
                client_cpu = time.process_time() - client_started
                after = server_counters(server)
                failures, wrong = mistakes(labels, expected)
                p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                rate = len(texts) / seconds
                print(
                    f"{mode:16s} clients {clients:4d}: {rate:7.1f} req/s ({rate / predict_rate:.0%} of predict, "
                    f"{rate / predict_alone:.0%} of its own count), "
                    f"p50 {p50:6.1f} ms, p99 {p99:7.1f} ms, failures {failures}, labels unlike predict {wrong}"
                )
                print(where_the_time_went(before, after, seconds, client_cpu))
            if mode == "dynamic":
                labels, _, _, statuses = asyncio.run(load(texts, BAD_CLIENTS, BAD_REQUESTS))
                failures, wrong = mistakes(labels, expected)
                refused = all(400 <= code < 500 for codes in statuses.values() for code in codes)
                answers = ", ".join(f"{name} -> {'/'.join(map(str, sorted(set(codes))))} (x{len(codes)})"
                                    for name, codes in statuses.items())  # fmt: skip
                print(f"bad requests amid {BAD_CLIENTS} clients: {answers}; all 4xx: {'yes' if refused else 'NO'}")
                print(f"{'':16s} the good requests around them: failures {failures}, labels unlike predict {wrong}")
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
