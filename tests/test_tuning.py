import json
import os
import signal
import time

import keras
import keras_tuner
import pytest

from helpers import free_ports, launch
from nin_keras.config import resolve_config
from tuning import search
from tuning.hypermodel import NinHyperModel



def hypermodel(preset="tiny", trial_epochs=None, **settings):
    return NinHyperModel(resolve_config({"preset": preset, **settings}), num_train_examples=1280,
                         trial_epochs=trial_epochs)


def build_with(**fixed):
    hp = keras_tuner.HyperParameters()
    for name, value in fixed.items():
        hp.Fixed(name, value)
    return hypermodel().build(hp)


def test_default_hyperparameters_build_the_untuned_preset():
    from helpers import build_preset

    model = hypermodel().build(keras_tuner.HyperParameters())
    assert model.count_params() == build_preset("tiny").count_params()
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    schedule = model.optimizer.learning_rate if not hasattr(model.optimizer, "_learning_rate") else model.optimizer._learning_rate
    assert schedule.warmup_target == pytest.approx(0.003)  # the tiny preset's learning rate
    assert schedule.warmup_steps + schedule.decay_steps == 2 * 10  # 2 epochs x (1280 // 128) full batches


def test_every_hyperparameter_reaches_the_model():
    def lr_schedule(m):
        return m.optimizer._learning_rate

    def convs(model, block):
        return [layer for layer in model.layers if layer.name.startswith(f"{block}_conv")]

    # Architecture: depth, per-block width and 1 x 1 convs, the class block, BatchNorm placement, dropout.
    deeper = build_with(depth=3)
    assert deeper.get_layer("block3_conv0").filters == 64 and not any(
        layer.name == "block3_pool" for layer in deeper.layers)  # an added block: twice as wide, no pooling
    assert not any(layer.name.startswith("block2_") for layer in build_with(depth=1).layers)
    assert build_with(block2_filters=48).get_layer("block2_conv0").filters == 48
    assert [c.filters for c in convs(build_with(block1_filters=24), "block1")] == [24, 24, 24]
    assert len(convs(build_with(block1_mlp_layers=1), "block1")) == 2
    assert build_with(head_filters=64).get_layer("head_conv0").filters == 64
    assert build_with(head_filters=64).get_layer("head_conv2").filters == 10  # still one map per class
    bn = {layout: {layer.name for layer in build_with(batch_norm=layout).layers if "_bn" in layer.name}
          for layout in ("none", "after_stem", "all")}
    assert not bn["none"] and "block1_bn0" in bn["all"] and "head_bn0" in bn["all"]
    assert "block1_bn0" not in bn["after_stem"] and "block2_bn0" in bn["after_stem"]
    assert build_with(dropout=0.4).get_layer("block2_dropout").rate == pytest.approx(0.4)
    # The recipe.
    assert lr_schedule(build_with(learning_rate=0.0005)).warmup_target == pytest.approx(0.0005)
    assert isinstance(build_with(optimizer="sgd").optimizer, keras.optimizers.SGD)
    assert build_with(optimizer="adam", weight_decay=1e-4).optimizer.weight_decay == pytest.approx(1e-4)
    assert isinstance(build_with(label_smoothing=0.1).loss, keras.losses.CategoricalCrossentropy)
    assert build_with(label_smoothing=0.1).loss.label_smoothing == pytest.approx(0.1)
    assert isinstance(build_with(lr_schedule="constant").optimizer.learning_rate.numpy().item(), float)
    hm = hypermodel()
    values = hm.declare(keras_tuner.HyperParameters())
    assert hm.config_for({**values, "augment": True, "augment_shift": 1}).augment_shift == 1  # used by fit()
    assert hm.config_for({**values, "batch_size": 64}).batch_size == 64
    small, large = lr_schedule(build_with(batch_size=64)), lr_schedule(build_with(batch_size=256))
    assert small.warmup_steps + small.decay_steps == 2 * 20 and large.warmup_steps + large.decay_steps == 2 * 5


def test_integer_settings_from_a_config_do_not_break_the_space():
    values = hypermodel(weight_decay=0, label_smoothing=0).declare(keras_tuner.HyperParameters())
    assert values["weight_decay"] == 0.0 and values["label_smoothing"] == 0.0


def test_each_trial_schedule_spans_the_epochs_it_trains():
    model = hypermodel(trial_epochs=5).build(keras_tuner.HyperParameters())
    schedule = model.optimizer._learning_rate
    assert schedule.warmup_steps + schedule.decay_steps == 5 * 10
    hp = keras_tuner.HyperParameters()
    hp.Fixed("tuner/epochs", 9)
    hp.Fixed("tuner/initial_epoch", 3)  # a Hyperband trial continuing from a 3-epoch rung
    schedule = hypermodel().build(hp).optimizer._learning_rate
    assert schedule.warmup_steps + schedule.decay_steps == 6 * 10


def test_the_default_hyperparameters_of_every_preset_build_it():
    from helpers import build_preset

    for preset in ("fashion", "fashion-best", "fashion-best-v1", "photo"):
        model = hypermodel(preset).build(keras_tuner.HyperParameters())
        assert model.count_params() == build_preset(preset).count_params(), preset


def tuning_args(out, *extra):
    return ["--tuner", "random", "--max-trials", "2", "--epochs", "1", "--preset", "tiny", "--limit", "1500",
            "--test-limit", "100", "--output-dir", str(out), "--verbose", "0", *extra]


def test_random_search_writes_results_and_a_config_fit_accepts(tmp_path, capsys):
    assert search.main(tuning_args(tmp_path / "s")) == 0
    out = capsys.readouterr().out
    assert "best: trial" in out and "learning_rate" in out
    trials = json.load(open(tmp_path / "s" / "trials.json"))
    assert len(trials) == 2 and all(t["status"] == "COMPLETED" and t["seconds"] > 0 for t in trials)
    defaults = hypermodel().declare(keras_tuner.HyperParameters())
    assert trials[0]["hyperparameters"] == defaults  # the first trial is the untuned preset
    best = json.load(open(tmp_path / "s" / "best_hparams.json"))
    assert best["val_accuracy"] == max(t["val_accuracy"] for t in trials)
    cfg = resolve_config({}, str(tmp_path / "s" / "best_config.json"))
    assert cfg.preset == "tiny" and cfg.limit is None
    assert cfg.learning_rate == pytest.approx(best["hyperparameters"]["learning_rate"])
    assert len(cfg.model["blocks"]) == best["hyperparameters"]["depth"]
    # fit accepts it: a one-epoch retrain on a subset runs.
    from nin_keras.fit import main as fit_main

    code = fit_main(["--config", str(tmp_path / "s" / "best_config.json"), "--epochs", "1", "--limit", "600",
                     "--test-limit", "100", "--output-dir", str(tmp_path / "retrain"), "--verbose", "0"])
    assert code == 0 and os.path.exists(tmp_path / "retrain" / "model.keras")
    tensorboard = tmp_path / "s" / "tensorboard"
    assert sorted(os.listdir(tensorboard)) == ["0", "1"]  # one log folder per trial, with HParams events
    for trial in ("0", "1"):
        events = [f for _, _, files in os.walk(tensorboard / trial) for f in files if "tfevents" in f]
        assert events


def test_hyperband_promotes_trials_to_longer_budgets(tmp_path):
    out = tmp_path / "hb"
    args = ["--tuner", "hyperband", "--epochs", "3", "--preset", "tiny", "--limit", "800", "--test-limit", "100",
            "--output-dir", str(out), "--verbose", "0"]
    assert search.main(args) == 0
    trials = json.load(open(out / "trials.json"))
    defaults = hypermodel().declare(keras_tuner.HyperParameters())
    assert {k: v for k, v in trials[0]["hyperparameters"].items() if not k.startswith("tuner/")} == defaults
    budgets = sorted(t["hyperparameters"]["tuner/epochs"] for t in trials)  # every trial has its budget
    assert budgets[0] == 1 and budgets[-1] == 3  # short first rungs, the full budget for the promoted
    assert any(t["hyperparameters"].get("tuner/trial_id") for t in trials)  # a promoted trial continues another
    assert os.path.exists(out / "best_config.json")


def run_tuning(args, env=None):
    return launch("tuning", *args, env=env)


def test_killed_search_resumes_without_rerunning_finished_trials(tmp_path):
    out = tmp_path / "s"
    args = tuning_args(out, "--max-trials", "3")
    proc = run_tuning(args)
    first_time = out / "search" / "trial_0" / "time.json"
    # trial_1's folder appears once the oracle has recorded trial 0 as finished and started the next one.
    second = out / "search" / "trial_1"
    deadline = time.time() + 240
    while not second.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert second.exists() and first_time.exists(), proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stamp = first_time.read_text()
    proc = run_tuning(args)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-2000:]
    assert "finished trial 0 " not in output  # trial 0 was not run again
    assert first_time.read_text() == stamp
    trials = json.load(open(out / "trials.json"))
    assert [t["status"] for t in trials] == ["COMPLETED"] * 3


def test_a_time_budget_stops_starting_trials_and_a_larger_one_goes_on(tmp_path, capsys):
    """The budget counts finished trials over sittings: a spent one writes the results of what ran, and a
    rerun with more budget continues the same search without redoing a trial."""
    out = tmp_path / "s"
    assert search.main(tuning_args(out, "--max-trials", "3", "--time-budget", "0.0001")) == 0
    printed = capsys.readouterr().out
    assert "time budget:" in printed and "so no more trials start" in printed and "best: trial 0" in printed
    assert "of 0.0001 budget minutes used)" in printed  # progress, trial by trial
    trials = json.load(open(out / "trials.json"))
    assert [t["status"] for t in trials] == ["COMPLETED"]  # the first trial ran; none started after it
    assert os.path.exists(out / "best_config.json")
    stamp = (out / "search" / "trial_0" / "time.json").read_text()
    assert search.main(tuning_args(out, "--max-trials", "3", "--time-budget", "60")) == 0
    assert [t["status"] for t in json.load(open(out / "trials.json"))] == ["COMPLETED"] * 3
    assert (out / "search" / "trial_0" / "time.json").read_text() == stamp
    capsys.readouterr()
    # Counted over the sittings: the finished trials already exceed a tiny budget, so none starts.
    assert search.main(tuning_args(out, "--max-trials", "3", "--time-budget", "0.0001")) == 0
    assert "time budget:" in capsys.readouterr().out and len(json.load(open(out / "trials.json"))) == 3


def test_the_budget_reads_only_time_files_that_make_sense(tmp_path):
    """A search folder from elsewhere: a time.json that is not ours counts as no time, not a traceback."""
    from tuning import budget

    contents = {"trial_0": '{"seconds": 30.5}', "trial_1": '{"seconds": 12}', "trial_2": "[1, 2]",
                "trial_3": '{"seconds": "40"}', "trial_4": '{"seconds": NaN}', "trial_5": '{"seconds": -9}',
                "trial_6": '{"seconds": true}', "trial_7": "{not json", "trial_8": b"\xff\xfe",
                "trial_10": '{"seconds": 1' + "0" * 400 + "}"}  # an int past float's range
    for name, text in contents.items():
        (tmp_path / name).mkdir()
        path = tmp_path / name / "time.json"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    (tmp_path / "trial_9").mkdir()  # a trial still running: no time file yet
    (tmp_path / "oracle.json").write_text('{"seconds": 1000}')  # not a trial folder
    assert budget.spent_seconds(tmp_path) == 42.5
    assert budget.trial_seconds(tmp_path / "trial_1") == 12.0 and budget.trial_seconds(tmp_path / "trial_9") is None
    assert budget.spent_seconds(tmp_path / "missing") == 0.0
    with pytest.raises(budget.BudgetSpent, match="0.7 of 0.5 minutes spent"):
        budget.check(tmp_path, 0.5)
    budget.check(tmp_path, 1)
    budget.check(tmp_path, None)


def test_a_stopped_search_writes_the_results_of_its_finished_trials(tmp_path):
    """SIGTERM (a scheduler's stop, ``kill``) mid-search: exit 143, the finished trials' best written;
    the same command then goes on."""
    out = tmp_path / "s"
    args = tuning_args(out, "--max-trials", "2")
    proc = run_tuning(args)
    second = out / "search" / "trial_1"
    deadline = time.time() + 240
    while not second.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert second.exists(), proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]  # 143, as fit exits
    assert "Traceback" not in output
    assert "search stopped after 1 finished trial(s); results so far written" in output
    assert json.load(open(out / "best_hparams.json"))["trial"] == "0"
    assert [t["status"] for t in json.load(open(out / "trials.json"))][0] == "COMPLETED"
    assert not (second / "time.json").exists()  # a stopped trial's time does not count against a budget
    proc = run_tuning(args)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "finished trial 0 " not in output, output[-2000:]


def test_keras_tuner_state_files_are_replaced_whole(tmp_path, monkeypatch):
    """A crash while keras-tuner saves its state leaves the previous file (keras-tuner 1.4 truncates first)."""
    from keras_tuner.src import utils

    from nin_keras.distribute import make_strategy

    for name in ("save_json", "load_json"):  # undone after the test
        monkeypatch.setattr(utils, name, getattr(utils, name))
    args = search.build_parser().parse_args(["--output-dir", str(tmp_path / "s"), "--preset", "tiny"])
    tuner = search.make_tuner(args, hypermodel(), make_strategy("one-device"))
    tuner.oracle.save()
    oracle_file = tmp_path / "s" / "search" / "oracle.json"
    before = oracle_file.read_text()

    def crash(*args):
        raise OSError("killed mid-save")

    monkeypatch.setattr(os, "replace", crash)
    tuner.oracle.ongoing_trials = {"tuner0": keras_tuner.engine.trial.Trial(tuner.oracle.get_space(), "7")}
    with pytest.raises(Exception, match="killed mid-save"):
        tuner.oracle.save()  # keras-tuner's own call, through its own module's name
    assert oracle_file.read_text() == before
    assert sorted(os.listdir(oracle_file.parent)) == ["oracle.json"]  # no temporary file left behind


def test_an_unreadable_saved_search_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """A state file cut short (by an older writer, a full disk) is refused in one line, with the way out."""
    from keras_tuner.src import utils

    from nin_keras.distribute import make_strategy

    for name in ("save_json", "load_json"):
        monkeypatch.setattr(utils, name, getattr(utils, name))
    args = search.build_parser().parse_args(["--output-dir", str(tmp_path / "s"), "--preset", "tiny"])
    tuner = search.make_tuner(args, hypermodel(), make_strategy("one-device"))
    tuner.save()
    tuner.oracle.save()
    oracle_file = tmp_path / "s" / "search" / "oracle.json"
    oracle_file.write_text(oracle_file.read_text()[:40])
    with pytest.raises(search.ConfigError) as info:
        search.make_tuner(args, hypermodel(), make_strategy("one-device"))
    message = str(info.value)
    assert message.startswith(f"{oracle_file}: keras-tuner's saved state cannot be read (")
    assert "pass --overwrite" in message and "\n" not in message


def test_chief_and_two_workers_share_a_search(tmp_path):
    out = tmp_path / "s"
    args = tuning_args(out, "--max-trials", "4")
    port = str(free_ports(1)[0])
    base = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
    chief = run_tuning(args, {**base, "KERASTUNER_TUNER_ID": "chief"})
    time.sleep(3)
    workers = [run_tuning(args, {**base, "KERASTUNER_TUNER_ID": f"tuner{i}"}) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=600)[0] for w in workers]
        assert all(w.returncode == 0 for w in workers), "".join(outputs)[-3000:]
        chief_out = chief.communicate(timeout=120)[0]  # the chief exits by itself once the workers are done
        assert chief.returncode == 0, chief_out[-3000:]
    finally:
        for proc in (chief, *workers):
            if proc.poll() is None:
                proc.kill()
    finished = [line.split()[3] for o in outputs for line in o.splitlines() if ": finished trial " in line]
    assert sorted(finished) == sorted(set(finished)) and len(finished) == 4  # no trial ran twice
    by_worker = {json.load(open(out / "search" / f"trial_{t}" / "time.json"))["tuner_id"] for t in finished}
    assert by_worker == {"tuner0", "tuner1"}
    assert "best: trial" in chief_out and os.path.exists(out / "best_config.json")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tuner", "grid"], "--tuner must be one of bayesian, random, hyperband. Received: 'grid'"),
        (["--max-trials", "0"], "max trials must be an integer >= 1. Received: 0"),
        (["--epochs", "-2"], "epochs must be an integer >= 1. Received: -2"),
        (["--limit", "-5"], "limit must be an integer >= 2. Received: -5"),
        (["--patience", "0"], "patience must be an integer >= 1. Received: 0"),
        (["--time-budget", "-1"], "time budget must be a number of minutes > 0. Received: -1.0"),
    ],
)
def test_bad_search_settings(tmp_path, capsys, args, message):
    assert search.main(["--output-dir", str(tmp_path / "s"), *args]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: {message}"


def test_a_time_budget_is_refused_in_distributed_tuning(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    assert search.main(["--output-dir", str(tmp_path / "s"), "--time-budget", "30"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--time-budget is for a search on one machine" in err and "Received:" in err
    assert not (tmp_path / "s").exists()


def test_default_tuner_is_bayesian_and_constructs(tmp_path):
    from nin_keras.distribute import make_strategy

    args = search.build_parser().parse_args(["--output-dir", str(tmp_path / "s")])
    assert search.build_parser().parse_args(["--preset", "tiny"]).output_dir is None
    no_dir = search.build_parser().parse_args(["--preset", "tiny"])
    search.validate_args(no_dir)
    assert no_dir.output_dir == os.path.join("tuning_runs", "tiny")  # one folder per preset
    assert (args.tuner, args.max_trials, args.epochs, args.limit) == ("bayesian", 10, 3, 20000)
    tuner = search.make_tuner(args, hypermodel(), make_strategy("one-device"))
    assert isinstance(tuner, keras_tuner.BayesianOptimization) and tuner.oracle.max_trials == 10
    assert tuner.oracle.num_initial_points == 3


def test_a_search_folder_is_not_resumed_with_other_settings(tmp_path, capsys):
    """Another preset (or tuner, epochs...) in the same folder is refused; the first search's results stay."""
    out = tmp_path / "s"
    assert search.main(tuning_args(out, "--max-trials", "1")) == 0
    best = (out / "best_config.json").read_text()
    capsys.readouterr()
    args = tuning_args(out, "--max-trials", "1")
    args[args.index("tiny")] = "fashion"
    assert search.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a different search (settings differ: preset)" in err
    assert (out / "best_config.json").read_text() == best
    assert json.load(open(out / "search.json"))["preset"] == "tiny"


def test_more_trials_extend_a_search_instead_of_being_another_search(tmp_path, capsys):
    out = tmp_path / "s"
    assert search.main(tuning_args(out, "--max-trials", "1")) == 0
    assert search.main(tuning_args(out, "--max-trials", "2")) == 0
    trials = json.load(open(out / "trials.json"))
    assert len(trials) == 2  # the first trial kept, one more run
    assert json.load(open(out / "search.json"))["max_trials"] == 2


def test_a_second_search_in_the_same_folder_is_refused_while_the_first_runs(tmp_path, capsys):
    """Two chiefs writing one keras-tuner project would corrupt its state; the second gets one line."""
    from nin_keras.rundir import RunLock

    out = tmp_path / "s"
    first = RunLock(str(out)).acquire()  # the first search, still running
    try:
        assert search.main(tuning_args(out)) == 1
    finally:
        first.release()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output-dir {out} is in use by another nin_keras process" in err
    assert not (out / "search.json").exists()


def test_a_new_search_in_a_symlinked_folder_runs_and_overwrite_is_no_way_into_a_users_folder(tmp_path, capsys):
    """tuning_runs/x linked to a bigger disk is an ordinary setup; --overwrite of a user's folder is not."""
    disk = tmp_path / "big-disk"
    disk.mkdir()
    (tmp_path / "link").symlink_to(disk)
    assert search.main(tuning_args(tmp_path / "link", "--max-trials", "1")) == 0
    assert (disk / "search.json").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("mine")
    assert search.main(tuning_args(mine, "--overwrite")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files that are not a search (thesis.txt)" in err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]


def test_a_folder_that_is_not_a_search_is_refused_and_left_as_it_was(tmp_path, capsys):
    """A training run or the user's own folder as --output-dir: search/, tensorboard/ and results would be
    scattered into it (fit refuses the same)."""
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("mine")
    (out / ".DS_Store").write_bytes(b"")  # the OS's, not the user's: no reason to refuse on its own
    assert search.main(tuning_args(out)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files that are not a search (thesis.txt)" in err
    assert sorted(p.name for p in out.iterdir()) == [".DS_Store", "thesis.txt"]


def test_a_full_disk_in_a_trial_stops_the_search_in_one_line_and_the_rerun_runs_that_trial(tmp_path, capsys,
                                                                                              monkeypatch):
    """A full disk used to count as a failed trial (never run again), with keras-tuner's traceback and h5py's
    destructor errors, and the process died with a segmentation fault at exit."""
    import shutil

    real = shutil.disk_usage

    def trial_dirs_full(path):
        usage = real(path)
        return usage._replace(free=0) if "trial_1" in str(path) else usage

    monkeypatch.setattr(shutil, "disk_usage", trial_dirs_full)
    out = tmp_path / "s"
    assert search.main(tuning_args(out)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trial_1 for this trial's checkpoint" in err and "runs this trial again" in err
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert search.main(tuning_args(out)) == 0
    trials = json.load(open(out / "trials.json"))
    assert [t["status"] for t in trials] == ["COMPLETED", "COMPLETED"]


def test_what_stops_a_search_and_what_is_a_failed_trial():
    """keras-tuner counts any error in a trial as a failed trial and starts the next; a user-facing one (a file
    that cannot be written) must stop the search instead, as a FatalError keras-tuner lets through."""
    import errno

    from nin_keras.errors import NinError

    for error in (NinError("trial_0/time.json: cannot write (No space left on device)"),
                  OSError(errno.EACCES, "Permission denied", "/runs/s/search/trial_3")):
        stopped = search._stops_the_search(error)
        assert isinstance(stopped, NinError) and isinstance(stopped, keras_tuner.errors.FatalError)
    assert search._stops_the_search(ValueError("a model that does not build")) is None
    assert search._stops_the_search(NinError("learning rate must be positive. Received: 0")) is None  # the trial's
    closed = search._stops_the_search(BrokenPipeError(32, "Broken pipe"))  # `| head`
    assert isinstance(closed, BrokenPipeError) and isinstance(closed, keras_tuner.errors.FatalError)


def test_the_same_search_twice_scores_its_trials_the_same(tmp_path, capsys):
    """Trials were built from whatever the global random state held: the untuned preset's trial scored 0.06-0.14
    in six identical searches, where fit with the same settings is the same every time."""
    for name in ("a", "b"):
        assert search.main(tuning_args(tmp_path / name, "--max-trials", "1")) == 0
    first, second = (json.load(open(tmp_path / name / "trials.json")) for name in ("a", "b"))
    assert first[0]["val_accuracy"] == second[0]["val_accuracy"]


def test_a_trial_orphaned_by_a_kill_is_retried(tmp_path):
    """A trial saved as RUNNING but missing from the oracle's ongoing state is queued again, not lost."""
    from nin_keras.distribute import make_strategy

    args = search.build_parser().parse_args(["--tuner", "random", "--output-dir", str(tmp_path / "s")])
    tuner = search.make_tuner(args, hypermodel(), make_strategy("one-device"))
    trial = tuner.oracle.create_trial("tuner0")
    assert trial.status == "RUNNING"
    tuner.oracle.ongoing_trials.clear()  # what a kill before keras-tuner saved its state leaves
    assert search.retry_orphaned_trials(tuner.oracle) == [trial.trial_id]
    assert tuner.oracle.create_trial("tuner0").trial_id == trial.trial_id
    assert search.retry_orphaned_trials(tuner.oracle) == []  # ongoing again: nothing to add


def test_a_search_folder_inside_the_image_folder_is_refused(tmp_path, monkeypatch, capsys):
    """The default tuning_runs/, made from inside the photo folder, would be a class of the next run (as fit's
    runs/ would)."""
    from tuning.search import main

    for cls in ("left", "right"):
        (tmp_path / cls).mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["--image-dir", ".", "--max-trials", "1", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the default folder tuning_runs/fashion/ is inside --image-dir ." in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["left", "right"]


def test_a_search_on_a_folder_smaller_than_a_batch_runs_and_says_the_batch(tmp_path, capsys):
    """30 photos leave about 20 for training: every batch_size choice stopped each trial ("batch size 64 is
    larger than the 20 training examples"); now each trains at the batch that fits, and the search says so."""
    from PIL import Image

    for label, cls in enumerate(("left", "right")):
        os.makedirs(tmp_path / "photos" / cls)
        for i in range(15):
            Image.new("RGB", (40, 30), (200 * label, 80, 200 - 200 * label)).save(
                tmp_path / "photos" / cls / f"IMG_{i:04d}.jpg")
    argv = ["--tuner", "random", "--max-trials", "1", "--epochs", "1", "--preset", "photo", "--image-size", "32",
            "--image-dir", str(tmp_path / "photos"), "--output-dir", str(tmp_path / "s"), "--verbose", "0",
            "--precision", "float32"]
    assert search.main(argv) == 0
    out = capsys.readouterr().out
    assert "fewer than every batch_size choice (64, 128, 256): each trial trains with a batch of 16" in out, out
    trials = json.load(open(tmp_path / "s" / "trials.json"))
    assert [t["status"] for t in trials] == ["COMPLETED"]
