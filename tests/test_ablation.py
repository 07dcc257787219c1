"""scripts/ablation.py: the table compares on validation; test accuracy only for the variant chosen on it."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation.py"


def load_ablation():
    spec = importlib.util.spec_from_file_location("nin_keras_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_accuracy_is_shown_once_for_the_variant_chosen_on_validation(monkeypatch, capsys, tmp_path):
    ablation = load_ablation()
    val = {"default": 0.93, "bfloat16": 0.94, "label smoothing 0.1": 0.92}

    def fake_run(out, name, flags, seed):
        return {"val_accuracy": val[name], "train_accuracy": 0.95, "test_accuracy": 0.5 + val[name] / 10 + seed}, 60

    monkeypatch.setattr(ablation, "run", fake_run)
    assert ablation.main([str(tmp_path), "--variants", ",".join(val), "--test"]) == 0
    out = capsys.readouterr().out
    assert out.count("test acc") == 1 and "test accuracy of 'bfloat16', chosen on validation: 0.5940" in out
    for other in ("0.5930", "0.5920"):  # no other variant's test accuracy
        assert other not in out
