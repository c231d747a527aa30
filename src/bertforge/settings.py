"""Settings of the training recipes, as typed dataclasses with a comment per field.

Kept apart from the recipes so that reading them (for ``--help``, or to check a config file) needs no PyTorch.
A recipe's settings come from a YAML/JSON file plus ``--key value`` overrides (:mod:`bertforge.recipe_config`);
a fine-tuning run saves its settings, and whatever runs the model later reads them back
(:func:`inference_settings`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bertforge.assets import resolve_model_dir
from bertforge.config import BertConfig, check_classifier_pooling
from bertforge.errors import BertforgeError

# ---- task defaults: each number has this one home; settings, library functions, pipelines and the CLI refer to
# these names (a fine-tuned model is run with its own run's settings: inference_settings) ----
MAX_LENGTH = 128  # tokens per input of classification, NER and pretraining, [CLS]/[SEP] included: BERT's length
MLM_PROBABILITY = 0.15  # pretraining: share of tokens chosen for masked-LM prediction, as in BERT
MAX_PREDICTIONS_PER_SEQ = 20  # pretraining: cap on chosen tokens per sequence (Google's recipe: 20 at length 128)
QA_MAX_LENGTH = 384  # tokens per question-answering window: question and context piece, as in BERT's SQuAD runs
WINDOW_STRIDE = 64  # classification: tokens shared by consecutive windows of a long text
NER_WINDOW_STRIDE = 32  # NER: tokens shared by consecutive windows of a long sentence
DOC_STRIDE = 128  # QA: context tokens shared by consecutive windows of a long context (BERT's SQuAD setting)
MAX_QUERY_LENGTH = 64  # QA: questions are cut after this many tokens (BERT's SQuAD setting)
MAX_ANSWER_LENGTH = 30  # QA: the longest answer, in tokens, that post-processing considers (BERT's SQuAD setting)
N_BEST = 20  # QA: best start and end positions per window paired into candidate spans
EVAL_BATCH_SIZE = 64  # inputs per forward pass when a fine-tuning run (or a library function) evaluates
PREDICT_BATCH_SIZE = 32  # inputs per forward pass of `predict`, `embed` and the pipelines
FILL_MASK_TOP_K = 5  # fill-mask: candidates listed per [MASK]
SERVE_MAX_BATCH_TOKENS = 4096  # serve: a batch closes once its inputs hold this many tokens
# serve: longest a request waits for company when the model is idle. 0: a batch is whatever queued while the last
# one ran (continuous batching); 5 ms cost a lone client a third of its throughput and gained nothing at 32 or 128
# clients (bench/RESULTS.md, 2026-12-06 session 31)
SERVE_MAX_WAIT_MS = 0.0


@dataclass
class TrainingSettings:
    """Training-loop settings shared by every recipe."""

    max_steps: int | None = None  # stop after this many optimizer steps
    batch_size: int = 32  # examples per optimizer step, all processes together (micro-batch × accumulation × processes)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step and process; raise to fit memory
    weight_decay: float = 0.01  # AdamW decoupled weight decay (none on biases and LayerNorm)
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off
    cooldown: float = 1.0  # share of training at the end spent decaying the learning rate linearly to 0; peak before
    precision: str = "auto"  # auto (bf16 where the hardware has it), fp32 or bf16
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    log_every: int = 10  # steps between training-loss records
    seed: int = 0  # seeds initialisation (of a new head too), data order, masks and dropout
    resume: bool = False  # continue from the latest checkpoint in `out`
    progress: bool = True  # show progress bars

    def __post_init__(self) -> None:
        if self.gradient_accumulation_steps < 1:
            raise BertforgeError(f"gradient_accumulation_steps {self.gradient_accumulation_steps} must be at least 1")
        if self.batch_size % self.gradient_accumulation_steps:
            raise BertforgeError(
                f"batch_size {self.batch_size} is not divisible by gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps}"
            )
        if not 0.0 < self.cooldown <= 1.0:
            raise BertforgeError(f"cooldown {self.cooldown} must be a share of training in (0, 1]")


@dataclass
class FineTuningSettings(TrainingSettings):
    """Fine-tuning settings shared by every task."""

    # passes over the training data (max_steps stops sooner); unset: 3, more for a small training set so that the
    # run makes at least 300 optimizer steps, at most 20 (see finetuning.fine_tuning_epochs)
    epochs: float | None = None
    bucket_batches: int = 1  # 1 = random batches; N = N batches' worth sorted by length (less padding on a GPU)
    learning_rate: float | None = None  # peak after warm-up; unset: chosen from the model's width (see README)
    warmup: float = 0.1  # share of training spent warming the learning rate up linearly
    early_stopping_patience: int | None = None  # stop after this many epochs without a better dev score
    random_init: bool = False  # keep the model's config and tokenizer but start from random weights (a baseline)
    # use only the first N training examples (sentences, questions) in file order: learning curves, few labels
    train_limit: int | None = None
    eval_batch_size: int = EVAL_BATCH_SIZE  # inputs per forward pass when evaluating

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs is not None and self.epochs <= 0:
            raise BertforgeError(f"epochs must be a positive number of passes, got {self.epochs}")
        if self.train_limit is not None and self.train_limit < 1:
            raise BertforgeError(f"train_limit must be a positive number of examples, got {self.train_limit}")


@dataclass
class PretrainConfig(TrainingSettings):
    """Settings of a pretraining run. Defaults suit a small model on a CPU; see configs/ for tuned files."""

    data: str = ""  # folder written by `bertforge data prepare` (shards, manifest, tokenizer)
    out: str = "runs/pretrain"  # run folder: checkpoints, metrics.jsonl, curves.png, the final model/
    model: str = "mini"  # a preset (tiny, mini, small, medium, base, large), a size like L2-H256, or a config.json
    attention_heads: int | None = None  # overrides the model's head count (the presets have 64-wide heads)
    init_from: str | None = None  # start from this checkpoint folder's weights instead of random ones
    next_sentence_prediction: bool = True  # MLM + NSP as in BERT; false = MLM only on packed text (RoBERTa)
    nsp_loss_weight: float = 1.0  # loss = MLM + this × NSP (BERT: 1)
    max_seq_length: int = MAX_LENGTH  # tokens per example, [CLS]/[SEP] included
    short_seq_prob: float = 0.1  # share of NSP examples with a shorter random target length
    # Two phases as in BERT (Devlin et al., 2019: 128 tokens for 90% of the steps, then 512): examples this long, and
    # max_predictions_per_seq scaled to them, until `short_phase` of training; then max_seq_length. None: one phase.
    short_phase_seq_length: int | None = None
    short_phase: float = 0.9  # share of training (steps or time budget) at short_phase_seq_length
    mlm_probability: float = MLM_PROBABILITY  # share of tokens chosen for prediction
    max_predictions_per_seq: int = MAX_PREDICTIONS_PER_SEQ  # cap on chosen tokens per sequence
    whole_word_masking: bool = False  # choose all pieces of a word together
    batch_size: int = 64  # examples per optimizer step, all processes together (micro-batch × accumulation × processes)
    learning_rate: float = 1e-3  # peak learning rate after warm-up
    warmup: float = 0.06  # share of training spent warming the learning rate up linearly
    adam_beta1: float = 0.9  # AdamW first-moment decay
    adam_beta2: float = 0.98  # lower than BERT's 0.999: steadier at the high learning rates of short runs
    adam_epsilon: float = 1e-6  # AdamW denominator floor; BERT used 1e-6
    dropout: float | None = None  # overrides both dropout rates (Cramming uses 0 for short budgets)
    classifier_pooling: str | None = None  # saved in the model's config: what classifiers fine-tuned from it read
    embedding_init: str = "bert"  # bert: N(0, 0.02); ppmi: word vectors from the corpus's co-occurrences (seconds)
    freeze_word_embeddings: bool = False  # keep the word-embedding table (and the tied MLM decoder) at its start
    attention_init: str = "bert"  # bert: N(0, 0.02); mimetic: query·key ≈ identity at the start (learns sooner)
    strategy: str = "ddp"  # under torchrun: "ddp" (a model copy per process) or "fsdp" (parameters sharded)
    low_memory: bool = False  # give freed activations back to the system: ~30% lower peak RSS on CPU, ~15% slower
    max_epochs: float | None = None  # stop after this many passes over the training shards
    max_minutes: float | None = None  # stop on wall-clock time; the schedule is laid out over this budget
    eval_every: int = 200  # steps between validation passes
    # validation batches of batch_size examples per pass (the same ones every time; a validation split too small
    # to fill them is read again, with new pairs and masks)
    eval_batches: int = 20
    save_every: int = 500  # steps between checkpoints
    keep_checkpoints: int = 2  # how many recent checkpoints to keep

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise BertforgeError("pretraining needs --data, a folder written by `bertforge data prepare`")
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            raise BertforgeError("say when to stop: set max_steps, max_epochs or max_minutes")
        if self.eval_batches < 1:
            raise BertforgeError(f"eval_batches must be at least 1, got {self.eval_batches}")
        if self.short_phase_seq_length is not None:
            if not 8 <= self.short_phase_seq_length < self.max_seq_length:
                raise BertforgeError(
                    f"short_phase_seq_length {self.short_phase_seq_length} must be at least 8 and below "
                    f"max_seq_length {self.max_seq_length}"
                )
            if not 0.0 < self.short_phase < 1.0:
                raise BertforgeError(f"short_phase {self.short_phase} must be a share of training in (0, 1)")
            if self.max_epochs is not None:
                raise BertforgeError("short_phase_seq_length needs max_steps or max_minutes: epochs differ by phase")
        check_classifier_pooling(self.classifier_pooling, unset_allowed=True)
        if self.embedding_init not in ("bert", "ppmi"):
            raise BertforgeError(f"embedding_init {self.embedding_init!r} is not one of bert, ppmi")
        if self.attention_init not in ("bert", "mimetic"):
            raise BertforgeError(f"attention_init {self.attention_init!r} is not one of bert, mimetic")
        if self.strategy not in ("ddp", "fsdp"):
            raise BertforgeError(f"strategy {self.strategy!r} is not one of ddp, fsdp")


@dataclass
class FinetuneConfig(FineTuningSettings):
    """Settings of a text-classification fine-tuning run (sentiment, topics, sentence pairs, regression)."""

    model: str = ""  # checkpoint folder (or packaged model name) to start from; its tokenizer is used
    train: str = ""  # training file (CSV, TSV, JSONL) or a catalogue name: rotten_tomatoes, imdb
    dev: str | None = None  # evaluated after each epoch; picks the best checkpoint (default: the catalogue's dev)
    test: str | None = None  # evaluated once at the end with the best checkpoint (default: the catalogue's test)
    out: str = "runs/finetune"  # run folder: best model/, checkpoints, metrics.jsonl, curves.png, report.json
    text_column: str = "text"  # column (or JSON field) with the text
    text_pair_column: str | None = None  # second text for sentence-pair tasks
    label_column: str = "label"  # column with the label: names or integers (classes) or numbers (regression)
    regression: bool = False  # predict a number (mean-squared error) instead of a class
    classifier_pooling: str | None = None  # "cls" or "mean" token vectors; unset: the model's config.json says
    # Both dropout rates while fine-tuning: BERT's 0.1 (Devlin et al., 2019), also for models pretrained without
    # dropout, as Cramming does (Geiping & Goldstein, 2022); null keeps the model's config.json values.
    dropout: float | None = 0.1
    bad_rows: str = "fail"  # fail: stop at the first bad row; skip: skip bad rows and report how many
    max_length: int = MAX_LENGTH  # tokens per input, [CLS]/[SEP] included
    long_text: str = "truncate"  # truncate, or window: overlapping windows whose logits are averaged
    window_stride: int = WINDOW_STRIDE  # tokens shared by consecutive windows in window mode
    class_weights: str | None = None  # "balanced" (inverse class frequency) to up-weight rare classes
    metric: str = "accuracy"  # picks the best epoch: accuracy, macro_f1, matthews_corrcoef, pearson, spearman

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model or not self.train:
            raise BertforgeError("fine-tuning needs --model (a checkpoint folder) and --train (a data file)")
        if self.bad_rows not in ("fail", "skip"):
            raise BertforgeError(f"bad_rows must be fail or skip, got {self.bad_rows!r}")
        check_classifier_pooling(self.classifier_pooling, unset_allowed=True)
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise BertforgeError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.long_text not in ("truncate", "window"):
            raise BertforgeError(f"long_text must be truncate or window, got {self.long_text!r}")
        metrics = ("pearson", "spearman") if self.regression else ("accuracy", "macro_f1", "matthews_corrcoef")
        if self.regression and self.metric == "accuracy":
            self.metric = "pearson"
        if self.metric not in metrics:
            raise BertforgeError(f"metric {self.metric!r} does not fit this task; choose one of {metrics}")


@dataclass
class NerConfig(FineTuningSettings):
    """Settings of a named-entity-recognition (token tagging) fine-tuning run."""

    model: str = ""  # checkpoint folder (or packaged model name) to start from; its tokenizer is used
    train: str = ""  # CoNLL-style file (token and tag per line, blank line between sentences), .jsonl, or msra_ner
    dev: str | None = None  # evaluated after each epoch (entity F1 picks the best epoch)
    test: str | None = None  # evaluated once at the end with the best model
    out: str = "runs/ner"  # run folder: best model/, checkpoints, metrics.jsonl, curves.png, report.json
    token_column: int = 0  # column holding the token
    tag_column: int = -1  # column holding the tag (IO, BIO, BIOES or BMES; converted to BIO internally)
    label_all_pieces: bool = False  # train on every word piece, not only the first piece of each word
    max_length: int = MAX_LENGTH  # tokens per window, [CLS]/[SEP] included
    window_stride: int = NER_WINDOW_STRIDE  # tokens shared by consecutive windows of a long sentence

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model or not self.train:
            raise BertforgeError("NER fine-tuning needs --model (a checkpoint folder) and --train (a CoNLL file)")
        if not 0 <= self.window_stride < self.max_length // 2:
            raise BertforgeError(f"window_stride must be between 0 and max_length / 2, got {self.window_stride}")


@dataclass
class DistillationSettings:
    """Distillation settings (the teacher, the student, the losses), shared by classifiers and taggers."""

    teacher: str = ""  # fine-tuned classifier or tagger: a run folder (its model/ is used) or a model folder
    student: str | None = None  # checkpoint folder or packaged model sharing the teacher's tokenizer; unset: layers
    student_layers: int = 2  # without --student: the teacher's embeddings + this many of its layers (DistilBERT)
    unlabeled: str | None = None  # classifiers: text file, one text a line: more inputs for the soft-target loss
    temperature: float = 2.0  # softens both distributions in the soft-target loss (Hinton et al., 2015)
    soft_weight: float = 1.0  # weight of the T²-scaled KL to the teacher's distribution
    gold_weight: float = 0.0  # weight of cross-entropy on the gold labels (labelled rows only)
    # weight of the mean squared error between the student's embeddings and layer outputs and those of the teacher
    # layers they map to (TinyBERT); runs the teacher in every step; student and teacher must be equally wide
    hidden_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.teacher:
            raise BertforgeError("distillation needs --teacher (a fine-tuned classifier or tagger) and --train")
        teacher = Path(self.teacher)
        # the recipes read `model` for the tokenizer and the data checks: the teacher's
        self.model = str(teacher / "model" if (teacher / "model" / "config.json").is_file() else self.teacher)
        super().__post_init__()  # the recipe's settings class, next in the MRO
        if self.temperature <= 0:
            raise BertforgeError(f"temperature must be above 0, got {self.temperature}")
        if self.soft_weight < 0 or self.gold_weight < 0 or self.soft_weight + self.gold_weight == 0:
            raise BertforgeError("soft_weight and gold_weight must be at least 0, and not both 0")
        if self.hidden_weight < 0:
            raise BertforgeError(f"hidden_weight must be at least 0, got {self.hidden_weight}")


@dataclass
class DistillConfig(DistillationSettings, FinetuneConfig):
    """Settings of a distillation run: a fine-tuned classifier (the teacher) trains a smaller one (the student).

    The data, length and evaluation settings are fine-tuning's; ``model`` is set to the teacher (its tokenizer and
    labels are the student's).
    """

    epochs: float | None = None  # passes over the training (+ unlabelled) inputs; unset: as fine-tuning chooses
    out: str = "runs/distill"  # run folder: best student model/, checkpoint, metrics.jsonl, curves.png, report.json

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.regression:
            raise BertforgeError("distillation is for classifiers; a regression teacher is not supported")


@dataclass
class DistillTaggerConfig(DistillationSettings, NerConfig):
    """Settings of a distillation run for a fine-tuned tagger (NER): the soft-target loss per labelled token.

    The data, length and evaluation settings are NER fine-tuning's; ``model`` is set to the teacher.
    """

    out: str = "runs/distill"  # run folder: best student model/, checkpoint, metrics.jsonl, curves.png, report.json

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unlabeled is not None:
            raise BertforgeError("--unlabeled is for classifiers; a tagger is distilled on --train's sentences")


@dataclass
class QaConfig(FineTuningSettings):
    """Settings of an extractive question-answering fine-tuning run (SQuAD v1.1 / v2.0 format)."""

    model: str = ""  # checkpoint folder (or packaged model name) to start from; its tokenizer is used
    train: str = ""  # SQuAD-format JSON file, or squad_v1 (SQuAD v1.1 from the packaged data)
    dev: str | None = None  # evaluated (exact match, F1) after each epoch; defaults to squad_v1's dev file
    out: str = "runs/qa"  # run folder: best model/, checkpoint, metrics.jsonl, curves.png, report.json
    eval_limit: int | None = None  # evaluate on the first N dev questions only
    max_length: int = QA_MAX_LENGTH  # tokens per window: [CLS] question [SEP] context piece [SEP]
    doc_stride: int = DOC_STRIDE  # context tokens shared by consecutive windows of a long context
    max_query_length: int = MAX_QUERY_LENGTH  # questions are cut after this many tokens
    max_answer_length: int = MAX_ANSWER_LENGTH  # longest answer, in tokens, that post-processing considers
    n_best: int = N_BEST  # best start and end positions per window that are paired into candidate spans
    null_threshold: float = 0.0  # SQuAD v2.0: answer "" when the no-answer score beats the best span by this
    epochs: float = 2.0  # passes over the training windows (max_steps stops sooner)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model or not self.train:
            raise BertforgeError("QA fine-tuning needs --model (a checkpoint folder) and --train (a SQuAD JSON file)")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise BertforgeError(f"eval_limit must be a positive number of questions, got {self.eval_limit}")
        if not 0 <= self.doc_stride < self.max_length:  # the exact room per window is checked with the questions
            raise BertforgeError(f"doc_stride must be between 0 and max_length, got {self.doc_stride}")


# ---- a fine-tuning run's settings, saved beside its model/ folder and read back for inference ------------------

TaskSettings = TypeVar("TaskSettings", FinetuneConfig, NerConfig, QaConfig)
SETTINGS_FILES: dict[type, str] = {
    FinetuneConfig: "finetune_config.json",
    DistillConfig: "finetune_config.json",  # a superset: evaluate and predict read the student like any classifier
    NerConfig: "ner_config.json",
    DistillTaggerConfig: "ner_config.json",  # likewise for a tagger
    QaConfig: "qa_config.json",
}


def save_run_settings(settings: FinetuneConfig | NerConfig | QaConfig, run_dir: Path) -> None:
    """Write a fine-tuning run's settings beside its model/ folder, where :func:`inference_settings` finds them."""
    text = json.dumps(dataclasses.asdict(settings), indent=2) + "\n"
    (Path(run_dir) / SETTINGS_FILES[type(settings)]).write_text(text, encoding="utf-8")


def inference_settings(
    settings_class: type[TaskSettings],
    model: str | Path,
    *,
    max_length: int = 0,
    long_text: str | None = None,
) -> TaskSettings:
    """The settings a fine-tuned model is run with, by ``evaluate``, ``predict`` and the pipelines alike.

    They are the settings its fine-tuning run saved beside the model/ folder (:func:`save_run_settings`), so
    inputs are cut into windows and answers chosen as in training; a model from elsewhere gets the defaults of
    ``settings_class``. ``max_length`` (when above 0) and ``long_text`` (when given) replace the run's. The
    length is kept within the model's position embeddings; when it differs from the run's, the window stride is
    kept within a quarter of it, so windows still advance.
    """
    folder = resolve_model_dir(model)
    saved = folder.parent / SETTINGS_FILES[settings_class]
    try:
        known = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
    except (OSError, ValueError) as error:
        raise BertforgeError(f"{saved}: cannot be read ({error}); delete it to use the default settings") from None
    names = {field.name for field in dataclasses.fields(settings_class)}
    values = {key: value for key, value in known.items() if key in names}
    values.update(model=str(folder), train=values.get("train") or str(folder))  # required; callers name their data
    positions = BertConfig.load(folder).max_position_embeddings
    length = min(max_length or values.get("max_length", settings_class.max_length), positions)
    if length != values.get("max_length", settings_class.max_length):
        values["max_length"] = length
        for stride in ("window_stride", "doc_stride"):
            if stride in names:
                values[stride] = min(values.get(stride, getattr(settings_class, stride)), length // 4)
    if long_text is not None and "long_text" in names:
        values["long_text"] = long_text
    return settings_class(**values)
