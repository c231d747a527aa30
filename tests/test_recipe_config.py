"""Recipe settings: YAML file + --key value overrides, typed, unknown keys rejected."""

import pytest

from bertforge.errors import BertforgeError
from bertforge.recipe_config import bundled_config, describe_settings, load_recipe_config
from bertforge.settings import PretrainConfig


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: shards\nmax_steps: 10\nlearning_rate: 1e-3\nwhole_word_masking: true\n")
    config = load_recipe_config(PretrainConfig, path, ["--max-steps", "20", "--dropout=0", "--resume"])
    assert config.max_steps == 20 and config.learning_rate == 1e-3 and config.whole_word_masking
    assert config.dropout == 0.0 and config.resume is True and config.max_minutes is None


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: shards\nmax_steps: 10\nlearning_rat: 0.1\n")
    with pytest.raises(BertforgeError, match=r"c\.yaml: unknown setting 'learning_rat'"):
        load_recipe_config(PretrainConfig, path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--max-steps", "ten"], "--max-steps: expected a whole number"),
        (["--whole-word-masking", "maybe"], "expected true or false"),
        (["--learning-rate", "fast"], "expected a number"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_override_values(overrides, message):
    with pytest.raises(BertforgeError, match=message):
        load_recipe_config(PretrainConfig, None, ["--data", "x", "--max-steps", "1", *overrides])


def test_bundled_configs_load_and_help_lists_every_setting():
    for name in ("pretrain-cpu", "pretrain-base-gpu"):
        assert bundled_config(name).is_file()
        load_recipe_config(PretrainConfig, name, ["--data", "shards"])
    text = describe_settings(PretrainConfig)
    assert "--learning-rate" in text and "peak learning rate after warm-up" in text
