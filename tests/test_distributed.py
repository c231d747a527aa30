"""Data parallelism under torchrun (CPU, gloo, 2 processes): equivalence with one process, disjoint data, resume
after a crash with 2 and with 1 process, and a clear, prompt failure when a process dies."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_pretraining import generated_documents

from bertforge.data.classification import bucketed_batches
from bertforge.data.examples import split_batch
from bertforge.data.shards import ShardedCorpus, prepare_corpus
from bertforge.distributed import Processes, micro_batches_per_step, my_share
from bertforge.errors import BertforgeError
from bertforge.pretrain import make_examples
from bertforge.settings import PretrainConfig
from bertforge.tokenizer import BertTokenizer, train_tokenizer

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(doc) for doc in generated_documents(240)) + "\n", encoding="utf-8")
    train_tokenizer([corpus], 120, show_progress=False).save_pretrained(root / "tokenizer")
    prepare_corpus([corpus], root / "tokenizer", root / "shards", valid_fraction=0.1, workers=1, show_progress=False)
    return root / "shards"


def torchrun(processes: int, out: Path, shards: Path, *options: str, crash: str = "") -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N`` of ``bertforge pretrain`` on the tiny model, one thread each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               str(WORKER), "pretrain", "--data", str(shards), "--out", str(out), "--model", "tiny",
               "--max-seq-length", "64", "--batch-size", "8", "--max-steps", "6", "--eval-every", "3",
               "--eval-batches", "2", "--save-every", "3", "--log-every", "1", "--progress", "false",
               "--precision", "fp32", "--learning-rate", "1e-3", *options]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CRASH": crash}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


def trained(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def losses(run: Path) -> dict[int, float]:
    """Step → logged training loss."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def two_processes(shards, tmp_path_factory):
    """An uninterrupted 2-process run without dropout (whose masks differ from process to process)."""
    out = tmp_path_factory.mktemp("two") / "run"
    trained(torchrun(2, out, shards, "--dropout", "0"))
    return out


def test_two_processes_equal_one_process_with_the_same_global_batch(shards, two_processes, tmp_path):
    # One process accumulating 2 micro-batches of 4 sees the same 8 examples per step as 2 processes with 4 each.
    trained(torchrun(1, tmp_path / "one", shards, "--dropout", "0", "--gradient-accumulation-steps", "2"))
    assert losses(tmp_path / "one") == pytest.approx(losses(two_processes), rel=1e-6)
    one, two = weights(tmp_path / "one"), weights(two_processes)
    assert one.keys() == two.keys()
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, atol=1e-5, rtol=0, msg=name)
    assert len(losses(two_processes)) == 6 and not (two_processes / "checkpoints" / ".step-0000006.tmp").exists()


def test_resume_after_a_crash_with_two_processes_and_with_one(shards, two_processes, tmp_path):
    crashed = torchrun(2, tmp_path / "run", shards, "--dropout", "0", crash="1:5")  # rank 1 dies in step 5
    assert crashed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000003"]
    for processes, accumulation in ((2, "1"), (1, "2")):
        out = tmp_path / f"resumed-by-{processes}"
        subprocess.run(["cp", "-r", str(tmp_path / "run"), str(out)], check=True)
        result = torchrun(processes, out, shards, "--dropout", "0", "--gradient-accumulation-steps", accumulation,
                          "--resume", "true")  # fmt: skip
        trained(result)
        assert "resumed from" in result.stderr and "step 3" in result.stderr
        assert losses(out) == pytest.approx(losses(two_processes), rel=1e-6), processes


def test_resumed_two_process_run_continues_each_process_dropout(shards, tmp_path):
    trained(torchrun(2, tmp_path / "straight", shards, "--dropout", "0.1"))
    assert torchrun(2, tmp_path / "run", shards, "--dropout", "0.1", crash="0:5").returncode != 0
    trained(torchrun(2, tmp_path / "run", shards, "--dropout", "0.1", "--resume", "true"))
    assert losses(tmp_path / "run") == pytest.approx(losses(tmp_path / "straight"), rel=1e-6)


def test_a_dead_process_stops_the_others_promptly_with_a_clear_message(shards, tmp_path):
    started = time.monotonic()
    result = torchrun(2, tmp_path / "run", shards, "--max-steps", "400", crash="1:3")
    assert result.returncode != 0 and time.monotonic() - started < 90
    assert "Root Cause" in result.stderr and "rank      : 1" in result.stderr and "exitcode  : 3" in result.stderr
    assert not (tmp_path / "run" / "model").exists()


def test_ranks_see_disjoint_parts_of_every_step_and_together_the_whole_epoch(shards, tmp_path):
    settings = PretrainConfig(data=str(shards), out=str(tmp_path), max_seq_length=64, batch_size=12, max_steps=1)
    tokenizer = BertTokenizer.from_pretrained(shards / "tokenizer")
    examples = make_examples(settings, ShardedCorpus(shards, "train"), tokenizer)
    everything = [_rows(batch) for batch in examples.batches(0, 12)]
    assert len(everything[-1]) < 12  # the last step of the epoch is short: the split must still cover it
    for world_size, accumulation in ((2, 1), (2, 3), (3, 2)):
        parts = micro_batches_per_step(12, accumulation, Processes(0, world_size))
        for step, batch in enumerate(examples.batches(0, 12)):
            seen = [
                _rows(micro_batch)
                for rank in range(world_size)
                for micro_batch, weight in my_share(split_batch(batch, parts), Processes(rank, world_size))
                if weight > 0
            ]
            assert sorted(row for rows in seen for row in rows) == sorted(everything[step])


def test_classification_steps_are_shared_out_whole(tmp_path):
    lengths = list(np.random.default_rng(0).integers(3, 60, 103))
    batches = bucketed_batches(lengths, 4, shuffle=True, seed=0, epoch=0)
    for world_size in (1, 2, 3):
        seen = []
        for first in range(0, len(batches), 2 * world_size):
            group = batches[first : first + 2 * world_size]
            shares = [my_share(group, Processes(rank, world_size)) for rank in range(world_size)]
            assert sum(weight for share in shares for _, weight in share) == pytest.approx(world_size)
            seen += [int(i) for share in shares for rows, weight in share if weight > 0 for i in rows]
        assert sorted(seen) == list(range(103))


def test_global_batch_must_split_evenly():
    with pytest.raises(BertforgeError, match="divisible by 6"):
        micro_batches_per_step(32, 3, Processes(0, 2))


def _rows(batch: dict) -> list[tuple]:
    """Each example as a hashable row of its real tokens and labels."""
    real = batch["attention_mask"].astype(bool)
    ids, labels, next_sentence = batch["input_ids"], batch["mlm_labels"], batch["next_sentence_label"]
    return [(tuple(ids[i][real[i]]), tuple(labels[i][real[i]]), int(next_sentence[i])) for i in range(len(real))]
