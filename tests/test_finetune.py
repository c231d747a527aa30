"""Text classification: HF parity, finetune → evaluate → predict round trip, bad rows, pipelines, long texts."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers

from bertforge import BertConfig, BertModel
from bertforge.classify import encode_texts, predict_logits
from bertforge.cli import main
from bertforge.heads import BertForSequenceClassification
from bertforge.inference import collate
from bertforge.pipelines import pipeline
from bertforge.settings import FinetuneConfig
from bertforge.tokenizer import train_tokenizer
from bertforge.train import fine_tuning_learning_rate, with_learning_rate

GOOD = "wonderful great moving superb charming delightful brilliant".split()
BAD = "awful boring dull terrible tedious clumsy bland".split()
FILLER = "the film was and a plot with acting story".split()
HF_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def review(rng, positive):
    words = [str(rng.choice(GOOD if positive else BAD)) for _ in range(2)] + [str(rng.choice(FILLER)) for _ in range(4)]
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny encoder with its tokenizer, and a small sentiment data set in CSV."""
    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    rows = {split: [(review(rng, i % 2 == 0), "pos" if i % 2 == 0 else "neg") for i in range(n)]
            for split, n in (("train", 96), ("dev", 24))}  # fmt: skip
    for split, items in rows.items():
        lines = ["text,label"] + [f"{text},{label}" for text, label in items]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    corpus = root / "corpus.txt"
    corpus.write_text(" ".join(GOOD + BAD + FILLER) + "\n")
    tokenizer = train_tokenizer([corpus], 60, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    encoder = BertModel(BertConfig.preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=64))
    encoder.save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    return root


@pytest.mark.parametrize("direction", ["bertforge → transformers", "transformers → bertforge"])
def test_logits_match_transformers(tmp_path, direction):
    torch.manual_seed(1)
    labels = {"id2label": {0: "neg", 1: "neutral", 2: "pos"}, "label2id": {"neg": 0, "neutral": 1, "pos": 2}}
    if direction == "bertforge → transformers":
        ours = BertForSequenceClassification(BertConfig(**HF_TINY, **labels)).eval()
        ours.save_pretrained(tmp_path)
        theirs = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    else:
        theirs = transformers.BertForSequenceClassification(transformers.BertConfig(**HF_TINY, **labels)).eval()
        theirs.save_pretrained(tmp_path)
        ours = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert ours.config.id2label == labels["id2label"] and theirs.config.num_labels == 3
    ids = torch.randint(5, 99, (3, 10))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, mask).logits, theirs(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5
        )


def test_encoder_loads_into_a_new_head_and_says_so(workspace, caplog):
    with caplog.at_level("INFO", logger="bertforge"):
        model = BertForSequenceClassification.from_pretrained(workspace / "encoder")
    assert "classifier initialised fresh" in caplog.text
    assert model.num_labels == 2


def test_finetune_evaluate_predict_round_trip(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["finetune", "classification", "--model", str(workspace / "encoder"), "--train",
                   str(workspace / "train.csv"), "--dev", str(workspace / "dev.csv"), "--test",
                   str(workspace / "dev.csv"), "--out", str(out), "--epochs", "8", "--batch-size", "8",
                   "--learning-rate", "1e-3", "--max-length", "32", "--progress", "false",
                   "--precision", "fp32"])  # fmt: skip
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["accuracy"] >= 0.9, report  # the words give the label away: it must learn them
    assert json.loads((out / "model" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    assert (out / "curves.png").is_file()
    classify = pipeline("sentiment-analysis", model=out / "model")
    assert (classify.settings.max_length, classify.settings.long_text) == (32, "truncate")  # as fine-tuned
    capsys.readouterr()

    assert main(["evaluate", "--model", str(out / "model"), "--data", str(workspace / "dev.csv")]) == 0
    assert f"accuracy {report['test']['accuracy']:.4f}" in capsys.readouterr().out

    texts = tmp_path / "texts.txt"
    rng = np.random.default_rng(1)  # new reviews of the training kind: six words, two of them telling
    texts.write_text(f"{review(rng, True)}\n{review(rng, False)}\nthe acting\n")
    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", "--model", str(out / "model"), "--input", str(texts), "--output", str(predictions),
                 "--top-k", "2"]) == 0  # fmt: skip
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["label"] for r in records[:2]] == ["pos", "neg"]
    assert len(records) == 3 and all(len(r["scores"]) == 2 for r in records)


def test_resume_after_a_crash_gives_the_same_model(workspace, tmp_path, monkeypatch):
    common = ["finetune", "classification", "--model", str(workspace / "encoder"), "--train",
              str(workspace / "train.csv"), "--dev", str(workspace / "dev.csv"), "--batch-size", "8",
              "--learning-rate", "1e-3", "--max-length", "32", "--progress", "false", "--epochs", "2",
              "--precision", "fp32"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a")]) == 0

    import bertforge.finetune

    evaluate, calls = bertforge.finetune.evaluate_model, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(bertforge.finetune, "evaluate_model", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        main([*common, "--out", str(tmp_path / "b")])
    monkeypatch.setattr(bertforge.finetune, "evaluate_model", evaluate)
    assert main([*common, "--out", str(tmp_path / "b"), "--resume"]) == 0
    straight = BertForSequenceClassification.from_pretrained(tmp_path / "a" / "model")
    resumed = BertForSequenceClassification.from_pretrained(tmp_path / "b" / "model")
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, msg=name)
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("valid") == 2
    assert (tmp_path / "b" / "metrics.jsonl").read_text().count("valid") == 2


def test_bad_rows_fail_with_line_numbers_or_are_skipped_and_counted(workspace, tmp_path, capsys, caplog):
    train = tmp_path / "train.csv"
    lines = (workspace / "train.csv").read_text().splitlines()
    lines.insert(5, ",pos")  # missing text on physical line 6
    train.write_text("\n".join(lines) + "\n")
    common = ["finetune", "classification", "--model", str(workspace / "encoder"), "--train", str(train),
              "--out", str(tmp_path / "run"), "--max-steps", "1", "--progress", "false"]  # fmt: skip
    assert main(common) == 2
    assert "train.csv:6" in capsys.readouterr().err
    with caplog.at_level("WARNING", logger="bertforge"):
        assert main([*common, "--bad-rows", "skip"]) == 0
    assert "skipped 1 bad row(s)" in caplog.text


def test_pipeline_inputs_order_pairs_and_top_k(workspace, tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "model"
    model = BertForSequenceClassification.from_pretrained(workspace / "encoder", id2label={0: "neg", 1: "pos"},
                                                          label2id={"neg": 0, "pos": 1})  # fmt: skip
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_bytes((workspace / "encoder" / "vocab.txt").read_bytes())
    classify = pipeline("sentiment-analysis", model=folder, precision="fp32")
    texts = ["great film", "the plot was boring and the acting was awful and dull", "a", "charming"]
    one_by_one = [classify(text) for text in texts]
    batched = classify(texts, batch_size=2)  # batched by length internally, returned in input order
    assert [r["label"] for r in batched] == [r["label"] for r in one_by_one]
    np.testing.assert_allclose([r["score"] for r in batched], [r["score"] for r in one_by_one], atol=1e-5)
    assert set(one_by_one[0]) == {"label", "score"}
    ranked = classify("great film", top_k=None)
    assert [r["label"] for r in ranked] != [] and abs(sum(r["score"] for r in ranked) - 1) < 1e-5
    assert ranked[0] == one_by_one[0]
    pair = classify(("great film", "boring plot"))
    assert pair == classify({"text": "great film", "text_pair": "boring plot"})
    assert pair != one_by_one[0]
    # a list mixing texts alone and pairs: a text alone is still encoded without a second segment
    mixed = classify(["great film", ("great film", "boring plot"), "charming"])
    np.testing.assert_allclose([mixed[0]["score"], mixed[2]["score"]], [one_by_one[0]["score"], one_by_one[3]["score"]],
                               atol=1e-5)  # fmt: skip
    assert mixed[0]["label"] == one_by_one[0]["label"] and mixed[1]["label"] == pair["label"]
    np.testing.assert_allclose(mixed[1]["score"], pair["score"], atol=1e-5)


def test_pipeline_cuts_texts_as_the_fine_tuning_run_did_unless_told_otherwise(workspace, tmp_path):
    folder = tmp_path / "model"
    BertForSequenceClassification.from_pretrained(workspace / "encoder", id2label={0: "neg", 1: "pos"},
                                                  label2id={"neg": 0, "pos": 1}).save_pretrained(folder)  # fmt: skip
    (folder / "vocab.txt").write_bytes((workspace / "encoder" / "vocab.txt").read_bytes())
    untold = pipeline("text-classification", model=folder)  # no run: the recipe's 128, cut to 64 positions
    assert (untold.settings.max_length, untold.settings.long_text) == (64, "truncate")
    run = {"max_length": 24, "long_text": "window", "window_stride": 8, "learning_rate": 1e-3}
    (tmp_path / "finetune_config.json").write_text(json.dumps(run))
    classify = pipeline("text-classification", model=folder)
    settings = classify.settings
    assert (settings.max_length, settings.long_text, settings.window_stride) == (24, "window", 8)
    told = pipeline("text-classification", model=folder, max_length=16, long_text="truncate")
    assert (told.settings.max_length, told.settings.long_text) == (16, "truncate")


def test_long_texts_are_windowed_and_logits_averaged(workspace):
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(workspace / "encoder").eval()
    from bertforge.tokenizer import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(workspace / "encoder")
    short = "great film"
    long = " ".join(["the film was great and the plot was dull"] * 6)  # ~60 tokens
    windowed = encode_texts(tokenizer, [short, long], max_length=24, long_text="window", stride=8)
    truncated = encode_texts(tokenizer, [short, long], max_length=24)
    assert (windowed.source == 1).sum() > 2 and (windowed.source == 0).sum() == 1
    logits = predict_logits(model, windowed, 2, pad_id=tokenizer.pad_token_id)
    single = predict_logits(model, truncated, 2, pad_id=tokenizer.pad_token_id)
    np.testing.assert_allclose(logits[0], single[0], atol=1e-5)  # a text that fits is unaffected
    each = [predict_logits(model, type(windowed)([ids], [types], np.array([0])), 1, pad_id=0)[0]
            for ids, types, source in zip(windowed.input_ids, windowed.token_type_ids, windowed.source, strict=True)
            if source == 1]  # fmt: skip
    np.testing.assert_allclose(logits[1], np.mean(each, axis=0), atol=1e-5)
    covered = [token for ids in windowed.input_ids[1:] for token in ids[1:-1]]
    assert set(tokenizer(long)["input_ids"][1:-1]) <= set(covered)  # every token is seen by some window


def test_recipe_steps_equal_a_transformers_training_loop(workspace, tmp_path):
    """With dropout off, the recipe's AdamW (fused), schedule, clipping and loss give the weights that a plain
    transformers loop (default AdamW) gives over the same batches: the same computation, so what separates single
    runs of the two is their random streams (head initialisation, dropout masks, batch order)."""
    from bertforge.data.classification import bucketed_batches
    from bertforge.tokenizer import BertTokenizer

    start, seed, batch_size, max_length = tmp_path / "start", 3, 8, 32
    torch.manual_seed(0)
    labels = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    BertForSequenceClassification.from_pretrained(workspace / "encoder", **labels, **no_dropout).save_pretrained(start)
    tokenizer = BertTokenizer.from_pretrained(workspace / "encoder")
    tokenizer.save_pretrained(start)
    assert main(["finetune", "classification", "--model", str(start), "--train", str(workspace / "train.csv"),
                 "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", str(batch_size),
                 "--learning-rate", "1e-3", "--weight-decay", "0.1", "--max-length", str(max_length), "--seed",
                 str(seed), "--precision", "fp32", "--progress", "false", "--dropout", "null"]) == 0  # fmt: skip

    rows = [line.rsplit(",", 1) for line in (workspace / "train.csv").read_text().splitlines()[1:]]
    inputs = encode_texts(tokenizer, [text for text, _ in rows], max_length=max_length)
    targets = torch.tensor([labels["label2id"][label] for _, label in rows])
    theirs = transformers.BertForSequenceClassification.from_pretrained(start)
    decay = [p for n, p in theirs.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in theirs.named_parameters() if p.ndim < 2 or "LayerNorm" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, eps=1e-6)  # fmt: skip
    batches = bucketed_batches([len(ids) for ids in inputs.input_ids], batch_size, shuffle=True, seed=seed)
    total, warmup = len(batches), 0.1 * len(batches)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    theirs.train()
    for batch in batches:
        theirs(**collate(inputs, batch, tokenizer.pad_token_id), labels=targets[batch]).loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()

    ours = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "run" / "model").state_dict()
    before = transformers.BertForSequenceClassification.from_pretrained(start).state_dict()
    moved = max(float((theirs.state_dict()[name] - tensor).abs().max()) for name, tensor in before.items())
    assert moved > 1e-3  # 12 steps at lr 1e-3 move the weights far beyond the tolerance below
    for name, tensor in theirs.state_dict().items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-6, rtol=1e-5, msg=name)  # fp32 rounding: ~1e-7


def test_mean_pooling_reads_the_mean_of_real_token_vectors_whatever_the_padding():
    torch.manual_seed(2)
    config = BertConfig(**HF_TINY, hidden_dropout_prob=0.0, classifier_pooling="mean")
    model = BertForSequenceClassification(config).eval()
    ids = torch.tensor([[2, 17, 30, 41, 3], [2, 55, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = model(ids, mask).logits
        hidden = model.bert(ids, mask).last_hidden_state
        alone = model(ids[1:, :3], mask[1:, :3]).logits  # the short text without its padding
    expected = model.classifier(torch.stack([hidden[0].mean(0), hidden[1, :3].mean(0)]))
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-5)
    cls = BertForSequenceClassification(dataclasses.replace(config, classifier_pooling="cls")).eval()
    cls.load_state_dict(model.state_dict())
    assert not torch.allclose(cls(ids, mask).logits, logits)  # the two poolings really read different vectors


def test_random_init_keeps_config_and_tokenizer_but_not_the_weights(workspace, tmp_path):
    runs = {}
    for arm in ("pretrained", "random"):
        runs[arm] = tmp_path / arm
        assert main(["finetune", "classification", "--model", str(workspace / "encoder"), "--train",
                     str(workspace / "train.csv"), "--dev", str(workspace / "dev.csv"), "--out", str(runs[arm]),
                     "--max-steps", "1", "--random-init", str(arm == "random").lower(), "--progress", "false",
                     "--learning-rate", "1e-5"]) == 0  # fmt: skip

    def word_vectors(folder):
        return BertModel.from_pretrained(folder).embeddings.word.weight.detach()

    start = word_vectors(workspace / "encoder")
    moved = {arm: float((word_vectors(run / "model") - start).abs().max()) for arm, run in runs.items()}
    assert moved["pretrained"] < 1e-4 < moved["random"]  # one small step from the checkpoint, or fresh weights
    assert (runs["random"] / "model" / "vocab.txt").read_text() == (workspace / "encoder" / "vocab.txt").read_text()
    saved = json.loads((runs["random"] / "model" / "config.json").read_text())
    assert saved["hidden_size"] == 128 and saved["num_hidden_layers"] == 2


def test_learning_rate_follows_the_width_unless_given(workspace, tmp_path, caplog):
    assert [fine_tuning_learning_rate(h) for h in (128, 384, 768)] == pytest.approx([4.5e-4, 5e-5, 2e-5])
    settings = FinetuneConfig(model="m", train="t")
    assert with_learning_rate(settings, 128).learning_rate == pytest.approx(4.5e-4)
    assert with_learning_rate(dataclasses.replace(settings, learning_rate=1e-3), 128).learning_rate == 1e-3
    assert main(["finetune", "classification", "--model", str(workspace / "encoder"), "--train",
                 str(workspace / "train.csv"), "--out", str(tmp_path), "--max-steps", "1",
                 "--progress", "false"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "finetune_config.json").read_text())["learning_rate"] == pytest.approx(4.5e-4)


def test_train_limit_keeps_the_first_examples_and_the_whole_files_labels(workspace, tmp_path, caplog):
    from bertforge.finetune import read_split
    from bertforge.settings import FinetuneConfig

    settings = FinetuneConfig(model=str(workspace / "encoder"), train=str(workspace / "train.csv"), train_limit=1)
    one = read_split(settings, "train", None)
    whole = read_split(dataclasses.replace(settings, train_limit=None), "train", None)
    assert one.examples == whole.examples[:1] and one.label_names == whole.label_names == ["neg", "pos"]
    with caplog.at_level("INFO", logger="bertforge"):
        assert main(["finetune", "classification", "--model", str(workspace / "encoder"), "--train",
                     str(workspace / "train.csv"), "--out", str(tmp_path), "--train-limit", "10", "--epochs", "1",
                     "--progress", "false"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "finetune_config.json").read_text())["train_limit"] == 10
    assert "on 10 " in caplog.text  # the run trains on the first 10 examples only


def test_cooldown_holds_the_peak_learning_rate_then_decays_it(workspace, tmp_path):
    assert main(["finetune", "classification", "--model", str(workspace / "encoder"), "--train",
                 str(workspace / "train.csv"), "--out", str(tmp_path), "--max-steps", "10", "--learning-rate", "1e-3",
                 "--cooldown", "0.5", "--log-every", "1", "--progress", "false"]) == 0  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = [r["lr"] for r in records if r["split"] == "train"]
    # 10% warm-up (step 0 at 0), the peak until half-way, then a linear decay that would reach 0 at step 10
    assert rates == pytest.approx([0.0, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 8e-4, 6e-4, 4e-4, 2e-4])


@pytest.mark.parametrize(
    ("option", "value"),
    [("--classifier-pooling", "max"), ("--dropout", "1.5"), ("--train-limit", "0"), ("--cooldown", "0")],
)
def test_bad_fine_tuning_option_is_one_line_naming_it(workspace, tmp_path, option, value, capsys):
    code = main(["finetune", "classification", "--model", str(workspace / "encoder"), "--train",
                 str(workspace / "train.csv"), "--out", str(tmp_path), option, value])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and option.lstrip("-").replace("-", "_") in error


def lexicon_classifier(folder):
    """Save a classifier that counts words: the mean over tokens of +1 for GOOD words and -1 for BAD ones, > 0 = pos.

    Every word is one token. Position and segment embeddings and every layer's residual branches are zeroed, so
    a token's vector depends only on the token; GOOD and BAD words light one dimension up, with opposite signs,
    and the head reads it from the mean of the token vectors.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    corpus = folder.parent / "lexicon.txt"
    corpus.write_text(" ".join(GOOD + BAD + FILLER) + "\n")
    tokenizer = train_tokenizer([corpus], 200, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    labels = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    model = BertForSequenceClassification(
        BertConfig.preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=64, **labels,
                          classifier_pooling="mean")
    )  # fmt: skip
    with torch.no_grad():
        model.bert.embeddings.position.weight.zero_()
        model.bert.embeddings.token_type.weight.zero_()
        for layer in model.bert.layers:
            for linear in (layer.attention.out, layer.feed_forward.down):
                linear.weight.zero_()
                linear.bias.zero_()
        words = model.bert.embeddings.word.weight
        words[:, 0] = 0.0
        for sign, lexicon in ((1.0, GOOD), (-1.0, BAD)):
            words[tokenizer.convert_tokens_to_ids(lexicon), 0] = sign * 5.0
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.weight[1, 0], model.classifier.weight[0, 0] = 1.0, -1.0
    assert tokenizer.tokenize(" ".join(GOOD + BAD)) == GOOD + BAD
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_predict_labels_are_the_labels_evaluate_scores(tmp_path, capsys):
    from bertforge.finetune import print_report
    from bertforge.metrics import classification_report

    folder = tmp_path / "run" / "model"
    lexicon_classifier(folder)
    # Saved as a run that read long texts in 8-token windows sharing 2.
    run = {"max_length": 8, "long_text": "window", "window_stride": 2, "learning_rate": 1e-3}
    (tmp_path / "run" / "finetune_config.json").write_text(json.dumps(run))
    rng = np.random.default_rng(2)
    # Two reviews of one kind and one of the other, in random order: truncated, a text shows its first review only.
    kinds = [[True, True, False], [False, False, True]] * 12
    rows = [(" ".join(review(rng, p) for p in rng.permutation(k)), "pos" if k[0] else "neg") for k in kinds]
    data = tmp_path / "long.csv"
    data.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    texts = tmp_path / "long.txt"
    texts.write_text("".join(f"{text}\n" for text, _ in rows))

    assert main(["evaluate", "--model", str(folder), "--data", str(data)]) == 0
    evaluated = capsys.readouterr().out
    assert main(["predict", "--model", str(folder), "--input", str(texts), "--top-k", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    predicted = [["neg", "pos"].index(r["label"]) for r in records]
    gold = [["neg", "pos"].index(label) for _, label in rows]
    print_report(classification_report(predicted, gold, ["neg", "pos"]), ["neg", "pos"], False, title=str(data))
    assert capsys.readouterr().out == evaluated  # the same accuracy, F1, MCC and confusion matrix
    assert np.mean(np.asarray(predicted) == gold) > 0.9  # the windows see all three reviews
    # The run's windows matter: truncated to 8 tokens, some texts get the other label.
    assert main(["predict", "--model", str(folder), "--input", str(texts), "--long-text", "truncate"]) == 0
    truncated = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in truncated] != [r["label"] for r in records]
