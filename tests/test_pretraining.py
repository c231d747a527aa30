"""Pretraining end to end on a small generated corpus: examples, NSP labels, resume, CLI, fill-mask, bad input."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertforge.cli import main
from bertforge.data.examples import Pair, PretrainingExamples
from bertforge.data.shard_reader import ShardedCorpus
from bertforge.data.shard_writer import prepare_corpus
from bertforge.errors import BertforgeError
from bertforge.heads import IGNORE_INDEX
from bertforge.pretrain import make_examples, pretrain, validation_batches
from bertforge.settings import PretrainConfig
from bertforge.tokenizer import BertTokenizer, train_tokenizer
from bertforge.train import read_metrics

TOPICS = {
    "sea": "ship sail wave harbour captain storm anchor fish tide coast".split(),
    "farm": "cow field harvest barn tractor wheat farmer sheep fence hay".split(),
    "space": "rocket orbit planet star moon astronaut launch galaxy comet crater".split(),
    "city": "street traffic tower market subway bridge crowd taxi office park".split(),
}
GLUE = "the a of and in to was with on for by at".split()


def generated_documents(count: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    documents = []
    for index in range(count):
        words = TOPICS[list(TOPICS)[index % len(TOPICS)]]
        sentences = []
        for _ in range(rng.integers(3, 9)):
            length = rng.integers(4, 14)
            tokens = [str(rng.choice(words if rng.random() < 0.6 else GLUE)) for _ in range(length)]
            sentences.append(" ".join(tokens).capitalize() + ".")
        documents.append(sentences)
    return documents


def make_shards(root, valid_fraction=0.1):
    """A tokenizer and shards (``valid_fraction`` of the documents held out) of 240 generated documents, in
    ``root``."""
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(doc) for doc in generated_documents(240)) + "\n", encoding="utf-8")
    train_tokenizer([corpus], 120, show_progress=False).save_pretrained(root / "tokenizer")
    prepare_corpus([corpus], root / "tokenizer", root / "shards", valid_fraction=valid_fraction, workers=1,
                   show_progress=False)  # fmt: skip
    return root / "shards"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("corpus"))


def settings(shards, tmp_path, **overrides):
    values = dict(data=str(shards), out=str(tmp_path / "run"), model="tiny", max_seq_length=64, batch_size=8,
                  max_steps=6, eval_every=3, eval_batches=2, save_every=3, log_every=1, progress=False,
                  precision="fp32", dropout=0.1, learning_rate=1e-3)  # fmt: skip
    return PretrainConfig(**{**values, **overrides})


def test_nsp_labels_are_balanced_and_positives_are_real_continuations(shards, tmp_path):
    corpus = ShardedCorpus(shards)
    examples = make_examples(
        settings(shards, tmp_path, max_seq_length=48), corpus, BertTokenizer.from_pretrained(shards / "tokenizer")
    )
    text = np.asarray(corpus.tokens(0, corpus.num_tokens))
    labels = []
    for epoch in range(8):
        for pair in examples.pairs(epoch):
            assert isinstance(pair, Pair)
            assert pair.tokens_a.size + pair.tokens_b.size <= 48 - 3
            assert pair.tokens_a.size and pair.tokens_b.size
            labels.append(pair.is_random_next)
            if not pair.is_random_next and epoch == 0:
                # Truncation may trim A's end or B's start, so B starts shortly after A ends (≤ 45 tokens).
                starts_a, starts_b = occurrences(text, pair.tokens_a), occurrences(text, pair.tokens_b)
                gaps = starts_b[None, :] - (starts_a[:, None] + pair.tokens_a.size)
                assert ((gaps >= 0) & (gaps <= 45)).any(), "B of a positive pair must continue A"
    assert len(labels) > 2000
    assert abs(np.mean(labels) - 0.5) < 0.02


def test_batches_are_deterministic_and_skipping_keeps_later_masks(shards, tmp_path):
    tokenizer = BertTokenizer.from_pretrained(shards / "tokenizer")
    examples = make_examples(settings(shards, tmp_path), ShardedCorpus(shards), tokenizer)
    full = list(examples.batches(1, 8))
    again = list(examples.batches(1, 8, skip=3))
    assert len(again) == len(full) - 3
    for a, b in zip(full[3:], again, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    batch = full[0]
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "mlm_labels", "next_sentence_label"}
    assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    assert (batch["mlm_labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert not np.array_equal(full[0]["input_ids"], next(iter(examples.batches(2, 8)))["input_ids"])


def test_packed_mlm_only_examples_cover_the_text(shards, tmp_path):
    corpus = ShardedCorpus(shards)
    config = settings(shards, tmp_path, next_sentence_prediction=False)
    examples = make_examples(config, corpus, BertTokenizer.from_pretrained(shards / "tokenizer"))
    pieces = list(examples.packed(0))
    assert all(piece.size <= 62 for piece in pieces)
    sep = BertTokenizer.from_pretrained(shards / "tokenizer").sep_token_id
    text_tokens = sum(int((piece != sep).sum()) for piece in pieces)
    assert text_tokens == corpus.num_tokens  # nothing dropped, nothing repeated


def occurrences(text, piece):
    windows = np.lib.stride_tricks.sliding_window_view(text, piece.size)
    return np.flatnonzero((windows == piece).all(axis=1))


def read_losses(run):
    return [(r["step"], r["loss"]) for r in read_metrics(run) if r["split"] == "train"]


def test_resumed_run_repeats_the_uninterrupted_losses(shards, tmp_path):
    straight = settings(shards, tmp_path / "a")
    pretrain(straight)
    expected = read_losses(tmp_path / "a" / "run")
    assert len(expected) == 6

    interrupted = tmp_path / "b" / "run"
    pretrain(settings(shards, tmp_path / "b", max_steps=6, save_every=3))
    shutil.rmtree(interrupted / "checkpoints" / "step-0000006")  # as if killed after the step-3 checkpoint
    pretrain(settings(shards, tmp_path / "b", resume=True))
    assert read_losses(interrupted) == expected
    assert (interrupted / "curves.png").stat().st_size > 0


def test_short_phase_then_full_length_and_resume_across_the_switch(shards, tmp_path, monkeypatch):
    widths = []  # (the examples' sequence length, the widest batch it gave) per batch drawn
    batches = PretrainingExamples.batches

    def recording(self, epoch, batch_size, skip=0):
        for batch in batches(self, epoch, batch_size, skip):
            widths.append((self.max_seq_length, int(batch["attention_mask"].sum(1).max())))
            yield batch

    monkeypatch.setattr(PretrainingExamples, "batches", recording)
    phased = dict(short_phase_seq_length=16, short_phase=0.5, eval_every=2)
    pretrain(settings(shards, tmp_path / "a", **phased))
    validation, training = widths[:4], widths[4:]  # two validation batches per phase are drawn first
    assert [length for length, _ in validation] == [64, 64, 16, 16]
    assert max(width for _, width in validation[2:]) <= 16 < max(width for _, width in validation[:2])
    assert [length for length, _ in training] == [16, 16, 16, 64, 64, 64]
    assert max(width for length, width in training[:3]) <= 16 < max(width for _, width in training[3:])
    records = read_metrics(tmp_path / "a" / "run")
    # each phase is validated at its own length (the switch comes after step 3)
    assert [(r["step"], r["seq_length"]) for r in records if r["split"] == "valid"] == [(2, 16), (4, 64), (6, 64)]
    expected = read_losses(tmp_path / "a" / "run")

    interrupted = tmp_path / "b" / "run"
    pretrain(settings(shards, tmp_path / "b", **phased))
    shutil.rmtree(interrupted / "checkpoints" / "step-0000006")  # killed after the step-3 checkpoint, at the switch
    pretrain(settings(shards, tmp_path / "b", resume=True, **phased))
    assert read_losses(interrupted) == expected


def test_a_small_validation_split_is_read_again_until_eval_batches_are_filled(shards, tmp_path):
    tokenizer = BertTokenizer.from_pretrained(shards / "tokenizer")
    corpus = ShardedCorpus(shards, "valid")
    configured = settings(shards, tmp_path, eval_batches=1)
    validation_examples = make_examples(dataclasses.replace(configured, seed=configured.seed + 1), corpus, tokenizer)
    one_pass = -(-validation_examples.count(0) // 8)  # batches of 8 in one pass, the last one smaller
    wanted = 2 * one_pass + 1
    batches = validation_batches(dataclasses.replace(configured, eval_batches=wanted), corpus, tokenizer, 1)
    assert len(batches) == wanted
    first, second = batches[:one_pass], batches[one_pass : 2 * one_pass]
    # the second pass pairs and masks the same documents anew: not the first pass repeated
    assert any(not np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, second, strict=True))
    # a larger eval_batches starts with the same batches: figures stay comparable when it is raised
    fewer = validation_batches(dataclasses.replace(configured, eval_batches=one_pass), corpus, tokenizer, 1)
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(fewer, first, strict=True))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(short_phase_seq_length=64), "below max_seq_length"),
        (dict(short_phase_seq_length=16, short_phase=1.0), "short_phase 1.0"),
        (dict(short_phase_seq_length=16, max_steps=None, max_epochs=1), "max_steps or max_minutes"),
        (dict(eval_batches=0), "eval_batches must be at least 1"),
    ],
)
def test_bad_pretraining_settings_are_refused(shards, tmp_path, overrides, message):
    with pytest.raises(BertforgeError, match=message):
        settings(shards, tmp_path, **overrides)


def test_cli_pretrain_then_fill_mask(shards, tmp_path, capsys):
    config = tmp_path / "pretrain.yaml"
    config.write_text(f"data: {shards}\nmodel: tiny\nmax_seq_length: 64\nbatch_size: 8\nprogress: false\n")
    out = tmp_path / "run"
    options = ["--out", str(out), "--max-steps", "2", "--precision", "fp32", "--attention-init", "mimetic",
               "--embedding-init", "ppmi", "--classifier-pooling", "mean"]  # fmt: skip
    assert main(["pretrain", "--config", str(config), *options, "--attention-heads", "4", "--cooldown", "0.5"]) == 0
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in (out / "model").iterdir()}
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["num_attention_heads"] == 4 and saved["classifier_pooling"] == "mean"
    assert (
        main(["fill-mask", "--model", str(out / "model"), "--text", "The ship sailed into the [MASK].", "--top-k", "3"])
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.count("The ship sailed into the ") == 3


def test_unknown_setting_and_missing_stop_are_errors(shards, tmp_path, capsys):
    assert main(["pretrain", "--data", str(shards), "--max-step", "3"]) == 2
    assert "unknown setting --max-step" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(shards)]) == 2
    assert "say when to stop" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(shards), "--max-steps", "3", "--attention-init", "xavier"]) == 2
    assert "attention_init 'xavier' is not one of bert, mimetic" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(shards), "--max-steps", "3", "--embedding-init", "glove"]) == 2
    assert "embedding_init 'glove' is not one of bert, ppmi" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(shards), "--max-steps", "3", "--cooldown", "0"]) == 2
    assert "cooldown 0.0 must be a share of training in (0, 1]" in capsys.readouterr().err
    assert (
        main(["pretrain", "--data", str(shards), "--max-steps", "3", "--model", "tiny", "--attention-heads", "3"]) == 2
    )
    assert "hidden_size 128 is not divisible by num_attention_heads 3" in capsys.readouterr().err


def test_init_from_applies_dropout_and_rejects_another_head_count(shards, tmp_path):
    first = pretrain(settings(shards, tmp_path, max_steps=1, out=str(tmp_path / "first")))
    second = pretrain(settings(shards, tmp_path, max_steps=1, init_from=str(first), dropout=0.0))
    saved = json.loads((second / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == saved["attention_probs_dropout_prob"] == 0.0
    with pytest.raises(BertforgeError, match="has 2 attention heads but attention_heads is 4"):
        pretrain(settings(shards, tmp_path, max_steps=1, init_from=str(first), attention_heads=4))


def test_tokenizer_that_does_not_match_the_shards(shards, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    corpus = tmp_path / "c.txt"
    corpus.write_text("completely different words here\n" * 30)
    train_tokenizer([corpus], 60, show_progress=False).save_pretrained(other / "tokenizer")
    with pytest.raises(BertforgeError, match="different tokenizer"):
        pretrain(settings(other, tmp_path))


def test_shards_without_a_validation_split_are_refused_not_validated_as_zero(tmp_path):
    shards = make_shards(tmp_path, valid_fraction=0.0)
    with pytest.raises(BertforgeError, match=r"validation split has no text to validate on.*--valid-fraction"):
        pretrain(settings(shards, tmp_path, next_sentence_prediction=False))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_corrupted_checkpoint_on_resume(shards, tmp_path):
    pretrain(settings(shards, tmp_path, max_steps=3, save_every=3))
    state = tmp_path / "run" / "checkpoints" / "step-0000003" / "training_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(BertforgeError, match=r"training_state\.pt: cannot be read"):
        pretrain(settings(shards, tmp_path, max_steps=5, resume=True))


@pytest.mark.parametrize(
    ("cooldown", "expected"),
    [
        (1.0, [0.0, 0.5, 1.0, 0.9, 2 / 3, 5 / 18, 0.0]),  # BERT: decay from the end of warm-up
        (0.5, [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]),  # warm-up, stable, decay over the last half
    ],
)
def test_learning_rate_schedule(cooldown, expected):
    from bertforge.train import learning_rate_factor

    progress = [0.0, 0.05, 0.1, 0.19, 0.4, 0.75, 1.0]
    factors = [learning_rate_factor(p, warmup=0.1, cooldown=cooldown) for p in progress]
    assert factors == pytest.approx(expected)


def test_frozen_word_embeddings_keep_their_ppmi_start_while_the_layers_learn(shards, tmp_path):
    first = pretrain(settings(shards, tmp_path, max_steps=1, learning_rate=1e-9, out=str(tmp_path / "start"),
                              embedding_init="ppmi", freeze_word_embeddings=True))  # fmt: skip
    later = pretrain(settings(shards, tmp_path, max_steps=4, embedding_init="ppmi", freeze_word_embeddings=True))
    start, end = load_file(first / "model.safetensors"), load_file(later / "model.safetensors")
    word = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(start[word], end[word])
    assert not torch.equal(start["bert.encoder.layer.0.attention.self.query.weight"],
                           end["bert.encoder.layer.0.attention.self.query.weight"])  # fmt: skip
