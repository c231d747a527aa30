"""The bertforge CLI as a torchrun worker script, with one fault to inject and one probe, for tests.

``CRASH=RANK:STEP`` makes the process of that rank die abruptly (``os._exit``, as a killed process would)
when it reaches optimizer step STEP of training (any recipe), before applying it.

``RECORD=PATH`` makes each process of a pretraining run append to ``PATH.RANK`` one JSON line per training
micro-batch: the step it belongs to and its rows (real tokens, MLM labels, NSP label), so a test can rebuild the
global batch of every step from the micro-batches that all processes trained on.
"""

import json
import os
import sys

import torch

from bertforge import finetuning, pretrain
from bertforge.cli import main

RECIPES = (finetuning, pretrain)  # where the recipes' optimizer steps are taken
rank = os.environ.get("RANK")
steps_started = [0]  # optimizer steps this process has reached

apply_step = pretrain.optimizer_step
crash_rank, _, crash_step = os.environ.get("CRASH", "").partition(":")


def counted_step(*args, **kwargs):
    steps_started[0] += 1
    if crash_rank == rank and steps_started[0] == int(crash_step):
        os._exit(3)
    return apply_step(*args, **kwargs)


for recipe in RECIPES:
    recipe.optimizer_step = counted_step

record = os.environ.get("RECORD")
if record:
    move = pretrain.to_device

    def recorded_to_device(batch, device):
        if torch.is_grad_enabled():  # a training micro-batch; evaluation runs under no_grad
            real = batch["attention_mask"].astype(bool)
            rows = [[batch["input_ids"][i][real[i]].tolist(), batch["mlm_labels"][i][real[i]].tolist(),
                     int(batch["next_sentence_label"][i])] for i in range(len(real))]  # fmt: skip
            with open(f"{record}.{rank}", "a") as file:
                file.write(json.dumps({"step": steps_started[0] + 1, "rows": rows}) + "\n")
        return move(batch, device)

    pretrain.to_device = recorded_to_device

sys.exit(main(sys.argv[1:]))
