"""The fine-tuning recipes' shared end of epoch: evaluate, keep the best, stop early, checkpoint."""

import json
from pathlib import Path

import pytest
import torch
from tqdm.auto import tqdm

from bertforge.distributed import Processes
from bertforge.errors import BertforgeError
from bertforge.finetuning import DevScores, end_epoch, fine_tuning_epochs, planned_steps
from bertforge.settings import FinetuneConfig
from bertforge.train import MetricsLog, latest_checkpoint


class Tagged(torch.nn.Linear):
    """A model whose saved folder says which epoch's weights it holds."""

    def __init__(self) -> None:
        super().__init__(2, 2)
        self.epoch = 0

    def save_pretrained(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "epoch.txt").write_text(str(self.epoch))


class NoTokenizer:
    def save_pretrained(self, folder: Path) -> None:
        pass


def run_epochs(run_dir: Path, dev_values: list[float] | None, epochs: int, patience: int | None) -> dict:
    """Close ``epochs`` epochs with the given dev scores (None: no dev set); the state and how many ran."""
    model, state = Tagged(), {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "best_scores": None,
                              "stale_epochs": 0}  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = MetricsLog(run_dir)
    ran = 0
    for epoch in range(epochs):
        model.epoch, state["step"], ran = epoch + 1, 10 * (epoch + 1), ran + 1

        def evaluate(trained: torch.nn.Module, value: float = dev_values[epoch] if dev_values else 0.0) -> DevScores:
            assert trained is model
            return DevScores(value, {"f1": value}, f"dev F1 {value}", best_files={"best.txt": str(value)},
                             kept={"f1": value, "questions": 3})  # fmt: skip

        stop = end_epoch(state, evaluate=evaluate if dev_values else None, patience=patience, metric="F1",
                         model=model, optimizer=optimizer, tokenizer=NoTokenizer(), run_dir=run_dir,
                         processes=Processes(), metrics=metrics, bar=tqdm(disable=True))  # fmt: skip
        if stop:
            break
    return {**state, "ran": ran}


def test_the_best_epoch_is_kept_and_patience_stops_the_run(tmp_path):
    state = run_epochs(tmp_path, [0.5, 0.7, 0.6, 0.7, 0.9], epochs=5, patience=2)
    assert state["ran"] == 4 and state["epoch"] == 4  # epochs 3 and 4 brought nothing better than 0.7
    assert (state["best"], state["best_epoch"], state["stale_epochs"]) == (0.7, 2, 2)
    assert state["best_scores"] == {"f1": 0.7, "questions": 3}
    assert (tmp_path / "model" / "epoch.txt").read_text() == "2"
    assert (tmp_path / "best.txt").read_text() == "0.7"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"step": 10 * e, "split": "valid", "epoch": e, "f1": v}
                       for e, v in ((1, 0.5), (2, 0.7), (3, 0.6), (4, 0.7))]  # fmt: skip
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.name == "step-0000040" and len(list((tmp_path / "checkpoints").iterdir())) == 1
    saved = torch.load(checkpoint / "training_state.pt", weights_only=True)
    assert (saved["epoch"], saved["best_epoch"], saved["stale_epochs"]) == (4, 2, 2)


def test_without_a_dev_set_the_last_epoch_is_kept_and_nothing_stops_early(tmp_path):
    state = run_epochs(tmp_path, None, epochs=3, patience=1)
    assert state["ran"] == 3 and (state["best"], state["best_epoch"], state["best_scores"]) == (None, 3, None)
    assert (tmp_path / "model" / "epoch.txt").read_text() == "3"
    assert (tmp_path / "metrics.jsonl").read_text() == ""


@pytest.mark.parametrize(
    ("inputs", "epochs", "steps"),
    [(8530, 3, 801), (6530, 3, 615), (3200, 3, 300), (1000, 10, 320), (320, 20, 200), (10, 20, 20)],
)
def test_unset_epochs_are_3_or_enough_for_300_steps_up_to_20(inputs, epochs, steps):
    settings = FinetuneConfig(model="m", train="t")  # batch 32
    assert fine_tuning_epochs(settings, inputs) == epochs and planned_steps(settings, inputs) == steps
    given = FinetuneConfig(model="m", train="t", epochs=1.5)
    assert fine_tuning_epochs(given, inputs) == 1.5  # a stated number is kept, small data or not
    assert planned_steps(FinetuneConfig(model="m", train="t", max_steps=7), inputs) == 7


@pytest.mark.parametrize("epochs", [0, -1])
def test_epochs_must_be_positive(epochs):
    with pytest.raises(BertforgeError, match="epochs must be a positive number"):
        FinetuneConfig(model="m", train="t", epochs=epochs)
