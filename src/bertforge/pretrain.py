"""The pretraining recipe: token shards → BERT with masked-LM (+ next-sentence) objectives → checkpoint folder.

Straight-line on purpose — setup, loop, evaluate, save — so it reads like the algorithm. Settings come from
:class:`PretrainConfig` (a YAML file plus ``--key value`` overrides).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bertforge.checkpoint import ModelT
from bertforge.config import BertConfig, is_preset
from bertforge.data.examples import PretrainingExamples, SpecialIds, split_batch
from bertforge.data.masking import MaskingConfig
from bertforge.data.shard_reader import ShardedCorpus, check_tokenizer
from bertforge.data.word_vectors import ppmi_svd_vectors
from bertforge.distributed import (
    gather_objects,
    gradient_sync,
    is_sharded,
    join_processes,
    leave_processes,
    micro_batches_per_step,
    my_share,
    optimizer_state_by_name,
    restore_rank_rng,
    sum_across,
    unwrap,
    whole_model,
    wrap_model,
)
from bertforge.errors import BertforgeError
from bertforge.heads import IGNORE_INDEX, BertForMaskedLM, BertForPreTraining
from bertforge.runtime import autocast, pick_precision
from bertforge.settings import PretrainConfig
from bertforge.tokenizer import BertTokenizer
from bertforge.train import (
    MetricsLog,
    build_optimizer,
    latest_checkpoint,
    learning_rate_factor,
    load_training_state,
    optimizer_step,
    plot_metrics,
    return_freed_memory_to_the_system,
    save_checkpoint,
    save_model_folder,
    seed_everything,
    set_learning_rate,
    to_device,
)

log = logging.getLogger("bertforge")

LOSS_NAMES = ("loss", "mlm_loss", "nsp_loss")  # logged each step


def model_config(settings: PretrainConfig, vocab_size: int) -> BertConfig:
    if is_preset(settings.model):
        config = BertConfig.preset(settings.model, vocab_size=vocab_size)
    else:
        config = BertConfig.load(settings.model)
    if config.vocab_size != vocab_size:
        raise BertforgeError(f"{settings.model}: vocab_size {config.vocab_size} but the tokenizer has {vocab_size}")
    if settings.attention_heads is not None:
        config = dataclasses.replace(config, num_attention_heads=settings.attention_heads)
    config = dataclasses.replace(config, **config_overrides(settings))
    if settings.max_seq_length > config.max_position_embeddings:
        raise BertforgeError(
            f"max_seq_length {settings.max_seq_length} exceeds the model's {config.max_position_embeddings} positions"
        )
    return config


def config_overrides(settings: PretrainConfig) -> dict[str, float | str]:
    """The config fields ``dropout`` and ``classifier_pooling`` set, for a new model and a loaded one alike (none
    when they are unset)."""
    overrides: dict[str, float | str] = {}
    if settings.dropout is not None:
        overrides.update(hidden_dropout_prob=settings.dropout, attention_probs_dropout_prob=settings.dropout)
    if settings.classifier_pooling is not None:
        overrides["classifier_pooling"] = settings.classifier_pooling
    return overrides


def load_start_model(architecture: type[ModelT], folder: str | Path, settings: PretrainConfig) -> ModelT:
    """The model of a checkpoint or ``init_from`` folder, with ``dropout`` and ``classifier_pooling`` applied.
    A head count is part of the saved model, so an ``attention_heads`` that differs from it is an error rather
    than silently ignored."""
    model = architecture.from_pretrained(folder, **config_overrides(settings))
    saved_heads = model.config.num_attention_heads
    if settings.attention_heads is not None and settings.attention_heads != saved_heads:
        raise BertforgeError(
            f"{folder}: this model has {saved_heads} attention heads but attention_heads is "
            f"{settings.attention_heads}; a saved model keeps its head count: give --attention-heads {saved_heads} "
            "or --attention-heads null"
        )
    return model


EMBEDDING_INIT_TOKENS = 50_000_000  # co-occurrence counts from at most this many corpus tokens (~1 minute)


def start_word_embeddings_from_corpus(model: BertForPreTraining | BertForMaskedLM, corpus: ShardedCorpus) -> None:
    """Replace the word embeddings of tokens that occur in ``corpus`` by PPMI-SVD vectors
    (:func:`~bertforge.data.word_vectors.ppmi_svd_vectors`), scaled to the table's own root mean square so the
    embedding sum keeps BERT's proportions; the others (special tokens, unused pieces) keep their random start."""
    table = model.bert.embeddings.word.weight  # (V, H)
    tokens = np.asarray(corpus.tokens(0, min(corpus.num_tokens, EMBEDDING_INIT_TOKENS)))
    vectors = torch.from_numpy(ppmi_svd_vectors(tokens, table.shape[0], table.shape[1]))  # (V, H)
    seen = vectors.abs().sum(1) > 0  # (V,)
    with torch.no_grad():
        scale = table[seen].pow(2).mean().sqrt() / vectors[seen].pow(2).mean().sqrt()
        table[seen] = (vectors[seen] * scale).to(table.dtype)


def make_examples(settings: PretrainConfig, corpus: ShardedCorpus, tokenizer: BertTokenizer) -> PretrainingExamples:
    vocab = tokenizer.get_vocab()
    # Random replacements are ordinary tokens only: never [CLS]/[SEP]/[PAD]/[MASK]/[UNK] nor [unusedN].
    ordinary = np.array(sorted(i for token, i in vocab.items() if not re.fullmatch(r"\[.*\]", token)), dtype=np.int64)
    masking = MaskingConfig(
        mask_token_id=tokenizer.mask_token_id,
        replacement_ids=ordinary,
        mlm_probability=settings.mlm_probability,
        max_predictions_per_seq=settings.max_predictions_per_seq,
    )
    word_starts = None
    if settings.whole_word_masking:
        word_starts = np.ones(len(tokenizer), dtype=bool)
        for token, i in vocab.items():
            word_starts[i] = not token.startswith("##")
    return PretrainingExamples(
        corpus,
        SpecialIds(cls=tokenizer.cls_token_id, sep=tokenizer.sep_token_id, pad=tokenizer.pad_token_id),
        masking,
        max_seq_length=settings.max_seq_length,
        short_seq_prob=settings.short_seq_prob,
        next_sentence_prediction=settings.next_sentence_prediction,
        word_start_table=word_starts,
        seed=settings.seed,
    )


def short_phase_settings(settings: PretrainConfig) -> PretrainConfig:
    """The settings of the short first phase: its sequence length, and a prediction cap scaled to it."""
    assert settings.short_phase_seq_length is not None
    length = settings.short_phase_seq_length
    predictions = math.ceil(settings.max_predictions_per_seq * length / settings.max_seq_length)
    return dataclasses.replace(settings, max_seq_length=length, max_predictions_per_seq=predictions,
                               short_phase_seq_length=None)  # fmt: skip


def validation_batches(
    settings: PretrainConfig, corpus: ShardedCorpus, tokenizer: BertTokenizer, parts_per_step: int
) -> list[dict[str, np.ndarray]]:
    """The first ``eval_batches`` batches of ``corpus``'s examples, each split into ``parts_per_step`` micro-batches.
    Batches are masked whole (with another seed than training's), so the figures are the same in any layout.

    A validation split smaller than ``eval_batches`` batches is read again, with new NSP pairs and new masks each
    pass: one pass over SQuAD's 6 held-out articles gives ~400 pairs, whose NSP accuracy is only ±2.5 points
    (bench/RESULTS.md, 2026-12-07, session 40)."""
    examples = make_examples(dataclasses.replace(settings, seed=settings.seed + 1), corpus, tokenizer)
    batches: list[dict[str, np.ndarray]] = []
    for epoch in itertools.count():
        missing = settings.eval_batches - len(batches)
        read = list(itertools.islice(examples.batches(epoch, settings.batch_size), missing))
        batches += read
        if not read or len(batches) == settings.eval_batches:  # a split with no examples at all ends here too
            break
    return [micro_batch for batch in batches for micro_batch in split_batch(batch, parts_per_step)]


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[dict], device: torch.device, precision: str) -> dict[str, float]:
    """Validation MLM loss and accuracy over masked tokens, NSP accuracy over examples."""
    model.eval()
    mlm_loss = mlm_correct = mlm_count = nsp_correct = nsp_count = 0.0
    for batch in batches:
        inputs = to_device(batch, device)
        with autocast(precision, device):
            out = model(**inputs)
        count = float(out.mlm_count)
        mlm_loss += float(out.mlm_loss) * count
        mlm_correct += float(out.mlm_correct)
        mlm_count += count
        if out.nsp_logits is not None:
            nsp_correct += float((out.nsp_logits.argmax(-1) == inputs["next_sentence_label"]).sum())
            nsp_count += len(batch["input_ids"])
    model.train()
    metrics = {"mlm_loss": mlm_loss / max(mlm_count, 1), "mlm_accuracy": mlm_correct / max(mlm_count, 1)}
    if nsp_count:
        metrics["nsp_accuracy"] = nsp_correct / nsp_count
    return metrics


def pretrain(settings: PretrainConfig) -> Path:
    """Run pretraining; return the folder of the final model (Hugging Face layout, tokenizer included)."""
    # ---- setup ----
    run_dir, data_dir = Path(settings.out), Path(settings.data)
    processes, device = join_processes(settings.device)
    seed_everything(settings.seed + processes.rank)  # dropout differs between processes; rank 0 is a lone run
    if settings.low_memory:
        return_freed_memory_to_the_system()
    precision = pick_precision(settings.precision, device)
    tokenizer = BertTokenizer.from_pretrained(data_dir / "tokenizer")
    check_tokenizer(data_dir, tokenizer)
    train_corpus, valid_corpus = ShardedCorpus(data_dir, "train"), ShardedCorpus(data_dir, "valid")
    settings_of_phase = {"long": settings}
    if settings.short_phase_seq_length is not None:
        settings_of_phase["short"] = short_phase_settings(settings)
    examples_of_phase = {name: make_examples(s, train_corpus, tokenizer) for name, s in settings_of_phase.items()}
    if settings.next_sentence_prediction and valid_corpus.num_documents < 2:
        raise BertforgeError(
            f"{data_dir}: the validation split has {valid_corpus.num_documents} document(s), but evaluating "
            "next-sentence prediction needs at least 2; re-run `bertforge data prepare` with a larger --valid-fraction"
        )
    # batch_size is the global batch: a step's examples are the same whatever the number of processes
    parts_per_step = micro_batches_per_step(settings.batch_size, settings.gradient_accumulation_steps, processes)
    # Validation examples have the length of the phase being trained: a model of the short phase has not trained the
    # positions past it, which cost it 16-30% of its MLM accuracy on full-length examples (bench/RESULTS.md,
    # 2026-12-07, session 40).
    eval_batches_of_phase = {name: validation_batches(s, valid_corpus, tokenizer, parts_per_step)
                             for name, s in settings_of_phase.items()}  # fmt: skip
    if not all(eval_batches_of_phase.values()):  # e.g. `data prepare --valid-fraction 0`: no figures, not zeros
        raise BertforgeError(
            f"{data_dir}: the validation split has no text to validate on; re-run `bertforge data prepare` with a "
            "larger --valid-fraction"
        )

    architecture = BertForPreTraining if settings.next_sentence_prediction else BertForMaskedLM
    setup_seconds = 0.0
    checkpoint = latest_checkpoint(run_dir) if settings.resume else None
    if settings.resume and checkpoint is None:
        log.info("%s has no checkpoint yet; starting from scratch", run_dir)
    if checkpoint is not None or settings.init_from:
        model = load_start_model(architecture, checkpoint or settings.init_from, settings)
    else:
        model = architecture(model_config(settings, len(tokenizer)))
        if settings.attention_init == "mimetic":
            model.mimetic_attention_init()
        if settings.embedding_init == "ppmi":
            began = time.perf_counter()
            start_word_embeddings_from_corpus(model, train_corpus)
            setup_seconds = time.perf_counter() - began  # part of a time budget: it replaces steps
            log.info("word embeddings started from co-occurrence vectors in %.1f s", setup_seconds)
    if settings.freeze_word_embeddings:
        # Early MLM steps rewrite the tied table towards what predicts masked tokens and lose what the PPMI-SVD
        # start knew about words: a linear probe on RT read 0.735 from it, 0.70 after 5,000 steps that trained it,
        # 0.745 with it fixed (bench/RESULTS.md, 2026-12-05).
        model.bert.embeddings.word.weight.requires_grad_(False)
    model = wrap_model(model.to(device).train(), processes, device, settings.strategy)
    betas = (settings.adam_beta1, settings.adam_beta2)
    optimizer = build_optimizer(model, settings.learning_rate, settings.weight_decay, betas, settings.adam_epsilon)
    step, epoch, batch_in_epoch, elapsed, tokens_seen = 0, 0, 0, setup_seconds, 0
    phase = "short" if "short" in examples_of_phase else "long"
    if checkpoint is not None:
        state = load_training_state(checkpoint, optimizer, model)
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        phase = state.get("phase", phase)
        elapsed, tokens_seen = state["elapsed"], state["tokens_seen"]
        restore_rank_rng(state, processes, settings.seed, step)
        log.info("resumed from %s (step %d, epoch %d)", checkpoint, step, epoch)
    # Under FSDP every process takes part in each forward pass, so all evaluate (only the main one reports).
    evaluates = processes.is_main or is_sharded(model)

    steps_per_epoch = math.ceil(examples_of_phase[phase].count(0) / settings.batch_size)
    total_steps = min(
        settings.max_steps or math.inf,
        math.ceil(settings.max_epochs * steps_per_epoch) if settings.max_epochs else math.inf,
    )
    budget = settings.max_minutes * 60 if settings.max_minutes else None
    metrics = MetricsLog(run_dir, resume_from_step=step if checkpoint is not None else None, write=processes.is_main)
    if processes.is_main:
        (run_dir / "pretrain_config.json").write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
    parameters = sum(p.numel() for p in model.parameters())
    log.info(
        "pretraining %s (%.1fM parameters) on %s%s in %s: %d training documents, ~%d steps per epoch",
        architecture.__name__,
        parameters / 1e6,
        device,
        f" × {processes.world_size} processes" if processes.distributed else "",
        precision,
        train_corpus.num_documents,
        steps_per_epoch,
    )

    # ---- loop ----
    def progress_now() -> float:
        shares = [step / total_steps] if math.isfinite(total_steps) else []
        if budget:
            shares.append(elapsed / budget)
        return max(shares)

    bar = tqdm(
        total=int(total_steps) if math.isfinite(total_steps) else None,
        initial=step,
        desc="pretraining",
        unit="step",
        disable=not (settings.progress and processes.is_main),
        mininterval=1.0,
    )
    started = time.perf_counter() - elapsed
    window_tokens, window_start = 0, time.perf_counter()
    done = progress_now() >= 1.0
    while not done:
        batches = examples_of_phase[phase].batches(epoch, settings.batch_size, skip=batch_in_epoch)
        switching = False  # from the short phase to the long one: new examples, counted from epoch 0
        while not done and not switching:
            batch = next(batches, None)
            if batch is None:
                break  # the epoch is over
            factor = learning_rate_factor(progress_now(), settings.warmup, settings.cooldown)
            lr = set_learning_rate(optimizer, settings.learning_rate, factor)
            micro_batches = split_batch(batch, parts_per_step)
            # MLM is a mean over masked tokens, whose number differs between micro-batches; NSP one over examples.
            counts = [((m["mlm_labels"] != IGNORE_INDEX).sum(), len(m["input_ids"])) for m in micro_batches]
            share = my_share(micro_batches, counts, processes)
            seen = [0.0] * (len(LOSS_NAMES) + 2)  # this process's part of the step's losses, its tokens, the time
            for index, (micro_batch_arrays, (mlm_weight, example_weight)) in enumerate(share):
                inputs = to_device(micro_batch_arrays, device)
                with gradient_sync(model, last=index == len(share) - 1):
                    with autocast(precision, device):
                        out = model(**inputs)
                    loss = out.mlm_loss * mlm_weight
                    if out.nsp_loss is not None:
                        loss = loss + settings.nsp_loss_weight * out.nsp_loss * example_weight
                    loss.backward()
                weighted = {
                    "mlm_loss": float(out.mlm_loss.detach()) * mlm_weight,
                    "nsp_loss": 0.0 if out.nsp_loss is None else float(out.nsp_loss.detach()) * example_weight,
                }
                weighted["loss"] = weighted["mlm_loss"] + weighted["nsp_loss"]  # as the model's `loss`: NSP unweighted
                for position, name in enumerate(LOSS_NAMES):
                    seen[position] += weighted[name] / processes.world_size
                seen[-2] += int(micro_batch_arrays["attention_mask"].sum()) if example_weight else 0
            # The main process's clock rules: every process must agree on the learning rate and on when to stop.
            seen[-1] = time.perf_counter() - started if processes.is_main else 0.0
            *step_losses, step_tokens, elapsed = sum_across(seen, processes)
            losses = {name: value for name, value in zip(LOSS_NAMES, step_losses, strict=True)
                      if name != "nsp_loss" or settings.next_sentence_prediction}  # fmt: skip
            tokens_seen += int(step_tokens)
            window_tokens += int(step_tokens)
            optimizer_step(model, optimizer, settings.max_grad_norm)
            step += 1
            batch_in_epoch += 1
            done = progress_now() >= 1.0
            if phase == "short" and progress_now() >= settings.short_phase:
                phase, epoch, batch_in_epoch, switching = "long", 0, 0, True
                log.info("step %d: examples of %d tokens from here on", step, settings.max_seq_length)

            if step % settings.log_every == 0 or done:
                rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                metrics.write({"step": step, "split": "train", "epoch": epoch, "lr": lr, "tokens_per_second": rate,
                               "elapsed": elapsed, **losses})  # fmt: skip
                bar.set_postfix(loss=f"{losses['loss']:.3f}", tok_s=f"{rate:.0f}", lr=f"{lr:.2e}")
                if not math.isfinite(total_steps):  # on a time budget: estimate the total, so the bar shows an ETA
                    bar.total = max(step, round(step / max(progress_now(), 1e-9)))
                window_tokens, window_start = 0, time.perf_counter()
            bar.update(1)
            if evaluates and (step % settings.eval_every == 0 or done):
                scores = evaluate(unwrap(model), eval_batches_of_phase[phase], device, precision)
                length = settings_of_phase[phase].max_seq_length
                metrics.write({"step": step, "split": "valid", "epoch": epoch, "elapsed": elapsed,
                               "seq_length": length, **scores})  # fmt: skip
                if processes.is_main:
                    shown = ", ".join(f"valid {k} {v:.4f}" for k, v in scores.items())
                    bar.write(f"step {step} ({length} tokens): {shown}")
            if step % settings.save_every == 0 or done:
                random_states = gather_objects(torch.get_rng_state(), processes)
                state = {"step": step, "phase": phase, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                         "elapsed": elapsed, "tokens_seen": tokens_seen, "rank_torch_rng": random_states}  # fmt: skip
                whole = whole_model(model, processes, architecture)
                optimizer_state = optimizer_state_by_name(model, optimizer)
                if processes.is_main:
                    save_checkpoint(run_dir, step, whole, optimizer, state, tokenizer, settings.keep_checkpoints,
                                    optimizer_state=optimizer_state)  # fmt: skip
        if not done and not switching:
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()

    # ---- save ----
    final, whole = run_dir / "model", whole_model(model, processes, architecture)
    if processes.is_main:
        save_model_folder(whole, tokenizer, final)
        plot = plot_metrics(run_dir)
        log.info("saved the model to %s and the training curves to %s (%d tokens seen)", final, plot, tokens_seen)
    leave_processes()
    return final
