"""Hugging Face-layout checkpoints: parity with transformers on real weights, both-way loading, strict errors."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from bertforge import BertConfig, BertforgeError, BertModel
from bertforge.checkpoint import from_hf_state_dict, to_hf_state_dict


def hf_tiny_model(seed=0) -> transformers.BertModel:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    return transformers.BertModel(config).eval()


def encode(tokenizer, texts, pairs=None):
    return tokenizer(texts, pairs, padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def minilm_pair(minilm_dir):
    ours = BertModel.from_pretrained(minilm_dir).eval()
    reference = transformers.BertModel.from_pretrained(minilm_dir).eval()
    tokenizer = transformers.BertTokenizer.from_pretrained(minilm_dir)
    return ours, reference, tokenizer


CASES = {
    "single": (["The quick brown fox jumps over the lazy dog."], None),
    "pair": (["Where is the station?"], ["It is two streets down, next to the café."]),
    "mixed-length batch": (
        [
            "Hi.",
            "A considerably longer sentence, with commas, numbers like 1984 and naïve accents.",
            "中文句子也可以。",
        ],
        None,
    ),
    "padded pairs": (
        ["Short one.", "Is this the question?"],
        ["Answer.", "Yes, and this answer is much longer than it."],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_minilm_matches_transformers(minilm_pair, case):
    ours, reference, tokenizer = minilm_pair
    batch = encode(tokenizer, *CASES[case])
    with torch.no_grad():
        mine = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        theirs = reference(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(mine.last_hidden_state[real], theirs.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.pooler_output, theirs.pooler_output, atol=1e-5, rtol=0)


def test_name_map_round_trips_every_parameter():
    model = BertModel(BertConfig.preset("tiny", vocab_size=99))
    ours = model.state_dict()
    theirs = to_hf_state_dict(ours)
    assert set(theirs) == set(hf_tiny_model().state_dict()) - {
        "embeddings.position_ids",
        "embeddings.token_type_ids",
    }
    back, unmapped = from_hf_state_dict(theirs)
    assert unmapped == []
    assert set(back) == set(ours)
    assert all(torch.equal(back[name], ours[name]) for name in ours)


def test_save_load_is_bit_identical(tmp_path):
    torch.manual_seed(3)
    model = BertModel(BertConfig.preset("tiny", vocab_size=99)).eval()
    model.save_pretrained(tmp_path)
    loaded = BertModel.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 99, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, loaded(ids).last_hidden_state)


def test_bertforge_folder_loads_in_transformers(tmp_path):
    torch.manual_seed(4)
    model = BertModel(BertConfig.preset("tiny", vocab_size=99)).eval()
    model.save_pretrained(tmp_path)
    reference = transformers.BertModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 99, (2, 9))
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5])
    with torch.no_grad():
        mine, theirs = model(ids, mask), reference(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(mine.last_hidden_state[mask.bool()], theirs.last_hidden_state[mask.bool()])
    torch.testing.assert_close(mine.pooler_output, theirs.pooler_output)


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_transformers_folder_loads_in_bertforge(tmp_path, safe_serialization):
    reference = hf_tiny_model(seed=5)
    reference.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    if not safe_serialization:
        # transformers 5 always writes safetensors; make the legacy pickle layout by hand.
        torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / "pytorch_model.bin")
        (tmp_path / "model.safetensors").unlink()
    model = BertModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 99, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, reference(input_ids=ids).last_hidden_state)


def test_prefixed_task_checkpoint_loads_encoder_and_skips_heads(tmp_path):
    torch.manual_seed(6)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    reference = transformers.BertForPreTraining(config).eval()
    reference.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert any(k.startswith("bert.") for k in state) and any(k.startswith("cls.") for k in state)
    state["bert.embeddings.position_ids"] = torch.arange(512)[None]  # as older transformers versions saved it
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = BertModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 99, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, reference.bert(input_ids=ids).last_hidden_state)


def test_google_gamma_beta_names_are_read(tmp_path):
    """Google's converted checkpoints call LayerNorm's weight and bias gamma and beta: they load as such."""
    reference = hf_tiny_model()
    with torch.no_grad():  # LayerNorm starts at ones and zeros; random values show each one lands in its place
        for name, parameter in reference.named_parameters():
            if "LayerNorm" in name:
                parameter.copy_(torch.randn_like(parameter))
    reference.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
    }
    assert sum(k.endswith(("LayerNorm.gamma", "LayerNorm.beta")) for k in renamed) == 2 * (1 + 2 * 2)
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = BertModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(model.embeddings.norm.weight, reference.embeddings.LayerNorm.weight, rtol=0, atol=0)
    torch.testing.assert_close(
        model.layers[1].feed_forward_norm.bias, reference.encoder.layer[1].output.LayerNorm.bias, rtol=0, atol=0
    )
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, reference(input_ids=ids).last_hidden_state)


# ---- bad checkpoints ---------------------------------------------------------------------------------------


def test_missing_directory():
    with pytest.raises(BertforgeError, match="no-such-dir: no such model directory"):
        BertModel.from_pretrained("no-such-dir")


def test_folder_without_weights(tmp_path):
    BertConfig.preset("tiny").save(tmp_path / "config.json")
    with pytest.raises(BertforgeError, match="no weights found"):
        BertModel.from_pretrained(tmp_path)


def test_wrong_shapes_are_listed(tmp_path):
    BertModel(BertConfig.preset("tiny", vocab_size=99)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vocab_size"] = 100
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BertforgeError, match=r"shape mismatch: embeddings\.word\.weight \(99, 128\) in the file"):
        BertModel.from_pretrained(tmp_path)


def test_missing_and_unexpected_weights_are_listed(tmp_path):
    BertModel(BertConfig.preset("tiny", vocab_size=99)).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["pooler.dense.bias"]
    state["encoder.layer.0.extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BertforgeError) as raised:
        BertModel.from_pretrained(tmp_path)
    message = str(raised.value)
    assert "missing weights: pooler.dense.bias" in message
    assert "unexpected weights: encoder.layer.0.extra.weight" in message
    assert "\n" not in message


def test_corrupted_weights_file(tmp_path):
    BertModel(BertConfig.preset("tiny", vocab_size=99)).save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BertforgeError, match=r"model\.safetensors: not a readable safetensors file"):
        BertModel.from_pretrained(tmp_path)


def test_loading_a_complete_checkpoint_draws_no_random_numbers_and_a_new_head_still_does(tmp_path):
    from bertforge.heads import BertForSequenceClassification

    labels = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    saved = BertForSequenceClassification(BertConfig.preset("tiny", vocab_size=99, **labels))
    saved.save_pretrained(tmp_path / "classifier")
    torch.manual_seed(0)
    expected_draw = torch.rand(1)
    torch.manual_seed(0)
    loaded = BertForSequenceClassification.from_pretrained(tmp_path / "classifier")
    assert torch.equal(torch.rand(1), expected_draw)  # nothing was initialised only to be overwritten
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.nn.init.normal_(torch.zeros(1000)).std() > 0.5  # the init functions work again afterwards

    # An encoder file for a classifier: the new head is initialised, the same for the same seed, and the encoder's
    # own weights are the file's.
    BertModel(BertConfig.preset("tiny", vocab_size=99)).save_pretrained(tmp_path / "encoder")
    heads = []
    for _ in range(2):
        torch.manual_seed(1)
        heads.append(BertForSequenceClassification.from_pretrained(tmp_path / "encoder", **labels).classifier.weight)
    assert torch.equal(heads[0], heads[1]) and heads[0].std() > 0.005
