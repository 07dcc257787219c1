"""README's code stays true: its Python example runs as written."""

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(heading):
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # trains an epoch
def test_use_it_from_python_example_runs(tmp_path, monkeypatch, capsys):
    code = readme_block("Use it from Python")
    assert "nin_keras.train(cfg)" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "['fashion', 'fashion-best', 'fashion-best-v1', 'fashion-v1', 'tiny', 'photo', 'd2l', 'paper-cifar']" in out
    assert (tmp_path / "runs" / "notebook" / "metrics.json").exists()
    assert (tmp_path / "runs" / "notebook" / "export" / "nin_int8.tflite").exists()
    assert (tmp_path / "tuning_runs" / "notebook" / "best_config.json").exists()


def test_library_calls_refuse_unknown_settings_in_one_line():
    import export
    import tuning
    from nin_keras.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'max_trial' -> 'max_trials'"):
        tuning.tune("tiny", max_trial=3)
    with pytest.raises(ConfigError, match="unknown settings \\['format'\\]"):
        export.export("runs/x", format=["int8"])
