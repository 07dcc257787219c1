"""scripts/ablation.py: the table compares on validation; test accuracy only for the variant chosen on it."""

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation.py"


def load_script(name):
    """Import scripts/<name>.py (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"nin_keras_{name}", SCRIPT.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_ablation():
    """scripts/ablation.py as a module."""
    return load_script("ablation")


def test_test_accuracy_is_shown_once_for_the_variant_chosen_on_validation(monkeypatch, capsys, tmp_path):
    ablation = load_ablation()
    val = {"default": 0.93, "bfloat16": 0.94, "label smoothing 0.1": 0.92}

    presets = set()

    def fake_run(out, name, flags, seed, preset):
        presets.add(preset)
        return {"val_accuracy": val[name], "train_accuracy": 0.95, "test_accuracy": 0.5 + val[name] / 10 + seed}, 60

    monkeypatch.setattr(ablation, "run", fake_run)
    assert ablation.main([str(tmp_path), "--variants", ",".join(val), "--test", "--preset", "fashion-best"]) == 0
    assert presets == {"fashion-best"}
    out = capsys.readouterr().out
    assert out.count("test acc") == 1 and "test accuracy of 'bfloat16', chosen on validation: 0.5940" in out
    for other in ("0.5930", "0.5920"):  # no other variant's test accuracy
        assert other not in out


def load_fidelity():
    """scripts/fidelity.py as a module."""
    return load_script("fidelity")


def test_fidelity_ranks_short_trials_against_full_runs_on_validation(monkeypatch, capsys, tmp_path):
    fidelity = load_fidelity()
    full = {"default": 0.93, "flips only": 0.92, "learning rate 5e-4": 0.90}
    short = {"default": 0.80, "flips only": 0.85, "learning rate 5e-4": 0.70}  # swaps the top two
    calls = []

    def fake_run(out, name, flags, seed):
        calls.append((name, flags))
        base = name.split(" short ")[0]
        val = short[base] if " short " in name else full[base]
        return {"val_accuracy": val, "test_accuracy": 0.123456}, 60

    monkeypatch.setattr(fidelity, "run", fake_run)
    assert fidelity.main([str(tmp_path), "--configs", ",".join(full), "--fidelities", "2,12800"]) == 0
    out = capsys.readouterr().out
    assert "2 ep x 12800 with the full runs: +0.50 (3 configurations)" in out
    assert "0.1235" not in out  # test accuracy is never shown
    assert ("flips only short 2x12800", ["--augment", "--augment-shift", "0", "--epochs", "2", "--limit", "12800"]) in calls


def test_fidelity_refuses_bad_arguments_in_one_line(tmp_path):
    fidelity = load_fidelity()
    for argv, message in ((["--configs", "nope"], "Received: 'nope'"),
                          (["--fidelities", "2"], "each fidelity is EPOCHS,IMAGES"),
                          (["--fidelities", "a,b"], "must look like")):
        try:
            fidelity.main([str(tmp_path), *argv])
        except SystemExit as e:
            assert message in str(e)
        else:
            raise AssertionError(argv)


def test_ablation_refuses_an_unknown_variant_in_one_line(tmp_path):
    ablation = load_ablation()
    try:
        ablation.main([str(tmp_path), "--variants", "default,flips only, 10 epochs"])
    except SystemExit as e:
        assert "unknown variant" in str(e) and "Received: ' 10 epochs'" in str(e)
    else:
        raise AssertionError("no error")


def test_a_network_variant_becomes_a_config_that_fit_resolves(tmp_path):
    import json

    from nin_keras.config import model_kwargs, resolve_config
    from nin_keras.model import build_nin

    ablation = load_ablation()
    flags = ablation.variant_flags(str(tmp_path), "stride-2 stem 10 epochs")
    assert flags[0] == "--config" and flags[2:] == ["--epochs", "10"]
    with open(flags[1]) as f:
        cfg = resolve_config({"preset": "fashion", **json.load(f)})
    model = build_nin(**model_kwargs(cfg))
    assert model.get_layer("block1_conv0").output.shape[1:3] == (13, 13)  # no 28x28 stage left
    assert ablation.variant_flags(str(tmp_path), "flips only") == ["--augment", "--augment-shift", "0"]


def test_ablation_of_another_preset_keeps_its_runs_apart_and_refuses_fashions_networks(tmp_path, monkeypatch):
    import json
    import subprocess

    ablation = load_ablation()
    commands = []

    def fake_fit(command, check):
        commands.append(command)
        folder = command[command.index("--output-dir") + 1]
        os.makedirs(folder)
        with open(os.path.join(folder, "metrics.json"), "w") as f:
            json.dump({"val_accuracy": 0.9}, f)

    monkeypatch.setattr(subprocess, "run", fake_fit)
    ablation.run(str(tmp_path), "random erasing 0.5", ["--random-erasing", "0.5"], 0, "fashion-best")
    assert commands[0][commands[0].index("--preset") + 1] == "fashion-best"
    assert os.path.isdir(tmp_path / "fashion-best-random_erasing_0.5")  # not the fashion run's folder
    refused = "network variants change the fashion preset's blocks.*Received: 'stride"
    with pytest.raises(SystemExit, match=refused):
        ablation.main([str(tmp_path), "--preset", "fashion-best", "--variants", "default,stride-2 stem 10 epochs"])
