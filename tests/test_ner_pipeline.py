"""NER pipeline: exact character offsets, whole-word entities, Chinese, long texts, every aggregation mode."""

import pytest
import torch

from bertforge import BertConfig, BertforgeError
from bertforge.heads import BertForTokenClassification
from bertforge.pipelines import pipeline
from bertforge.tokenizer import train_tokenizer

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
ENGLISH = "Müller  visited São Paulo, then   Zürich!! Unbelievable... naïve café-owners  (really) came"
CHINESE = "张三在北京大学工作，李四去了上海。"


def tagger_folder(tmp_path, corpus_text, forced_tag):
    """A tiny tagger whose classifier bias forces one tag everywhere, so expected entities are known."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text * 3, encoding="utf-8")
    tokenizer = train_tokenizer([corpus], 70, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    labels = {"id2label": dict(enumerate(TAGS)), "label2id": {t: i for i, t in enumerate(TAGS)}}
    model = BertForTokenClassification(BertConfig.preset("tiny", vocab_size=len(tokenizer), **labels))
    with torch.no_grad():
        model.classifier.bias[TAGS.index(forced_tag)] = 50.0
    folder = tmp_path / "tagger"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def words_of(text):
    """(start, end) of every pre-tokenized word: runs of letters, or single punctuation marks."""
    import re

    return [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]


@pytest.mark.parametrize("aggregation", ["simple", "first", "average", "max"])
def test_entities_are_whole_words_with_exact_offsets(tmp_path, aggregation):
    folder = tagger_folder(tmp_path, "visited then came really owners", "B-PER")  # small vocab: many word pieces
    entities = pipeline("ner", model=folder, aggregation=aggregation)(ENGLISH)
    assert [(e["start"], e["end"]) for e in entities] == words_of(ENGLISH)  # B- everywhere: one entity per word
    for entity in entities:
        assert ENGLISH[entity["start"] : entity["end"]] == entity["word"]
        assert entity["entity_group"] == "PER" and 0 <= entity["score"] <= 1


def test_inside_tags_join_words_into_one_entity(tmp_path):
    folder = tagger_folder(tmp_path, "visited then came", "I-LOC")
    entities = pipeline("ner", model=folder)("São Paulo is big")
    assert len(entities) == 1  # a run of I- tags is read leniently as one entity, as seqeval does
    assert entities[0]["word"] == "São Paulo is big" and (entities[0]["start"], entities[0]["end"]) == (0, 16)


def test_no_aggregation_lists_word_pieces_with_offsets(tmp_path):
    folder = tagger_folder(tmp_path, "visited then came", "B-LOC")
    pieces = pipeline("ner", model=folder, aggregation="none")(ENGLISH)
    assert len(pieces) > len(words_of(ENGLISH))  # words split into several pieces
    for piece in pieces:
        assert ENGLISH[piece["start"] : piece["end"]] == piece["word"] and piece["entity"] == "B-LOC"


def test_chinese_is_tagged_character_by_character(tmp_path):
    folder = tagger_folder(tmp_path, CHINESE, "B-LOC")
    entities = pipeline("ner", model=folder)(CHINESE)
    assert [e["word"] for e in entities] == list(CHINESE)
    assert all(CHINESE[e["start"] : e["end"]] == e["word"] for e in entities)


def test_long_text_gives_the_same_entities_as_when_it_fits(tmp_path):
    folder = tagger_folder(tmp_path, "visited then came really owners", "B-PER")
    text = " ".join([ENGLISH] * 8)
    fits = pipeline("ner", model=folder, max_length=512)(text)
    windowed = pipeline("ner", model=folder, max_length=40)(text)
    assert windowed == fits
    assert len(fits) == len(words_of(text))


def test_batch_keeps_input_order_and_bad_aggregation_is_explained(tmp_path):
    folder = tagger_folder(tmp_path, "visited then came", "B-PER")
    tagger = pipeline("ner", model=folder)
    texts = ["then came", CHINESE, "visited"]
    assert tagger(texts) == [tagger(text) for text in texts]
    with pytest.raises(BertforgeError, match="aggregation 'longest'"):
        pipeline("ner", model=folder, aggregation="longest")
