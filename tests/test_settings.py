"""The settings schema is the single source: parsers, config loading and validation follow it (the docs' flag
table is generated from it: tests/test_docs.py)."""

import pytest

from nin_keras import settings
from nin_keras.config import resolve_config
from nin_keras.errors import ConfigError
from nin_keras.fit import build_parser as fit_parser
from tuning.search import build_parser as tuning_parser

FIT_ONLY_FLAGS = {"--config", "--resume", "--overwrite", "--help"}


def options(parser):
    return {o: action for action in parser._actions for o in action.option_strings if o.startswith("--")}


def test_fit_flags_are_exactly_the_schema():
    parser_options = options(fit_parser())
    expected = {s.option for s in settings.SETTINGS if s.flag} | {a for s in settings.SETTINGS for a in s.aliases}
    expected |= {"--no-" + s.option[2:] for s in settings.SETTINGS if s.type is bool}
    assert set(parser_options) - FIT_ONLY_FLAGS == expected
    for s in settings.SETTINGS:
        if not s.flag:
            continue
        action = parser_options[s.option]
        assert action.default is None, s.name  # only what the user passes overrides the preset
        assert action.help == s.help and action.dest == s.name
        if s.choices is not None:
            # Parenthesised: `assert a == b if c else d` would assert only for the preset.
            assert list(action.choices) == (sorted(s.choices) if s.name == "preset" else list(s.choices)), s.name


def test_tuning_shares_the_schema_for_common_flags():
    parser_options = options(tuning_parser())
    for name in ("preset", "seed", "cpu_replicas", "precision", "verbose", *settings.DATA_FLAGS):
        s = settings.BY_NAME[name]
        action = parser_options[s.option]
        assert action.type is (None if s.type is bool else s.type), name
        if action.default is not None and "(default" not in s.help.replace("(default:", ""):
            # tuning's own default (seed 0, --limit 20000), stated in place of fit's or added
            assert action.help.endswith(f"(default: {action.default})"), name
        else:
            assert action.help == s.help, name


def test_a_command_with_its_own_default_states_it_in_its_help():
    # fit's --verbose default is a bar on a terminal; tuning's is 2, and its help must not repeat fit's.
    verbose = options(tuning_parser())["--verbose"]
    assert verbose.default == 2 and verbose.help == "Keras progress output (default: 2)"
    assert "bar on a terminal" in options(fit_parser())["--verbose"].help
    # fit's --limit has no default (all the data); tuning's 20,000 must be said, not found out.
    assert options(tuning_parser())["--limit"].help.endswith("(default: 20000)")


@pytest.mark.parametrize("setting", [s for s in settings.SETTINGS if s.check is not None or s.choices is not None],
                         ids=lambda s: s.name)
def test_every_checked_setting_refuses_a_bad_value_in_one_line(setting):
    bad = "not-a-choice" if setting.type is str else ({"x"} if setting.type is dict else "seven")
    with pytest.raises(ConfigError, match=r"Received: ") as info:
        resolve_config({setting.name: bad, **({} if setting.name == "preset" else {"preset": "tiny"})})
    assert "\n" not in str(info.value)


def test_fallbacks_apply_when_the_preset_is_silent():
    from nin_keras.presets import get_preset

    cfg = resolve_config({"preset": "tiny"})
    preset_fit = get_preset("tiny")["fit"]
    for name, value in settings.FALLBACKS.items():
        assert getattr(cfg, name) == preset_fit.get(name, value)


def test_a_misspelled_flag_gets_a_suggestion(capsys):
    from nin_keras.fit import main

    with pytest.raises(SystemExit) as info:
        main(["--learning-rat", "0.1", "--bach-size", "3"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "did you mean '--bach-size' -> '--batch-size'" in err


def test_a_setting_added_after_a_run_was_recorded_counts_as_its_default():
    """An upgrade that adds a setting (fused_batch_norm) must not make a finished run 'a different run'."""
    from nin_keras.config import config_differences, run_record

    cfg = resolve_config({"preset": "tiny"})
    recorded = run_record(cfg)
    del recorded["fused_batch_norm"]  # written by a version without it
    assert config_differences(recorded, cfg) == []
    assert config_differences(recorded, resolve_config({"preset": "tiny", "fused_batch_norm": False})) == [
        "fused_batch_norm"]


def test_a_setting_added_with_a_fallback_counts_as_that_fallback_in_an_older_record():
    """ema (a fallback, no default): a run recorded before it existed is the same run, not 'settings differ: ema'."""
    from nin_keras.config import config_differences, run_record

    cfg = resolve_config({"preset": "tiny"})
    recorded = run_record(cfg)
    del recorded["ema"]
    assert config_differences(recorded, cfg) == []
    assert config_differences(recorded, resolve_config({"preset": "tiny", "ema": 0.999})) == ["ema"]
