"""Data parallelism under torchrun (CPU, gloo, 2 processes): the same global batches and the same training as
one process with and without gradient accumulation (pretraining and the three fine-tuning recipes), disjoint
data, resume after a crash with another number of processes, and a clear, prompt failure when a process dies."""

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

from bertforge.cli import main
from bertforge.config import BertConfig
from bertforge.data.classification import bucketed_batches, split_rows
from bertforge.data.examples import split_batch
from bertforge.data.shard_reader import ShardedCorpus
from bertforge.distributed import Processes, micro_batches_per_step, my_share
from bertforge.errors import BertforgeError
from bertforge.heads import BertForSequenceClassification
from bertforge.model import BertModel
from bertforge.pretrain import make_examples
from bertforge.settings import PretrainConfig
from bertforge.tokenizer import BertTokenizer, train_tokenizer

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("corpus"))


def launch(processes: int, *arguments: str, **probes: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N`` of the bertforge CLI, one thread per process; ``probes``:
    CRASH and RECORD for the worker (see distributed_worker.py)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               str(WORKER), *arguments]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **probes}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


def torchrun(processes: int, out: Path, shards: Path, *options: str, **probes: str) -> subprocess.CompletedProcess:
    """``bertforge pretrain`` of the tiny model for 6 steps under torchrun."""
    return launch(processes, "pretrain", "--data", str(shards), "--out", str(out), "--model", "tiny",
                  "--max-seq-length", "64", "--batch-size", "8", "--max-steps", "6", "--eval-every", "3",
                  "--eval-batches", "2", "--save-every", "3", "--log-every", "1", "--progress", "false",
                  "--precision", "fp32", "--learning-rate", "1e-3", *options, **probes)  # fmt: skip


def trained(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def losses(run: Path) -> dict[int, float]:
    """Step → logged training loss."""
    return dict(read_losses(run))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights saved in a model folder (a run's ``model/`` or one of its checkpoints)."""
    return load_file(folder / "model.safetensors")


def assert_same_weights(folder: Path, expected: Path) -> None:
    ours, theirs = weights(folder), weights(expected)
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-5, rtol=0, msg=name)


def global_batches(record: Path) -> dict[int, list]:
    """Step → the rows that all processes trained on in it, sorted, from the worker's RECORD files."""
    steps: dict[int, list] = {}
    for path in record.parent.glob(f"{record.name}.*"):
        for line in path.read_text().splitlines():
            micro_batch = json.loads(line)
            steps.setdefault(micro_batch["step"], []).extend(
                (tuple(ids), tuple(labels), next_sentence) for ids, labels, next_sentence in micro_batch["rows"]
            )
    return {step: sorted(rows) for step, rows in steps.items()}


@pytest.fixture(scope="module")
def two_processes(shards, tmp_path_factory):
    """An uninterrupted 2-process run without dropout (whose masks differ from process to process), its
    micro-batches recorded in ``batches.RANK`` beside the run folder."""
    out = tmp_path_factory.mktemp("two") / "run"
    trained(torchrun(2, out, shards, "--dropout", "0", RECORD=str(out.parent / "batches")))
    return out


@pytest.mark.parametrize("accumulation", ["1", "2"])
def test_two_processes_train_like_one_with_or_without_accumulation(shards, two_processes, tmp_path, accumulation):
    # Step k's examples and masks are drawn from (seed, epoch, k) alone; the processes or the accumulation steps
    # then share them out, and each micro-batch's MLM loss counts by its share of the step's masked tokens.
    trained(torchrun(1, tmp_path / "one", shards, "--dropout", "0", "--gradient-accumulation-steps", accumulation,
                     RECORD=str(tmp_path / "batches")))  # fmt: skip
    expected = global_batches(two_processes.parent / "batches")
    assert sorted(expected) == list(range(1, 7)) and all(len(rows) == 8 for rows in expected.values())
    assert global_batches(tmp_path / "batches") == expected
    assert losses(tmp_path / "one") == pytest.approx(losses(two_processes), rel=1e-6)
    assert_same_weights(tmp_path / "one" / "model", two_processes / "model")
    assert len(losses(two_processes)) == 6 and not (two_processes / "checkpoints" / ".step-0000006.tmp").exists()


def test_resume_after_a_crash_with_another_number_of_processes(shards, two_processes, tmp_path):
    crashed = torchrun(2, tmp_path / "run", shards, "--dropout", "0", CRASH="1:5")  # rank 1 dies in step 5
    assert crashed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000003"]
    for accumulation in ("1", "2"):
        out = tmp_path / f"resumed-accumulating-{accumulation}"
        subprocess.run(["cp", "-r", str(tmp_path / "run"), str(out)], check=True)
        result = torchrun(1, out, shards, "--dropout", "0", "--gradient-accumulation-steps", accumulation,
                          "--resume", "true")  # fmt: skip
        trained(result)
        assert "resumed from" in result.stderr and "step 3" in result.stderr
        assert losses(out) == pytest.approx(losses(two_processes), rel=1e-6), accumulation
        assert_same_weights(out / "model", two_processes / "model")


def test_resumed_two_process_run_continues_each_process_dropout(shards, tmp_path):
    trained(torchrun(2, tmp_path / "straight", shards, "--dropout", "0.1"))
    assert torchrun(2, tmp_path / "run", shards, "--dropout", "0.1", CRASH="0:5").returncode != 0
    trained(torchrun(2, tmp_path / "run", shards, "--dropout", "0.1", "--resume", "true"))
    assert losses(tmp_path / "run") == pytest.approx(losses(tmp_path / "straight"), rel=1e-6)


def test_a_dead_process_stops_the_others_promptly_with_a_clear_message(shards, tmp_path):
    started = time.monotonic()
    result = torchrun(2, tmp_path / "run", shards, "--max-steps", "400", CRASH="1:3")
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
            micro_batches = split_batch(batch, parts)
            counts = [[len(micro_batch["input_ids"])] for micro_batch in micro_batches]
            seen = [
                _rows(micro_batch)
                for rank in range(world_size)
                for micro_batch, (weight,) in my_share(micro_batches, counts, Processes(rank, world_size))
                if weight > 0
            ]
            assert sorted(row for rows in seen for row in rows) == sorted(everything[step])


def test_fine_tuning_steps_are_the_global_batches_shared_out_whole():
    lengths = list(np.random.default_rng(0).integers(3, 60, 103))
    steps = bucketed_batches(lengths, 12, shuffle=True, seed=0, epoch=0, bucket_batches=3)
    for world_size, accumulation in ((1, 1), (1, 2), (2, 2), (3, 2)):
        parts = micro_batches_per_step(12, accumulation, Processes(0, world_size))
        for step_rows in steps:
            micro_batches = split_rows(step_rows, parts)
            counts = [[len(rows)] for rows in micro_batches]
            shares = [my_share(micro_batches, counts, Processes(rank, world_size)) for rank in range(world_size)]
            seen = [int(i) for share in shares for rows, (weight,) in share if weight > 0 for i in rows]
            assert sorted(seen) == sorted(step_rows)


@pytest.mark.parametrize(("world_size", "accumulation", "rows"), [(2, 1, 8), (2, 2, 5), (3, 2, 4), (4, 1, 3)])
def test_weighted_micro_batch_losses_add_up_to_the_mean_over_the_global_batch(world_size, accumulation, rows):
    # Per example: a varying number of counted tokens (as MLM's masked or NER's labelled tokens), each with a loss,
    # and one example-level loss (as NSP). A micro-batch's loss terms are means over its own items.
    rng = np.random.default_rng(rows)
    token_losses = [rng.random(count) for count in rng.integers(1, 9, rows)]
    example_losses = rng.random(rows)
    micro_batches = split_rows(np.arange(rows), world_size * accumulation)  # uneven: 5 rows in 4 parts, 3 in 4
    counts = [(sum(token_losses[i].size for i in part), part.size) for part in micro_batches]
    token_mean = example_mean = 0.0
    for rank in range(world_size):
        for part, (token_weight, example_weight) in my_share(micro_batches, counts, Processes(rank, world_size)):
            # DDP averages the processes' gradients, so each process's contribution is divided by world_size.
            token_mean += np.concatenate([token_losses[i] for i in part]).mean() * token_weight / world_size
            example_mean += example_losses[part].mean() * example_weight / world_size
    assert token_mean == pytest.approx(np.concatenate(token_losses).mean(), rel=1e-12)
    assert example_mean == pytest.approx(example_losses.mean(), rel=1e-12)


def test_global_batch_must_split_evenly():
    with pytest.raises(BertforgeError, match="divisible by 6"):
        micro_batches_per_step(32, 3, Processes(0, 2))
    with pytest.raises(BertforgeError, match="at least 1"):
        micro_batches_per_step(32, 0, Processes())


def _rows(batch: dict) -> list[tuple]:
    """Each example as a hashable row of its real tokens and labels."""
    real = batch["attention_mask"].astype(bool)
    ids, labels, next_sentence = batch["input_ids"], batch["mlm_labels"], batch["next_sentence_label"]
    return [(tuple(ids[i][real[i]]), tuple(labels[i][real[i]]), int(next_sentence[i])) for i in range(len(real))]


@pytest.fixture(scope="module")
def fine_tuning(tmp_path_factory):
    """A tiny encoder without dropout, and sentiment, NER and QA files of 13 examples each: an epoch is a step of 8
    and a short one of 5, which 2 micro-batches split unevenly (3 + 2)."""
    root = tmp_path_factory.mktemp("fine-tuning")
    rng = np.random.default_rng(0)
    lines = ["text,label"] + [f"{review(rng, i % 2 == 0)},{'pos' if i % 2 == 0 else 'neg'}" for i in range(13)]
    (root / "classification.csv").write_text("\n".join(lines) + "\n")
    blocks = ["".join(f"{t} {g}\n" for t, g in zip(*sentence(rng), strict=True)) for _ in range(13)]
    (root / "ner.conll").write_text("\n".join(blocks))
    synthetic_squad(root / "qa.json", 13, 0)
    corpus = root / "corpus.txt"
    corpus.write_text("".join((root / name).read_text() for name in ("classification.csv", "ner.conll", "qa.json")))
    tokenizer = train_tokenizer([corpus], 200, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=64, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)  # fmt: skip
    BertModel(config).save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    return root


FINE_TUNING_DATA = {"classification": "classification.csv", "ner": "ner.conll", "qa": "qa.json"}
# What each task adds: classification exercises class-weighted means and length buckets of global batches.
FINE_TUNING_OPTIONS = {
    "classification": ["--class-weights", "balanced", "--bucket-batches", "2", "--dropout", "null"],
    "ner": ["--window-stride", "8"],
    "qa": ["--doc-stride", "8"],
}


def fine_tune(fine_tuning: Path, task: str) -> list[str]:
    """Arguments of ``bertforge finetune TASK``: 4 steps over 2 epochs of the fixture's data, evaluating on it."""
    data = str(fine_tuning / FINE_TUNING_DATA[task])
    return ["finetune", task, "--model", str(fine_tuning / "encoder"), "--train", data, "--dev", data, "--epochs",
            "2", "--max-steps", "4", "--batch-size", "8", "--max-length", "48", "--learning-rate", "1e-3",
            "--log-every", "1", "--progress", "false", "--precision", "fp32", *FINE_TUNING_OPTIONS[task]]  # fmt: skip


def last_checkpoint(run: Path) -> Path:
    """The checkpoint after the last step (``model/`` holds the best epoch's weights, not the last)."""
    return run / "checkpoints" / "step-0000004"


@pytest.mark.parametrize("task", ["classification", "ner", "qa"])
def test_fine_tuning_with_two_processes_equals_one_with_or_without_accumulation(fine_tuning, tmp_path, task):
    result = launch(2, *fine_tune(fine_tuning, task), "--out", str(tmp_path / "two"))
    trained(result)
    # The one-process runs need no torchrun: they run here, in the test's process.
    assert main([*fine_tune(fine_tuning, task), "--out", str(tmp_path / "one")]) == 0
    assert main([*fine_tune(fine_tuning, task), "--out", str(tmp_path / "accumulating"),
                 "--gradient-accumulation-steps", "2"]) == 0  # fmt: skip
    start, final = weights(fine_tuning / "encoder"), weights(last_checkpoint(tmp_path / "one"))
    moved = max(float((final[f"bert.{name}"] - tensor).abs().max()) for name, tensor in start.items()
                if f"bert.{name}" in final)  # fmt: skip
    assert moved > 1e-3  # 4 steps move the weights far beyond the tolerance (the old batching differed by 2e-3)
    expected = losses(tmp_path / "one")
    assert len(expected) == 4
    for run in ("two", "accumulating"):
        assert losses(tmp_path / run) == pytest.approx(expected, rel=1e-6), run
        assert_same_weights(last_checkpoint(tmp_path / run), last_checkpoint(tmp_path / "one"))
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]  # written by the main process only
    assert [r["epoch"] for r in records if r["split"] == "valid"] == [1, 2]
    assert result.stdout.count("epoch 1: dev") == 1  # reported by the main process alone
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()


def test_distillation_with_two_processes_equals_one_with_or_without_accumulation(fine_tuning, tmp_path):
    # The teacher: the fixture's encoder with a fresh 2-class head (untrained is enough: it has logits to match).
    torch.manual_seed(1)
    teacher = BertForSequenceClassification.from_pretrained(fine_tuning / "encoder", id2label={0: "neg", 1: "pos"},
                                                            label2id={"neg": 0, "pos": 1})  # fmt: skip
    teacher.save_pretrained(tmp_path / "teacher")
    BertTokenizer.from_pretrained(fine_tuning / "encoder").save_pretrained(tmp_path / "teacher")
    data = str(fine_tuning / "classification.csv")
    # hidden-weight runs the teacher beside the DDP-wrapped student in every step
    arguments = ["distill", "--teacher", str(tmp_path / "teacher"), "--train", data, "--dev", data, "--student-layers",
                 "1", "--epochs", "2", "--max-steps", "4", "--batch-size", "8", "--max-length", "48",
                 "--learning-rate", "1e-3", "--log-every", "1", "--progress", "false", "--precision", "fp32",
                 "--gold-weight", "0.5", "--hidden-weight", "1"]  # fmt: skip
    trained(launch(2, *arguments, "--out", str(tmp_path / "two")))
    assert main([*arguments, "--out", str(tmp_path / "one")]) == 0
    assert main([*arguments, "--out", str(tmp_path / "accumulating"), "--gradient-accumulation-steps", "2"]) == 0
    expected = losses(tmp_path / "one")
    assert len(expected) == 4
    for run in ("two", "accumulating"):
        assert losses(tmp_path / run) == pytest.approx(expected, rel=1e-6), run
        assert_same_weights(last_checkpoint(tmp_path / run), last_checkpoint(tmp_path / "one"))


def test_fine_tuning_killed_after_step_2_resumes_with_one_process(fine_tuning, tmp_path):
    arguments = fine_tune(fine_tuning, "classification")
    crashed = launch(2, *arguments, "--out", str(tmp_path / "run"), CRASH="1:3")  # rank 1 dies in step 3
    assert crashed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002"]
    assert main([*arguments, "--out", str(tmp_path / "run"), "--resume", "true"]) == 0
    assert main([*arguments, "--out", str(tmp_path / "straight")]) == 0
    assert losses(tmp_path / "run") == pytest.approx(losses(tmp_path / "straight"), rel=1e-6)
    assert_same_weights(last_checkpoint(tmp_path / "run"), last_checkpoint(tmp_path / "straight"))


def test_fsdp_trains_like_ddp_saves_the_same_folder_and_resumes_in_one_process(shards, two_processes, tmp_path):
    sharded = tmp_path / "fsdp"
    trained(torchrun(2, sharded, shards, "--dropout", "0", "--strategy", "fsdp"))
    assert losses(sharded) == pytest.approx(losses(two_processes), rel=1e-5)
    assert sorted(p.name for p in (sharded / "model").iterdir()) == sorted(
        p.name for p in (two_processes / "model").iterdir()
    )
    assert_same_weights(sharded / "model", two_processes / "model")
    # Its checkpoints hold whole weights and the optimizer state by parameter name: one process can resume them.
    subprocess.run(["rm", "-r", str(sharded / "checkpoints" / "step-0000006")], check=True)
    trained(torchrun(1, sharded, shards, "--dropout", "0", "--gradient-accumulation-steps", "2", "--resume", "true"))
    assert losses(sharded) == pytest.approx(losses(two_processes), rel=1e-5)
