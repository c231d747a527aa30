"""Token-tagging data (named entities): CoNLL-style and JSONL files, and the tag schemes they use.

File format (:func:`read_conll`)
    One token per line, columns separated by spaces or tabs, the token in ``token_column`` and its tag in
    ``tag_column``; a blank line ends a sentence. ``-DOCSTART-`` lines (document breaks in CoNLL-2003) also end
    a sentence and are otherwise skipped. Files are UTF-8, with or without a byte-order mark, with LF or CRLF
    line ends. Only ASCII spaces and tabs separate columns, so a token may be any other character, such as the
    ideographic space U+3000 in Chinese text. JSONL files (:func:`read_tagging_file`) hold tokens and tags, or
    text with character-span entities.

Tag schemes
    A tag is ``O`` or ``PREFIX-TYPE`` (``B-PER``, ``I-LOC``) with one of the prefixes below.

    ``IO``     ``I`` only: adjacent entities of one type cannot be told apart.
    ``BIO``    ``B`` begins an entity, ``I`` continues it (IOB2). The scheme the models here are trained on.
    ``BIOES``  adds ``E`` (last token of an entity) and ``S`` (single-token entity). ``BMES``, as in the MSRA
               Chinese corpus, is the same scheme with ``M`` for ``I``.

Invalid sequences (``O I-PER``, ``B-PER I-LOC``, ``E-PER I-PER``) are read leniently, the way ``seqeval``
chunks them by default: a tag that cannot continue the entity before it begins a new one. :func:`to_bio` and
:func:`repair_bio` therefore always return valid BIO, and :func:`spans_from_bio` never drops a tagged token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from bertforge.assets import cache_dir, fetch
from bertforge.errors import BertforgeError, read_user_text, where

Scheme = Literal["IO", "BIO", "BIOES"]
SCHEMES: tuple[str, ...] = ("IO", "BIO", "BIOES")
OUTSIDE = "O"
DOCSTART = "-DOCSTART-"
# Which prefixes each scheme may use; M is BMES's name for BIOES's I.
_SCHEME_PREFIXES: dict[str, frozenset[str]] = {
    "IO": frozenset("I"),
    "BIO": frozenset("BI"),
    "BIOES": frozenset("BIMES"),
}
_PREFIXES = _SCHEME_PREFIXES["BIOES"]
# Prefixes after which a tag of the same type may continue the entity; E and S close it.
_OPEN = frozenset("BIM")
_COLUMN_SEPARATOR = re.compile(r"[ \t]+")


@dataclass
class TaggedSentence:
    """One sentence of a tagging file: its tokens and their tags, as written in the file."""

    tokens: list[str]
    tags: list[str]  # one per token
    line: int  # line of the file where the sentence's first token is, for messages about it


def split_tag(tag: str, location: str | None = None) -> tuple[str, str | None]:
    """Split a tag into ``(prefix, type)``: ``"B-PER" -> ("B", "PER")``, ``"O" -> ("O", None)``.

    Raises :class:`BertforgeError` (starting with ``location``, such as ``path:line``, when given) for a tag that is
    neither ``O`` nor a known prefix, a hyphen and a non-empty type.
    """
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, hyphen, type_ = tag.partition("-")
    if prefix in _PREFIXES and hyphen and type_:
        return prefix, type_
    lead = f"{location}: " if location else ""
    raise BertforgeError(
        f"{lead}unknown tag {tag!r}; tags are O or PREFIX-TYPE with prefix one of B, I, E, S, M (such as B-PER)"
    )


def read_conll(
    path: str | Path, *, token_column: int = 0, tag_column: int = -1, validate_tags: bool = True
) -> list[TaggedSentence]:
    """Read a CoNLL-style tagging file (see the module docstring) into sentences.

    Columns are counted from 0; negative numbers count from the end, so the default reads the first and last
    columns. Every data line must have as many columns as the file's first data line. With ``validate_tags``
    each tag must have a shape :func:`split_tag` accepts (the scheme is not checked: see :func:`detect_scheme`).

    Raises :class:`BertforgeError` naming ``path:line`` for a missing or empty file, bytes that are not UTF-8, a
    line with the wrong number of columns, a column option the file does not have, or (with ``validate_tags``)
    an unknown tag.
    """
    path = Path(path)
    text = read_user_text(path, "check the path")

    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    width: int | None = None  # the column count of the first data line, which every data line must match

    def finish() -> None:
        if tokens:
            sentences.append(TaggedSentence(tokens=list(tokens), tags=list(tags), line=start))
            tokens.clear()
            tags.clear()

    # str.splitlines would also split at U+2028, U+0085 and other characters that can be tokens.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r").strip(" \t")
        if not line:
            finish()
            continue
        columns = _COLUMN_SEPARATOR.split(line)
        if columns[0] == DOCSTART:
            finish()
            continue
        if width is None:
            width = len(columns)
            for name, column in (("token", token_column), ("tag", tag_column)):
                if not -width <= column < width:
                    raise BertforgeError(
                        f"{where(path, number)}: has {width} columns, so there is no {name} column {column}; "
                        f"pass a {name} column between {-width} and {width - 1}"
                    )
        elif len(columns) != width:
            raise BertforgeError(
                f"{where(path, number)}: has {len(columns)} columns where the file's first line has {width}; "
                "give every line the same columns, separated by spaces or tabs (tokens cannot contain them)"
            )
        tag = columns[tag_column]
        if validate_tags:
            split_tag(tag, where(path, number))
        if not tokens:
            start = number
        tokens.append(columns[token_column])
        tags.append(tag)
    finish()

    if not sentences:
        raise BertforgeError(f"{path}: has no tagged tokens; add lines of token and tag, or check the path")
    return sentences


# A word of JSONL ``text`` records: one CJK ideograph, a run of other letters and digits, or one other symbol; the
# same units as BERT's pre-tokenizer, so an entity span that respects them never cuts a word piece's word.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ebef\U0002f800-\U0002fa1f"
_WORD = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+|[^\w\s]")


def read_tagging_file(path: str | Path, *, token_column: int = 0, tag_column: int = -1) -> list[TaggedSentence]:
    """Read tagged sentences from a CoNLL-style file, or from JSONL when the name ends in ``.jsonl``.

    A JSONL line is ``{"tokens": [...], "tags": [...]}`` (one tag per token), or ``{"text": "...", "entities":
    [{"start": 0, "end": 5, "label": "PER"}, ...]}`` with character spans: the text is split into words (CJK
    characters one by one, runs of letters and digits, single punctuation marks) and each entity's words are
    tagged B-/I- (BIO). A span that cuts a word, overlaps another or leaves the text is a located error.
    """
    path = Path(path)
    if path.suffix != ".jsonl":
        return read_conll(path, token_column=token_column, tag_column=tag_column)
    sentences = []
    for number, line in enumerate(read_user_text(path, "check the path").split("\n"), start=1):
        if line.strip():
            sentences.append(_jsonl_sentence(line, where(path, number), number))
    if not sentences:
        raise BertforgeError(f"{path}: has no records; write one JSON object per line")
    return sentences


def read_token_lines(lines: Sequence[str], source: str) -> list[list[str]]:
    """Sentences to tag, from JSONL lines of ``{"tokens": ["word", ...]}`` (other fields, such as "tags", are
    ignored; blank lines are skipped). ``source`` names the file in error messages."""
    sentences = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        location = where(source, number)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise BertforgeError(f"{location}: not a JSON object ({error.msg} at column {error.colno})") from None
        tokens = record.get("tokens") if isinstance(record, dict) else None
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t.strip() for t in tokens):
            raise BertforgeError(f'{location}: expected {{"tokens": ["word", ...]}}, a non-empty list of words')
        if any(_COLUMN_SEPARATOR.search(token) for token in tokens):
            raise BertforgeError(f"{location}: a token contains a space or tab; split it into separate tokens")
        sentences.append(list(tokens))
    if not sentences:
        raise BertforgeError(f'{source}: has no records; write one {{"tokens": [...]}} object per line')
    return sentences


def _jsonl_sentence(line: str, location: str, number: int) -> TaggedSentence:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise BertforgeError(f"{location}: not a JSON object ({error.msg} at column {error.colno})") from None
    if isinstance(record, dict) and isinstance(record.get("tokens"), list) and isinstance(record.get("tags"), list):
        tokens, tags = record["tokens"], record["tags"]
        if len(tokens) != len(tags) or not tokens or not all(isinstance(x, str) and x for x in tokens + tags):
            raise BertforgeError(f"{location}: 'tokens' and 'tags' must be non-empty lists of strings of equal length")
        if any(_COLUMN_SEPARATOR.search(token) for token in tokens):
            raise BertforgeError(f"{location}: a token contains a space or tab; split it into separate tokens")
        for tag in tags:
            split_tag(tag, location)
        return TaggedSentence(tokens=list(tokens), tags=list(tags), line=number)
    if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
        raise BertforgeError(f"{location}: expected {{\"tokens\": [...], \"tags\": [...]}} or "
                             "{\"text\": \"...\", \"entities\": [...]}")  # fmt: skip
    text, entities = record["text"], record.get("entities", [])
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    starts, ends = {s: i for i, (s, _) in enumerate(words)}, {e: i for i, (_, e) in enumerate(words)}
    tags = [OUTSIDE] * len(words)
    for entity in entities if isinstance(entities, list) else [None]:
        if (
            not isinstance(entity, dict)
            or not all(isinstance(entity.get(k), int) for k in ("start", "end"))
            or not (isinstance(entity.get("label"), str) and entity["label"])
        ):
            raise BertforgeError(f"{location}: each entity needs integer 'start' and 'end' and a 'label' string")
        start, end, label = entity["start"], entity["end"], entity["label"]
        if not 0 <= start < end <= len(text) or start not in starts or end not in ends:
            shown = text[max(0, start) : max(0, end)]
            raise BertforgeError(
                f"{location}: entity {label} at characters {start}:{end} ({shown!r}) does not start and end at word "
                "boundaries of the text; fix its offsets (end is exclusive)"
            )
        first, last = starts[start], ends[end]
        if any(tag != OUTSIDE for tag in tags[first : last + 1]):
            raise BertforgeError(f"{location}: entity {label} at {start}:{end} overlaps another entity")
        tags[first : last + 1] = [f"B-{label}"] + [f"I-{label}"] * (last - first)
    return TaggedSentence(tokens=[text[s:e] for s, e in words], tags=tags, line=number)


def detect_scheme(tags: Iterable[str]) -> Scheme:
    """Name the scheme of ``tags`` from the prefixes they use.

    Any ``E``, ``S`` or ``M`` prefix means ``BIOES`` (BMES included); otherwise any ``B`` means ``BIO``; otherwise
    any ``I`` means ``IO``. Tags that are all ``O`` give ``BIO``, which needs no conversion. Pass the tags of a
    whole file, not one sentence: a single sentence may not show every prefix its scheme uses.
    """
    prefixes = {split_tag(tag)[0] for tag in tags}
    if prefixes & {"E", "S", "M"}:
        return "BIOES"
    if "B" in prefixes or "I" not in prefixes:
        return "BIO"
    return "IO"


def to_bio(tags: Sequence[str], scheme: str) -> list[str]:
    """Convert tags of ``scheme`` (``IO``, ``BIO`` or ``BIOES``, which includes BMES) to valid BIO.

    Raises :class:`BertforgeError` for an unknown scheme, or a tag whose prefix ``scheme`` does not use.
    """
    if scheme not in _SCHEME_PREFIXES:
        raise BertforgeError(f"unknown tag scheme {scheme!r}; pass one of {', '.join(SCHEMES)}")
    allowed = _SCHEME_PREFIXES[scheme]
    for tag in tags:
        prefix, _ = split_tag(tag)
        if prefix != OUTSIDE and prefix not in allowed:
            raise BertforgeError(
                f"tag {tag!r} is not one of the {scheme} scheme's; pass the scheme detect_scheme names for these tags"
            )
    return _write_bio(len(tags), chunk_entities(tags))


def repair_bio(tags: Sequence[str]) -> list[str]:
    """Make a BIO sequence valid: an ``I-X`` that does not follow ``B-X`` or ``I-X`` becomes ``B-X``.

    Meant for decoding a model's predictions, which need not be valid. Raises :class:`BertforgeError` for tags
    that are not BIO.
    """
    return to_bio(tags, "BIO")


def spans_from_bio(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of BIO ``tags`` as ``(type, start, end)`` token spans, ``end`` exclusive, in order.

    Invalid sequences are read leniently (an ``I-X`` that cannot continue an entity begins one). Raises
    :class:`BertforgeError` for tags that are not BIO: convert them with :func:`to_bio` first.
    """
    for tag in tags:
        if split_tag(tag)[0] not in ("O", "B", "I"):
            raise BertforgeError(f"tag {tag!r} is not BIO; convert the tags with to_bio first")
    return chunk_entities(tags)


def bio_to_bioes(tags: Sequence[str], *, inside: Literal["I", "M"] = "I") -> list[str]:
    """Convert BIO ``tags`` to BIOES; ``inside="M"`` writes BMES instead. Invalid BIO is read leniently."""
    out = [OUTSIDE] * len(tags)
    for type_, start, end in spans_from_bio(tags):
        if end - start == 1:
            out[start] = f"S-{type_}"
            continue
        out[start] = f"B-{type_}"
        for position in range(start + 1, end - 1):
            out[position] = f"{inside}-{type_}"
        out[end - 1] = f"E-{type_}"
    return out


def chunk_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities of tags in any scheme as ``(type, start, end)``, ``end`` exclusive, chunked leniently.

    A tag continues the entity before it only if its prefix is I, M or E and the tag before is B-, I- or M- of
    the same type; any other non-O tag begins a new entity. For B/I/E/S/O tags these are exactly seqeval's
    default (``mode=None``) chunks, which is what :mod:`bertforge.ner_metrics` relies on.
    """
    spans: list[tuple[str, int, int]] = []
    open_type: str | None = None  # type of the entity the next tag may continue; None when it cannot continue
    for position, tag in enumerate(tags):
        prefix, type_ = split_tag(tag)
        if type_ is None:
            open_type = None
            continue
        if prefix in ("B", "S") or type_ != open_type:
            spans.append((type_, position, position + 1))
        else:
            spans[-1] = (type_, spans[-1][1], position + 1)
        open_type = type_ if prefix in _OPEN else None
    return spans


def _write_bio(length: int, spans: Iterable[tuple[str, int, int]]) -> list[str]:
    """BIO tags of ``length`` tokens with the given entity spans tagged and the rest ``O``."""
    out = [OUTSIDE] * length
    for type_, start, end in spans:
        out[start] = f"B-{type_}"
        for position in range(start + 1, end):
            out[position] = f"I-{type_}"
    return out


# ---- ready-made tagging data sets ---------------------------------------------------------------------------

MSRA_DEV_SENTENCES = 2500  # carved from MSRA's training file by seed 0; its 5,000-sentence test file stays the test


def resolve_tagging_dataset(name_or_path: str, split: str) -> Path:
    """A tagging file path, or ``msra_ner``'s train/dev/test split written once into the cache.

    ``msra_ner`` is MSRA's Chinese NER data (BMES tags over PER, LOC, ORG, one character per line): its test file
    is the test split; ``MSRA_DEV_SENTENCES`` sentences of its training file, chosen with seed 0, are the dev split.
    """
    if Path(name_or_path).exists() or name_or_path != "msra_ner":
        return Path(name_or_path)
    if split not in ("train", "dev", "test"):
        raise BertforgeError(f"unknown split {split!r} of msra_ner; use train, dev or test")
    folder = cache_dir() / "datasets" / "msra_ner"
    if not (folder / "test.txt").is_file():
        source = fetch("msra-ner")
        sentences = read_conll(source / "msra_train.txt")
        dev = set(np.random.default_rng(0).permutation(len(sentences))[:MSRA_DEV_SENTENCES].tolist())
        splits = {
            "train": [s for i, s in enumerate(sentences) if i not in dev],
            "dev": [s for i, s in enumerate(sentences) if i in dev],
            "test": read_conll(source / "msra_test.txt"),
        }
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("train", "dev", "test"):  # test last: its presence marks a complete set
            temporary = folder / f".{name}.txt.tmp"
            blocks = ("".join(f"{t} {g}\n" for t, g in zip(s.tokens, s.tags, strict=True)) for s in splits[name])
            temporary.write_text("\n".join(blocks), encoding="utf-8")
            temporary.replace(folder / f"{name}.txt")
    return folder / f"{split}.txt"
