"""Trustworthy run folders: recognised by content, replaced without loss, locked, and a recorded recipe."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import REPO, launch

SMALL = {"preset": "tiny", "epochs": 2, "limit": 2000, "test_limit": 300, "precision": "float32", "verbose": 0}
SMALL_FLAGS = ["--preset", "tiny", "--epochs", "1", "--limit", "2000", "--test-limit", "300", "--precision",
               "float32", "--verbose", "0"]


def _train(out, **overrides):
    from nin_keras.config import resolve_config
    from nin_keras.fit import train

    lines = []
    cfg = resolve_config({**SMALL, "output_dir": str(out), **overrides})
    return train(cfg, print_fn=lines.append), lines


def _fit(*args):
    from nin_keras import fit

    return fit.main(list(args))


@pytest.fixture
def finished_run(tmp_path):
    """A finished tiny run, with a user's note beside it in the folder."""
    out = tmp_path / "run"
    _train(out, epochs=1)
    (out / "notes.txt").write_text("my notes on this run")
    return out


# ---------------------------------------------------------------- recognised by content


@pytest.mark.parametrize("mode", ["--overwrite", "--resume"])
def test_a_folder_with_someone_elses_config_json_is_not_a_run(tmp_path, capsys, mode):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "thesis.txt").write_text("years of work")
    code = _fit(*SMALL_FLAGS, "--output-dir", str(folder), mode)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "no nin_keras run" in err and "did not write" in err
    assert sorted(os.listdir(folder)) == ["config.json", "thesis.txt"]
    assert (folder / "config.json").read_text() == "{}"


def test_overwrite_replaces_only_the_runs_own_files(finished_run, capsys):
    extra = finished_run / "logs" / "mine.txt"  # inside a folder the run owns: replaced with it
    extra.write_text("x")
    code = _fit(*SMALL_FLAGS, "--output-dir", str(finished_run), "--overwrite", "--seed", "1")
    assert code == 0, capsys.readouterr().err
    assert (finished_run / "notes.txt").read_text() == "my notes on this run"
    assert json.loads((finished_run / "config.json").read_text())["seed"] == 1
    assert not (finished_run / ".nin_keras-replaced").exists() and not extra.exists()


def test_config_json_records_the_whole_recipe(finished_run):
    from nin_keras import __version__
    from nin_keras.config import RECORDED_MODEL_KEYS

    saved = json.loads((finished_run / "config.json").read_text())
    assert saved["format"] == "nin_keras.run" and saved["format_version"] == 1
    assert saved["nin_keras_version"] == __version__
    assert RECORDED_MODEL_KEYS <= set(saved["model"]) and saved["model"]["num_classes"] == 10
    assert saved["model"]["blocks"][0]["filters"] == 16 and saved["model"]["data_format"] == "channels_last"
    assert saved["export"] == {} and saved["seed"] == 0 and saved["augment"] is False
    assert saved["preprocessing"]["resize_mode"] == "stretch" and "EXIF" in saved["preprocessing"]["orientation"]


def test_recorded_model_keys_are_build_nin_arguments():
    import inspect

    from nin_keras.config import RECORDED_MODEL_KEYS
    from nin_keras.model import build_nin

    assert RECORDED_MODEL_KEYS <= set(inspect.signature(build_nin).parameters)


# ---------------------------------------------------------------- the last good model is never lost


def test_a_replacement_that_diverges_gives_the_old_run_back(finished_run, capsys):
    before = {name: (finished_run / name).read_bytes() for name in ("metrics.json", "model.keras", "config.json")}
    code = _fit(*SMALL_FLAGS, "--output-dir", str(finished_run), "--overwrite", "--learning-rate", "1e9",
                "--optimizer", "sgd")
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "diverged" in err and "restored" in err
    for name, content in before.items():
        assert (finished_run / name).read_bytes() == content, name
    assert (finished_run / "notes.txt").exists() and not (finished_run / ".nin_keras-replaced").exists()
    assert not (finished_run / "backup").exists()


def test_a_replacement_that_crashes_gives_the_old_run_back(finished_run, monkeypatch):
    import nin_keras.plotting

    before = (finished_run / "metrics.json").read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(nin_keras.plotting, "plot_history", crash)
    from nin_keras.config import resolve_config
    from nin_keras.fit import train

    cfg = resolve_config({**SMALL, "epochs": 1, "seed": 3, "output_dir": str(finished_run)})
    with pytest.raises(RuntimeError):
        train(cfg, overwrite=True, print_fn=lambda *a: None)
    assert (finished_run / "metrics.json").read_text() == before
    assert json.loads((finished_run / "config.json").read_text())["seed"] == 0


def test_a_killed_replacement_is_undone_by_the_next_run(finished_run):
    """SIGKILL cannot be caught: the next process on the folder puts the old run back."""
    from nin_keras import rundir

    before = (finished_run / "metrics.json").read_text()
    aside = rundir.set_aside(str(finished_run))
    (finished_run / "config.json").write_text(json.dumps({"format": "nin_keras.run", "format_version": 1}))
    lines = []
    rundir.recover_interrupted_replacement(str(finished_run), lines.append)
    assert not os.path.exists(aside) and (finished_run / "metrics.json").read_text() == before
    assert "restored" in lines[0]


def test_the_backup_never_holds_non_finite_weights(tmp_path):
    from helpers import build_preset
    from nin_keras.callbacks import FiniteBackupAndRestore

    model = build_preset("tiny")
    backup = FiniteBackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
    backup.set_model(model)
    backup.on_epoch_end(0, {"loss": float("nan")})
    assert not os.path.exists(tmp_path / "backup")
    weights = model.get_weights()
    weights[0] = np.full_like(weights[0], np.nan)
    model.set_weights(weights)
    backup.on_epoch_end(0, {"loss": 1.0})  # a NaN reached the weights before the logs said so
    assert not os.path.exists(tmp_path / "backup")
    model.set_weights([np.zeros_like(w) for w in weights])
    backup.on_epoch_end(0, {"loss": 1.0})
    assert os.path.exists(tmp_path / "backup")  # the stock callback still writes finite epochs


def _compiled_tiny():
    from helpers import build_preset

    model = build_preset("tiny")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


def _backup(folder, model):
    from nin_keras.callbacks import FiniteBackupAndRestore

    backup = FiniteBackupAndRestore(str(folder), delete_checkpoint=False, double_checkpoint=True)
    backup.set_model(model)
    return backup


def _epoch_saved(folder):
    return json.loads((folder / "training_metadata.json").read_text())["epoch"]


def test_a_full_disk_refuses_the_backup_before_writing_and_the_rerun_resumes(tmp_path, monkeypatch):
    """No room for epoch 2's backup: one line, epoch 1's backup untouched, and the rerun continues from it."""
    import shutil

    from nin_keras.errors import DataError

    real, calls = shutil.disk_usage, []

    def full_after_the_first_backup(path):
        calls.append(path)
        usage = real(path)
        return usage._replace(free=0) if len(calls) > 1 else usage

    out = tmp_path / "run"
    monkeypatch.setattr(shutil, "disk_usage", full_after_the_first_backup)
    with pytest.raises(DataError, match="for the backup of epoch 2 .*resumes from the backup of epoch 1"):
        _train(out)
    assert _epoch_saved(out / "backup") == 1 and not list((out / "backup").glob(".*tmp*"))
    monkeypatch.setattr(shutil, "disk_usage", real)
    metrics, lines = _train(out)
    assert any("resuming" in line for line in lines) and metrics["epochs"] == 2


def test_a_backup_truncated_without_an_error_is_never_kept(tmp_path, monkeypatch):
    """h5py reports a full disk only in a destructor: the short file is caught when it is read back."""
    import keras

    from nin_keras.errors import DataError

    model = _compiled_tiny()
    backup = _backup(tmp_path / "backup", model)
    backup.on_epoch_end(0, {"loss": 1.0})
    good = (tmp_path / "backup" / "latest.weights.h5").read_bytes()
    save = keras.Model.save_weights

    def save_then_truncate(self, path, **kwargs):
        save(self, path, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)

    monkeypatch.setattr(keras.Model, "save_weights", save_then_truncate)
    with pytest.raises(DataError, match="cannot write the backup of epoch 2 "):
        backup.on_epoch_end(1, {"loss": 1.0})
    assert (tmp_path / "backup" / "latest.weights.h5").read_bytes() == good

    def forbidden(self, path, **kwargs):  # a backup/ folder made read-only: not a matter of space
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(keras.Model, "save_weights", forbidden)
    with pytest.raises(DataError, match=r"epoch 2 \(Permission denied\): check the folder's permissions, then"):
        backup.on_epoch_end(1, {"loss": 1.0})
    assert _epoch_saved(tmp_path / "backup") == 1 and sorted(os.listdir(tmp_path / "backup")) == [
        "latest.weights.h5", "training_metadata.json"]


def test_a_resumed_run_keeps_a_better_best_model_than_its_next_epoch(tmp_path):
    """The stock ModelCheckpoint starts every fit() from nothing: after a resume, the next epoch replaced
    best.keras even when it validated worse than the epoch best.keras held."""
    from nin_keras.callbacks import AtomicModelCheckpoint, write_history

    model = _compiled_tiny()
    best = tmp_path / "best.keras"
    model.save(best)
    before = best.read_bytes()
    write_history(tmp_path / "history.csv", [{"epoch": 1, "val_accuracy": 0.80}, {"epoch": 2, "val_accuracy": 0.90},
                                             {"epoch": 3, "val_accuracy": 0.99}])  # epoch 3: retrained below
    checkpoint = AtomicModelCheckpoint(str(best), monitor="val_accuracy", mode="max", save_best_only=True,
                                       history_path=str(tmp_path / "history.csv"))
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    checkpoint.on_epoch_begin(2)  # the backup restored 2 epochs
    checkpoint.on_epoch_end(2, {"loss": 1.0, "val_accuracy": 0.85})
    assert best.read_bytes() == before
    model.set_weights([w + 1 for w in model.get_weights()])  # epoch 3 trained on
    checkpoint.on_epoch_begin(3)
    checkpoint.on_epoch_end(3, {"loss": 1.0, "val_accuracy": 0.95})
    assert best.read_bytes() != before


def test_an_epoch_whose_best_model_could_not_be_written_is_trained_again(tmp_path, monkeypatch):
    """A full disk saving best.keras at the last epoch: its backup is not written either, so the rerun
    trains that epoch again and saves it, instead of finding the run done with a stale best.keras."""
    from nin_keras import callbacks
    from nin_keras.errors import NinError

    out = tmp_path / "run"
    save, calls = callbacks.AtomicModelCheckpoint._save_model, []

    def disk_full_at_epoch_2(self, epoch, batch, logs):
        calls.append(epoch)
        if calls == [0, 1]:
            raise NinError(f"{self.filepath}: cannot write (No space left on device)")
        return save(self, epoch, batch, logs)

    monkeypatch.setattr(callbacks.AtomicModelCheckpoint, "_save_model", disk_full_at_epoch_2)
    with pytest.raises(NinError, match="best.keras: cannot write"):
        _train(out)
    assert _epoch_saved(out / "backup") == 1
    metrics, _ = _train(out)
    assert calls == [0, 1, 1] and metrics["epochs"] == 2


def _two_backups(folder):
    """Back up epochs 1 and 2 of a tiny model into ``folder``; returns epoch 1's weights."""
    model = _compiled_tiny()
    backup = _backup(folder, model)
    backup.on_epoch_end(0, {"loss": 1.0})
    first = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1 for w in first])
    backup.on_epoch_end(1, {"loss": 1.0})
    return first


def _assert_resumes_after_epoch_1(folder, first):
    fresh = _compiled_tiny()
    _backup(folder, fresh).on_train_begin()
    assert fresh._initial_epoch == 1 and all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), first))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_a_damaged_backup_falls_back_to_the_epoch_before(tmp_path):
    """A backup cut short (a disk that filled under the stock callback, a copy interrupted) is not a traceback."""
    from nin_keras.errors import DataError

    first = _two_backups(tmp_path / "backup")
    _truncate(tmp_path / "backup" / "latest.weights.h5")
    _assert_resumes_after_epoch_1(tmp_path / "backup", first)
    for earlier in (tmp_path / "backup").glob("*.bkp"):
        earlier.unlink()
    _truncate(tmp_path / "backup" / "latest.weights.h5")  # now the only copy is damaged
    with pytest.raises(DataError, match="does not load .* no earlier copy; start the run again with --overwrite"):
        _backup(tmp_path / "backup", _compiled_tiny()).on_train_begin()


def test_a_backup_of_another_network_is_refused_and_left_as_it_was(tmp_path):
    """A --resume whose network no longer matches (other classes): neither copy loads, so neither may be
    'restored' over the other; the stock callback's fallback copied the earlier one over the newest."""
    from helpers import build_preset
    from nin_keras.errors import DataError

    model = _compiled_tiny()
    backup = _backup(tmp_path / "backup", model)
    backup.on_epoch_end(0, {"loss": 1.0})
    backup.on_epoch_end(1, {"loss": 1.0})
    before = {name: (tmp_path / "backup" / name).read_bytes() for name in os.listdir(tmp_path / "backup")}
    other = build_preset("tiny", num_classes=5)
    other.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(DataError, match="nor does the copy of the epoch before .*--overwrite \\(the backup is left"):
        _backup(tmp_path / "backup", other).on_train_begin()
    assert {name: (tmp_path / "backup" / name).read_bytes() for name in os.listdir(tmp_path / "backup")} == before


def test_an_epoch_count_without_its_weights_does_not_start_from_random_weights(tmp_path):
    """The stock restore skipped a missing weights file and still resumed at the recorded epoch."""
    first = _two_backups(tmp_path / "backup")
    (tmp_path / "backup" / "latest.weights.h5").unlink()
    _assert_resumes_after_epoch_1(tmp_path / "backup", first)


def test_divergence_says_how_to_continue(tmp_path, capsys):
    code = _fit(*SMALL_FLAGS, "--output-dir", str(tmp_path / "r"), "--learning-rate", "1e9", "--optimizer", "sgd")
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--resume --learning-rate" in err


def test_a_finished_run_in_a_folder_that_cannot_be_written_is_still_reported(finished_run, monkeypatch):
    """A finished run on a read-only share: rerunning it reports its result (the docs' promise) instead of
    refusing the lock; anything that would write there is still refused."""
    from nin_keras import rundir
    from nin_keras.errors import ConfigError

    def read_only(self):
        raise rundir.LockUnavailable(f"{self.label}: cannot write (Read-only file system)")

    monkeypatch.setattr(rundir.RunLock, "acquire", read_only)
    metrics, lines = _train(finished_run, epochs=1)
    assert metrics["epochs"] == 1 and any("already holds this finished run" in line for line in lines)
    with pytest.raises(ConfigError, match="holds a different run"):
        _train(finished_run, epochs=1, learning_rate=0.5)  # another run: refused, and nothing written


def test_a_failed_replacement_leaves_none_of_its_own_files(finished_run):
    """restore() clears every run file the new run wrote, not only the names the old run had."""
    from nin_keras import rundir

    before = sorted(os.listdir(finished_run))
    aside = rundir.set_aside(str(finished_run))
    (finished_run / "backup").mkdir()  # what a new run writes and a finished run does not have
    (finished_run / "backup" / "ckpt").write_text("new")
    (finished_run / "split.json").write_text("{}")
    rundir.restore(str(finished_run), aside)
    assert sorted(os.listdir(finished_run)) == before


def test_a_hand_written_config_json_is_not_an_old_run(tmp_path, capsys):
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"preset": "tiny", "epochs": 5}))  # the user's own
    (folder / "notes.txt").write_text("mine")
    code = _fit(*SMALL_FLAGS, "--output-dir", str(folder), "--overwrite")
    assert code == 1 and "no nin_keras run" in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == ["config.json", "notes.txt"]


def test_planted_symlinks_in_a_run_folder_are_refused(tmp_path, capsys):
    victim = tmp_path / "bashrc"
    victim.write_text("export PATH=...")
    folder = tmp_path / "received"
    folder.mkdir()
    os.symlink(victim, folder / ".nin_keras.lock")
    assert _fit(*SMALL_FLAGS, "--output-dir", str(folder)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link" in err and victim.read_text() == "export PATH=..."
    from nin_keras import rundir

    (tmp_path / "run3").mkdir()
    os.symlink(tmp_path / "received", tmp_path / "run3" / ".nin_keras-replaced")
    with pytest.raises(Exception, match="already exists"):
        rundir.set_aside(str(tmp_path / "run3"))
    assert os.path.exists(victim)


def test_an_upgrade_that_changes_export_defaults_still_finds_the_finished_run(finished_run):
    saved = json.loads((finished_run / "config.json").read_text())
    saved["export"] = {"per_channel": True}  # what a newer preset table would record
    saved["preprocessing"]["orientation"] = "reworded"
    (finished_run / "config.json").write_text(json.dumps(saved))
    metrics, lines = _train(finished_run, epochs=1)
    assert any("already holds this finished run" in line for line in lines)


# ---------------------------------------------------------------- one process per folder


def test_a_second_process_on_a_locked_folder_is_refused_with_the_holders_pid(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from nin_keras.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(60)"), str(tmp_path / "r")], cwd=REPO, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = _fit(*SMALL_FLAGS, "--output-dir", str(tmp_path / "r"))
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and f"pid {holder.pid}" in err and "in use" in err
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the killed holder's lock: the next run is not blocked.
    from nin_keras.rundir import RunLock

    lock = RunLock(str(tmp_path / "r")).acquire()
    lock.release()


def test_a_lock_file_removed_between_open_and_lock_is_not_a_lock(tmp_path, monkeypatch):
    """Three exports of one folder at one instant: the first removes the lock file it made as it lets go, just
    after the second opened that file. The second then locks a file no longer in the folder; it must take the
    file there now, so that the third is refused rather than holding the folder at the same time."""
    import fcntl

    from nin_keras.errors import ConfigError
    from nin_keras.rundir import LOCK_NAME, RunLock

    folder = str(tmp_path / "export")
    first = RunLock(folder).acquire()
    real_flock, calls = fcntl.flock, []

    def first_lets_go_in_between(fd, operation):
        calls.append(fd)
        if len(calls) == 1:  # the second has opened the first's file and is about to lock it
            first.release(remove=True)
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", first_lets_go_in_between)
    second = RunLock(folder).acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    with pytest.raises(ConfigError, match="in use by another nin_keras process"):
        RunLock(folder).acquire()  # the third
    assert len(calls) == 2 and os.path.exists(os.path.join(folder, LOCK_NAME))
    second.release(remove=True)
    assert os.listdir(folder) == []


def test_a_lock_file_replaced_at_every_try_is_in_use_not_unlockable(tmp_path, monkeypatch):
    """Other processes taking and letting go of the lock at every try: refused as in use, not LockUnavailable
    (an unwritable folder, which exports and reruns of a finished run go on without a lock)."""
    import fcntl

    from nin_keras.errors import ConfigError
    from nin_keras.rundir import LOCK_NAME, LockUnavailable, RunLock

    folder = tmp_path / "export"
    real_flock = fcntl.flock

    def replaced_meanwhile(fd, operation):
        os.remove(folder / LOCK_NAME)
        (folder / LOCK_NAME).write_text("")
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", replaced_meanwhile)
    with pytest.raises(ConfigError, match="in use by other nin_keras processes") as info:
        RunLock(str(folder)).acquire()
    assert not isinstance(info.value, LockUnavailable)


def test_an_output_folder_removed_between_its_making_and_the_lock_file_is_made_again(tmp_path, monkeypatch):
    """An export that made the output folder removes it as it lets go, if empty: a process that had just made
    (found) it then cannot create its lock file there. It makes both again rather than going on unlocked."""
    from nin_keras.rundir import LOCK_NAME, RunLock

    folder = tmp_path / "export"
    real_open, calls = os.open, []

    def folder_gone_in_between(path, flags, *args):
        calls.append(path)
        if len(calls) == 1:
            os.rmdir(folder)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", folder_gone_in_between)
    lock = RunLock(str(folder)).acquire()
    monkeypatch.setattr(os, "open", real_open)
    assert len(calls) == 2 and (folder / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    lock.release(remove=True)


def test_two_processes_on_one_folder_one_trains_one_is_refused(tmp_path):
    out = str(tmp_path / "r")
    args = [*SMALL_FLAGS, "--output-dir", out]
    procs = [launch("nin_keras.fit", *args) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    outputs = "\n".join(r[0] for r in results)
    assert codes == [0, 1], outputs
    assert "in use by another nin_keras process" in outputs
    assert json.loads(open(os.path.join(out, "metrics.json")).read())["epochs"] == 1


# ---------------------------------------------------------------- the recorded recipe rebuilds the network


def test_resume_rebuilds_the_recorded_network_after_the_preset_changed(tmp_path, monkeypatch):
    import nin_keras.plotting
    from nin_keras import presets

    out = tmp_path / "run"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a crash after training: the backup stays, the run is unfinished

    monkeypatch.setattr(nin_keras.plotting, "plot_history", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(out)
    monkeypatch.undo()
    recorded = json.loads((out / "config.json").read_text())["model"]
    # The preset table changes (as fashion-best did three times): wider first block.
    monkeypatch.setitem(presets.PRESETS["tiny"]["model"]["blocks"][0], "filters", 24)
    from nin_keras.config import resolve_config
    from nin_keras.fit import train

    cfg = resolve_config({**SMALL, "output_dir": str(out)})
    lines = []
    metrics = train(cfg, resume=True, print_fn=lines.append)
    assert metrics["examples_per_sec"] is None  # restored the backup, trained nothing again
    assert json.loads((out / "config.json").read_text())["model"] == recorded
    import keras

    assert keras.saving.load_model(str(out / "model.keras")).get_layer("block1_conv0").filters == 16


def test_config_of_an_old_run_rebuilds_its_network_in_a_new_folder(finished_run, monkeypatch, tmp_path):
    from nin_keras import presets
    from nin_keras.config import model_kwargs, resolve_config

    monkeypatch.setitem(presets.PRESETS["tiny"]["model"]["blocks"][0], "filters", 24)
    lines = []
    cfg = resolve_config({}, str(finished_run / "config.json"), print_fn=lines.append)
    assert cfg.output_dir is None and "not reused" in lines[0]
    assert model_kwargs(cfg)["blocks"][0]["filters"] == 16


def test_a_run_from_before_run_records_is_refused_in_one_line_or_reported_done(tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    settings = {"preset": "tiny", "epochs": 2, "limit": 2000, "model": {}, "seed": 0}
    (old / "config.json").write_text(json.dumps(settings))
    (old / "history.csv").write_text("epoch,loss\n1,0.5\n")
    code = _fit(*SMALL_FLAGS, "--output-dir", str(old), "--resume")
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "older nin_keras" in err and "--overwrite" in err
    assert (old / "config.json").read_text() == json.dumps(settings)


def test_a_users_keras_json_does_not_change_the_layout():
    import keras

    from helpers import build_preset

    keras.config.set_image_data_format("channels_first")
    try:
        model = build_preset("tiny")
        resized = build_preset("d2l")
    finally:
        keras.config.set_image_data_format("channels_last")
    assert model.get_layer("block1_conv0").data_format == "channels_last"
    assert resized.output_shape == (None, 10)


def test_a_keras_json_that_picks_another_backend_does_not_stop_the_commands(tmp_path):
    """A user's keras.json with "backend": "jax" (not installed) made every command a traceback."""
    (tmp_path / ".keras").mkdir()
    (tmp_path / ".keras" / "keras.json").write_text('{"backend": "jax", "image_data_format": "channels_first"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    out = tmp_path / "run"
    proc = launch("nin_keras.fit", *SMALL_FLAGS, "--output-dir", str(out),
                  env={**env, "HOME": str(tmp_path)})
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-2000:]
    assert json.loads((out / "config.json").read_text())["model"]["data_format"] == "channels_last"
    # An explicit KERAS_BACKEND is the user's choice: refused in one line, before anything is loaded.
    for backend in ("jax", "TensorFlow"):  # Keras compares exactly: "TensorFlow" would fail to import
        proc = launch("nin_keras.fit", "--output-dir", str(tmp_path / "other"), env={"KERAS_BACKEND": backend},
                      merge_stderr=False)
        stdout, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and err.count("\n") == 1 and f"Received: KERAS_BACKEND={backend}" in err, err
    assert not (tmp_path / "other").exists()


def test_a_keras_json_with_float16_and_channels_first_changes_neither_training_nor_export(tmp_path):
    """A user's "floatx": "float16" gave the loss trackers float16 totals (a false "diverged" past ~36,000
    images, and other numbers below that); "channels_first" broke the export's RGB wrapper."""
    histories = []
    for home, settings in (("plain", None), ("user", {"floatx": "float16", "image_data_format": "channels_first",
                                                       "epsilon": 0.5})):
        (tmp_path / home / ".keras").mkdir(parents=True)
        if settings:
            (tmp_path / home / ".keras" / "keras.json").write_text(json.dumps(settings))
        out = tmp_path / home / "run"
        proc = launch("nin_keras.fit", *SMALL_FLAGS, "--output-dir", str(out), env={"HOME": str(tmp_path / home)})
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, log[-2000:]
        histories.append((out / "history.csv").read_text().splitlines()[1].split(","))
    assert [float(v) for v in histories[1]] == pytest.approx([float(v) for v in histories[0]], rel=1e-5)
    proc = launch("export", str(out), "--format", "float32", "--no-verify", env={"HOME": str(tmp_path / "user")})
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and (out / "export" / "nin_float32.tflite").exists(), log[-2000:]


@pytest.mark.parametrize("settings, message", [
    ({"floatx": "bfloat16"}, "Keras accepts floatx float16 or float32 or float64"),
    ({"epsilon": "abc"}, "Keras accepts a decimal number for epsilon"),
    ({"image_data_format": "NHWC"}, "Keras accepts image_data_format channels_last or channels_first")])
def test_a_keras_json_that_stops_tensorflows_import_is_one_line(tmp_path, settings, message):
    (tmp_path / "keras.json").write_text(json.dumps(settings))
    proc = launch("nin_keras.fit", "--output-dir", str(tmp_path / "run"), env={"KERAS_HOME": str(tmp_path)},
                  merge_stderr=False)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.count("\n") == 1 and f"{tmp_path / 'keras.json'}: {message}" in err, err
    assert not (tmp_path / "run").exists()


def test_a_folder_named_keras_json_is_one_line(tmp_path):
    (tmp_path / "keras.json").mkdir()  # TensorFlow's import opened it: IsADirectoryError
    proc = launch("nin_keras.fit", "--output-dir", str(tmp_path / "run"), env={"KERAS_HOME": str(tmp_path)},
                  merge_stderr=False)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.count("\n") == 1 and "a folder where Keras reads its settings" in err, err


# ---------------------------------------------------------------- seeds, bad inputs, umask


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    code = _fit("--preset", "tiny", "--output-dir", str(tmp_path / "afile"))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "exists and is not a directory" in err
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_config_from_a_newer_run_format_is_one_line(tmp_path, capsys):
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"format": "nin_keras.run", "format_version": 99, "preset": "tiny"}))
    assert _fit("--config", str(newer)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run format 99" in err


def test_in_memory_augmentation_is_reproducible_from_the_seed():
    from nin_keras.data import make_train_dataset

    x = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
    y = np.arange(64) % 10

    def first_batches(seed):
        ds, _ = make_train_dataset(x, y, 32, seed=seed, augment=True)
        return [b[0].numpy() for b in ds.take(2)]

    a, b, c = first_batches(5), first_batches(5), first_batches(6)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_outside_32_bits_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, seed):
    monkeypatch.chdir(tmp_path)
    code = _fit("--preset", "tiny", "--seed", seed)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "seed must be an integer from 0" in err and seed in err
    assert os.listdir(tmp_path) == []


def test_signal_stop_records_the_first_signal_and_keeps_what_the_process_was_told_to_ignore():
    """SIGTERM is recorded, raised only at check() (the safe point), a second one raises at once; a SIGINT the
    process inherited as ignored (a script's background job) stays ignored; the old handlers come back."""
    from nin_keras.cli import SignalStop

    previous_int, previous_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with SignalStop() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing recorded
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs between bytecodes
            assert stop.received == signal.SIGTERM
            with pytest.raises(KeyboardInterrupt):
                stop.check()
            with pytest.raises(KeyboardInterrupt) as second:  # the user insists
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
            assert second.value.signum == signal.SIGTERM  # run_cli exits 143 with it, not 130
        assert signal.getsignal(signal.SIGTERM) is previous_term
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def test_ctrl_c_outside_training_is_one_line_and_exit_130(capsys):
    from nin_keras.cli import SecondSignal, run_cli

    def body():
        raise KeyboardInterrupt

    assert run_cli(body) == 130
    err = capsys.readouterr().err
    # One line, and no "Ctrl-C" in it: a second SIGTERM ends up here too, and exits as SIGTERM does.
    assert err.strip() == "interrupted: stopped; nothing was half-written"

    def second_sigterm():
        raise SecondSignal(signal.SIGTERM)

    assert run_cli(second_sigterm) == 143


def _interrupt_after_two_batches(monkeypatch):
    """SIGINT to this process at the second batch of epoch 1, as a Ctrl-C in a notebook would arrive."""
    import keras

    from nin_keras import fit

    class CtrlC(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    make_callbacks = fit.make_callbacks
    monkeypatch.setattr(fit, "make_callbacks", lambda *a, **k: [CtrlC(), *make_callbacks(*a, **k)])


@pytest.fixture
def ctrl_c_handler():
    """SIGINT handled as an interactive shell leaves it (a suite started with `cmd &` inherits it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow  # trains twice
def test_ctrl_c_in_a_library_call_is_a_keyboard_interrupt_and_the_command_exits_130(tmp_path, monkeypatch, capsys,
                                                                                    ctrl_c_handler):
    from nin_keras.errors import Stopped

    _interrupt_after_two_batches(monkeypatch)
    # From Python (a notebook): what Ctrl-C means there, not a SystemExit that would look like a clean exit.
    with pytest.raises(KeyboardInterrupt) as info:
        _train(tmp_path / "lib", epochs=2)
    assert isinstance(info.value, Stopped) and info.value.exit_code == 130
    assert os.path.exists(tmp_path / "lib" / "config.json")  # the folder is a resumable run
    # The command: exit 130 and one message, the run's own (no generic second line after it).
    assert _fit(*SMALL_FLAGS, "--epochs", "2", "--output-dir", str(tmp_path / "cli")) == 130
    captured = capsys.readouterr()
    # At epoch 1's second batch no epoch had finished: the line says so, and how to start again.
    assert "interrupted by SIGINT" in captured.out and "no epoch had finished" in captured.out
    assert f"start it again with: python -m nin_keras.fit --output-dir {tmp_path / 'cli'}" in captured.out
    assert "nothing was half-written" not in captured.err


def test_ctrl_c_at_any_moment_is_one_line_and_leaves_a_resumable_folder(tmp_path):
    out = str(tmp_path / "r")
    proc = launch("nin_keras.fit", *SMALL_FLAGS, "--epochs", "2", "--output-dir", out)
    time.sleep(6)  # somewhere in start-up, data loading, build or the first epoch
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    # -SIGINT: the run had ended and Python's finalisation, which puts back the default handler, was
    # waiting for TensorFlow's threads; the signal then ends the process as a shell's 130 does (seen in CI
    # when the 2-epoch run finished inside the 6 s). The run's files are complete, so the rerun is "done".
    assert proc.returncode in (0, 130, -signal.SIGINT), output
    assert proc.returncode != -signal.SIGINT or "run saved in" in output, output
    assert "Traceback" not in output
    if proc.returncode == 130 and os.path.exists(out):
        assert os.listdir(out) == [] or os.path.exists(os.path.join(out, "config.json"))
    code = subprocess.run([sys.executable, "-m", "nin_keras.fit", *SMALL_FLAGS, "--epochs", "2", "--output-dir", out],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert code.returncode == 0, code.stderr


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_files_follow_the_users_umask(tmp_path, umask, mode):
    from nin_keras.io import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(str(tmp_path / "a.json"), "{}")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == mode


def test_a_two_replica_run(tmp_path):
    """The in-process runs above use TensorFlow's default strategy, as users do; this one asks for two."""
    from nin_keras.callbacks import read_history

    metrics, lines = _train(tmp_path / "r", epochs=2, cpu_replicas=2, batch_size=64)
    assert metrics["replicas"] == 2 and any("2 replica(s)" in line for line in lines)
    history = read_history(str(tmp_path / "r" / "history.csv"))
    assert [row["epoch"] for row in history] == [1, 2] and history[1]["loss"] < history[0]["loss"]


def test_a_notebook_that_imported_keras_on_another_backend_gets_one_line_from_train(tmp_path, monkeypatch):
    """Keras imported on JAX before nin_keras: train() says so instead of a traceback deep in tf.data (the
    commands refuse the same before anything loads, above). Only TensorFlow is installed here, so the
    imported Keras reports JAX by a stand-in."""
    import keras

    from nin_keras.config import resolve_config
    from nin_keras.errors import ConfigError
    from nin_keras.fit import train

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ConfigError, match="nin_keras runs Keras on TensorFlow .* Received: KERAS_BACKEND=jax"):
        train(resolve_config({"preset": "tiny", "output_dir": str(tmp_path / "r")}))
    assert not (tmp_path / "r").exists()
