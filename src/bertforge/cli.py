"""``bertforge <command>``: a thin table of typed functions, each also callable from Python.

Every command's ``--help`` text is its function's docstring. Problems with the user's input are reported as one
line (``bertforge: error: ...``) with exit status 2; heavy libraries are imported only by the command that needs
them, so ``bertforge --help`` answers at once.
"""

from __future__ import annotations

import argparse
import glob
import inspect
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertforge import __version__
from bertforge.assets import model_architecture
from bertforge.errors import BertforgeError
from bertforge.recipe_config import describe_settings
from bertforge.settings import (
    FILL_MASK_TOP_K,
    MAX_LENGTH,
    PREDICT_BATCH_SIZE,
    QA_MAX_LENGTH,
    SERVE_MAX_BATCH_TOKENS,
    SERVE_MAX_WAIT_MS,
    DistillConfig,
    FinetuneConfig,
    NerConfig,
    PretrainConfig,
    QaConfig,
)

log = logging.getLogger("bertforge")


# ---- commands ---------------------------------------------------------------------------------------------


def tokenizer_train(
    files: Sequence[str],
    vocab_size: int,
    out: str,
    cased: bool = False,
    min_frequency: int = 2,
) -> None:
    """Train a WordPiece vocabulary on your own text files and save it as a tokenizer folder.

    Works for English and Chinese (every CJK character becomes its own token). The folder gets vocab.txt,
    tokenizer.json and tokenizer_config.json, loadable by bertforge and by Hugging Face transformers.

    example: bertforge tokenizer train --files 'corpus/*.txt' --vocab-size 30522 --out my-tokenizer
    """
    from bertforge.tokenizer import train_tokenizer

    paths = expand_paths(files)
    started = time.perf_counter()
    tokenizer = train_tokenizer(paths, vocab_size, lowercase=not cased, min_frequency=min_frequency)
    tokenizer.save_pretrained(out)
    log.info(
        "trained a %d-token vocabulary on %d file(s) in %.1f s; saved to %s",
        len(tokenizer),
        len(paths),
        time.perf_counter() - started,
        out,
    )


def embed(
    model: str,
    input: str,
    output: str,
    pooling: str = "mean",
    batch_size: int = PREDICT_BATCH_SIZE,
    max_length: int = 512,
    normalize: bool = False,
    precision: str = "fp32",
    quantize: str = "none",
) -> None:
    """Turn a text file (one text per line) into a NumPy array of sentence vectors, one row per line.

    --pooling mean averages the token vectors (right for sentence-embedding models such as all-MiniLM-L6-v2),
    cls takes the [CLS] vector, pooler BERT's pooled output. --normalize scales rows to unit length, so a dot
    product is a cosine similarity.

    example: bertforge embed --model all-MiniLM-L6-v2 --input texts.txt --output emb.npy --normalize
    """
    import numpy as np

    from bertforge.embeddings import embed_texts, read_text_lines
    from bertforge.model import BertModel
    from bertforge.quantize import quantize_encoder
    from bertforge.tokenizer import BertTokenizer

    texts = read_text_lines(input)
    blank = sum(1 for text in texts if not text.strip())
    if blank:
        log.info("%s: %d blank line(s) are embedded as empty texts, keeping one row per line", input, blank)
    encoder = quantize_encoder(BertModel.from_pretrained(model), quantize)
    tokenizer = BertTokenizer.from_pretrained(model)
    started = time.perf_counter()
    vectors = embed_texts(
        encoder,
        tokenizer,
        texts,
        pooling=pooling,
        batch_size=batch_size,
        max_length=min(max_length, encoder.config.max_position_embeddings),
        normalize=normalize,
        show_progress=True,
        precision=precision,
    )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    np.save(output, vectors)
    seconds = time.perf_counter() - started
    log.info("wrote %s: %d × %d vectors in %.1f s", output, *vectors.shape, seconds)


def data_prepare(
    corpus: Sequence[str],
    tokenizer: str,
    out: str,
    valid_fraction: float = 0.01,
    text_field: str = "text",
    workers: int = 0,
) -> None:
    """Tokenize a pretraining corpus into memory-mapped token shards with a held-out validation split.

    Plain-text files use the original BERT format: one sentence or paragraph per line, a blank line between
    documents (paragraphs are split into sentences, English and Chinese). .jsonl files hold one document per
    line, its text under --text-field. Documents go to the validation split by a hash of their text, so
    re-running reproduces the same shards.

    example: bertforge data prepare --corpus 'wiki/*.txt' --tokenizer my-tokenizer --out shards
    """
    from bertforge.data.shard_writer import prepare_corpus

    manifest = prepare_corpus(
        expand_paths(corpus),
        tokenizer,
        out,
        valid_fraction=valid_fraction,
        text_field=text_field,
        workers=workers or None,
    )
    for warning in manifest.warnings:
        log.warning("warning: %s", warning)
    train, valid = manifest.splits["train"], manifest.splits["valid"]
    log.info(
        "wrote %s: train %d documents / %d tokens, valid %d documents / %d tokens",
        out,
        train.documents,
        train.tokens,
        valid.documents,
        valid.tokens,
    )


def data_text(
    dataset: str, out: str, split: str = "train", sentences_per_document: int = 10, sentences: bool = False
) -> None:
    """Write a catalogue data set's texts as a plain-text pretraining corpus (BERT format: a blank line between
    documents), or with --sentences one sentence a line and no blank lines (unlabelled text for `distill
    --unlabeled`).

    imdb: one review per document (domain text for movie-review tasks, as in Gururangan et al. 2020, "Don't Stop
    Pretraining"). msra_ner: Chinese news sentences with no article boundaries, so every --sentences-per-document
    consecutive sentences form a document, which next-sentence prediction and the validation split need. Keep
    --split train for a model you will evaluate on that data set, so its dev and test texts stay unseen.

    example: bertforge data text --dataset imdb --out corpus/imdb.txt
    """
    from bertforge.data.catalogue import corpus_documents
    from bertforge.data.sentences import split_sentences

    documents = corpus_documents(dataset, split, sentences_per_document)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if sentences:
        lines = [s for document in documents for line in document.splitlines() for s in split_sentences(line)]
        Path(out).write_text("\n".join(lines) + "\n", encoding="utf-8")
        log.info("wrote %d sentences of %s's %s split to %s", len(lines), dataset, split, out)
        return
    Path(out).write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    log.info("wrote %d documents of %s's %s split to %s", len(documents), dataset, split, out)


def pretrain(config: str | None = None, settings: Sequence[str] = ()) -> None:
    """Pretrain BERT on token shards with masked-LM and next-sentence prediction (or MLM only).

    Settings come from --config FILE (YAML or JSON) and then from --setting value pairs; unknown settings are
    errors. A run folder gets checkpoints (resume with --resume), metrics.jsonl, curves.png and the final model/.

    example: bertforge pretrain --config configs/pretrain-mini-cpu.yaml --data shards --max-minutes 10
    """
    from bertforge.pretrain import pretrain as run
    from bertforge.recipe_config import load_recipe_config
    from bertforge.settings import PretrainConfig

    run(load_recipe_config(PretrainConfig, config, settings))


def plot(run: str) -> None:
    """Render a training run's metrics.jsonl as loss and accuracy curves (RUN/curves.png)."""
    from bertforge.train import plot_metrics

    log.info("wrote %s", plot_metrics(Path(run)))


def fill_mask(model: str, text: str, top_k: int = FILL_MASK_TOP_K) -> None:
    """Show the most likely tokens for each [MASK] in a text, with a model from `bertforge pretrain`.

    example: bertforge fill-mask --model runs/pretrain/model --text "The capital of France is [MASK]."
    """
    from bertforge.pipelines import pipeline

    results = pipeline("fill-mask", model=model)(text, top_k=top_k)
    for number, candidates in enumerate(results if isinstance(results[0], list) else [results], start=1):
        print(f"[MASK] #{number}:")
        for candidate in candidates:
            print(f"  {candidate['score']:.3f}  {candidate['token_str']:<15} {candidate['sequence']}")


def finetune_classification(config: str | None = None, settings: Sequence[str] = ()) -> None:
    """Fine-tune a BERT checkpoint for text classification: sentiment, topics, sentence pairs, or regression.

    Data: CSV, TSV or JSONL files (--text-column, --text-pair-column, --label-column), or a catalogue name:
    rotten_tomatoes, imdb (their dev and test splits are used automatically). Labels may be names or integers;
    the label set comes from the training file. Bad rows stop the run with file:line, or with --bad-rows skip
    are skipped and counted. Each epoch is evaluated on --dev; the best model is kept in OUT/model.

    example: bertforge finetune classification --model all-MiniLM-L6-v2 --train rotten_tomatoes --out runs/rt
    """
    from bertforge.finetune import finetune_classification as run
    from bertforge.recipe_config import load_recipe_config
    from bertforge.settings import FinetuneConfig

    run(load_recipe_config(FinetuneConfig, config, settings))


def distill(config: str | None = None, settings: Sequence[str] = ()) -> None:
    """Distil a fine-tuned classifier or tagger (the teacher) into a smaller, faster one (the student).

    The student is by default the teacher's embeddings and --student-layers of its layers, every k-th
    (DistilBERT), or --student MODEL with the same tokenizer. It learns the teacher's softened predictions
    (--temperature, --soft-weight; a tagger's per labelled token), optionally the gold labels (--gold-weight) and
    the teacher's hidden states (--hidden-weight), on --train and, for classifiers, on unlabelled text
    (--unlabeled FILE, one text a line). A tagger teacher takes `finetune ner`'s data settings (--token-column,
    --tag-column, --label-all-pieces, --window-stride) instead of the classification ones listed below. OUT/model
    holds the best student by the dev metric; report.json compares teacher and student: test scores, parameters
    and inputs per second (fp32 and int8).

    example: bertforge distill --teacher runs/rt --train rotten_tomatoes --student-layers 2 --out runs/rt-2
    """
    from bertforge.distill import distill_classification, distill_tagger
    from bertforge.recipe_config import load_recipe_config, peek_setting
    from bertforge.settings import DistillConfig, DistillTaggerConfig

    teacher = peek_setting("teacher", config, settings)
    if teacher and (Path(teacher) / "model" / "config.json").is_file():  # a run folder: its best model
        teacher = str(Path(teacher) / "model")
    if teacher and model_architecture(teacher) == "BertForTokenClassification":
        distill_tagger(load_recipe_config(DistillTaggerConfig, config, settings))
    else:  # a classifier, or no teacher: the classification settings then say what is missing
        distill_classification(load_recipe_config(DistillConfig, config, settings))


def finetune_ner(config: str | None = None, settings: Sequence[str] = ()) -> None:
    """Fine-tune a BERT checkpoint for named-entity recognition (or any per-token tagging).

    Data: CoNLL-style files, token and tag per line (--token-column, --tag-column), a blank line between
    sentences, CRLF tolerated, -DOCSTART- skipped; tags in IO, BIO, BIOES or BMES (converted to BIO). The first
    word piece of each word is trained on (--label-all-pieces for every piece); long sentences are cut into
    overlapping windows. Each epoch is scored by entity F1 on --dev (as seqeval computes it).

    example: bertforge finetune ner --model all-MiniLM-L6-v2 --train train.conll --dev dev.conll --out runs/ner
    """
    from bertforge.finetune_ner import finetune_ner as run
    from bertforge.recipe_config import load_recipe_config

    run(load_recipe_config(NerConfig, config, settings))


def finetune_qa(config: str | None = None, settings: Sequence[str] = ()) -> None:
    """Fine-tune a BERT checkpoint for extractive question answering (SQuAD v1.1, or v2.0 with unanswerable).

    Data: SQuAD-format JSON, or squad_v1 (SQuAD v1.1 from the packaged data; its dev file is evaluated). Long
    contexts are read in overlapping windows (--max-length, --doc-stride); answers are mapped back to exact
    character spans. Each epoch is scored by exact match and F1 on --dev, as the official script computes them.

    example: bertforge finetune qa --model all-MiniLM-L6-v2 --train squad_v1 --train-limit 4000 --eval-limit 1000
    --max-length 256 --out runs/qa
    """
    from bertforge.finetune_qa import finetune_qa as run
    from bertforge.recipe_config import load_recipe_config

    run(load_recipe_config(QaConfig, config, settings))


def evaluate(
    model: str,
    data: str,
    text_column: str = "text",
    text_pair_column: str = "",
    label_column: str = "label",
    max_length: int = 0,
    long_text: str = "auto",
    bad_rows: str = "fail",
    precision: str = "fp32",
    quantize: str = "none",
) -> None:
    """Score a fine-tuned model on labelled data; the task follows from the model's head.

    Classifiers: a CSV/TSV/JSONL file or a catalogue split such as rotten_tomatoes:test; prints accuracy,
    macro-F1 and MCC (Pearson and Spearman for regression) and the confusion matrix. Taggers: a CoNLL file or
    msra_ner:test; prints entity precision, recall and F1 per type. Question answering: a SQuAD JSON file or
    squad_v1:dev; prints exact match and F1. Inputs are cut (and answers chosen) with the settings of the model's
    fine-tuning run, as `predict` does.
    """
    import dataclasses

    from bertforge.pipelines import pipeline

    architecture = model_architecture(model)
    name, _, split = data.partition(":")
    options = {"max_length": max_length or None, "precision": precision, "quantize": quantize}
    if architecture == "BertForQuestionAnswering":
        from bertforge.data.squad import read_squad, resolve_squad
        from bertforge.finetune_qa import evaluate_qa

        reader = pipeline("question-answering", model=model, **options)
        squad = read_squad(resolve_squad(name, split or "dev"))
        scores, _ = evaluate_qa(reader.model, reader.tokenizer, squad, reader.settings, reader.device, reader.precision)
        print(f"{data}: exact match {scores['exact_match']:.2f}, F1 {scores['f1']:.2f} on {scores['questions']} "
              "questions")  # fmt: skip
    elif architecture == "BertForTokenClassification":
        from bertforge.finetune_ner import evaluate_tagger, read_bio

        tagger = pipeline("ner", model=model, **options)
        sentences, _ = read_bio(name, split or "test", tagger.settings, None)
        scores = evaluate_tagger(tagger.model, tagger.tokenizer, sentences, tagger.settings, tagger.device,
                                 tagger.precision)  # fmt: skip
        print(f"{data}: entity F1 {scores['f1']:.4f} (precision {scores['precision']:.4f}, recall "
              f"{scores['recall']:.4f}), token accuracy {scores['token_accuracy']:.4f}")  # fmt: skip
        for kind, by_type in scores["per_type"].items():
            print(f"  {kind:<8} F1 {by_type['f1']:.4f}  ({by_type['support']} entities)")
    else:
        from bertforge.finetune import evaluate_model, print_report, read_split

        classify = pipeline("text-classification", model=model, long_text=None if long_text == "auto" else long_text,
                            **options)  # fmt: skip
        regression = classify.model.num_labels == 1
        settings = dataclasses.replace(
            classify.settings, train=name, dev=name, test=name, text_column=text_column, label_column=label_column,
            text_pair_column=text_pair_column or None, regression=regression, bad_rows=bad_rows,
        )  # fmt: skip
        file = read_split(settings, split or "test", None if regression else classify.labels)
        scores = evaluate_model(classify.model, classify.tokenizer, file, settings, classify.device, classify.precision)
        print_report(scores, classify.labels, regression, title=str(file.path))


INPUT_FORMATS = {  # what `predict` reads for each head; the first is the default for standard input
    "BertForSequenceClassification": ("text", "jsonl"),
    "BertForTokenClassification": ("text", "conll", "jsonl"),
    "BertForQuestionAnswering": ("jsonl", "squad"),
}
INPUT_CHOICES = ("text", "jsonl", "conll", "squad")
FORMAT_OF_SUFFIX = {".jsonl": "jsonl", ".json": "squad", ".conll": "conll", ".bio": "conll", ".iob": "conll"}


def predict(
    model: str,
    input: str = "-",
    output: str = "-",
    input_format: str = "auto",
    ner_output: str = "entities",
    top_k: int = 1,
    max_length: int = 0,
    long_text: str = "auto",
    batch_size: int = PREDICT_BATCH_SIZE,
    precision: str = "fp32",
    quantize: str = "none",
) -> None:
    """Run a fine-tuned model on new inputs: one JSON object per input, in input order.

    Inputs are cut (and answers chosen) with the settings of the model's fine-tuning run, as `evaluate` does, so
    both give the same answers. --input-format auto goes by the file name: .jsonl, .json (SQuAD), .conll/.bio/.iob
    (CoNLL), plain text otherwise.
    Classifiers: plain text (one text per line), or JSONL objects with "text" and optional "text_pair"; output
    objects carry "label" and "score" of the best class, plus "scores" (best first) with --top-k above 1.
    Taggers: plain text lines give "text" and "entities" (type, score, word, start and end characters); sentences
    given as words (CoNLL: one token per line, a blank line between sentences, other columns ignored; JSONL:
    {"tokens": [...]}) give "tokens", and "tags" (--ner-output tags: one BIO tag per word, exactly those
    `evaluate` scores) or "entities" (start_token, end_token); --ner-output tags tags plain text split at spaces.
    Question answering: JSONL with "question", "context" and optional "id", or a SQuAD JSON file; output objects
    carry "id" (when the input has one), "answer", "score", "start" and "end" (--top-k above 1: "answers", best
    first). "-" means standard input / output.

    example: echo "A moving, beautifully acted film." | bertforge predict --model runs/rt/model
    """
    import json

    from bertforge.pipelines import pipeline

    architecture = model_architecture(model)
    kind = _input_format(input, input_format, architecture)
    options = {"max_length": max_length or None, "precision": precision, "quantize": quantize}
    records: list[dict[str, Any]]
    started = time.perf_counter()
    if architecture == "BertForQuestionAnswering":
        reader = pipeline("question-answering", model=model, **options)
        items, unanswerable = _questions(input, kind)
        loaded = time.perf_counter()
        answers = reader(items, top_k=max(top_k, 1), batch_size=batch_size, handle_impossible_answer=unanswerable)
        records = []
        for item, found in zip(items, answers, strict=True):
            named = {"id": item["id"]} if item.get("id") is not None else {}
            records.append({**named, **({"answers": found} if top_k > 1 else found)})
    elif architecture == "BertForTokenClassification":
        tagger = pipeline("ner", model=model, **options)
        loaded = time.perf_counter()
        if kind == "text" and ner_output == "entities":
            lines = _input_lines(input)
            records = [{"text": text, "entities": found} for text, found in zip(lines, tagger(lines), strict=True)]
        else:
            tagged = tagger.tag_words(_sentences(input, kind, tagger.settings.token_column), batch_size=batch_size)
            field = "tags" if ner_output == "tags" else "entities"
            records = [{"tokens": found["tokens"], field: found[field]} for found in tagged]
    else:
        lines = _input_lines(input)
        items = _jsonl_items(input, lines, ("text",), ("text_pair",)) if kind == "jsonl" else lines
        classify = pipeline("text-classification", model=model, long_text=None if long_text == "auto" else long_text,
                            **options)  # fmt: skip
        loaded = time.perf_counter()
        records = []
        for result in classify(items, top_k=max(top_k, 1), batch_size=batch_size):
            ranked = result if isinstance(result, list) else [result]
            records.append({"label": ranked[0]["label"], "score": ranked[0]["score"]})
            if top_k > 1:
                records[-1]["scores"] = ranked
    seconds = time.perf_counter() - loaded
    # Reading the inputs (and, for the tagger, the model) counts as loading; tokenizing and the forward passes as
    # predicting: the rate a user compares between models, apart from the fixed start-up cost.
    log.info("predicted %d inputs in %.2f s (%.0f inputs/s) after %.2f s loading the model and inputs",
             len(records), seconds, len(records) / max(seconds, 1e-9), loaded - started)  # fmt: skip
    sink = sys.stdout if output == "-" else open(output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for record in records:
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if sink is not sys.stdout:
            sink.close()
    if output != "-":
        log.info("wrote %d predictions to %s", len(records), output)


def _input_format(source: str, requested: str, architecture: str) -> str:
    """The format to read ``source`` in: ``requested``, or for "auto" the one its name suggests."""
    allowed = INPUT_FORMATS.get(architecture, INPUT_FORMATS["BertForSequenceClassification"])
    kind = requested
    if requested == "auto":
        kind = FORMAT_OF_SUFFIX.get(Path(source).suffix.lower(), allowed[0]) if source != "-" else allowed[0]
    if kind not in allowed:
        raise BertforgeError(f"{source}: a {architecture} reads {', '.join(allowed)}, not {kind}; pass "
                             f"--input-format {' or '.join(allowed)}")  # fmt: skip
    if kind in ("conll", "squad") and source == "-":
        raise BertforgeError(f"--input-format {kind} reads a file, not standard input; pass --input FILE")
    return kind


def _input_lines(source: str) -> list[str]:
    """The lines of ``source`` ("-": standard input); an error when there are none."""
    from bertforge.embeddings import read_text_lines

    lines = sys.stdin.read().splitlines() if source == "-" else read_text_lines(source)
    if not lines:
        raise BertforgeError("no input: give one text per line on standard input, or --input FILE")
    return lines


def _questions(source: str, kind: str) -> tuple[list[dict[str, Any]], bool]:
    """Questions to answer ({"id", "question", "context"}), and whether "no answer" is a possible answer (a SQuAD
    v2.0 file)."""
    if kind == "jsonl":
        return _jsonl_items(source, _input_lines(source), ("question", "context"), ("id",)), False
    from bertforge.data.squad import read_squad

    squad = read_squad(source, answers_required=False)
    items = [{"id": e.id, "question": e.question, "context": e.context} for e in squad.examples]
    return items, squad.with_unanswerable


def _sentences(source: str, kind: str, token_column: int) -> list[list[str]]:
    """Sentences given as words: CoNLL tokens (other columns ignored), JSONL "tokens", or text split at spaces."""
    from bertforge.data.tagging import read_conll, read_token_lines

    if kind == "conll":
        sentences = read_conll(source, token_column=token_column, tag_column=token_column, validate_tags=False)
        return [sentence.tokens for sentence in sentences]
    if kind == "jsonl":
        return read_token_lines(_input_lines(source), source)
    return [line.split() for line in _input_lines(source)]


def _jsonl_items(source: str, lines: list[str], required: Sequence[str], optional: Sequence[str]) -> list[Any]:
    """JSON objects, one per line, with the ``required`` string fields (and ``optional`` ones when present)."""
    import json

    items = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise BertforgeError(f"{source}:{number}: not a JSON object ({error.msg})") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(f), str) for f in required):
            fields = " and ".join(repr(f) for f in required)
            raise BertforgeError(f"{source}:{number}: expected a JSON object with {fields} text fields")
        items.append({f: record.get(f) for f in (*required, *optional)})
    return items


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    max_batch_tokens: int = SERVE_MAX_BATCH_TOKENS,
    max_wait_ms: float = SERVE_MAX_WAIT_MS,
    precision: str = "fp32",
    quantize: str = "none",
    max_request_bytes: int = 1 << 20,
    inference: str = "process",
) -> None:
    """Serve a model over HTTP with dynamic batching (needs `pip install 'bertforge[serve]'`).

    The routes follow the model's head: POST /predict for a classifier ({"inputs": "text"}, a {"text", "text_pair"}
    object, or a list: the label/score objects of `predict`), /ner for a tagger (entities), /qa for question
    answering ({"question", "context"} or a list: answers), /fill-mask for a masked-LM model ({"inputs",
    "top_k"}: candidates), and /embed for any encoder ({"inputs"}: unit vectors). Requests from many clients are
    queued and run together: the requests that queue while the model runs form the next batch, up to
    --max-batch-tokens tokens (--max-wait-ms M: also wait until the oldest has waited M ms; --max-batch-tokens 1:
    one request per forward). GET / is a page to try the model; GET /health, /info (the routes served) and
    /metrics (Prometheus text).

    example: bertforge serve --model runs/rt/model --port 8080
    """
    from bertforge.serve import create_app, run_server

    app = create_app(model, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, precision=precision,
                     quantize=quantize, max_request_bytes=max_request_bytes, inference=inference)  # fmt: skip
    run_server(app, host, port)


def quickstart(out: str = "runs/quickstart", smoke: bool = False, minutes: float = 0.0) -> None:
    """Run the whole chain on bundled data and show what each stage does (see README, "Quickstart").

    Fetches data, trains a vocabulary, prepares shards, pretrains a small BERT from scratch, shows what it
    learned, then puts a real pretrained encoder to work. --smoke runs every stage on a tiny budget (about a
    minute), to check an installation; --minutes changes the pretraining budget.
    """
    from bertforge.quickstart import run_quickstart

    run_quickstart(Path(out), smoke=smoke, minutes=minutes or None)


# ---- the table: command name -> function and its options ---------------------------------------------------


@dataclass
class Option:
    """One command-line option of a command; its name is the function parameter's, dashed."""

    parameter: str
    help: str
    choices: Sequence[str] | None = None
    nargs: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


QUANTIZE_HELP = "int8: the encoder's linear layers in int8 with per-token scales (CPU inference; bertforge.quantize)"
MAX_LENGTH_HELP = f"tokens per input (0: as the model was fine-tuned; else {MAX_LENGTH}, or {QA_MAX_LENGTH} for QA)"
LONG_TEXT_HELP = "what to do with longer texts; auto: as the model's fine-tuning run did (else truncate)"
PRECISION_HELP = "fp32, bf16 (autocast: fast on CPUs with AVX-512 BF16 and on GPUs), or auto: bf16 where native"
COMMANDS: dict[str, tuple[Callable[..., None], list[Option]]] = {
    "tokenizer train": (
        tokenizer_train,
        [
            Option("files", "text files or glob patterns, one sentence or paragraph per line", nargs="+"),
            Option("vocab_size", "number of tokens in the vocabulary, special tokens included"),
            Option("out", "folder to write the tokenizer to"),
            Option("cased", "keep case and accents (default: lower-case and strip accents, as uncased BERT)"),
            Option("min_frequency", "ignore merges seen fewer times than this"),
        ],
    ),
    "embed": (
        embed,
        [
            Option("model", "checkpoint folder (config.json, model.safetensors, tokenizer files)"),
            Option("input", "UTF-8 text file with one text per line"),
            Option("output", "where to write the .npy array of shape (lines, hidden size)"),
            Option("pooling", "how token vectors become one sentence vector", choices=("mean", "cls", "pooler")),
            Option("batch_size", "texts per forward pass"),
            Option("max_length", "truncate texts to this many tokens"),
            Option("normalize", "scale each vector to unit L2 norm"),
            Option("precision", PRECISION_HELP, choices=("auto", "fp32", "bf16")),
            Option("quantize", QUANTIZE_HELP, choices=("none", "int8")),
        ],
    ),
    "data prepare": (
        data_prepare,
        [
            Option("corpus", "text or .jsonl files, or glob patterns", nargs="+"),
            Option("tokenizer", "tokenizer folder (from `bertforge tokenizer train`) or checkpoint folder"),
            Option("out", "folder for the shards, manifest.json and a copy of the tokenizer"),
            Option("valid_fraction", "share of documents held out for validation"),
            Option("text_field", "field holding the text in .jsonl files"),
            Option("workers", "tokenizer processes; 0 = one per CPU core"),
        ],
    ),
    "data text": (
        data_text,
        [
            Option("dataset", "catalogue data set: imdb (reviews) or msra_ner (Chinese sentences)"),
            Option("out", "text file to write"),
            Option("split", "which split's texts", choices=("train", "dev", "test")),
            Option("sentences_per_document", "msra_ner: consecutive sentences that make one document"),
            Option("sentences", "one sentence a line, no documents (unlabelled text for distill --unlabeled)"),
        ],
    ),
    "pretrain": (
        pretrain,
        [Option("config", "YAML or JSON file of settings; --setting value pairs override it")],
    ),
    "finetune classification": (
        finetune_classification,
        [Option("config", "YAML or JSON file of settings; --setting value pairs override it")],
    ),
    "distill": (
        distill,
        [Option("config", "YAML or JSON file of settings; --setting value pairs override it")],
    ),
    "finetune ner": (
        finetune_ner,
        [Option("config", "YAML or JSON file of settings; --setting value pairs override it")],
    ),
    "finetune qa": (
        finetune_qa,
        [Option("config", "YAML or JSON file of settings; --setting value pairs override it")],
    ),
    "evaluate": (
        evaluate,
        [
            Option("model", "fine-tuned model folder"),
            Option(
                "data",
                "labelled data: CSV/TSV/JSONL (classifiers), CoNLL (taggers), SQuAD JSON (QA), or a "
                "catalogue split such as rotten_tomatoes:test, msra_ner:test, squad_v1:dev",
            ),
            Option("text_column", "column with the text"),
            Option("text_pair_column", "column with the second text of sentence pairs"),
            Option("label_column", "column with the label"),
            Option("max_length", MAX_LENGTH_HELP),
            Option("long_text", LONG_TEXT_HELP, choices=("auto", "truncate", "window")),
            Option("bad_rows", "fail on a bad row, or skip and count it", choices=("fail", "skip")),
            Option("precision", PRECISION_HELP, choices=("fp32", "bf16", "auto")),
            Option("quantize", QUANTIZE_HELP, choices=("none", "int8")),
        ],
    ),
    "predict": (
        predict,
        [
            Option("model", "fine-tuned model folder"),
            Option("input", "text (a line each), JSONL, CoNLL (taggers) or SQuAD JSON (QA) file; - for standard input"),
            Option("output", "JSONL file to write; - for standard output"),
            Option("input_format", "how to read --input; auto: by its name", choices=("auto", *INPUT_CHOICES)),
            Option("ner_output", "taggers: entities, or tags (one BIO tag per word)", choices=("entities", "tags")),
            Option("top_k", "also list the best k classes with their scores"),
            Option("max_length", MAX_LENGTH_HELP),
            Option("long_text", LONG_TEXT_HELP, choices=("auto", "truncate", "window")),
            Option("batch_size", "inputs per forward pass"),
            Option("precision", PRECISION_HELP, choices=("auto", "fp32", "bf16")),
            Option("quantize", QUANTIZE_HELP, choices=("none", "int8")),
        ],
    ),
    "serve": (
        serve,
        [
            Option("model", "checkpoint folder (classifier, tagger, QA, masked-LM or bare encoder)"),
            Option("host", "address to listen on (127.0.0.1: this machine only)"),
            Option("port", "TCP port"),
            Option("max_batch_tokens", "close a batch once its inputs hold this many tokens"),
            Option("max_wait_ms", "longest the oldest queued request waits for company (0: batch what has queued)"),
            Option("precision", PRECISION_HELP, choices=("fp32", "bf16", "auto")),
            Option("quantize", QUANTIZE_HELP, choices=("none", "int8")),
            Option("max_request_bytes", "refuse request bodies over this size with 413"),
            Option(
                "inference",
                "where the model runs: a child process, whose forward passes do not wait on the "
                "server's Python work (faster under load), or a thread of the server (one process, less memory)",
                choices=("process", "thread"),
            ),
        ],
    ),
    "plot": (plot, [Option("run", "a run folder holding metrics.jsonl")]),
    "fill-mask": (
        fill_mask,
        [
            Option("model", "folder of a model with an MLM head (from `bertforge pretrain`)"),
            Option("text", "text with one or more [MASK] tokens"),
            Option("top_k", "candidates to show per [MASK]"),
        ],
    ),
    "quickstart": (
        quickstart,
        [
            Option("out", "folder for everything the quickstart writes"),
            Option("smoke", "a minimal run of every stage"),
            Option("minutes", "pretraining budget in minutes (0 = the bundled config's)"),
        ],
    ),
}


# Commands that take a recipe's settings as --key value pairs beyond their own options.
SETTINGS: dict[str, type] = {
    "pretrain": PretrainConfig,
    "finetune classification": FinetuneConfig,
    "distill": DistillConfig,
    "finetune ner": NerConfig,
    "finetune qa": QaConfig,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertforge",
        description="A complete BERT system: tokenizer training, encoding, pretraining, fine-tuning, inference.",
    )
    parser.add_argument("--version", action="version", version=f"bertforge {__version__}")
    parser.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    groups = parser.add_subparsers(dest="command", metavar="command", required=True)
    nested: dict[str, argparse._SubParsersAction] = {}
    for name, (function, options) in COMMANDS.items():
        *group, leaf = name.split()
        where = groups
        if group:
            if group[0] not in nested:
                holder = groups.add_parser(group[0], help=f"{group[0]} commands")
                nested[group[0]] = holder.add_subparsers(dest="subcommand", metavar="subcommand", required=True)
            where = nested[group[0]]
        doc = inspect.getdoc(function) or ""
        settings = SETTINGS.get(name)
        command = where.add_parser(
            leaf,
            help=doc.splitlines()[0],
            description=doc,
            epilog=f"settings:\n{describe_settings(settings)}" if settings else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_options(command, function, options)
        command.set_defaults(function=function, option_names=[o.parameter for o in options])
    return parser


def _add_options(parser: argparse.ArgumentParser, function: Callable[..., None], options: list[Option]) -> None:
    signature = inspect.signature(function)
    hints = inspect.get_annotations(function, eval_str=True)
    for option in options:
        parameter = signature.parameters[option.parameter]
        flag = "--" + option.parameter.replace("_", "-")
        required = parameter.default is inspect.Parameter.empty
        if hints.get(option.parameter) is bool:
            parser.add_argument(flag, action="store_true", help=option.help)
            continue
        kind = int if hints.get(option.parameter) is int else float if hints.get(option.parameter) is float else str
        default_help = "" if required else f" (default: {parameter.default})"
        parser.add_argument(
            flag,
            type=kind,
            required=required,
            default=None if required else parameter.default,
            choices=option.choices,
            nargs=option.nargs,
            help=option.help + default_help,
            **option.extra,
        )


def expand_paths(patterns: Sequence[str]) -> list[str]:
    """Expand glob patterns (quoted on the command line, so large globs do not hit the shell's limits)."""
    paths: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise BertforgeError(f"{pattern}: no files match this pattern")
        paths.extend(matches)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    keywords = {name: getattr(args, name) for name in args.option_names}
    command = " ".join(filter(None, (args.command, getattr(args, "subcommand", None))))
    if command in SETTINGS:
        keywords["settings"] = extra  # checked against the settings dataclass, with its own messages
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.function(**keywords)
    except BertforgeError as error:
        print(f"bertforge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bertforge: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as error:
        from bertforge.distributed import lost_contact_message

        message = lost_contact_message(error)
        if message is None:
            raise
        print(f"bertforge: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
