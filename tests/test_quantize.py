"""int8 inference: Int8Linear against float matmuls, and a quantised real encoder against the fp32 one."""

import numpy as np
import pytest
import torch
from torch import nn

import bertforge.quantize
from bertforge import BertforgeError, BertModel
from bertforge.cli import main
from bertforge.embeddings import embed_texts
from bertforge.quantize import Int8Linear, int8_matmul, quantize_encoder
from bertforge.tokenizer import BertTokenizer

TEXTS = ["A moving, beautifully acted film.", "The plot is dull and the jokes fall flat.", "Paris is in France.",
         "机器学习很有趣。", "an utterly forgettable sequel", "Who wrote the score? Hans Zimmer did."]  # fmt: skip


@pytest.mark.parametrize("rows", [3, 16, 17, 200])  # the int8 kernel needs more than 16 rows: padded below
def test_int8_linear_is_close_to_the_float_layer(rows):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(2, rows, 64)
    quantised = Int8Linear(linear)
    out = quantised(x)
    expected = linear(x).detach()
    assert out.shape == (2, rows, 48) and out.dtype == torch.float32
    relative = (out - expected).norm() / expected.norm()
    assert relative < 0.02, relative  # two roundings to 1/254 of each row's and column's range
    assert quantised(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("depth", [64, 1024, 1025, 3072])  # 3072: BERT-base's feed-forward down-projection
def test_the_fp32_route_of_int8_matmul_gives_the_int8_kernels_integers(depth, monkeypatch):
    generator = torch.Generator().manual_seed(depth)
    a = torch.randint(-127, 128, (20, depth), dtype=torch.int8, generator=generator)
    b = torch.randint(-127, 128, (depth, 8), dtype=torch.int8, generator=generator)
    a[0], b[:, 0] = 127, 127  # the largest sum there can be: exact only if every slice's fp32 sum is
    expected = torch._int_mm(a, b)
    monkeypatch.setattr(bertforge.quantize, "int8_kernel_is_fast", lambda: False)
    product = int8_matmul(a, b)
    assert product.dtype == torch.int32 and torch.equal(product, expected)
    assert product[0, 0] == 127 * 127 * depth


def test_int8_linear_answers_the_same_by_either_route(monkeypatch):
    torch.manual_seed(0)
    layer, x = Int8Linear(nn.Linear(64, 48)), torch.randn(3, 30, 64)
    monkeypatch.setattr(bertforge.quantize, "int8_kernel_is_fast", lambda: True)
    by_kernel = layer(x)
    monkeypatch.setattr(bertforge.quantize, "int8_kernel_is_fast", lambda: False)
    assert torch.equal(layer(x), by_kernel)
    assert torch.equal(layer(x[:1, :5]), by_kernel[:1, :5])  # few rows: the kernel's padding, not needed here


def test_quantised_minilm_keeps_sentence_vectors_and_replaces_only_encoder_layers(minilm_dir):
    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    reference = embed_texts(BertModel.from_pretrained(minilm_dir), tokenizer, TEXTS, normalize=True)
    model = quantize_encoder(BertModel.from_pretrained(minilm_dir))
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    assert linears == {"pooler.dense"}  # every projection and feed-forward layer is int8; the pooler is not
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 6 * 4
    vectors = embed_texts(model, tokenizer, TEXTS, normalize=True)
    cosines = (vectors * reference).sum(1)
    assert cosines.min() > 0.99, cosines


def test_cli_embed_with_int8(minilm_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    for quantize in ("none", "int8"):
        assert main(["embed", "--model", str(minilm_dir), "--input", str(texts), "--output",
                     str(tmp_path / f"{quantize}.npy"), "--normalize", "--precision", "fp32",
                     "--quantize", quantize]) == 0  # fmt: skip
    cosines = (np.load(tmp_path / "none.npy") * np.load(tmp_path / "int8.npy")).sum(1)
    assert cosines.min() > 0.99, cosines


def test_unknown_quantisation_and_a_model_without_encoder_layers_are_errors():
    with pytest.raises(BertforgeError, match="quantize 'int4' is not one of none, int8"):
        quantize_encoder(nn.Linear(2, 2), "int4")
    with pytest.raises(BertforgeError, match="no BERT encoder layers"):
        quantize_encoder(nn.Sequential(nn.Linear(2, 2)))
