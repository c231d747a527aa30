"""Token shards of a prepared pretraining corpus, read back memory-mapped: the training loop never tokenizes.

:func:`bertforge.data.shard_writer.prepare_corpus` writes the folder (``out``)::

    manifest.json                   written last: a folder without it is incomplete (see Manifest)
    tokenizer/                      copy of the tokenizer the shards were made with (vocab.txt, tokenizer.json, ...)
    train/
      shard-00000.tokens.npy        (T,) uint16, or uint32 for vocabularies over 65,536: the token ids of every
                                    sentence of the shard, back to back, without [CLS]/[SEP]
      shard-00000.sentences.npy     (S+1,) int64: sentence i is tokens[sentences[i] : sentences[i + 1]]
      shard-00000.documents.npy     (D+1,) int64: document j is sentences documents[j] : documents[j + 1]
      shard-00001.tokens.npy ...
    valid/                          the same, for the validation documents

Offsets are local to their shard and start at 0. A document never straddles two shards; a shard is closed as
soon as it holds ``shard_tokens`` tokens, so it may exceed that by one document. Every split has at least one
shard, possibly empty.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from bertforge.errors import BertforgeError
from bertforge.tokenizer import BertTokenizer

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_FOLDER = "tokenizer"

# ---- manifest ---------------------------------------------------------------------------------------------


@dataclass
class SourceStats:
    """One input file and what came out of it."""

    path: str
    format: str  # "text" (blank line between documents) or "jsonl" (one document per line)
    bytes: int
    documents: int = 0  # documents written, train and valid together
    sentences: int = 0
    tokens: int = 0
    skipped_sentences: int = 0  # sentences the tokenizer turned into nothing (e.g. only control characters)
    skipped_documents: int = 0  # documents left without a single token (or, in JSONL, with empty text)


@dataclass
class ShardStats:
    """One shard: the files ``{name}.tokens.npy``, ``{name}.sentences.npy`` and ``{name}.documents.npy``."""

    name: str
    documents: int
    sentences: int
    tokens: int


@dataclass
class SplitStats:
    """Totals of one split and its shards in order."""

    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    shards: list[ShardStats] = field(default_factory=list)


@dataclass
class Manifest:
    """Contents of ``manifest.json``: how the shards were made and what they hold."""

    format_version: int
    vocab_size: int
    token_dtype: str  # "uint16" or "uint32"
    tokenizer_fingerprint: str  # see tokenizer_fingerprint(); check_tokenizer() compares it
    lowercase: bool
    valid_fraction: float
    text_field: str
    shard_tokens: int
    sources: list[SourceStats]
    splits: dict[str, SplitStats]
    skipped_sentences: int  # totals over all sources; per-file counts are in `sources`
    skipped_documents: int
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        splits = {
            name: SplitStats(**{**split, "shards": [ShardStats(**shard) for shard in split["shards"]]})
            for name, split in data["splits"].items()
        }
        return cls(**{**data, "sources": [SourceStats(**source) for source in data["sources"]], "splits": splits})


def load_manifest(out_dir: str | Path) -> Manifest:
    """Read ``out_dir/manifest.json``, written by :func:`~bertforge.data.shard_writer.prepare_corpus`."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BertforgeError(
            f"{path}: not found; {out_dir} is not a prepared corpus, or its preparation did not finish "
            "(run data prepare)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BertforgeError(
                f"{path}: shard format version {version}, this bertforge reads version {FORMAT_VERSION}; "
                "re-run data prepare"
            )
        return Manifest.from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise BertforgeError(f"{path}: damaged manifest ({error}); re-run data prepare") from None


def tokenizer_fingerprint(tokenizer: BertTokenizer) -> str:
    """sha256 of what decides the ids text gets: the vocabulary in id order and the normaliser's settings."""
    settings = {
        "lowercase": tokenizer.lowercase,
        "strip_accents": tokenizer.strip_accents,
        "tokenize_chinese_chars": tokenizer.tokenize_chinese_chars,
    }
    vocab = tokenizer.get_vocab()
    payload = json.dumps([settings, sorted(vocab, key=vocab.__getitem__)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def check_tokenizer(out_dir: str | Path, tokenizer: BertTokenizer) -> None:
    """Raise :class:`BertforgeError` unless ``tokenizer`` is the one the shards in ``out_dir`` were made with."""
    expected = load_manifest(out_dir).tokenizer_fingerprint
    actual = tokenizer_fingerprint(tokenizer)
    if actual != expected:
        raise BertforgeError(
            f"the shards in {out_dir} were made with a different tokenizer (fingerprint {expected[:16]} vs "
            f"{actual[:16]}); re-run data prepare or pass the tokenizer in {Path(out_dir) / TOKENIZER_FOLDER}"
        )


# ---- reading shards ---------------------------------------------------------------------------------------


class ShardedCorpus:
    """One split of a prepared corpus, memory-mapped: nothing is read until it is used.

    Indices are global over the split: documents, sentences and tokens are numbered across its shards in order,
    as if the shards were one array each. Arrays returned are read-only views into the files.
    """

    def __init__(self, out_dir: str | Path, split: str = "train") -> None:
        self.folder = Path(out_dir)
        self.manifest = load_manifest(self.folder)
        if split not in self.manifest.splits:
            raise BertforgeError(f"{self.folder}: has no split {split!r}; splits: {', '.join(self.manifest.splits)}")
        self.split = split
        token_dtype = np.dtype(self.manifest.token_dtype)
        shards = self.manifest.splits[split].shards
        self._tokens: list[np.ndarray] = []  # per shard (T_k,)
        self._sentence_offsets: list[np.ndarray] = []  # per shard (S_k + 1,), local token offsets
        self._document_offsets: list[np.ndarray] = []  # per shard (D_k + 1,), local sentence offsets
        for shard in shards:
            stem = self.folder / split / shard.name
            self._tokens.append(_open_array(Path(f"{stem}.tokens.npy"), shard.tokens, token_dtype))
            sentence_offsets = _open_array(Path(f"{stem}.sentences.npy"), shard.sentences + 1, np.dtype(np.int64))
            document_offsets = _open_array(Path(f"{stem}.documents.npy"), shard.documents + 1, np.dtype(np.int64))
            if sentence_offsets[-1] != shard.tokens or document_offsets[-1] != shard.sentences:
                raise BertforgeError(f"{stem}.*.npy: offsets do not match the shard's size; re-run data prepare")
            self._sentence_offsets.append(sentence_offsets)
            self._document_offsets.append(document_offsets)
        # Where each shard starts in the global numbering, plus the totals at the end: (num_shards + 1,).
        self._document_bases = np.cumsum([0, *(shard.documents for shard in shards)])
        self._sentence_bases = np.cumsum([0, *(shard.sentences for shard in shards)])
        self._token_bases = np.cumsum([0, *(shard.tokens for shard in shards)])
        self.num_documents = int(self._document_bases[-1])
        self.num_sentences = int(self._sentence_bases[-1])
        self.num_tokens = int(self._token_bases[-1])

    def __repr__(self) -> str:
        return (
            f"ShardedCorpus({str(self.folder)!r}, split={self.split!r}: {self.num_documents} documents, "
            f"{self.num_sentences} sentences, {self.num_tokens} tokens)"
        )

    def document_sentences(self, document: int) -> list[np.ndarray]:
        """Token arrays (views) of the sentences of document ``document``, in order."""
        if not 0 <= document < self.num_documents:
            raise IndexError(f"document {document} out of range for {self.num_documents} documents")
        shard = int(np.searchsorted(self._document_bases, document, side="right")) - 1
        local = document - int(self._document_bases[shard])
        first, stop = self._document_offsets[shard][local : local + 2].tolist()
        bounds = self._sentence_offsets[shard][first : stop + 1].tolist()
        tokens = self._tokens[shard]
        return [tokens[start:end] for start, end in itertools.pairwise(bounds)]

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Global tokens ``start:stop`` as a view; the range must lie in one shard, as any document's does."""
        # The shard holding token `start`; the last one when `start` is the end of the split.
        shard = min(int(np.searchsorted(self._token_bases, start, side="right")) - 1, len(self._tokens) - 1)
        if not (0 <= start <= stop <= int(self._token_bases[shard + 1])):
            raise IndexError(f"tokens {start}:{stop} do not lie within one shard (documents never straddle shards)")
        base = int(self._token_bases[shard])
        return self._tokens[shard][start - base : stop - base]

    @cached_property
    def sentence_offsets(self) -> np.ndarray:
        """(S+1,) int64: sentence i is ``tokens(offsets[i], offsets[i + 1])``. Built on first use (8 bytes per
        sentence in memory)."""
        return _join_offsets(self._sentence_offsets, self._token_bases)

    @cached_property
    def document_offsets(self) -> np.ndarray:
        """(D+1,) int64: document j is sentences ``offsets[j]`` to ``offsets[j + 1]``. Built on first use."""
        return _join_offsets(self._document_offsets, self._sentence_bases)


def _join_offsets(local_offsets: list[np.ndarray], bases: np.ndarray) -> np.ndarray:
    """Concatenate per-shard (N_k + 1,) offsets into global (N + 1,) ones, shifting shard k by ``bases[k]``."""
    pieces = [offsets[:-1] + base for offsets, base in zip(local_offsets, bases.tolist()[:-1], strict=True)]
    return np.concatenate([*pieces, bases[-1:]]).astype(np.int64)


def _open_array(path: Path, length: int, dtype: np.dtype) -> np.ndarray:
    """Memory-map a 1-D ``.npy`` file and check it is the ``length`` × ``dtype`` array the manifest promises."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise BertforgeError(f"{path}: cannot be read ({error}); re-run data prepare") from None
    if array.shape != (length,) or array.dtype != dtype:
        raise BertforgeError(
            f"{path}: holds {array.shape} {array.dtype}, the manifest says ({length},) {dtype}; re-run data prepare"
        )
    return array
