"""prepare_corpus and ShardedCorpus: round trip, splits, determinism, shard layout and errors on bad input.

Everything runs on a generated English and Chinese corpus with a tokenizer trained on it in a few milliseconds.
"""

import json
import logging
import random

import numpy as np
import pytest

from bertforge import BertforgeError
from bertforge.data.shard_reader import MANIFEST_NAME, ShardedCorpus, check_tokenizer, load_manifest
from bertforge.data.shard_writer import prepare_corpus
from bertforge.tokenizer import SPECIAL_TOKENS, BertTokenizer, train_tokenizer

ENGLISH_WORDS = ("the", "cat", "dog", "sat", "on", "a", "mat", "and", "ran", "to", "house", "tree", "big", "red")
CHINESE_CHARACTERS = "我你他她们的是在有不了人这中大为上个国和地到以说时要就出会可也"


def english_sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(ENGLISH_WORDS, k=rng.randint(3, 9))).capitalize() + rng.choice(".!?")


def chinese_sentence(rng: random.Random) -> str:
    return "".join(rng.choices(CHINESE_CHARACTERS, k=rng.randint(4, 12))) + rng.choice("。！？")


def make_documents(rng: random.Random, count: int, chinese: bool) -> list[list[list[str]]]:
    """``count`` documents, each a list of lines, each line a list of 1-3 sentences."""
    sentence = chinese_sentence if chinese else english_sentence
    return [[[sentence(rng) for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 4))] for _ in range(count)]


def line_text(sentences: list[str]) -> str:
    # Chinese sentences follow each other without a space, English ones with one.
    return ("" if sentences[0][-1] in "。！？" else " ").join(sentences)


def document_text(document: list[list[str]]) -> str:
    return "\n".join(line_text(line) for line in document)


def write_text_corpus(path, documents, *, crlf=False, bom=False):
    text = "\n" + "\n\n\n".join(document_text(document) for document in documents) + "\n\n"
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    return path


def write_jsonl_corpus(path, documents, *, crlf=False, bom=False):
    # A blank line inside a document's text and a blank line between records are both ignored.
    records = [
        json.dumps({"id": i, "text": document_text(doc).replace("\n", "\n\n", 1)}) for i, doc in enumerate(documents)
    ]
    text = "\n".join(records[:2]) + "\n\n" + "\n".join(records[2:]) + "\n"
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three files (LF text, BOM + CRLF Chinese text, BOM + CRLF JSONL) and their documents' sentences in order."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    english = make_documents(rng, 12, chinese=False)
    chinese = make_documents(rng, 12, chinese=True)
    mixed = [
        doc for pair in zip(make_documents(rng, 6, False), make_documents(rng, 6, True), strict=True) for doc in pair
    ]
    files = [
        write_text_corpus(folder / "english.txt", english),
        write_text_corpus(folder / "chinese.txt", chinese, crlf=True, bom=True),
        write_jsonl_corpus(folder / "mixed.jsonl", mixed, crlf=True, bom=True),
    ]
    documents = [[sentence for line in doc for sentence in line] for doc in english + chinese + mixed]
    return files, documents


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory):
    files, _ = corpus
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(files[:2], 300, lowercase=True, show_progress=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return BertTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def prepared(corpus, tokenizer_dir, tmp_path_factory):
    files, _ = corpus
    out = tmp_path_factory.mktemp("prepared")
    manifest = prepare_corpus(files, tokenizer_dir, out, valid_fraction=0.2, workers=1, show_progress=False)
    return out, manifest


def split_documents(out, split) -> list[list[list[int]]]:
    """Every document of a split as lists of token ids per sentence, read through document_sentences."""
    shards = ShardedCorpus(out, split)
    return [[sentence.tolist() for sentence in shards.document_sentences(d)] for d in range(shards.num_documents)]


def token_ids(tokenizer, documents) -> list[list[list[int]]]:
    return [tokenizer(sentences, add_special_tokens=False)["input_ids"] for sentences in documents]


def folder_bytes(out) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


# ---- round trip -------------------------------------------------------------------------------------------


def test_shards_hold_every_sentence_of_every_document_in_order(prepared, corpus, tokenizer):
    out, _ = prepared
    _, documents = corpus
    expected = token_ids(tokenizer, documents)
    train, valid = split_documents(out, "train"), split_documents(out, "valid")
    assert train and valid
    # Each split keeps corpus order; together they hold every document exactly once.
    train_positions = [expected.index(document) for document in train]
    valid_positions = [expected.index(document) for document in valid]
    assert train_positions == sorted(train_positions)
    assert valid_positions == sorted(valid_positions)
    assert sorted(train_positions + valid_positions) == list(range(len(documents)))


def test_tokens_decode_back_to_the_sentences(prepared, corpus, tokenizer):
    out, _ = prepared
    _, documents = corpus
    by_ids = {
        json.dumps(ids): sentences for ids, sentences in zip(token_ids(tokenizer, documents), documents, strict=True)
    }
    for split in ("train", "valid"):
        for document in split_documents(out, split):
            for ids, sentence in zip(document, by_ids[json.dumps(document)], strict=True):
                assert tokenizer.decode(ids).replace(" ", "") == sentence.lower().replace(" ", "")


def test_manifest_counts_equal_what_the_reader_sees(prepared, corpus, tokenizer):
    out, manifest = prepared
    files, documents = corpus
    assert load_manifest(out) == manifest
    for split in ("train", "valid"):
        shards = ShardedCorpus(out, split)
        stats = manifest.splits[split]
        assert (shards.num_documents, shards.num_sentences, shards.num_tokens) == (
            stats.documents,
            stats.sentences,
            stats.tokens,
        )
    assert [source.path for source in manifest.sources] == [str(path) for path in files]
    assert [source.format for source in manifest.sources] == ["text", "text", "jsonl"]
    assert [source.bytes for source in manifest.sources] == [path.stat().st_size for path in files]
    assert [source.documents for source in manifest.sources] == [12, 12, 12]
    expected = token_ids(tokenizer, documents)
    assert sum(source.sentences for source in manifest.sources) == sum(len(document) for document in expected)
    total_tokens = sum(len(sentence) for document in expected for sentence in document)
    assert sum(source.tokens for source in manifest.sources) == total_tokens
    assert manifest.splits["train"].tokens + manifest.splits["valid"].tokens == total_tokens
    assert manifest.skipped_sentences == manifest.skipped_documents == 0
    assert manifest.warnings == []


def test_global_offsets_agree_with_document_sentences(prepared):
    out, _ = prepared
    shards = ShardedCorpus(out, "train")
    sentence_offsets, document_offsets = shards.sentence_offsets, shards.document_offsets
    assert sentence_offsets.shape == (shards.num_sentences + 1,)
    assert document_offsets.shape == (shards.num_documents + 1,)
    assert sentence_offsets[-1] == shards.num_tokens
    for document in range(shards.num_documents):
        first, stop = document_offsets[document], document_offsets[document + 1]
        from_offsets = [shards.tokens(sentence_offsets[i], sentence_offsets[i + 1]) for i in range(first, stop)]
        from_document = shards.document_sentences(document)
        assert [s.tolist() for s in from_offsets] == [s.tolist() for s in from_document]
    # Sentences are views into the memory-mapped shard, not copies.
    assert not shards.document_sentences(0)[0].flags.owndata


def test_small_vocabulary_is_stored_as_uint16_with_a_tokenizer_copy(prepared, tokenizer):
    out, manifest = prepared
    assert manifest.token_dtype == "uint16"
    assert manifest.vocab_size == len(tokenizer)
    assert ShardedCorpus(out).document_sentences(0)[0].dtype == np.uint16
    assert {"vocab.txt", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (out / "tokenizer").iterdir()}
    check_tokenizer(out, BertTokenizer.from_pretrained(out / "tokenizer"))
    check_tokenizer(out, tokenizer)


def test_check_tokenizer_names_both_fingerprints(prepared, corpus, tmp_path):
    out, manifest = prepared
    files, _ = corpus
    cased = train_tokenizer(files[:2], 300, lowercase=False, show_progress=False)
    with pytest.raises(BertforgeError, match="made with a different tokenizer") as error:
        check_tokenizer(out, cased)
    assert manifest.tokenizer_fingerprint[:16] in str(error.value)
    assert str(out / "tokenizer") in str(error.value)


def test_large_vocabulary_is_stored_as_uint32(tmp_path):
    filler = [f"filler{i}" for i in range(70_000)]
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *filler, "hello", "world", "big", "ids", "."])}
    BertTokenizer(vocab).save_pretrained(tmp_path / "big-tokenizer")
    text = write_text_corpus(tmp_path / "corpus.txt", [[["Hello world.", "Big ids."]], [["World hello."]]])
    prepare_corpus([text], tmp_path / "big-tokenizer", tmp_path / "out", workers=1, show_progress=False)
    assert load_manifest(tmp_path / "out").token_dtype == "uint32"
    documents = split_documents(tmp_path / "out", "train") + split_documents(tmp_path / "out", "valid")
    hello, world, big, ids, period = (vocab[token] for token in ("hello", "world", "big", "ids", "."))
    assert sorted(documents) == sorted([[[hello, world, period], [big, ids, period]], [[world, hello, period]]])


# ---- splits, shards, determinism ----------------------------------------------------------------------------


def test_several_shards_keep_documents_whole(corpus, tokenizer_dir, tokenizer, tmp_path):
    files, documents = corpus
    manifest = prepare_corpus(files, tokenizer_dir, tmp_path, shard_tokens=150, workers=1, show_progress=False)
    shards = manifest.splits["train"].shards
    assert len(shards) > 3
    assert all(shard.tokens >= 150 for shard in shards[:-1])
    assert sorted(split_documents(tmp_path, "train") + split_documents(tmp_path, "valid")) == sorted(
        token_ids(tokenizer, documents)
    )


def test_output_is_byte_identical_across_workers_and_reruns(corpus, tokenizer_dir, tmp_path):
    files, _ = corpus
    options = {"valid_fraction": 0.2, "shard_tokens": 200, "show_progress": False}
    prepare_corpus(files, tokenizer_dir, tmp_path / "one", workers=1, **options)
    prepare_corpus(files, tokenizer_dir, tmp_path / "two", workers=2, **options)
    first = folder_bytes(tmp_path / "one")
    assert sum(name.endswith(".tokens.npy") for name in first) > 2
    assert folder_bytes(tmp_path / "two") == first
    # Re-running into a folder with fewer, larger shards removes the old ones.
    prepare_corpus(files, tokenizer_dir, tmp_path / "one", workers=1, show_progress=False)
    assert sorted(path.name for path in (tmp_path / "one" / "train").iterdir()) == [
        "shard-00000.documents.npy",
        "shard-00000.sentences.npy",
        "shard-00000.tokens.npy",
    ]
    prepare_corpus(files, tokenizer_dir, tmp_path / "one", workers=1, **options)
    assert folder_bytes(tmp_path / "one") == first


def test_duplicate_documents_share_a_split(tokenizer_dir, tmp_path):
    rng = random.Random(1)
    documents = make_documents(rng, 20, chinese=False)
    copies = documents * 2
    rng.shuffle(copies)
    path = write_text_corpus(tmp_path / "duplicates.txt", copies)
    prepare_corpus([path], tokenizer_dir, tmp_path / "out", valid_fraction=0.3, workers=1, show_progress=False)
    train, valid = split_documents(tmp_path / "out", "train"), split_documents(tmp_path / "out", "valid")
    assert len(train) + len(valid) == 40
    assert valid and train
    assert not {json.dumps(d) for d in train} & {json.dumps(d) for d in valid}


def test_two_documents_give_each_split_one(tokenizer_dir, tmp_path):
    path = write_text_corpus(tmp_path / "two.txt", [[["The cat sat."]], [["The dog ran."]]])
    manifest = prepare_corpus([path], tokenizer_dir, tmp_path / "a", valid_fraction=1e-9, show_progress=False)
    assert (manifest.splits["train"].documents, manifest.splits["valid"].documents) == (1, 1)
    manifest = prepare_corpus([path], tokenizer_dir, tmp_path / "b", valid_fraction=0.999, show_progress=False)
    assert (manifest.splits["train"].documents, manifest.splits["valid"].documents) == (1, 1)
    manifest = prepare_corpus([path], tokenizer_dir, tmp_path / "c", valid_fraction=0.0, show_progress=False)
    assert (manifest.splits["train"].documents, manifest.splits["valid"].documents) == (2, 0)
    assert ShardedCorpus(tmp_path / "c", "valid").num_tokens == 0


# ---- what is skipped or warned about ------------------------------------------------------------------------


def test_empty_sentences_and_documents_are_skipped_and_counted(tokenizer_dir, tmp_path):
    text = tmp_path / "noise.txt"
    # "\u200b" and "\x07" are dropped by BERT's normaliser: the sentence, then the whole second document, vanish.
    text.write_text("The cat sat.\n\u200b\n\n\x07\n\nThe dog ran.\n", encoding="utf-8")
    jsonl = tmp_path / "noise.jsonl"
    jsonl.write_text('{"text": ""}\n{"text": "\\n\\n"}\n{"text": "Red tree."}\n', encoding="utf-8")
    manifest = prepare_corpus([text, jsonl], tokenizer_dir, tmp_path / "out", workers=1, show_progress=False)
    by_file = {source.path: source for source in manifest.sources}
    assert (by_file[str(text)].documents, by_file[str(text)].skipped_sentences) == (2, 2)
    assert by_file[str(text)].skipped_documents == 1
    assert (by_file[str(jsonl)].documents, by_file[str(jsonl)].skipped_documents) == (1, 2)
    assert (manifest.skipped_sentences, manifest.skipped_documents) == (2, 3)


def test_text_without_blank_lines_is_one_document_with_a_warning(tokenizer_dir, tmp_path, caplog):
    rng = random.Random(2)
    path = tmp_path / "flat.txt"
    path.write_text("\n".join(english_sentence(rng) for _ in range(1001)) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="bertforge"):
        manifest = prepare_corpus([path], tokenizer_dir, tmp_path / "out", workers=1, show_progress=False)
    assert sum(source.documents for source in manifest.sources) == 1
    assert len(manifest.warnings) == 1
    assert manifest.warnings[0].startswith(f"{path}: no blank line between documents: 1001 lines read as one")
    assert manifest.warnings[0] in caplog.text


# ---- bad input ----------------------------------------------------------------------------------------------

BAD_FILES = {
    "empty file": ("empty.txt", b"", r"empty\.txt: is empty"),
    "only blank lines": ("blank.txt", b"\n  \r\n\n", r"blank\.txt: has only blank lines"),
    "binary file": ("data.bin", b"text\nmore\x00\x01\x02\n", r"data\.bin:2: contains NUL bytes"),
    "not UTF-8": ("latin1.txt", "One.\n\nCaf\xe9 au lait.\n".encode("latin-1"), r"latin1\.txt:3: not UTF-8"),
    "malformed JSONL": ("bad.jsonl", b'{"text": "Fine."}\n{"text": "Broken\n', r"bad\.jsonl:2: not valid JSON"),
    "JSONL without the field": (
        "fields.jsonl",
        b'{"text": "Fine."}\n\n{"body": "Wrong field."}\n',
        r"fields\.jsonl:3: no 'text' field \(fields: body\)",
    ),
    "JSONL line not an object": ("list.jsonl", b'["Fine."]\n', r"list\.jsonl:1: a JSON list, not an object"),
    "JSONL text not a string": (
        "number.jsonl",
        b'{"text": 5}\n',
        r"number\.jsonl:1: field 'text' is not a string but int",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_named_with_their_line(case, tokenizer_dir, tmp_path):
    name, content, message = BAD_FILES[case]
    good = write_text_corpus(tmp_path / "good.txt", [[["The cat sat."]], [["The dog ran."]]])
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BertforgeError, match=message):
        prepare_corpus([good, tmp_path / name], tokenizer_dir, tmp_path / "out", workers=1, show_progress=False)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_missing_file_and_folder_are_refused(tokenizer_dir, tmp_path):
    with pytest.raises(BertforgeError, match=r"nowhere\.txt: no such file"):
        prepare_corpus([tmp_path / "nowhere.txt"], tokenizer_dir, tmp_path / "out", show_progress=False)
    with pytest.raises(BertforgeError, match="is a folder"):
        prepare_corpus([tmp_path], tokenizer_dir, tmp_path / "out", show_progress=False)


def test_failed_preparation_keeps_the_previous_result(corpus, tokenizer_dir, tmp_path):
    files, _ = corpus
    out = tmp_path / "out"
    prepare_corpus(files, tokenizer_dir, out, shard_tokens=200, workers=1, show_progress=False)
    before = folder_bytes(out)
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"text": "Fine."}\n{oops}\n')
    with pytest.raises(BertforgeError, match=r"broken\.jsonl:2"):
        prepare_corpus([*files, broken], tokenizer_dir, out, shard_tokens=200, workers=2, show_progress=False)
    assert folder_bytes(out) == before  # no temporary files left, nothing replaced


def test_output_folder_with_foreign_files_is_refused(corpus, tokenizer_dir, tmp_path):
    files, _ = corpus
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(BertforgeError, match=r"holds files that data preparation did not write \(thesis\.tex\)"):
        prepare_corpus(files, tokenizer_dir, tmp_path, show_progress=False)


@pytest.mark.parametrize(
    ("option", "message"),
    [({"valid_fraction": 1.0}, "valid_fraction"), ({"workers": 0}, "workers"), ({"shard_tokens": 0}, "shard_tokens")],
)
def test_bad_options_are_refused(option, message, corpus, tokenizer_dir, tmp_path):
    files, _ = corpus
    with pytest.raises(BertforgeError, match=message):
        prepare_corpus(files, tokenizer_dir, tmp_path / "out", show_progress=False, **option)


def test_reader_refuses_incomplete_or_damaged_folders(prepared, tmp_path):
    with pytest.raises(BertforgeError, match=r"manifest\.json: not found"):
        ShardedCorpus(tmp_path)
    out, _ = prepared
    with pytest.raises(BertforgeError, match="has no split 'test'"):
        ShardedCorpus(out, "test")
    damaged = tmp_path / "damaged"
    for name, content in folder_bytes(out).items():
        (damaged / name).parent.mkdir(parents=True, exist_ok=True)
        (damaged / name).write_bytes(content)
    tokens = damaged / "train" / "shard-00000.tokens.npy"
    np.save(tokens, np.load(tokens)[:-1])
    with pytest.raises(BertforgeError, match=r"shard-00000\.tokens\.npy: holds"):
        ShardedCorpus(damaged)
