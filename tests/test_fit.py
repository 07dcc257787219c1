import json
import os
import subprocess

import numpy as np
import pytest

from nin_keras import fit
from helpers import launch
from nin_keras.config import resolve_config
from nin_keras.data import load_data
from nin_keras.errors import ConfigError



def test_mirrored_two_replicas_matches_one_device(fashion_test):
    """Same global batch, same initial weights: 2-replica and 1-device training agree."""
    import keras
    import tensorflow as tf

    from nin_keras.distribute import make_strategy
    from nin_keras.model import build_nin
    from nin_keras.presets import get_preset

    x, y = fashion_test[0][:512], fashion_test[1][:512]
    kwargs = get_preset("tiny")["model"]
    keras.utils.set_random_seed(0)
    initial = build_nin(**kwargs).get_weights()
    results = {}
    for name in ("one-device", "mirrored"):
        strategy = make_strategy(name)
        with strategy.scope():
            model = build_nin(**kwargs)
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
        history = model.fit(ds, epochs=2, verbose=0)
        results[name] = (strategy.num_replicas_in_sync, history.history["loss"], model.get_weights())
    assert results["one-device"][0] == 1 and results["mirrored"][0] == 2
    np.testing.assert_allclose(results["mirrored"][1], results["one-device"][1], rtol=1e-3)
    for a, b in zip(results["mirrored"][2], results["one-device"][2]):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert results["one-device"][1][1] < results["one-device"][1][0]


def test_tiny_real_run_beats_chance_and_writes_the_run_dir(trained_tiny_run):
    run_dir, metrics = trained_tiny_run
    assert metrics["test_examples"] == 10000
    assert metrics["test_accuracy"] > 0.6  # chance is 0.1
    # `--strategy auto` on one device: TensorFlow's default strategy, what users get (the session's
    # CPU split does not turn MirroredStrategy on; test_two_replica_run covers that).
    assert metrics["replicas"] == 1 and metrics["epochs"] == 3
    for name in ("config.json", "model.keras", "best.keras", "history.csv", "metrics.json", "labels.txt", "history.png",
                 "per_class.json", "confusion.png"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    assert os.listdir(os.path.join(run_dir, "logs"))
    assert not os.path.exists(os.path.join(run_dir, "backup"))  # removed once training finished
    with open(os.path.join(run_dir, "history.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("epoch,") and [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3"]
    assert open(os.path.join(run_dir, "labels.txt")).read().splitlines()[9] == "Ankle boot"
    per_class = json.load(open(os.path.join(run_dir, "per_class.json")))
    assert sum(v["examples"] for v in per_class["per_class"].values()) == 10000
    assert per_class["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-3)  # same predictions
    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)
    assert saved["preset"] == "tiny" and saved["epochs"] == 3 and saved["learning_rate"] == 0.003


def test_saved_model_reloads_and_matches_reported_accuracy(trained_tiny_run, fashion_test):
    import keras

    run_dir, metrics = trained_tiny_run
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    x, y = fashion_test
    acc = float(np.mean(model.predict(x, batch_size=500, verbose=0).argmax(1) == y))
    assert acc == pytest.approx(metrics["test_accuracy"], abs=1e-3)


def test_rerunning_a_finished_run_does_not_retrain(trained_tiny_run, capsys):
    run_dir, _ = trained_tiny_run
    before = os.path.getmtime(os.path.join(run_dir, "model.keras"))
    code = fit.main(["--preset", "tiny", "--epochs", "3", "--limit", "20000", "--precision", "float32",
                     "--output-dir", run_dir, "--verbose", "0"])
    assert code == 0 and "already holds this finished run" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(run_dir, "model.keras")) == before


def test_run_dir_with_a_different_run_is_refused(trained_tiny_run, capsys):
    run_dir, _ = trained_tiny_run
    code = fit.main(["--preset", "tiny", "--epochs", "5", "--precision", "float32", "--output-dir", run_dir])
    err = capsys.readouterr().err
    assert code == 1 and "holds a different run (settings differ: epochs, limit)" in err
    assert err.count("\n") == 1


def test_config_file_then_flags_override_the_preset(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "tiny", "epochs": 7, "learning_rate": 0.01, "model": {"mlp_layers": 1}}))
    cfg = resolve_config({"epochs": 2}, str(path))
    assert (cfg.preset, cfg.epochs, cfg.learning_rate, cfg.batch_size, cfg.model) == ("tiny", 2, 0.01, 128, {"mlp_layers": 1})


@pytest.mark.parametrize("legacy, precision", [(False, "auto"), (True, "float16")])
def test_config_files_from_before_precision_still_load(tmp_path, legacy, precision):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "tiny", "mixed_precision": legacy}))
    assert resolve_config({}, str(path)).precision == precision


def test_bad_precision_is_refused():
    with pytest.raises(ConfigError, match="precision must be one of auto, float32, bfloat16, float16. Received: 'fp8'"):
        resolve_config({"precision": "fp8"})


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"epochz": 3}', "unknown settings ['epochz']"),
        ('{"preset": "huge"}', "preset must be one of d2l, fashion, fashion-best, fashion-best-v1, fashion-v1, paper-cifar, photo, tiny. Received: 'huge'"),
    ],
)
def test_bad_config_files(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        resolve_config({}, str(path))
    assert message in str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"learning_rate": -0.1}, "learning rate must be > 0. Received: -0.1"),
        ({"learning_rate": 0.0}, "learning rate must be > 0. Received: 0.0"),
        ({"batch_size": 0}, "batch size must be an integer >= 1. Received: 0"),
        ({"epochs": 0}, "epochs must be an integer >= 1. Received: 0"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam, adamw. Received: 'rmsprop'"),
        ({"random_erasing": 1.5}, "random erasing must be a probability in [0, 1]. Received: 1.5"),
        ({"learning_rate": 10**400}, "learning rate is too large. Received: 1" + "0" * 59 + "... (401 characters)"),
        ({"epochs": 10**400}, "epochs is too large. Received: 1" + "0" * 59 + "... (401 characters)"),
        ({"image_dir": "photos", "random_erasing": 0.5}, "--random-erasing works on in-memory data "
         "(Fashion-MNIST, --data-dir, --tfds), not on --image-dir. Received: 0.5"),
    ],
)
def test_invalid_settings(overrides, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides)
    assert str(info.value) == message


def test_global_batch_not_divisible_by_replicas(tmp_path, capsys):
    code = fit.main(["--preset", "tiny", "--batch-size", "33", "--cpu-replicas", "2", "--output-dir", str(tmp_path / "r")])
    assert code == 1
    assert "global batch size 33 is not divisible by the 2 replicas" in capsys.readouterr().err


def run_cli(*args, env=None, timeout=300):
    proc = launch("nin_keras.fit", *args, env=env, merge_stderr=False)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_cli_bad_flag_exits_2_with_one_line():
    proc = run_cli("--epochs", "3", "--frobnicate")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m nin_keras.fit: error: unrecognized arguments: --frobnicate (see --help)"
    ]


def test_cli_missing_data_folder(tmp_path):
    proc = run_cli("--preset", "tiny", "--data-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "r"))
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: --data-dir {tmp_path / 'missing'}: no such directory"]
    assert "Traceback" not in proc.stderr


def test_warmup_cosine_values():
    from nin_keras.schedules import warmup_cosine

    assert warmup_cosine(0, 1.0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 1.0, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 1.0, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 1.0, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 1.0, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(500, 1.0, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_a_shortened_schedule_shortens_its_warm_up_too():
    """--time-budget's 3 epochs out of 200: the warm-up keeps its 5% share instead of outlasting the run."""
    from nin_keras.schedules import WarmupCosine, warmup_cosine

    schedule = WarmupCosine(1.0, total_steps=200 * 21, warmup_steps=210)
    schedule.set_total_steps(3 * 21)
    assert (schedule.total_steps, schedule.warmup_steps) == (63, 3)
    assert warmup_cosine(62, 1.0, schedule.total_steps, schedule.warmup_steps) < 0.01


def test_time_budget_picks_fewer_epochs_and_shortens_the_schedule(tmp_path):
    """A short budget stops well before --epochs, and the learning rate has decayed by the last epoch."""
    import time

    lines = []
    cfg = resolve_config({"preset": "tiny", "epochs": 200, "limit": 2000, "test_limit": 500, "time_budget": 0.4,
                          "precision": "float32", "output_dir": str(tmp_path / "r"), "verbose": 0})
    start = time.monotonic()
    metrics = fit.train(cfg, print_fn=lines.append)
    elapsed = time.monotonic() - start
    chosen = [line for line in lines if line.startswith("time budget 0.4 min")]
    assert len(chosen) == 1, lines
    assert 1 <= metrics["epochs"] < 200 and f"training {metrics['epochs']} epochs" in chosen[0]
    from nin_keras.callbacks import read_history

    history = read_history(str(tmp_path / "r" / "history.csv"))
    assert [row["epoch"] for row in history] == list(range(1, metrics["epochs"] + 1))
    # 24 s holds several epochs of 1,833 images even on a loaded 2-core host; from epoch 2 on the
    # schedule is the shortened one, so the cosine ran to (nearly) zero over the chosen epochs.
    assert metrics["epochs"] >= 2
    assert history[-1]["learning_rate"] < 0.2 * cfg.learning_rate
    # Generous: the host may be throttled, but a budget ignored would take minutes.
    assert elapsed < 0.4 * 60 * 2.5


def test_label_smoothing_trains_on_one_hot_labels_and_saves_a_plain_model(tmp_path, fashion_test):
    """Smoothed cross-entropy end to end (with flips and random erasing): one-hot pipeline, accuracy in history, a
    model.keras without custom objects."""
    import keras

    from nin_keras.data import make_dataset

    cfg = resolve_config({"preset": "tiny", "epochs": 1, "limit": 600, "test_limit": 200, "label_smoothing": 0.1,
                          "augment": True, "augment_shift": 0, "random_erasing": 0.5,
                          "output_dir": str(tmp_path / "r"), "verbose": 0})
    metrics = fit.train(cfg, print_fn=lambda *a: None)
    assert 0 <= metrics["test_accuracy"] <= 1 and np.isfinite(metrics["train_loss"])
    model = keras.saving.load_model(tmp_path / "r" / "model.keras")  # loads where nin_keras adds nothing
    assert model.loss.label_smoothing == pytest.approx(0.1)
    images, labels = next(iter(make_dataset(*fashion_test, 8, one_hot_classes=10)))
    np.testing.assert_array_equal(labels.numpy().argmax(1), fashion_test[1][:8])


def test_ema_run_ends_with_the_averaged_weights_and_saves_them(tmp_path):
    """--ema: fit() ends by copying the optimizer's average into the model, and that model is what is saved."""
    import keras

    cfg = resolve_config({"preset": "tiny", "epochs": 1, "limit": 600, "test_limit": 200, "ema": 0.9,
                          "output_dir": str(tmp_path / "r"), "verbose": 0})
    metrics = fit.train(cfg, print_fn=lambda *a: None)
    model = keras.saving.load_model(tmp_path / "r" / "model.keras")
    splits = load_data(val_fraction=cfg.val_fraction, seed=cfg.seed, limit=cfg.limit, test_limit=cfg.test_limit,
                       print_fn=lambda *a: None)
    # val_accuracy is the saved (averaged, recalibrated) model's, not the last epoch's raw weights'
    assert metrics["val_accuracy"] == pytest.approx(model.evaluate(splits.x_val, splits.y_val, verbose=0)[1])
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == pytest.approx(0.9)
    averages = [v for v in model.optimizer._model_variables_moving_average if v is not None]
    assert len(averages) == len(model.trainable_weights) > 0
    for weight, average in zip(model.trainable_weights, averages):
        np.testing.assert_allclose(weight.numpy(), average.numpy(), rtol=1e-6, atol=1e-7)


def test_the_reported_validation_accuracy_is_the_saved_models(tmp_path):
    """metrics.json's val_accuracy is what the saved model scores, as test_accuracy is: not the last epoch's,
    whose BatchNorm statistics came from 512 images where the saved model's come from 2,048."""
    import keras

    cfg = resolve_config({"preset": "fashion", "epochs": 1, "limit": 3000, "test_limit": 200,
                          "output_dir": str(tmp_path / "r"), "verbose": 0})
    metrics = fit.train(cfg, print_fn=lambda *a: None)
    model = keras.saving.load_model(tmp_path / "r" / "model.keras")
    splits = load_data(val_fraction=cfg.val_fraction, seed=cfg.seed, limit=cfg.limit, print_fn=lambda *a: None)
    assert metrics["val_accuracy"] == pytest.approx(model.evaluate(splits.x_val, splits.y_val, verbose=0)[1])


def test_ema_warns_when_the_average_would_still_hold_the_initial_weights():
    cfg = resolve_config({"preset": "tiny", "epochs": 2, "ema": 0.999})
    warning = fit.ema_warning(cfg, steps_per_epoch=100)
    assert "--ema 0.999 over 200 steps leaves 82% of the random initial weights" in warning
    assert "--ema 0.975 or less" in warning
    default_run = resolve_config({"preset": "fashion", "ema": 0.999})  # 8 epochs of 429 steps: 3% left
    warning = fit.ema_warning(default_run, 429)
    assert "leaves 3% of" in warning and "use --ema 0.9985 or less" in warning
    default_run.ema = 0.998
    assert fit.ema_warning(default_run, steps_per_epoch=429) is None
    assert fit.ema_warning(resolve_config({"preset": "tiny"}), steps_per_epoch=1) is None


@pytest.mark.parametrize("recorded, given", [(0.0, 0.999), (0.999, 0.0)])
def test_resume_refuses_to_switch_the_weight_average_on_or_off(tmp_path, recorded, given):
    """Keras would skip restoring the whole optimizer (only a warning): Adam's moments and the schedule's step lost."""
    from nin_keras.config import save_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(resolve_config({"preset": "tiny", "ema": recorded}), str(run_dir / "config.json"))
    cfg = resolve_config({"preset": "tiny", "ema": given, "output_dir": str(run_dir)})
    with pytest.raises(ConfigError, match=rf"trained with ema={recorded}.*Received: ema={given}"):
        fit.prepare_run_dir(cfg, resume=True, print_fn=lambda *a: None)
    cfg.ema = recorded * 0.5  # another momentum keeps the same optimizer variables
    assert fit.prepare_run_dir(cfg, resume=True, print_fn=lambda *a: None)[0] == "resume"


def test_time_budget_must_be_positive():
    with pytest.raises(ConfigError, match="time budget must be a number of minutes > 0. Received: 0"):
        resolve_config({"time_budget": 0})


def test_unknown_model_key_is_one_line_with_a_suggestion(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "tiny", "model": {"widht_multiplier": 2}}))
    code = fit.main(["--config", str(path), "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "unknown model settings ['widht_multiplier']" in err and "did you mean 'widht_multiplier' -> 'width_multiplier'" in err
    assert not (tmp_path / "r" / "config.json").exists()


def test_misspelled_setting_gets_a_suggestion(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ConfigError, match="did you mean 'epochz' -> 'epochs'"):
        resolve_config({}, str(path))


@pytest.mark.parametrize("name, content, message", [
    ("metrics.json", "{not json", "unreadable metrics of a finished run"),
    ("metrics.json", '{"epochs": 3}', "unreadable metrics of a finished run"),
])
def test_corrupt_files_in_a_finished_run_are_one_line(tmp_path, capsys, name, content, message):
    run = tmp_path / "r"
    run.mkdir()
    cfg = resolve_config({"preset": "tiny", "output_dir": str(run), "precision": "float32"})
    from nin_keras.config import save_config

    save_config(cfg, str(run / "config.json"))
    (run / name).write_text(content)
    code = fit.main(["--preset", "tiny", "--precision", "float32", "--output-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and message in err
    assert (run / name).read_text() == content


def test_corrupt_history_is_a_data_error(tmp_path):
    from nin_keras.callbacks import read_history
    from nin_keras.errors import DataError

    (tmp_path / "history.csv").write_text("epoch,loss\n1,abc\n")
    with pytest.raises(DataError, match="corrupt training history"):
        read_history(str(tmp_path / "history.csv"))
