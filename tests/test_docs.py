"""The docs stay true: they build with ``mkdocs build --strict``, their generated tables cover the code, and
the Python examples of Getting started and Python API run as written."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def load_hooks():
    """docs/hooks.py, the MkDocs hook that generates the flag and preset tables."""
    spec = importlib.util.spec_from_file_location("nin_keras_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), re.S)


def first_cells(table):
    """The --flags named in the first cell of each row of a generated Markdown table."""
    flags = set()
    for row in table.splitlines()[2:]:
        flags |= set(re.findall(r"--[a-z][a-z0-9-]*", row.split(" | ")[0]))
    return flags


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[docs]')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               NO_MKDOCS_2_WARNING="1")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    training = (tmp_path / "site" / "training" / "index.html").read_text(encoding="utf-8")
    assert "nin_keras:" not in training and "--learning-rate" in training  # the markers were replaced
    assert 'id="nin_keras.model.build_nin"' in (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")


def test_training_page_holds_the_generated_tables():
    hooks = load_hooks()
    text = (DOCS / "training.md").read_text(encoding="utf-8")
    assert hooks.FLAGS_MARKER in text and hooks.PRESETS_MARKER in text


def test_generated_flag_table_covers_every_flag_of_the_fit_parser():
    from nin_keras import settings
    from nin_keras.fit import build_parser

    parser_flags = {o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    table = first_cells(load_hooks().flags_table())
    assert table == parser_flags
    assert {s.option for s in settings.SETTINGS if s.flag} <= table


def test_generated_preset_table_lists_every_preset():
    from nin_keras.presets import PRESETS

    rows = load_hooks().presets_table().splitlines()[2:]
    assert [re.match(r"\| `([a-z0-9-]+)`", row).group(1) for row in rows] == list(PRESETS)


@pytest.mark.parametrize("module", ["export.exporter", "tuning.search", "nin_keras.bench"])
def test_generated_cli_tables_cover_every_flag(module):
    parser = importlib.import_module(module).build_parser()
    expected = {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    assert first_cells(load_hooks().cli_table(module)) == expected


def test_getting_started_python_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = python_blocks("getting-started.md")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/getting-started.md", "exec"), {"__name__": "docs"})
    out = capsys.readouterr().out
    assert "104840" in out and "'fashion'" in out


@pytest.mark.slow  # trains an epoch of the tiny preset, exports it and runs a one-trial search
def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = python_blocks("api.md")
    assert "nin_keras.train(cfg)" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/api.md", "exec"), {"__name__": "docs"})
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
