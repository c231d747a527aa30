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
from test_finetune import review
from test_finetune_ner import sentence
from test_pretraining import make_shards, read_losses
from test_qa import synthetic_squad

from bertforge.config import BertConfig
from bertforge.data.classification import bucketed_batches
from bertforge.data.examples import split_batch
from bertforge.data.shard_reader import ShardedCorpus
from bertforge.distributed import Processes, micro_batches_per_step, my_share
from bertforge.errors import BertforgeError
from bertforge.model import BertModel
from bertforge.pretrain import make_examples
from bertforge.settings import PretrainConfig
from bertforge.tokenizer import BertTokenizer, train_tokenizer

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("corpus"))


def launch(processes: int, *arguments: str, crash: str = "") -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N`` of the bertforge CLI, one thread per process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               str(WORKER), *arguments]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CRASH": crash}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


def torchrun(processes: int, out: Path, shards: Path, *options: str, crash: str = "") -> subprocess.CompletedProcess:
    """``bertforge pretrain`` of the tiny model for 6 steps under torchrun."""
    return launch(processes, "pretrain", "--data", str(shards), "--out", str(out), "--model", "tiny",
                  "--max-seq-length", "64", "--batch-size", "8", "--max-steps", "6", "--eval-every", "3",
                  "--eval-batches", "2", "--save-every", "3", "--log-every", "1", "--progress", "false",
                  "--precision", "fp32", "--learning-rate", "1e-3", *options, crash=crash)  # fmt: skip


def trained(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def losses(run: Path) -> dict[int, float]:
    """Step → logged training loss."""
    return dict(read_losses(run))


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


@pytest.fixture(scope="module")
def fine_tuning(tmp_path_factory):
    """A tiny encoder without dropout, and small sentiment, NER and QA training files."""
    root = tmp_path_factory.mktemp("fine-tuning")
    rng = np.random.default_rng(0)
    lines = ["text,label"] + [f"{review(rng, i % 2 == 0)},{'pos' if i % 2 == 0 else 'neg'}" for i in range(40)]
    (root / "reviews.csv").write_text("\n".join(lines) + "\n")
    blocks = ["".join(f"{t} {g}\n" for t, g in zip(*sentence(rng), strict=True)) for _ in range(24)]
    (root / "ner.conll").write_text("\n".join(blocks))
    synthetic_squad(root / "squad.json", 24, 0)
    corpus = root / "corpus.txt"
    corpus.write_text("".join((root / name).read_text() for name in ("reviews.csv", "ner.conll", "squad.json")))
    tokenizer = train_tokenizer([corpus], 200, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=64, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)  # fmt: skip
    BertModel(config).save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    return root


def test_classification_with_two_processes_equals_one(fine_tuning, tmp_path):
    common = ["finetune", "classification", "--model", str(fine_tuning / "encoder"), "--train",
              str(fine_tuning / "reviews.csv"), "--epochs", "2", "--batch-size", "8", "--max-length", "32",
              "--learning-rate", "1e-3", "--log-every", "1", "--progress", "false", "--precision", "fp32"]  # fmt: skip
    trained(launch(2, *common, "--out", str(tmp_path / "two")))
    trained(launch(1, *common, "--out", str(tmp_path / "one"), "--gradient-accumulation-steps", "2"))
    assert len(losses(tmp_path / "two")) == 10
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-6)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("task", ["ner", "qa"])
def test_tagging_and_question_answering_run_under_torchrun(fine_tuning, tmp_path, task):
    data = fine_tuning / ("ner.conll" if task == "ner" else "squad.json")
    result = launch(2, "finetune", task, "--model", str(fine_tuning / "encoder"), "--train", str(data),
                    "--dev", str(data), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "8",
                    *(["--window-stride", "8"] if task == "ner" else ["--doc-stride", "8"]), "--max-length", "48",
                    "--log-every", "1", "--progress", "false", "--precision", "fp32")  # fmt: skip
    trained(result)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == list(range(1, len(steps) + 1))  # written once per step: by the main process only
    assert [r["epoch"] for r in records if r["split"] == "valid"] == [1, 2]
    assert result.stdout.count("epoch 1: dev") == 1  # reported by the main process alone
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_fsdp_trains_like_ddp_saves_the_same_folder_and_resumes_in_one_process(shards, two_processes, tmp_path):
    sharded = tmp_path / "fsdp"
    trained(torchrun(2, sharded, shards, "--dropout", "0", "--strategy", "fsdp"))
    assert losses(sharded) == pytest.approx(losses(two_processes), rel=1e-5)
    assert sorted(p.name for p in (sharded / "model").iterdir()) == sorted(
        p.name for p in (two_processes / "model").iterdir()
    )
    ddp = weights(two_processes)
    for name, tensor in weights(sharded).items():
        torch.testing.assert_close(tensor, ddp[name], atol=1e-5, rtol=0, msg=name)
    # Its checkpoints hold whole weights and the optimizer state by parameter name: one process can resume them.
    subprocess.run(["rm", "-r", str(sharded / "checkpoints" / "step-0000006")], check=True)
    trained(torchrun(1, sharded, shards, "--dropout", "0", "--gradient-accumulation-steps", "2", "--resume", "true"))
    assert losses(sharded) == pytest.approx(losses(two_processes), rel=1e-5)
