"""BertConfig: presets, JSON round trip, and clear errors for unknown or inconsistent fields."""

import json

import pytest

from bertforge import BertConfig, BertforgeError
from bertforge.config import PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_follow_google_sizes(name):
    config = BertConfig.preset(name)
    layers, hidden = PRESETS[name]
    assert (config.num_hidden_layers, config.hidden_size) == (layers, hidden)
    assert config.head_size == 64
    assert config.intermediate_size == 4 * hidden


def test_grid_sizes_name_layers_and_width_as_googles_compact_models():
    config = BertConfig.preset("L2-H256")
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 256, 4)
    assert config.intermediate_size == 1024
    assert BertConfig.preset("L4-H256") == BertConfig.preset("mini")


@pytest.mark.parametrize("name", ["L2-H100", "L0-H128", "L2H128", "huge"])
def test_bad_preset_names_are_refused(name):
    with pytest.raises(BertforgeError, match="preset"):
        BertConfig.preset(name)


def test_base_preset_equals_bert_base():
    assert BertConfig.preset("base") == BertConfig()


def test_json_round_trip(tmp_path):
    config = BertConfig.preset("mini", vocab_size=1000, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    config.save(tmp_path / "config.json")
    assert BertConfig.load(tmp_path) == config
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"


def test_hf_bookkeeping_keys_are_accepted():
    data = {
        **BertConfig.preset("tiny").to_dict(),
        "architectures": ["BertModel"],
        "transformers_version": "4.8.2",
    }
    assert BertConfig.from_dict(data).hidden_size == 128


def test_unknown_field_names_the_file_and_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64, "num_hidden_layer": 2}))
    with pytest.raises(BertforgeError, match=r"config\.json: unknown config field\(s\) num_hidden_layer"):
        BertConfig.load(path)


def test_hidden_size_must_divide_into_heads():
    with pytest.raises(BertforgeError, match="not divisible by num_attention_heads"):
        BertConfig(hidden_size=100, num_attention_heads=12)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_hidden_layers", 0, "positive integer"),
        ("hidden_act", "swish2", "not supported"),
        ("hidden_dropout_prob", 1.5, r"\[0, 1\)"),
        ("attention_implementation", "flash", "not one of"),
    ],
)
def test_invalid_values_are_errors(field, value, message):
    with pytest.raises(BertforgeError, match=message):
        BertConfig(**{field: value})


def test_unsupported_hf_variant_is_an_error():
    with pytest.raises(BertforgeError, match="position_embedding_type"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(BertforgeError, match=r"config\.json: not valid JSON"):
        BertConfig.load(path)
