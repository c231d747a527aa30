"""The README's main command, on its smoke budget: every stage runs and leaves its outputs."""

from bertforge.quickstart import run_quickstart


def test_quickstart_smoke_run(tmp_path, minilm_dir, capsys):
    run_quickstart(tmp_path, smoke=True)
    printed = capsys.readouterr().out
    for stage in range(1, 10):
        assert f"== {stage}." in printed
    assert "masked-token accuracy" in printed and "next-sentence accuracy" in printed
    assert "test accuracy: pretrained" in printed and "random weights" in printed
    for arm in ("pretrained", "random"):
        assert (tmp_path / f"sentiment-{arm}" / "report.json").is_file()
    assert (tmp_path / "pretrain" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "pretrain" / "curves.png").is_file()
    assert (tmp_path / "sentiment" / "model" / "config.json").is_file()
