"""Text-classification data from the user's files: single texts or text pairs with class or regression labels.

Formats, chosen by the file's suffix
    ``.csv``            comma-separated values with a header row; fields may be quoted and span lines.
    ``.tsv``, ``.txt``  tab-separated values with a header row. Quotes are ordinary characters here (as in
                        GLUE's files), so ``"Great" movie`` stays as written; a field cannot hold a tab or a line
                        break.
    ``.jsonl``, ``.json``  JSON Lines: one JSON object per line; a whole-file JSON array is refused.
    Passing ``delimiter`` reads any other suffix as delimited text too. Files are UTF-8, with or without a
    byte-order mark, with LF or CRLF line ends.

Columns (or JSON fields) are named by ``text_column``, ``text_pair_column`` (for sentence-pair tasks) and
``label_column``. Labels may be class names or integers. The training file defines the classes: its distinct
labels in natural order (numerically when all are integers, else alphabetically) become ``label_names`` and each
example's label is an index into them. Dev and test files are read with those ``label_names``, so a label the
training file never had is a bad row. With ``regression=True`` labels are real numbers instead.

Bad rows (no text, no label, an unknown label, a non-numeric regression target, bytes that are not UTF-8, a line
that is not JSON, a record with the wrong number of fields) stop reading with a :class:`BertforgeError` naming
``path:line``; with ``bad_rows="skip"`` they are left out and listed in :attr:`ClassificationFile.skipped`
instead. Line numbers are those an editor shows: a CSV record spanning several lines is reported at its first.

:func:`bucketed_batches` cuts examples into the global batches of training steps, optionally of similar length so
that little compute goes to padding; :func:`split_rows` cuts one into micro-batches.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np

from bertforge.errors import BertforgeError, where

BadRows = Literal["fail", "skip"]
BAD_ROW_POLICIES: tuple[str, ...] = ("fail", "skip")
JSON_SUFFIXES = (".jsonl", ".json")
# Delimiter implied by a suffix; other suffixes need an explicit ``delimiter``.
DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}

# Text decoded with errors="surrogateescape" keeps each byte that is not UTF-8 as one of these lone surrogates,
# so a bad byte spoils only its own row instead of the whole file.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_INTEGER = re.compile(r"[+-]?\d+")
_SKIP_HINT = "or pass --bad-rows skip to skip and count such rows"
_COLUMN_OPTIONS = {"text": "--text-column", "text pair": "--text-pair-column", "label": "--label-column"}


@dataclass
class ClassificationExample:
    """One row of a classification file."""

    text: str
    text_pair: str | None  # the second text of a sentence-pair task; None for single-text tasks
    label: int | float | None  # class id (index into label_names), regression target, or None when unlabelled
    line: int  # line of the file where the row starts, for messages about it


@dataclass
class ClassificationFile:
    """The usable rows of one file and what was left out."""

    examples: list[ClassificationExample]
    label_names: list[str]  # class names in id order; empty for regression
    skipped: list[tuple[int, str]]  # (line, reason) of each bad row skipped
    path: Path


class _BadRow(Exception):
    """A row that cannot be used: what is wrong with it and how to fix it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class _Columns:
    """The columns (or JSON fields) to read, by role."""

    text: str
    text_pair: str | None
    label: str

    def by_role(self) -> dict[str, str]:
        """Role ("text", "text pair", "label") -> column name, for the columns in use."""
        roles = {"text": self.text, "text pair": self.text_pair, "label": self.label}
        return {role: name for role, name in roles.items() if name is not None}


def read_classification_file(
    path: str | Path,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    regression: bool = False,
    require_labels: bool = True,
    bad_rows: BadRows = "fail",
    delimiter: str | None = None,
) -> ClassificationFile:
    """Read a CSV, TSV or JSON Lines file of texts (or text pairs) and their labels.

    ``label_names``: None for the training file, whose labels define the classes; the training file's
    ``label_names`` for dev and test files. ``require_labels=False`` is for files to predict on: the label column
    may then be absent, and rows without a label get ``label=None`` (labels that are there are still checked).
    ``bad_rows``: "fail" raises :class:`BertforgeError` at the first bad row, "skip" leaves such rows out and
    lists them in ``skipped``. ``delimiter`` overrides the one the suffix implies (see the module docstring).
    """
    path = Path(path)
    if bad_rows not in BAD_ROW_POLICIES:
        raise BertforgeError(f"bad_rows is {bad_rows!r}; pass one of {', '.join(BAD_ROW_POLICIES)}")
    if regression and label_names is not None:
        raise ValueError("label_names are for classification; a regression file has real-valued labels")
    _check_readable(path)
    columns = _Columns(text_column, text_pair_column, label_column)
    if path.suffix.lower() in JSON_SUFFIXES and delimiter is None:
        rows = _jsonl_rows(path)
    else:
        rows = _delimited_rows(path, _delimiter_for(path, delimiter), columns, require_labels)

    known_labels = None if label_names is None else {_label_key(name): i for i, name in enumerate(label_names)}
    parsed: list[tuple[int, str, str | None, str | float | None]] = []
    skipped: list[tuple[int, str]] = []
    for line, values in rows:
        try:
            if isinstance(values, _BadRow):
                raise values
            text = _text(values, columns.text, "text")
            pair = None if columns.text_pair is None else _text(values, columns.text_pair, "text pair")
            label = _label(values, columns.label, regression, require_labels, known_labels)
        except _BadRow as bad:
            if bad_rows == "fail":
                raise BertforgeError(f"{where(path, line)}: {bad.problem}; {bad.fix}, {_SKIP_HINT}") from None
            skipped.append((line, bad.problem))
            continue
        parsed.append((line, text, pair, label))

    if not parsed:
        if skipped:
            first_line, first_problem = skipped[0]
            raise BertforgeError(
                f"{path}: all {len(skipped)} rows are bad (the first, line {first_line}: {first_problem}); "
                "fix the file or the column options"
            )
        raise BertforgeError(f"{path}: has no rows of data; add some, or check that this is the right file")

    if regression:
        names: list[str] = []
    elif label_names is not None:
        names = list(label_names)
    else:
        names = _natural_order({label for *_, label in parsed if isinstance(label, str)})
    ids = {_label_key(name): i for i, name in enumerate(names)}
    examples = [
        ClassificationExample(text, pair, ids[label] if isinstance(label, str) else label, line)
        for line, text, pair, label in parsed
    ]
    return ClassificationFile(examples, names, skipped, path)


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0, bucket_batches: int = 1
) -> list[list[int]]:
    """Group example indices into batches; every index appears in exactly one batch.

    A batch is padded to its longest member, so mixing a 20-token and a 500-token review wastes 480 positions of
    compute where padding is computed (on a GPU; the CPU path runs real tokens only). Sorting everything by length
    removes that waste but makes every epoch the same sequence of batches, from all-short to all-long. With
    ``shuffle``: shuffle the indices (seeded by ``seed`` and ``epoch``, so each epoch differs and a rerun repeats),
    cut them into chunks of ``bucket_batches * batch_size``, sort each chunk by length and split it into batches,
    then shuffle the order of all batches. ``bucket_batches=1`` gives plain random batches; larger values give
    batches of neighbours in length, less padding, but less varied batches (measured on IMDB: 50 cost about 0.2
    accuracy points, see bench/RESULTS.md).

    For training, ``batch_size`` is the global batch of an optimizer step: the batches depend on the lengths,
    ``seed`` and ``epoch`` only, never on how many processes or accumulation steps share each one out
    (:func:`split_rows` cuts it into micro-batches). A shuffled batch lists its indices shortest first, so those
    micro-batches are of neighbouring lengths too.

    Without ``shuffle`` (evaluation and prediction) all indices are sorted by length, longest first, so a batch
    too large for memory fails at once rather than at the end of a long run; ties keep their input order. One batch
    at most is smaller than ``batch_size``: the last, or with ``shuffle`` the one cut from the end of the last chunk.
    """
    if batch_size < 1:
        raise BertforgeError(f"batch size {batch_size} must be at least 1")
    if bucket_batches < 1:
        raise BertforgeError(f"bucket_batches {bucket_batches} must be at least 1 (1 = random batches)")
    sizes = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if not shuffle:
        # argsort of the negated lengths, stable, is "longest first, ties in input order".
        order = np.argsort(-sizes, kind="stable")
        return [order[start : start + batch_size].tolist() for start in range(0, len(order), batch_size)]
    generator = np.random.default_rng([seed, epoch])
    shuffled = generator.permutation(len(sizes))
    chunk = bucket_batches * batch_size
    batches: list[list[int]] = []
    for chunk_start in range(0, len(shuffled), chunk):
        members = shuffled[chunk_start : chunk_start + chunk]
        members = members[np.argsort(sizes[members], kind="stable")]
        batches.extend(members[start : start + batch_size].tolist() for start in range(0, len(members), batch_size))
    return [batches[i] for i in generator.permutation(len(batches))]


def split_rows(rows: Sequence[int] | np.ndarray, parts: int) -> list[np.ndarray]:
    """The rows of one global batch as ``parts`` micro-batches of near-equal size, in order, empty ones left out.

    The micro-batches of an optimizer step, for processes × accumulation steps: a step of 5 rows in 2 parts is
    rows 0-2 and 3-4, and in 8 parts five micro-batches of one row.
    """
    return [part for part in np.array_split(np.asarray(rows, dtype=np.int64), parts) if part.size]


# ---- reading rows ------------------------------------------------------------------------------------------


def _check_readable(path: Path) -> None:
    """Fail early, with the fix, on paths that cannot be a data file at all."""
    if not path.exists():
        raise BertforgeError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise BertforgeError(f"{path}: is a folder; pass a .csv, .tsv or .jsonl file")
    if path.stat().st_size == 0:
        raise BertforgeError(f"{path}: is empty; pass a file with a header row and data rows")


def _delimiter_for(path: Path, delimiter: str | None) -> str:
    """The field delimiter: as given, or implied by the suffix."""
    if delimiter is not None:
        if len(delimiter) != 1:
            raise BertforgeError(f"delimiter {delimiter!r} must be a single character, such as ',' or '\\t'")
        return delimiter
    suffix = path.suffix.lower()
    if suffix not in DELIMITERS:
        known = ", ".join([*DELIMITERS, *JSON_SUFFIXES])
        raise BertforgeError(
            f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; use one of {known}, "
            "or pass --delimiter"
        )
    return DELIMITERS[suffix]


def _open_text(path: Path) -> TextIO:
    """Open a UTF-8 file for reading: the byte-order mark dropped, undecodable bytes kept as lone surrogates.

    ``newline=""`` hands line ends through untranslated, which the csv module needs to read quoted line breaks.
    """
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _delimited_rows(
    path: Path, delimiter: str, columns: _Columns, require_labels: bool
) -> Iterator[tuple[int, dict[str, str] | _BadRow]]:
    """(line where the record starts, column name -> field) for each data row, or the row's problem."""
    # Tab-separated files (GLUE's among them) do not quote: a quote character there is part of the text.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with _open_text(path) as file:
        reader = csv.reader(file, delimiter=delimiter, quoting=quoting)
        try:
            first_record = next((fields for fields in reader if any(value.strip() for value in fields)), None)
        except csv.Error as error:
            raise BertforgeError(
                f"{where(path, reader.line_num)}: unreadable header ({error}); fix its quotes"
            ) from None
        header = _checked_header(path, first_record, reader.line_num, columns, require_labels)
        # csv counts the lines it has consumed; the next record starts on the line after the last one read,
        # which gives physical line numbers even when quoted fields span several lines.
        last_line = reader.line_num
        # An unclosed quote swallows the lines after it into one long field, so it too shows up as a wrong count.
        count_fix = (
            "quote fields that contain the delimiter and close every quote"
            if quoting == csv.QUOTE_MINIMAL
            else "separate the fields by exactly one tab each"
        )
        while True:
            start = last_line + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                last_line = reader.line_num
                yield start, _BadRow(f"unreadable record ({error})", "look for an unclosed quote at or after this line")
                continue
            last_line = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if any(_UNDECODABLE.search(value) for value in fields):
                yield start, _BadRow("not UTF-8 text", "convert the file to UTF-8")
            elif len(fields) != len(header):
                plural = "s" if len(fields) != 1 else ""
                yield start, _BadRow(f"{len(fields)} field{plural} where the header has {len(header)}", count_fix)
            else:
                yield start, dict(zip(header, fields, strict=True))


def _checked_header(
    path: Path, header: list[str] | None, line: int, columns: _Columns, require_labels: bool
) -> list[str]:
    """The column names of the header row (None: the file has none), checked to include the configured columns."""
    if header is None:
        raise BertforgeError(f"{path}: has only blank lines; pass a file with a header row and data rows")
    if any(_UNDECODABLE.search(name) for name in header):
        raise BertforgeError(f"{where(path, line)}: header is not UTF-8 text; convert the file to UTF-8")
    header = [name.strip() for name in header]
    for role, name in columns.by_role().items():
        if name not in header and not (role == "label" and not require_labels):
            raise BertforgeError(
                f"{where(path, line)}: no {name!r} column (columns: {', '.join(header)}); "
                f"pass {_COLUMN_OPTIONS[role]} naming the column that holds the {role}"
            )
    return header


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | _BadRow]]:
    """(line, JSON object) for each non-blank line, or the line's problem."""
    seen_record = False
    with _open_text(path) as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            if not seen_record and line.lstrip().startswith("["):
                raise BertforgeError(
                    f"{where(path, number)}: the file is a JSON array; write one JSON object per line (JSON Lines)"
                )
            seen_record = True
            if _UNDECODABLE.search(line):
                yield number, _BadRow("not UTF-8 text", "convert the file to UTF-8")
                continue
            try:
                record = json.loads(line.rstrip())  # without the line end, error columns point into the line
            except json.JSONDecodeError as error:
                yield (
                    number,
                    _BadRow(f"not valid JSON ({error.msg} at column {error.colno})", "write one JSON object per line"),
                )
                continue
            if isinstance(record, dict):
                yield number, record
            else:
                yield number, _BadRow(f"a JSON {_json_type(record)}, not an object", "write one object per line")


# ---- checking fields ---------------------------------------------------------------------------------------


def _text(values: dict[str, Any], column: str, role: str) -> str:
    """The non-blank text in ``column``."""
    if column not in values:  # only JSON records can lack a field: a CSV header was checked up front
        raise _BadRow(
            f"no {column!r} field (fields: {', '.join(map(str, values)) or 'none'})",
            f"pass {_COLUMN_OPTIONS[role]} naming the field that holds the {role}",
        )
    text = values[column]
    if text is not None and not isinstance(text, str):
        raise _BadRow(f"{role} field {column!r} is a JSON {_json_type(text)}, not a string", "write it as a string")
    if text is None or not text.strip():
        raise _BadRow(f"empty {role} in {column!r}", "fill it in or delete the row")
    return text


def _label(
    values: dict[str, Any], column: str, regression: bool, require_labels: bool, known_labels: dict[str, int] | None
) -> str | float | None:
    """The row's label: a regression target, a class name (normalised, see `_label_key`) or None if absent."""
    if column not in values and require_labels:  # only JSON records can lack a field, as in `_text`
        raise _BadRow(
            f"no {column!r} field (fields: {', '.join(map(str, values)) or 'none'})",
            f"pass {_COLUMN_OPTIONS['label']} naming the field that holds the label",
        )
    value = values.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if require_labels:
            raise _BadRow(f"no label in {column!r}", "add the label or delete the row")
        return None
    if regression:
        return _regression_target(value)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _BadRow(f"label {value!r} is neither a class name nor an integer", "write the label as a string")
    if isinstance(value, float) and not value.is_integer():
        raise _BadRow(f"label {value!r} is a fraction", "write class labels as names or integers, or use regression")
    key = _label_key(value)
    if known_labels is not None and key not in known_labels:
        known = ", ".join(list(known_labels)[:20]) + (", ..." if len(known_labels) > 20 else "")
        raise _BadRow(f"label {key!r} is not one of the training labels ({known})", "correct the label")
    return key


def _regression_target(value: Any) -> float:
    """A regression label as a finite float."""
    if isinstance(value, bool):  # JSON true/false are ints to Python, but no one means them as a score
        raise _BadRow(f"regression label {value!r} is not a number", "write a number such as 3.5")
    try:
        target = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise _BadRow(f"regression label {value!r} is not a number", "write a number such as 3.5") from None
    if not math.isfinite(target):
        raise _BadRow(f"regression label {value!r} is not a finite number", "write a number such as 3.5")
    return target


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, as the user wrote it ("array", not Python's "list")."""
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def _label_key(value: str | int | float) -> str:
    """A class label as the name it is known by: trimmed text, with integers written plainly ("007", 7.0 -> "7")."""
    text = value.strip() if isinstance(value, str) else str(int(value))
    return str(int(text)) if _INTEGER.fullmatch(text) else text


def _natural_order(names: set[str]) -> list[str]:
    """Integers by value when every name is one (so "10" follows "9"), otherwise alphabetical order."""
    if all(_INTEGER.fullmatch(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)
