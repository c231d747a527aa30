"""Pretraining corpus → token shards: text is tokenized once, offline, by :func:`prepare_corpus`.

Input files
    Plain text in the original BERT format: one sentence or paragraph per line, a blank line between documents.
    ``.jsonl`` files: one JSON object per line, one document each, its text in ``text_field``; the text is cut
    into lines at ``"\\n"`` (blank ones ignored). Either way every line is then cut into sentences by
    :func:`~bertforge.data.sentences.split_sentences`, so paragraph-per-line corpora work. UTF-8 with or without
    a byte-order mark, LF or CRLF line ends.

Output: a folder of token shards and a manifest, laid out as :mod:`bertforge.data.shard_reader` describes;
:class:`~bertforge.data.shard_reader.ShardedCorpus` reads it back.

Validation split: a document goes to ``valid`` when the blake2b hash of its text falls below ``valid_fraction``
of the hash range, so identical documents share a split and re-running reproduces byte-identical files. If that
leaves a split empty although the corpus has two or more documents, the one document nearest the threshold is
moved (see :class:`_SplitAssigner`).

Writing is crash-safe: shards and the tokenizer copy are written under ``.tmp`` names while the corpus is read,
and renamed into place only after every input was read without error; the old manifest (if any) is removed
before the renames and the new one written last.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from bertforge.data.sentences import split_sentences
from bertforge.data.shard_reader import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TOKENIZER_FOLDER,
    Manifest,
    ShardStats,
    SourceStats,
    SplitStats,
    tokenizer_fingerprint,
)
from bertforge.errors import BertforgeError, where
from bertforge.tokenizer import BertTokenizer

log = logging.getLogger("bertforge")

SPLITS = ("train", "valid")
JSONL_SUFFIX = ".jsonl"
# A plain-text file with more non-blank lines than this but no blank line is probably not in BERT's format.
NO_BLANK_LINE_WARNING_LINES = 1000

_TMP = ".tmp"
_SHARD_FILE = re.compile(r"^shard-\d{5}\.(?:tokens|sentences|documents)\.npy(?:\.tmp)?$")
_OWN_NAMES = frozenset({MANIFEST_NAME, TOKENIZER_FOLDER, *SPLITS}) | {
    name + _TMP for name in (MANIFEST_NAME, TOKENIZER_FOLDER)
}
# Documents are handed to the tokenizing processes in chunks of about this many input bytes: big enough to
# amortise inter-process transfer, small enough to keep all workers busy and memory low.
_CHUNK_BYTES = 1 << 19
_HASH_RANGE = 1 << 64  # documents are hashed to 8-byte integers


# ---- prepare ----------------------------------------------------------------------------------------------


def prepare_corpus(
    corpus: Sequence[str | Path],
    tokenizer_dir: str | Path,
    out: str | Path,
    *,
    valid_fraction: float = 0.01,
    text_field: str = "text",
    shard_tokens: int = 16_000_000,
    workers: int | None = None,
    show_progress: bool = True,
) -> Manifest:
    """Tokenize the text files ``corpus`` with the tokenizer in ``tokenizer_dir`` into shards in ``out``.

    ``valid_fraction`` of the documents (chosen by a hash of their text) go to the validation split. ``.jsonl``
    files hold one document per line, its text under ``text_field``; other files are plain text with a blank line
    between documents. Tokenization runs in ``workers`` processes (default: one per CPU core; 1 runs in this
    process). Returns the manifest, also written to ``out/manifest.json``.
    """
    if isinstance(corpus, (str, Path)):
        corpus = [corpus]
    if not corpus:
        raise BertforgeError("no corpus files given; pass one or more text or .jsonl files")
    if not 0 <= valid_fraction < 1:
        raise BertforgeError(f"valid_fraction {valid_fraction} is outside [0, 1); 0.01 keeps 1% for validation")
    if shard_tokens < 1:
        raise BertforgeError(f"shard_tokens {shard_tokens} must be positive")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise BertforgeError(f"workers {workers} must be at least 1")
    sources = [_inspect_source(Path(path)) for path in corpus]
    out = Path(out)
    _check_output_folder(out)
    tokenizer = BertTokenizer.from_pretrained(tokenizer_dir)
    token_dtype = np.dtype(np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32)
    writers = {split: _ShardWriter(out / split, token_dtype, shard_tokens) for split in SPLITS}
    warnings: list[str] = []
    started = time.perf_counter()
    try:
        assigner = _SplitAssigner(valid_fraction, writers["train"], writers["valid"], hold_tokens=shard_tokens)
        chunks = _chunks(sources, text_field, warnings)
        with (
            # The pool first: its processes are forked before tqdm starts a monitor thread.
            _tokenize(chunks, tokenizer, tokenizer_dir, token_dtype, workers) as results,
            tqdm(
                total=sum(source.bytes for source in sources),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="tokenizing",
                disable=not show_progress,
            ) as progress,
        ):
            for result in results:
                _add_chunk(result, sources[result.source], assigner)
                progress.update(result.num_bytes)
        assigner.finish()
        splits = {split: writer.close() for split, writer in writers.items()}
        if not any(split.documents for split in splits.values()):
            raise BertforgeError(
                f"{', '.join(source.path for source in sources)}: no document has any token for this tokenizer; "
                "check the files hold text in the tokenizer's language"
            )
        _save_tokenizer(tokenizer, out)
    except BaseException:
        for writer in writers.values():
            writer.discard()
        shutil.rmtree(out / (TOKENIZER_FOLDER + _TMP), ignore_errors=True)
        raise

    manifest = Manifest(
        format_version=FORMAT_VERSION,
        vocab_size=len(tokenizer),
        token_dtype=token_dtype.name,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        lowercase=tokenizer.lowercase,
        valid_fraction=valid_fraction,
        text_field=text_field,
        shard_tokens=shard_tokens,
        sources=sources,
        splits=splits,
        skipped_sentences=sum(source.skipped_sentences for source in sources),
        skipped_documents=sum(source.skipped_documents for source in sources),
        warnings=warnings,
    )
    _commit(out, writers, manifest)
    elapsed = time.perf_counter() - started
    train, valid = splits["train"], splits["valid"]
    log.info(
        "prepared %s: train %d documents / %d sentences / %d tokens, valid %d / %d / %d, in %.1f s (%.0f tokens/s)",
        out,
        train.documents,
        train.sentences,
        train.tokens,
        valid.documents,
        valid.sentences,
        valid.tokens,
        elapsed,
        (train.tokens + valid.tokens) / max(elapsed, 1e-9),
    )
    return manifest


def _inspect_source(path: Path) -> SourceStats:
    """Check that ``path`` can be a corpus file before any work starts; contents are checked while reading."""
    if not path.exists():
        raise BertforgeError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise BertforgeError(f"{path}: is a folder; pass the files in it (the CLI expands patterns like '{path}/*')")
    size = path.stat().st_size
    if size == 0:
        raise BertforgeError(f"{path}: is empty; remove it from the corpus")
    return SourceStats(str(path), "jsonl" if path.suffix.lower() == JSONL_SUFFIX else "text", size)


def _check_output_folder(out: Path) -> None:
    """Refuse a folder holding files this module did not write, so a mistyped ``out`` never clobbers data."""
    if out.exists() and not out.is_dir():
        raise BertforgeError(f"{out}: is a file; the output must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in _OWN_NAMES)
    if foreign:
        raise BertforgeError(
            f"{out}: holds files that data preparation did not write ({', '.join(foreign[:3])}); "
            "choose a new or empty output folder"
        )


# ---- reading documents ------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """Documents of one source file, handed to a tokenizing process together."""

    source: int  # index of the file in the source list
    documents: list[list[str]]  # each document's non-blank lines, stripped
    num_bytes: int  # input bytes the chunk covers, for the progress bar


def _chunks(sources: list[SourceStats], text_field: str, warnings: list[str]) -> Iterator[_Chunk]:
    """Stream every file as chunks of about ``_CHUNK_BYTES``; each file ends with a chunk of its own."""
    for index, source in enumerate(sources):
        path = Path(source.path)
        is_jsonl = source.format == "jsonl"
        documents = _jsonl_documents(path, text_field) if is_jsonl else _text_documents(path, warnings)
        pending: list[list[str]] = []
        reported = 0
        for document, position in documents:
            pending.append(document)
            if position - reported >= _CHUNK_BYTES:
                yield _Chunk(index, pending, position - reported)
                pending, reported = [], position
        # The rest of the file, trailing blank lines included, so the progress bar reaches its total.
        yield _Chunk(index, pending, source.bytes - reported)


def _lines(path: Path) -> Iterator[tuple[int, str, int]]:
    """(line number, text, end position in bytes) of each line; the byte-order mark is dropped."""
    position = 0
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            position += len(raw)
            if b"\0" in raw:
                raise BertforgeError(
                    f"{where(path, number)}: contains NUL bytes, so this is a binary file; "
                    "pass UTF-8 text or .jsonl files"
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise BertforgeError(
                    f"{where(path, number)}: not UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of "
                    "the line); convert the file to UTF-8"
                ) from None
            yield number, line.removeprefix("\ufeff") if number == 1 else line, position


def _text_documents(path: Path, warnings: list[str]) -> Iterator[tuple[list[str], int]]:
    """(non-blank lines, end position in bytes) of each blank-line-separated document."""
    lines: list[str] = []
    documents = 0
    non_blank = 0
    for _, line, position in _lines(path):
        line = line.strip()  # also drops the "\r" of CRLF line ends
        if line:
            lines.append(line)
            non_blank += 1
        elif lines:
            documents += 1
            yield lines, position
            lines = []
    if lines:
        documents += 1
        yield lines, position
    if documents == 0:
        raise BertforgeError(f"{path}: has only blank lines; remove it from the corpus")
    if documents == 1 and non_blank > NO_BLANK_LINE_WARNING_LINES:
        message = (
            f"{path}: no blank line between documents: {non_blank} lines read as one document; "
            "NSP negatives need several documents"
        )
        log.warning(message)
        warnings.append(message)


def _jsonl_documents(path: Path, text_field: str) -> Iterator[tuple[list[str], int]]:
    """(non-blank lines of the text, end position in bytes) of each JSON record."""
    records = 0
    for number, line, position in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise BertforgeError(
                f"{where(path, number)}: not valid JSON ({error.msg} at column {error.colno}); each line of a "
                ".jsonl file must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise BertforgeError(
                f"{where(path, number)}: a JSON {type(record).__name__}, not an object; each line of a .jsonl "
                "file must be one JSON object"
            )
        if text_field not in record:
            raise BertforgeError(
                f"{where(path, number)}: no {text_field!r} field (fields: {', '.join(map(str, record)) or 'none'}); "
                "pass text_field naming the field that holds the document text"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise BertforgeError(
                f"{where(path, number)}: field {text_field!r} is not a string but {type(text).__name__}; "
                "pass text_field naming the field that holds the document text"
            )
        records += 1
        yield [stripped for line in text.split("\n") if (stripped := line.strip())], position
    if records == 0:
        raise BertforgeError(f"{path}: has no JSON records, only blank lines; remove it from the corpus")


# ---- tokenizing ---------------------------------------------------------------------------------------------


@dataclass
class _TokenizedChunk:
    """A chunk's documents as token arrays; only documents with at least one token are kept."""

    source: int
    num_bytes: int
    tokens: np.ndarray  # (T,) token ids of all kept sentences, back to back
    sentence_lengths: np.ndarray  # (S,) int64, tokens per kept sentence (all > 0)
    document_sentences: np.ndarray  # (D,) int64, kept sentences per kept document (all > 0)
    document_hashes: list[int]  # (D,) blake2b of each kept document's text, as an integer in [0, 2^64)
    skipped_sentences: int
    skipped_documents: int


class _ChunkTokenizer:
    """Splits a chunk's lines into sentences and tokenizes them in one batched call."""

    def __init__(self, tokenizer: BertTokenizer, token_dtype: np.dtype) -> None:
        self.tokenizer = tokenizer
        self.token_dtype = token_dtype

    def __call__(self, chunk: _Chunk) -> _TokenizedChunk:
        sentences = [[s for line in document for s in split_sentences(line)] for document in chunk.documents]
        texts = [sentence for document in sentences for sentence in document]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.token_dtype, count=int(lengths.sum()))
        sentences_per_document = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        document_of_sentence = np.repeat(np.arange(len(sentences)), sentences_per_document)  # (S,)
        kept = lengths > 0
        kept_per_document = np.bincount(document_of_sentence[kept], minlength=len(sentences))
        kept_documents = kept_per_document > 0
        return _TokenizedChunk(
            source=chunk.source,
            num_bytes=chunk.num_bytes,
            tokens=tokens,  # empty sentences have no tokens, so nothing needs removing here
            sentence_lengths=lengths[kept],
            document_sentences=kept_per_document[kept_documents],
            document_hashes=[
                _document_hash(document) for document, keep in zip(chunk.documents, kept_documents, strict=True) if keep
            ],
            skipped_sentences=int(np.count_nonzero(~kept)),
            skipped_documents=int(np.count_nonzero(~kept_documents)),
        )


def _document_hash(lines: list[str]) -> int:
    digest = hashlib.blake2b("\n".join(lines).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


_worker_tokenizer: _ChunkTokenizer | None = None  # set in each worker process by _start_worker


def _start_worker(tokenizer_dir: str, token_dtype: np.dtype) -> None:
    global _worker_tokenizer
    # Each worker is one of several processes already; the tokenizer's own threads would only oversubscribe
    # the cores, and they are not safe to use after a fork.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = _ChunkTokenizer(BertTokenizer.from_pretrained(tokenizer_dir), token_dtype)


def _tokenize_in_worker(chunk: _Chunk) -> _TokenizedChunk:
    assert _worker_tokenizer is not None, "_start_worker runs first in every worker"
    return _worker_tokenizer(chunk)


@contextmanager
def _tokenize(
    chunks: Iterable[_Chunk],
    tokenizer: BertTokenizer,
    tokenizer_dir: str | Path,
    token_dtype: np.dtype,
    workers: int,
) -> Iterator[Iterator[_TokenizedChunk]]:
    """Tokenized chunks in input order, from ``workers`` processes (or this one when ``workers`` is 1)."""
    if workers == 1:
        yield map(_ChunkTokenizer(tokenizer, token_dtype), chunks)
        return
    with multiprocessing.Pool(workers, initializer=_start_worker, initargs=(str(tokenizer_dir), token_dtype)) as pool:
        # imap keeps input order (so output is deterministic) and reads `chunks` lazily: the pool's task
        # queue is a pipe, so reading stays only a few chunks ahead of the workers.
        yield pool.imap(_tokenize_in_worker, chunks)


def _add_chunk(result: _TokenizedChunk, source: SourceStats, assigner: _SplitAssigner) -> None:
    """Count ``result`` into its source's stats and hand its documents to the split assigner."""
    sentence_ends = np.concatenate([[0], np.cumsum(result.sentence_lengths)])  # (S+1,) token offsets
    document_ends = np.concatenate([[0], np.cumsum(result.document_sentences)])  # (D+1,) sentence offsets
    bounds = document_ends.tolist()
    token_bounds = sentence_ends[document_ends].tolist()
    for index, document_hash in enumerate(result.document_hashes):
        # Copies, not views: a view would keep the whole chunk alive while the document waits in a writer, and
        # the rare valid documents wait long (until valid has shard_tokens tokens), pinning nearly every chunk.
        tokens = result.tokens[token_bounds[index] : token_bounds[index + 1]].copy()
        lengths = result.sentence_lengths[bounds[index] : bounds[index + 1]].copy()
        assigner.add(_Document(document_hash, tokens, lengths))
    source.documents += len(result.document_hashes)
    source.sentences += result.sentence_lengths.size
    source.tokens += result.tokens.size
    source.skipped_sentences += result.skipped_sentences
    source.skipped_documents += result.skipped_documents


# ---- writing shards ---------------------------------------------------------------------------------------


@dataclass
class _Document:
    """One tokenized document on its way to a shard."""

    hash: int  # in [0, 2^64); decides the split
    tokens: np.ndarray  # (T,) token ids of the document's sentences, back to back
    sentence_lengths: np.ndarray  # (S,) int64


class _ShardWriter:
    """Collects one split's documents and writes them as shards of about ``shard_tokens`` tokens."""

    def __init__(self, folder: Path, token_dtype: np.dtype, shard_tokens: int) -> None:
        self.folder = folder
        self.token_dtype = token_dtype
        self.shard_tokens = shard_tokens
        self.stats = SplitStats()
        self.files: list[Path] = []  # final names; each is written as name + ".tmp" until commit()
        self._documents: list[_Document] = []
        self._tokens = 0

    def add(self, document: _Document) -> None:
        self._documents.append(document)
        self._tokens += document.tokens.size
        if self._tokens >= self.shard_tokens:
            self._flush()

    def close(self) -> SplitStats:
        """Write the last shard; a split always gets one, even if empty, so readers need no special case."""
        if self._documents or not self.stats.shards:
            self._flush()
        return self.stats

    def commit(self) -> None:
        """Rename the written files to their final names."""
        for path in self.files:
            os.replace(_temporary(path), path)

    def discard(self) -> None:
        """Delete the temporary files of a preparation that failed."""
        for path in self.files:
            _temporary(path).unlink(missing_ok=True)

    def _flush(self) -> None:
        name = f"shard-{len(self.stats.shards):05d}"
        self.folder.mkdir(parents=True, exist_ok=True)
        tokens_path, sentences_path, documents_path = (
            self.folder / f"{name}.{kind}.npy" for kind in ("tokens", "sentences", "documents")
        )
        self.files += [tokens_path, sentences_path, documents_path]
        # Filled piece by piece through a memory map, so a shard is never concatenated in memory a second time.
        tokens = open_memmap(_temporary(tokens_path), mode="w+", dtype=self.token_dtype, shape=(self._tokens,))
        position = 0
        for document in self._documents:
            tokens[position : position + document.tokens.size] = document.tokens
            position += document.tokens.size
        tokens.flush()
        del tokens
        # A leading 0 turns the cumulative sums into (N+1,) boundary arrays.
        sentence_lengths = [np.zeros(1, np.int64), *(document.sentence_lengths for document in self._documents)]
        sentence_offsets = np.cumsum(np.concatenate(sentence_lengths))
        sentences_per_document = [0, *(document.sentence_lengths.size for document in self._documents)]
        document_offsets = np.cumsum(np.array(sentences_per_document, dtype=np.int64))
        for path, offsets in ((sentences_path, sentence_offsets), (documents_path, document_offsets)):
            with open(_temporary(path), "wb") as file:
                np.save(file, offsets)
        shard = ShardStats(name, len(self._documents), int(document_offsets[-1]), self._tokens)
        self.stats.shards.append(shard)
        self.stats.documents += shard.documents
        self.stats.sentences += shard.sentences
        self.stats.tokens += shard.tokens
        self._documents, self._tokens = [], 0


def _temporary(path: Path) -> Path:
    return path.with_name(path.name + _TMP)


class _SplitAssigner:
    """Sends each document to the train or valid writer by its hash, keeping corpus order within each split.

    The rule is exact (valid iff hash < valid_fraction · 2^64) except for one guarantee: a corpus of two or more
    documents gives both splits at least one (when valid_fraction > 0). To keep it without a second pass or
    unbounded memory, documents are held back at the start, until both splits have one or ``hold_tokens``
    tokens are held; if all held documents fell on one side, the one with the lowest hash goes to valid (or the
    highest to train). So only corpora smaller than ``hold_tokens`` (or with a tiny valid_fraction) ever see
    the exception, and for them it picks the same document on every run.
    """

    def __init__(self, valid_fraction: float, train: _ShardWriter, valid: _ShardWriter, hold_tokens: int) -> None:
        self.threshold = int(valid_fraction * _HASH_RANGE)
        self.train = train
        self.valid = valid
        self.hold_tokens = hold_tokens
        self._held: list[_Document] | None = [] if valid_fraction > 0 else None
        self._held_tokens = 0
        self._held_sides: set[bool] = set()  # which splits (True: valid) the held documents hash to

    def add(self, document: _Document) -> None:
        if self._held is None:
            (self.valid if document.hash < self.threshold else self.train).add(document)
            return
        self._held.append(document)
        self._held_tokens += document.tokens.size
        self._held_sides.add(document.hash < self.threshold)
        if len(self._held_sides) == 2 or self._held_tokens >= self.hold_tokens:
            self._release()

    def finish(self) -> None:
        if self._held is not None:
            self._release()

    def _release(self) -> None:
        held = self._held or []
        to_valid = [document.hash < self.threshold for document in held]
        if len(held) >= 2 and not any(to_valid):
            to_valid[min(range(len(held)), key=lambda i: held[i].hash)] = True
        elif len(held) >= 2 and all(to_valid):
            to_valid[max(range(len(held)), key=lambda i: held[i].hash)] = False
        for document, goes_to_valid in zip(held, to_valid, strict=True):
            (self.valid if goes_to_valid else self.train).add(document)
        self._held = None


def _save_tokenizer(tokenizer: BertTokenizer, out: Path) -> None:
    """Save a copy of the tokenizer as ``out/tokenizer.tmp``; _commit renames it."""
    staging = out / (TOKENIZER_FOLDER + _TMP)
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer.save_pretrained(staging)


def _commit(out: Path, writers: dict[str, _ShardWriter], manifest: Manifest) -> None:
    """Move everything into place; the folder looks complete only once the new manifest exists."""
    manifest_path = out / MANIFEST_NAME
    manifest_path.unlink(missing_ok=True)
    shutil.rmtree(out / TOKENIZER_FOLDER, ignore_errors=True)
    os.replace(out / (TOKENIZER_FOLDER + _TMP), out / TOKENIZER_FOLDER)
    for split, writer in writers.items():
        writer.commit()
        # Shards of an earlier, larger preparation in the same folder would otherwise linger unused.
        current = {path.name for path in writer.files}
        for stale in (out / split).iterdir():
            if _SHARD_FILE.match(stale.name) and stale.name not in current:
                stale.unlink()
    temporary = _temporary(manifest_path)
    temporary.write_text(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, manifest_path)
