"""Pipelines: fill-mask on English and Chinese, results in input order, clear messages for misuse."""

import numpy as np
import pytest
import torch

from bertforge import BertConfig, BertforgeError
from bertforge.heads import BertForPreTraining
from bertforge.pipelines import pipeline
from bertforge.tokenizer import train_tokenizer

CHINESE = "北京是中国的首都。上海是一座大城市。我们在大学学习语言。中国有很多城市。\n" * 20
ENGLISH = "the cat sat on the mat. the dog sat on the log. a bird flew over the house.\n" * 20


def model_folder(tmp_path, text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    tokenizer = train_tokenizer([corpus], 80, show_progress=False)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=len(tokenizer)))
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def test_fill_mask_chinese_fills_the_character_in_place(tmp_path):
    folder, tokenizer = model_folder(tmp_path, CHINESE)
    fill = pipeline("fill-mask", model=folder)
    results = fill("北京是中国的[MASK]都。", top_k=4)
    assert len(results) == 4
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for result in results:
        assert result["sequence"] == f"北京是中国的{result['token_str']}都。"
        assert result["token"] == tokenizer.convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(result["token"]))


def test_fill_mask_matches_the_model_probabilities_and_keeps_input_order(tmp_path):
    folder, tokenizer = model_folder(tmp_path, ENGLISH)
    fill = pipeline("fill-mask", model=folder)
    texts = ["the [MASK] sat on the mat.", "a [MASK] flew over the [MASK].", "the dog sat on the [MASK]."]
    batched = fill(texts, top_k=2, batch_size=2)
    alone = [fill(text, top_k=2) for text in texts]

    def flat(results):  # padding in a batch changes scores by float rounding only
        return [c for r in results for group in (r if isinstance(r[0], list) else [r]) for c in group]

    assert [c["sequence"] for c in flat(alone)] == [c["sequence"] for c in flat(batched)]
    np.testing.assert_allclose([c["score"] for c in flat(alone)], [c["score"] for c in flat(batched)], atol=1e-5)
    assert len(batched[1]) == 2 and len(batched[1][0]) == 2  # two masks, two candidates each

    model = BertForPreTraining.from_pretrained(folder).eval()
    encoded = tokenizer(texts[0], return_tensors="pt")
    with torch.no_grad():
        logits = model(encoded["input_ids"]).mlm_logits[0]
    position = encoded["input_ids"][0].tolist().index(tokenizer.mask_token_id)
    best = logits[position].softmax(-1).max()
    assert batched[0][0]["score"] == pytest.approx(best.item(), abs=1e-5)


def test_misuse_is_explained(tmp_path):
    folder, _ = model_folder(tmp_path, ENGLISH)
    with pytest.raises(BertforgeError, match="needs model=FOLDER"):
        pipeline("fill-mask")
    with pytest.raises(BertforgeError, match="unknown task"):
        pipeline("summarization", model=folder)
    with pytest.raises(BertforgeError, match=r"no \[MASK\] token"):
        pipeline("fill-mask", model=folder)("nothing to fill here")
