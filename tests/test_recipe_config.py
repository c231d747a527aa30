"""Recipe settings: YAML file + --key value overrides, typed, unknown keys rejected."""

import pytest

from bertforge.errors import BertforgeError
from bertforge.recipe_config import bundled_config, describe_settings, load_recipe_config
from bertforge.settings import FinetuneConfig, NerConfig, PretrainConfig, QaConfig


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: shards\nmax_steps: 10\nlearning_rate: 1e-3\nwhole_word_masking: true\n")
    config = load_recipe_config(PretrainConfig, path, ["--max-steps", "20", "--dropout=0", "--resume"])
    assert config.max_steps == 20 and config.learning_rate == 1e-3 and config.whole_word_masking
    assert config.dropout == 0.0 and config.resume is True and config.max_minutes is None


def test_a_config_states_its_base_and_what_it_changes(tmp_path):
    (tmp_path / "parent.yaml").write_text("data: shards\nmax_steps: 10\nlearning_rate: 1e-3\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nmax_steps: 20\n")  # relative to the child's folder
    config = load_recipe_config(PretrainConfig, tmp_path / "child.yaml", ["--dropout", "0"])
    assert (config.data, config.max_steps, config.learning_rate, config.dropout) == ("shards", 20, 1e-3, 0.0)
    hour = load_recipe_config(PretrainConfig, "pretrain-cpu-60", ["--data", "shards"])  # a bundled base
    quickstart = load_recipe_config(PretrainConfig, "pretrain-cpu", ["--data", "shards"])
    assert (hour.model, hour.max_minutes, quickstart.max_minutes) == ("L4-H256", 60, 10)
    assert hour.mlm_probability == quickstart.mlm_probability and hour.embedding_init == "ppmi"


def test_configs_whose_bases_lead_back_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmax_steps: 1\n")
    with pytest.raises(BertforgeError, match="base configs lead back to it"):
        load_recipe_config(PretrainConfig, tmp_path / "a.yaml", ["--data", "x"])
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(BertforgeError, match=r"missing\.yaml: no such config file"):
        load_recipe_config(PretrainConfig, tmp_path / "c.yaml", ["--data", "x"])


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
    for name in ("pretrain-cpu", "pretrain-cpu-60", "pretrain-base-gpu"):
        assert bundled_config(name).is_file()
        load_recipe_config(PretrainConfig, name, ["--data", "shards"])
    text = describe_settings(PretrainConfig)
    assert "--learning-rate" in text and "peak learning rate after warm-up" in text


def test_fine_tuning_help_lists_the_task_settings_first_then_the_shared_ones():
    lines = describe_settings(QaConfig).splitlines()
    headings = [line for line in lines if not line.startswith("  ")]
    assert headings == ["fine-tuning settings shared by every task:", "training-loop settings shared by every recipe:"]
    assert lines[0].split()[0] == "--model" and lines.index(headings[0]) > lines.index(next(
        line for line in lines if line.split()[0] == "--doc-stride"))  # fmt: skip
    epochs = next(line for line in lines if line.split()[0] == "--epochs")
    assert epochs.split()[1] == "2.0" and "training windows" in epochs  # QA's own default and comment
    assert all(line.split()[0].startswith("--") for line in lines if line not in headings)
    # every setting is explained, whether its comment sits beside the field or on the lines above it
    assert all(len(line.split()) > 2 for line in lines if line not in headings)
    train_limit = next(line for line in lines if line.split()[0] == "--train-limit")
    assert "first N training examples" in train_limit


@pytest.mark.parametrize("config", [FinetuneConfig, NerConfig, QaConfig])
def test_shared_settings_are_checked_and_unknown_ones_refused_in_every_recipe(config):
    required = ["--model", "m", "--train", "t"]
    assert load_recipe_config(config, None, [*required, "--early-stopping-patience", "2"]).early_stopping_patience == 2
    with pytest.raises(BertforgeError, match="must be at least 1"):
        load_recipe_config(config, None, [*required, "--gradient-accumulation-steps", "0"])
    with pytest.raises(BertforgeError, match="not divisible by gradient_accumulation_steps 3"):
        load_recipe_config(config, None, [*required, "--gradient-accumulation-steps", "3"])
    with pytest.raises(BertforgeError, match="unknown setting --max-epochs"):
        load_recipe_config(config, None, [*required, "--max-epochs", "2"])  # pretraining's, not fine-tuning's
