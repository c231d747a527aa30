"""Settings of the training recipes, as typed dataclasses with a comment per field.

Kept apart from the recipes so that reading them (for ``--help``, or to check a config file) needs no PyTorch.
A recipe's settings come from a YAML/JSON file plus ``--key value`` overrides (:mod:`bertforge.recipe_config`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bertforge.errors import BertforgeError


@dataclass
class PretrainConfig:
    """Settings of a pretraining run. Defaults suit a small model on a CPU; see configs/ for tuned files."""

    data: str = ""  # folder written by `bertforge data prepare` (shards, manifest, tokenizer)
    out: str = "runs/pretrain"  # run folder: checkpoints, metrics.jsonl, curves.png, the final model/
    model: str = "mini"  # a preset (tiny, mini, small, medium, base, large) or a config.json path
    init_from: str | None = None  # start from this checkpoint folder's weights instead of random ones
    next_sentence_prediction: bool = True  # MLM + NSP as in BERT; false = MLM only on packed text (RoBERTa)
    max_seq_length: int = 128  # tokens per example, [CLS]/[SEP] included
    short_seq_prob: float = 0.1  # share of NSP examples with a shorter random target length
    mlm_probability: float = 0.15  # share of tokens chosen for prediction
    max_predictions_per_seq: int = 20  # cap on chosen tokens per sequence
    whole_word_masking: bool = False  # choose all pieces of a word together
    batch_size: int = 64  # examples per optimizer step (micro-batch × accumulation)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step; raise to fit memory
    learning_rate: float = 1e-3  # peak learning rate after warm-up
    warmup: float = 0.06  # share of training spent warming the learning rate up linearly
    weight_decay: float = 0.01  # AdamW decoupled weight decay (none on biases and LayerNorm)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98  # lower than BERT's 0.999: steadier at the high learning rates of short runs
    adam_epsilon: float = 1e-6
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off
    dropout: float | None = None  # overrides both dropout rates (Cramming uses 0 for short budgets)
    max_steps: int | None = None  # stop after this many optimizer steps
    max_epochs: float | None = None  # stop after this many passes over the training shards
    max_minutes: float | None = None  # stop on wall-clock time; the schedule is laid out over this budget
    precision: str = "auto"  # auto (bf16 where the hardware has it), fp32 or bf16
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    eval_every: int = 200  # steps between validation passes
    eval_batches: int = 20  # validation batches per pass (the same ones every time)
    save_every: int = 500  # steps between checkpoints
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    log_every: int = 10  # steps between training-loss records
    seed: int = 0  # seeds initialisation, example order, masks and dropout
    resume: bool = False  # continue from the latest checkpoint in `out`
    progress: bool = True  # show a progress bar

    def __post_init__(self) -> None:
        if not self.data:
            raise BertforgeError("pretraining needs --data, a folder written by `bertforge data prepare`")
        if self.batch_size % self.gradient_accumulation_steps:
            raise BertforgeError(
                f"batch_size {self.batch_size} is not divisible by gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps}"
            )
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            raise BertforgeError("say when to stop: set max_steps, max_epochs or max_minutes")
