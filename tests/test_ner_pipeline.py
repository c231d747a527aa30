"""NER pipeline: exact character offsets, whole-word entities, whole grapheme clusters, Chinese, long texts, every
aggregation mode."""

import pytest
import regex
import torch

from bertforge import BertConfig, BertforgeError
from bertforge.heads import BertForTokenClassification
from bertforge.pipelines import AGGREGATIONS, is_grapheme_boundary, pipeline
from bertforge.tokenizer import train_tokenizer

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
ENGLISH = "Müller  visited São Paulo, then   Zürich!! Unbelievable... naïve café-owners  (really) came"
CHINESE = "张三在北京大学工作，李四去了上海。"


def tagger_folder(tmp_path, corpus_text, forced_tag, lowercase=True):
    """A tiny tagger whose classifier bias forces one tag everywhere, so expected entities are known."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text * 3, encoding="utf-8")
    tokenizer = train_tokenizer([corpus], 70, min_frequency=1, lowercase=lowercase, show_progress=False)
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


# Accents written as base letter + combining mark (what the tokenizer drops when it strips accents), emoji with
# variation selectors, skin tones, joiners and flags, CJK with an ideographic variation selector and a mark, a
# Devanagari conjunct.
GRAPHEMES = (
    "Jose\u0301 met Zoe\u0308 and Ame\u0301lie in Sa\u0303o Paulo \u2764\ufe0f \U0001f44d\U0001f3fd "
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 ok. \u845b\U000e0100\u57ce \u5317\u0301\u4eac \u5927\u5b66 "
    "e\u0301\u0301 \U0001f44b\U0001f3fbhi \u0928\u092e\u0938\u094d\u0924\u0947 Zoe\u0308! "
    "\U0001f1eb\U0001f1f7\U0001f1e9\U0001f1ea\U0001f1ee "  # flags of France and Germany, and a lone letter
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"  # the flag of Scotland: tags
)


def splits_a_grapheme(text, start, end):
    """Whether text[start:end] begins or ends inside a grapheme cluster, by the regex module's \\X (Unicode's
    extended grapheme clusters), which shares no code with the pipeline."""
    boundaries = {match.start() for match in regex.finditer(r"\X", text)} | {len(text)}
    return start not in boundaries or end not in boundaries


def test_grapheme_boundaries_are_unicodes():
    ours = [position for position in range(len(GRAPHEMES) + 1) if is_grapheme_boundary(GRAPHEMES, position)]
    assert ours == sorted({match.start() for match in regex.finditer(r"\X", GRAPHEMES)} | {len(GRAPHEMES)})


def test_the_grapheme_checker_finds_split_clusters():
    assert splits_a_grapheme("Jose\u0301 ok", 0, 4)  # ends before the accent
    assert splits_a_grapheme("\u2764\ufe0f ok", 0, 1)  # before the variation selector
    assert splits_a_grapheme("\U0001f468\u200d\U0001f469 ok", 0, 2)  # after a joiner
    assert splits_a_grapheme("\u5317\u0301\u4eac", 1, 2)  # starts on the mark
    assert not splits_a_grapheme("Jose\u0301 ok", 0, 5) and not splits_a_grapheme("\u5317\u0301\u4eac", 0, 2)


@pytest.mark.parametrize("lowercase", [True, False])  # accents stripped (dropped from the offsets), or kept
def test_entities_never_split_a_grapheme_cluster(tmp_path, lowercase):
    folder = tagger_folder(tmp_path, "visited then came really owners", "B-PER", lowercase=lowercase)
    for aggregation in AGGREGATIONS:
        entities = pipeline("ner", model=folder, aggregation=aggregation)(GRAPHEMES)
        assert len(entities) >= 20  # B- everywhere: an entity per word (per piece without aggregation)
        split = [entity for entity in entities if splits_a_grapheme(GRAPHEMES, entity["start"], entity["end"])]
        assert split == [], aggregation
        assert all(GRAPHEMES[entity["start"] : entity["end"]] == entity["word"] for entity in entities)
    words = [entity["word"] for entity in pipeline("ner", model=folder)(GRAPHEMES)]
    assert "Jose\u0301" in words and "\u2764\ufe0f" in words and "\u5317\u0301" in words
