"""Token-tagging data and entity metrics: the CoNLL reader and its errors, tag schemes (on hand-written lines and the
real MSRA corpus), BIO repair, and entity scores against hand-worked cases and against seqeval itself.
"""

import itertools
import json
import random
from pathlib import Path

import pytest

from bertforge.data.tagging import (
    TaggedSentence,
    bio_to_bioes,
    detect_scheme,
    read_conll,
    read_tagging_file,
    repair_bio,
    spans_from_bio,
    to_bio,
)
from bertforge.errors import BertforgeError
from bertforge.ner_metrics import entity_scores


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    """Write ``content`` byte for byte (no newline translation) and return the path."""
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


# ---- reading files -----------------------------------------------------------------------------------------


def test_conll_with_crlf_docstart_and_extra_columns(tmp_path: Path):
    content = (
        "-DOCSTART- -X- -X- O\r\n\r\n"
        "EU NNP B-NP B-ORG\r\nrejects VBZ B-VP O\r\nGerman JJ B-NP B-MISC\r\n\r\n"
        "Peter NNP B-NP B-PER\r\nBlackburn NNP I-NP I-PER\r\n\r\n\r\n"
        "-DOCSTART- -X- -X- O\r\n\r\n"
        "BRUSSELS NNP B-NP B-LOC\r\n"
    )
    sentences = read_conll(write(tmp_path, "train.txt", "\ufeff" + content))
    assert sentences == [
        TaggedSentence(["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"], line=3),
        TaggedSentence(["Peter", "Blackburn"], ["B-PER", "I-PER"], line=7),
        TaggedSentence(["BRUSSELS"], ["B-LOC"], line=13),
    ]
    pos = read_conll(write(tmp_path, "pos.txt", content), tag_column=1, validate_tags=False)
    assert pos[0].tags == ["NNP", "VBZ", "JJ"]


def test_bmes_lines_convert_to_bio_and_back(tmp_path: Path):
    path = write(
        tmp_path,
        "msra.txt",
        "我 O\r\n在 O\r\n北 B-LOC\r\n京 E-LOC\r\n\r\n中 B-ORG\r\n国 M-ORG\r\n队 E-ORG\r\n李 S-PER\r\n",
    )
    sentences = read_conll(path)
    assert [s.tokens for s in sentences] == [["我", "在", "北", "京"], ["中", "国", "队", "李"]]
    assert detect_scheme(itertools.chain.from_iterable(s.tags for s in sentences)) == "BIOES"
    bio = [to_bio(s.tags, "BIOES") for s in sentences]
    assert bio == [["O", "O", "B-LOC", "I-LOC"], ["B-ORG", "I-ORG", "I-ORG", "B-PER"]]
    assert [bio_to_bioes(tags, inside="M") for tags in bio] == [s.tags for s in sentences]
    assert spans_from_bio(bio[1]) == [("ORG", 0, 3), ("PER", 3, 4)]


def test_real_msra_scheme_and_round_trip(msra_train: Path, tmp_path: Path):
    # The first 200 sentences, copied byte for byte so the test reads a small file with the real encoding.
    data = msra_train.read_bytes()
    head = b"\r\n\r\n".join(data.split(b"\r\n\r\n")[:200]) + b"\r\n"
    sentences = read_conll(write(tmp_path, "msra_head.txt", head))
    assert len(sentences) == 200
    tags = [s.tags for s in sentences]
    assert detect_scheme(itertools.chain.from_iterable(tags)) == "BIOES"
    for sentence in sentences:
        bio = to_bio(sentence.tags, "BIOES")
        assert repair_bio(bio) == bio  # already valid
        assert bio_to_bioes(bio, inside="M") == sentence.tags
    assert sum(len(spans_from_bio(to_bio(t, "BIOES"))) for t in tags) > 50


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a O\nb B-PER I-PER\n", r"bad\.txt:2: has 3 columns where the file's first line has 2"),
        ("a O\n\nb X-PER\n", r"bad\.txt:3: unknown tag 'X-PER'"),
        ("a O\nb PER\n", r"bad\.txt:2: unknown tag 'PER'"),
        ("a O\nb B-\n", r"bad\.txt:2: unknown tag 'B-'"),
        ("a O\r\n\r\nb \xff O\n".encode("latin-1"), r"bad\.txt:3: not valid UTF-8"),
        ("\n-DOCSTART- O\n\n", r"bad\.txt: has no tagged tokens"),
        ("", r"bad\.txt: has no tagged tokens"),
    ],
)
def test_bad_files_name_path_and_line(tmp_path: Path, content: str | bytes, expected: str):
    with pytest.raises(BertforgeError, match=expected):
        read_conll(write(tmp_path, "bad.txt", content))


def test_missing_file_and_missing_column(tmp_path: Path):
    with pytest.raises(BertforgeError, match="no such file"):
        read_conll(tmp_path / "absent.txt")
    with pytest.raises(BertforgeError, match=r"t\.txt:1: has 2 columns, so there is no tag column 2"):
        read_conll(write(tmp_path, "t.txt", "a O\n"), tag_column=2)


# ---- tag schemes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "scheme"),
    [
        (["O", "I-PER", "I-PER", "O"], "IO"),
        (["B-PER", "I-PER", "O"], "BIO"),
        (["O", "O"], "BIO"),
        (["S-PER", "O"], "BIOES"),
        (["B-LOC", "M-LOC", "E-LOC"], "BIOES"),
    ],
)
def test_detect_scheme(tags: list[str], scheme: str):
    assert detect_scheme(tags) == scheme


def test_io_and_bioes_to_bio():
    assert to_bio(["I-PER", "I-PER", "O", "I-LOC", "I-ORG"], "IO") == ["B-PER", "I-PER", "O", "B-LOC", "B-ORG"]
    bioes = ["B-PER", "I-PER", "E-PER", "S-PER", "S-LOC", "B-ORG", "E-ORG", "O"]
    bio = ["B-PER", "I-PER", "I-PER", "B-PER", "B-LOC", "B-ORG", "I-ORG", "O"]
    assert to_bio(bioes, "BIOES") == bio
    assert bio_to_bioes(bio) == bioes
    # An entity closed by E cannot be continued: the I after it begins a new one.
    assert to_bio(["B-PER", "E-PER", "I-PER", "E-PER"], "BIOES") == ["B-PER", "I-PER", "B-PER", "I-PER"]


@pytest.mark.parametrize(
    ("tags", "repaired"),
    [
        (["O", "I-PER", "I-PER"], ["O", "B-PER", "I-PER"]),
        (["I-PER"], ["B-PER"]),
        (["B-PER", "I-LOC", "I-LOC"], ["B-PER", "B-LOC", "I-LOC"]),
        (["B-PER", "I-PER", "B-PER", "I-PER"], ["B-PER", "I-PER", "B-PER", "I-PER"]),
        (["I-PER", "O", "I-PER"], ["B-PER", "O", "B-PER"]),
        ([], []),
    ],
)
def test_repair_bio(tags: list[str], repaired: list[str]):
    assert repair_bio(tags) == repaired


def test_unknown_tags_and_wrong_schemes_are_refused():
    with pytest.raises(BertforgeError, match="unknown tag 'PERSON'"):
        repair_bio(["O", "PERSON"])
    with pytest.raises(BertforgeError, match="unknown tag 'b-PER'"):
        detect_scheme(["b-PER"])
    with pytest.raises(BertforgeError, match="not one of the BIO scheme's"):
        to_bio(["S-PER"], "BIO")
    with pytest.raises(BertforgeError, match="unknown tag scheme 'BILOU'"):
        to_bio(["O"], "BILOU")
    with pytest.raises(BertforgeError, match="not BIO; convert the tags with to_bio"):
        spans_from_bio(["E-PER"])


def test_spans_from_bio():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]
    assert spans_from_bio(tags) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 6)]


# ---- entity metrics ------------------------------------------------------------------------------------------


def test_entity_scores_golden():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "I-ORG", "O"]]  # I-ORG after O starts an entity
    scores = entity_scores(gold, predicted)
    # Found PER and ORG; LOC missed; one wrong ORG predicted: 2 found of 3 predicted and 3 gold.
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["token_accuracy"] == pytest.approx(5 / 7)
    assert scores["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }


def test_entity_scores_edge_cases():
    # A change of type inside a run of I splits it; the boundary must match for the entity to count.
    scores = entity_scores([["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-PER", "I-LOC"]])
    assert (scores["precision"], scores["recall"]) == (0.0, 0.0)
    assert scores["per_type"]["LOC"]["support"] == 0
    empty = entity_scores([["O", "O"]], [["O", "O"]])
    assert (empty["f1"], empty["token_accuracy"], empty["per_type"]) == (0.0, 1.0, {})
    with pytest.raises(BertforgeError, match="sentence 0 has 2 gold tags but 1 predicted"):
        entity_scores([["O", "O"]], [["O"]])
    with pytest.raises(BertforgeError, match="1 gold sentences but 0 predicted"):
        entity_scores([["O"]], [])


def random_sentences(rng: random.Random, count: int) -> list[list[str]]:
    """Tag sequences in any B/I/E/S/O order, so most are invalid in every scheme."""
    tags = ["O"] * 4 + [f"{prefix}-{type_}" for prefix in "BIES" for type_ in ("PER", "LOC", "ORG")]
    return [rng.choices(tags, k=rng.randint(1, 12)) for _ in range(count)]


def corrupt(rng: random.Random, sentence: list[str]) -> list[str]:
    """A prediction near ``sentence``: each tag kept with probability 0.7, else swapped for another."""
    other = ["O", "B-PER", "I-PER", "I-LOC", "E-LOC", "S-ORG", "I-ORG"]
    return [tag if rng.random() < 0.7 else rng.choice(other) for tag in sentence]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entity_scores_match_seqeval(seed: int):
    metrics = pytest.importorskip("seqeval.metrics")
    rng = random.Random(seed)
    valid = [to_bio(tags, "BIOES") for tags in random_sentences(rng, 150)]  # valid BIO, as from a dataset
    gold = valid + random_sentences(rng, 150)
    predicted = [corrupt(rng, tags) for tags in gold]

    ours = entity_scores(gold, predicted)
    assert ours["precision"] == pytest.approx(metrics.precision_score(gold, predicted))
    assert ours["recall"] == pytest.approx(metrics.recall_score(gold, predicted))
    assert ours["f1"] == pytest.approx(metrics.f1_score(gold, predicted))
    assert ours["token_accuracy"] == pytest.approx(metrics.accuracy_score(gold, predicted))
    report = metrics.classification_report(gold, predicted, output_dict=True)
    for type_, scores in ours["per_type"].items():
        theirs = report[type_]
        assert scores == {
            "precision": pytest.approx(theirs["precision"]),
            "recall": pytest.approx(theirs["recall"]),
            "f1": pytest.approx(theirs["f1-score"]),
            "support": theirs["support"],
        }
    assert set(ours["per_type"]) == set(report) - {"micro avg", "macro avg", "weighted avg"}


def test_msra_ner_recipe_splits(msra_train, tmp_path, monkeypatch):
    from bertforge.data.tagging import MSRA_DEV_SENTENCES, detect_scheme, resolve_tagging_dataset

    monkeypatch.setenv("BERTFORGE_CACHE", str(tmp_path))
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "msra-ner").symlink_to(msra_train.parent)  # reuse the fetched asset
    splits = {name: read_conll(resolve_tagging_dataset("msra_ner", name)) for name in ("train", "dev", "test")}
    assert len(splits["dev"]) == MSRA_DEV_SENTENCES and len(splits["test"]) == 5000
    assert len(splits["train"]) + len(splits["dev"]) == len(read_conll(msra_train))
    train_text = {"".join(s.tokens) for s in splits["train"]}
    assert sum("".join(s.tokens) in train_text for s in splits["dev"]) < 50  # only repeated sentences overlap
    assert detect_scheme(tag for s in splits["test"] for tag in s.tags) == "BIOES"
    first = resolve_tagging_dataset("msra_ner", "dev").read_bytes()
    for built in (tmp_path / "datasets" / "msra_ner").iterdir():
        built.unlink()
    assert resolve_tagging_dataset("msra_ner", "dev").read_bytes() == first  # rebuilding gives the same split


def test_jsonl_tokens_and_tags_or_text_with_character_entities(tmp_path: Path):
    path = tmp_path / "ner.jsonl"
    records = [
        {"tokens": ["John", "lives", "in", "New", "York"], "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"]},
        {"text": "Dr. Müller  flew to São Paulo!", "entities": [{"start": 4, "end": 10, "label": "PER"},
                                                               {"start": 20, "end": 29, "label": "LOC"}]},
        {"text": "张三在北京大学工作", "entities": [{"start": 0, "end": 2, "label": "PER"},
                                          {"start": 3, "end": 7, "label": "ORG"}]},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n", encoding="utf-8")
    first, second, third = read_tagging_file(path)
    assert first.tokens == records[0]["tokens"] and first.tags == records[0]["tags"]
    assert second.tokens == ["Dr", ".", "Müller", "flew", "to", "São", "Paulo", "!"]
    assert second.tags == ["O", "O", "B-PER", "O", "O", "B-LOC", "I-LOC", "O"] and second.line == 2
    assert third.tokens == list("张三在北京大学工作")
    assert third.tags == ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O"]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ('{"text": "New York", "entities": [{"start": 0, "end": 6, "label": "LOC"}]}',
         r"ner\.jsonl:1: entity LOC at characters 0:6 \('New Yo'\) does not start and end at word boundaries"),
        ('{"text": "New York", "entities": [{"start": 0, "end": 3, "label": "LOC"}, '
         '{"start": 0, "end": 8, "label": "LOC"}]}', "overlaps another entity"),
        ('{"tokens": ["a", "b"], "tags": ["O"]}', "must be non-empty lists of strings of equal length"),
        ('{"tokens": ["a"], "tags": ["PERSON"]}', "unknown tag 'PERSON'"),
        ('{"text": "x", "entities": [{"start": 0}]}', "each entity needs integer 'start' and 'end'"),
        ("{oops", r"ner\.jsonl:1: not a JSON object"),
    ],
)  # fmt: skip
def test_bad_jsonl_records_are_located_errors(tmp_path: Path, record: str, expected: str):
    path = tmp_path / "ner.jsonl"
    path.write_text(record + "\n")
    with pytest.raises(BertforgeError, match=expected):
        read_tagging_file(path)
