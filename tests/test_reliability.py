"""Fault tolerance: kill/resume, signals, divergence, atomic writes, bad output folders."""

import errno
import json
import os
import signal
import time

import numpy as np
import pytest

from helpers import free_ports, launch
from nin_keras import io as nio
from nin_keras.callbacks import AtomicModelCheckpoint, read_history
from nin_keras.errors import NinError

TINY = ["--preset", "tiny", "--limit", "6000", "--test-limit", "500", "--verbose", "2"]


def start_fit(*args, env=None):
    return launch("nin_keras.fit", *args, env=env)


def wait_for_epochs(history_path, n, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(history_path) and len(read_history(history_path)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} epochs in {history_path}: {proc.communicate()[0][-2000:]}")


def test_sigkill_then_rerun_resumes_without_repeating_epochs(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--epochs", "5", "--output-dir", str(out)]
    proc = start_fit(*args)
    wait_for_epochs(out / "history.csv", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_history(out / "history.csv"))
    assert 2 <= done < 5
    rerun = start_fit(*args)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output[-2000:]
    assert "resuming the run" in output
    assert f"Epoch {done + 1}/5" in output and "Epoch 1/5" not in output
    assert [row["epoch"] for row in read_history(out / "history.csv")] == [1, 2, 3, 4, 5]
    assert json.load(open(out / "metrics.json"))["epochs"] == 5


def test_sigterm_stops_saves_and_explains_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = start_fit(*TINY, "--epochs", "6", "--output-dir", str(out))
    wait_for_epochs(out / "history.csv", 1, proc)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in output and f"--output-dir {out}" in output
    assert os.path.exists(out / "backup") and not os.path.exists(out / "metrics.json")


def test_sigterm_before_any_epoch_finished_does_not_claim_one_was_saved(tmp_path):
    out = tmp_path / "run"
    proc = launch("nin_keras.fit", "--preset", "tiny", "--limit", "30000", "--epochs", "2", "--precision", "float32",
                  "--verbose", "2", "--output-dir", str(out), env={"PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # Keras prints "Epoch 1/2" as the epoch starts
        if line.startswith("Epoch 1/"):
            break
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "no epoch had finished, so none is saved; start it again with" in output
    assert "the last finished epoch is saved" not in output


def test_diverging_run_is_caught(tmp_path):
    proc = start_fit(*TINY, "--epochs", "2", "--optimizer", "sgd", "--lr-schedule", "constant",
                     "--learning-rate", "1e12", "--output-dir", str(tmp_path / "run"))
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged: the loss became NaN/inf in epoch 1" in errors[0]
    assert not os.path.exists(tmp_path / "run" / "best.keras")  # diverged weights are never "best"


def test_checkpoint_keeps_best_model_when_loss_turns_nan(tmp_path):
    from helpers import build_preset

    model = build_preset("tiny")
    path = str(tmp_path / "best.keras")
    ckpt = AtomicModelCheckpoint(path, monitor="val_accuracy", mode="max", save_best_only=True)
    ckpt.set_model(model)
    ckpt.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.5})
    saved = open(path, "rb").read()
    ckpt.on_epoch_end(1, {"loss": float("nan"), "val_accuracy": 0.9})
    assert open(path, "rb").read() == saved
    assert [f for f in os.listdir(tmp_path)] == ["best.keras"]


def test_disk_full_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if "w" in mode and ".tmp" in str(path):
            def write(_data):
                raise OSError(errno.ENOSPC, "No space left on device")
            handle.write = write
        return handle

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(NinError, match="metrics.json: cannot write \\(No space left on device\\)"):
        nio.atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


def test_a_full_disk_or_a_forbidden_folder_inside_tensorflow_or_keras_is_one_line(capsys):
    """Writers nin_keras does not wrap (TensorFlow's checkpoints and SavedModels, h5py): /dev/full gives the real
    errors. A different failure still raises."""
    import tensorflow as tf

    from nin_keras.cli import run_cli

    def tensorflow_writes():
        tf.io.write_file("/dev/full", tf.constant("x" * 100_000))

    def python_writes():
        with open("/dev/full", "w") as f:
            f.write("x" * 100_000)

    for body in (tensorflow_writes, python_writes):
        assert run_cli(body) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: No space left on device"), err
        assert "free space and rerun" in err and "Traceback" not in err
    # A folder that may not be written (a read-only subfolder of a run, say): /sys refuses even root.
    for body in (lambda: tf.io.write_file("/sys/kernel/notes", tf.constant("x")),
                 lambda: open("/sys/kernel/notes", "w")):
        assert run_cli(body) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(("error: Permission denied (in /sys/kernel): check the "
                                                         "folder's permissions and rerun", "error: Read-only")), err
    with pytest.raises(RuntimeError, match="boom"):
        run_cli(lambda: (_ for _ in ()).throw(RuntimeError("boom")))


def test_a_full_temporary_folder_names_tmpdir():
    import tempfile

    import tensorflow as tf

    from nin_keras.errors import write_failure

    # The message of a SavedModel staged in the temporary folder (TensorFlow 2.21, a full TMPDIR).
    staged = os.path.join(tempfile.gettempdir(), "nin_keras-export-ce6rjy90", "saved_model", "variables",
                          "variables_temp", "part-00000-of-00001.data-00000-of-00001.tempstate16617797891418079229")
    error = tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__SaveV2_dtypes_61_device_/job:"
                                             f"localhost/replica:0/task:0/device:CPU:0}}}} {staged}; No space left on "
                                             "device [Op:SaveV2]")
    assert write_failure(error).startswith(f"No space left on device in the temporary folder {tempfile.gettempdir()}: "
                                       "free space there, or set TMPDIR")
    assert write_failure(ValueError("a shape mismatch")) is None
    # An --output-dir the user chose under the temporary folder is not "the temporary folder" (TMPDIR cannot help).
    chosen = os.path.join(tempfile.gettempdir(), "my-runs", "r1", "backup", "x.tempstate1")
    assert "TMPDIR" not in write_failure(tf.errors.ResourceExhaustedError(None, None, f"{chosen}; No space left on "
                                                                                       "device [Op:SaveV2]"))
    # Text alone, in an error that is not the system's report (Keras', a message quoting a file), is not read.
    assert write_failure(ValueError("/data/a.jpg: Permission denied")) is None


def test_an_image_unreadable_after_the_scan_is_named_not_read_as_a_write_failure(capsys):
    """The decode failure carries the OS's words ("Permission denied"): it must keep its own message, which
    names the file, rather than get advice about writing a folder."""
    import tensorflow as tf

    from nin_keras.cli import run_cli
    from nin_keras.data.folders import DECODE_FAILED

    def training():
        raise tf.errors.InvalidArgumentError(None, None, f"assertion failed: [{DECODE_FAILED}: /data/cat/IMG_1.jpg: "
                                             "corrupt or unreadable image ([Errno 13] Permission denied)]")

    assert run_cli(training) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: /data/cat/IMG_1.jpg: corrupt or unreadable image") and "changed after the scan" in err


TINY_FLAGS = ["--preset", "tiny", "--limit", "2000", "--test-limit", "300", "--precision", "float32", "--verbose", "2"]


def test_a_pipe_whose_reader_left_stops_in_one_line_and_the_rerun_resumes(tmp_path):
    """`python -m nin_keras.fit | head -2`: a BrokenPipeError traceback from Keras' progress line before."""
    out = tmp_path / "run"
    proc = launch("nin_keras.fit", *TINY_FLAGS, "--epochs", "3", "--output-dir", str(out), merge_stderr=False)
    proc.stdout.readline()  # what `head -1` reads, then it exits
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 1 and "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().splitlines()[-1] == ("error: standard output was closed (the reader of a pipe ended): "
                                            "stopped; a training run or a search resumes where it stopped")
    proc = launch("nin_keras.fit", *TINY_FLAGS, "--epochs", "3", "--output-dir", str(out))
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "resuming" in log, log[-2000:]


def test_a_command_started_with_standard_output_closed_still_trains(tmp_path):
    """`cmd >&-`: sys.stdout is None, and fit stopped on its own isatty() check with a traceback."""
    import subprocess
    import sys

    from helpers import REPO

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "nin_keras.fit", *TINY_FLAGS, "--epochs", "1", "--output-dir",
                           str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True, timeout=300,
                          preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0 and (out / "metrics.json").exists(), proc.stderr[-2000:]


def test_unwritable_output_dir(tmp_path, capsys):
    from nin_keras.fit import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--preset", "tiny", "--output-dir", str(blocker / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output-dir {blocker / 'run'}: cannot write") and err.count("\n") == 1
    assert blocker.read_text() == "x"


def test_malformed_config_cli_and_saved_files_untouched(trained_tiny_run, tmp_path, capsys):
    from nin_keras.fit import main

    run_dir, _ = trained_tiny_run
    before = {name: open(os.path.join(run_dir, name), "rb").read() for name in ("metrics.json", "config.json")}
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 3,,}')
    assert main(["--config", str(bad), "--output-dir", run_dir]) == 1
    assert "malformed JSON" in capsys.readouterr().err
    assert main(["--preset", "tiny", "--learning-rate", "-1", "--output-dir", run_dir]) == 1
    assert "learning rate must be > 0. Received: -1.0" in capsys.readouterr().err
    assert {name: open(os.path.join(run_dir, name), "rb").read() for name in before} == before


@pytest.mark.parametrize("problem, message", [
    ("truncated", "truncated"),
    ("magic", "bad IDX magic number"),
    ("count", "images but"),
])
def test_bad_idx_folder_via_cli(tmp_path, capsys, problem, message):
    from test_data import make_idx_dir, write_idx

    from nin_keras.fit import main

    root = tmp_path / "d"
    make_idx_dir(root)
    images = np.zeros((6, 28, 28))
    if problem == "truncated":
        write_idx(root / "train-images-idx3-ubyte", images, cut=100)
    elif problem == "magic":
        write_idx(root / "train-images-idx3-ubyte", images, magic=0x0E03)
    else:
        write_idx(root / "train-images-idx3-ubyte", np.zeros((7, 28, 28)))
    assert main(["--preset", "tiny", "--data-dir", str(root), "--output-dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert message in err and "train-images-idx3-ubyte" in err and err.count("\n") == 1


def start_workers(args, scratch, envs=({}, {})):
    """Start one ``nin_keras.fit`` process per entry of ``envs``: a cluster of workers on 127.0.0.1."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(len(envs))]}
    return [start_fit(*args, env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                                  "TMPDIR": str(scratch), **env}) for i, env in enumerate(envs)]


def finish(procs, timeout=600):
    """Wait for every process; returns their outputs (the last lines, for messages)."""
    return [p.communicate(timeout=timeout)[0] for p in procs]


def error_lines(output):
    return [line for line in output.splitlines() if line.startswith("error:")]


MULTI = ["--preset", "tiny", "--test-limit", "500", "--verbose", "2", "--strategy", "multi-worker"]


def test_two_workers_train_only_the_chief_writes_and_a_rerun_is_done(tmp_path):
    out, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    args = [*MULTI, "--epochs", "2", "--limit", "4000", "--output-dir", str(out)]
    procs = start_workers(args, scratch)
    outputs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-1500:] for o in outputs)
    assert "2 replica(s) (CollectiveAllReduceStrategy)" in outputs[0]  # MultiWorkerMirroredStrategy's class
    import keras

    from nin_keras.data import load_data

    model = keras.saving.load_model(out / "model.keras")
    splits = load_data(test_limit=500)
    acc = float(np.mean(model.predict(splits.x_test, verbose=0).argmax(1) == splits.y_test))
    assert acc == pytest.approx(json.load(open(out / "metrics.json"))["test_accuracy"], abs=1e-3)
    assert [row["epoch"] for row in read_history(out / "history.csv")] == [1, 2]
    assert os.listdir(scratch) == []  # the non-chief's temporary run folder is gone

    # The chief finds the finished run: every worker says so and exits 0, none waits in a collective.
    before = (out / "metrics.json").read_text()
    procs = start_workers(args, scratch)
    outputs = finish(procs, timeout=300)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-1500:] for o in outputs)
    assert all("already holds this finished run" in o and "Epoch" not in o for o in outputs)
    assert (out / "metrics.json").read_text() == before


@pytest.mark.parametrize("problem", ["chief folder", "worker data"])
def test_an_error_on_one_worker_stops_every_worker_with_the_same_line(tmp_path, problem):
    out, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    out.mkdir()
    envs = ({}, {})
    if problem == "chief folder":
        (out / "notes.txt").write_text("mine")  # only the chief looks at the run folder
        expected = "it holds files but no nin_keras run"
    else:
        envs = ({}, {"NIN_KERAS_DATA_DIR": str(tmp_path / "nowhere")})  # only worker 1 misses its data
        expected = "worker 1: "
    procs = start_workers([*MULTI, "--epochs", "1", "--limit", "2000", "--output-dir", str(out)], scratch, envs)
    outputs = finish(procs, timeout=300)
    assert [p.returncode for p in procs] == [1, 1], "\n".join(o[-1500:] for o in outputs)
    lines = [error_lines(o) for o in outputs]
    assert lines[0] == lines[1] and len(lines[0]) == 1 and expected in lines[0][0], outputs
    assert "Traceback" not in outputs[0] + outputs[1]
    assert sorted(os.listdir(out)) == (["notes.txt"] if problem == "chief folder" else [])


def test_two_workers_killed_then_restarted_resume_from_the_last_epoch(tmp_path):
    out, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    args = [*MULTI, "--epochs", "3", "--limit", "2000", "--output-dir", str(out)]
    chief, worker = start_workers(args, scratch)
    wait_for_epochs(out / "history.csv", 1, chief)
    worker.kill()
    worker.wait()
    # The chief notices the lost worker (its collectives are aborted) and stops with one line.
    try:
        chief_output = chief.communicate(timeout=180)[0]
    finally:
        chief.kill()
    assert chief.returncode == 1 and "restart every worker with the same command" in error_lines(chief_output)[0]
    done = [row["epoch"] for row in read_history(out / "history.csv")]
    assert done and done[-1] < 3

    procs = start_workers(args, scratch)
    outputs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-1500:] for o in outputs)
    for output in outputs:
        assert "resuming the run" in output and f"Epoch {done[-1] + 1}/3" in output and "Epoch 1/3" not in output
    assert [row["epoch"] for row in read_history(out / "history.csv")] == [1, 2, 3]
    assert json.load(open(out / "metrics.json"))["epochs"] == 3


def test_sharding_gives_each_example_once_per_epoch_across_workers():
    """What MultiWorkerMirroredStrategy does to fit's training pipeline (AutoShardPolicy.DATA),
    for 2 workers: the workers' batches together hold every example of an epoch exactly once."""
    import tensorflow as tf
    from tensorflow.python.distribute import input_ops

    from nin_keras.data import make_train_dataset

    n, batch = 1000, 64
    ids = np.arange(n)
    x = np.zeros((n, 28, 28, 1), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = ids // 256, ids % 256  # each image carries its index
    y = (ids % 10).astype(np.int32)
    seen_epochs = []
    for worker in range(2):
        # Each worker process builds its own pipeline from the same seed.
        dataset, steps = make_train_dataset(x, y, batch, seed=3,
                                            shard_policy=tf.data.experimental.AutoShardPolicy.DATA)
        shard = input_ops.auto_shard_dataset(dataset, 2, worker, 2)
        epochs = []
        for _ in range(2):
            images = np.concatenate([b[0].numpy() for b in shard.take(steps)])
            epochs.append((images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0].astype(int)).tolist())
        seen_epochs.append(epochs)
    for epoch in range(2):
        together = seen_epochs[0][epoch] + seen_epochs[1][epoch]
        assert len(together) == len(set(together)) == steps * batch  # no example twice
        assert len(set(together)) >= n - batch  # all but the dropped partial batch
    assert seen_epochs[0][0] != seen_epochs[0][1]  # reshuffled each epoch


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster' object"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "'host:port' strings"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "task.index must be 0..1"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "ps", "index": 0}}', "task.type must be one of"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', "has no 'task'"),
])
def test_malformed_tf_config_is_one_line(tmp_path, monkeypatch, capsys, tf_config, message):
    from nin_keras.fit import main

    monkeypatch.setenv("TF_CONFIG", tf_config)
    assert main(["--preset", "tiny", "--strategy", "multi-worker", "--output-dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


SMALL = {"preset": "tiny", "epochs": 2, "limit": 2000, "test_limit": 300, "precision": "float32", "verbose": 0}


def _train(out, **overrides):
    from nin_keras.config import resolve_config
    from nin_keras.fit import train

    lines = []
    cfg = resolve_config({**SMALL, "output_dir": str(out), **overrides})
    return train(cfg, print_fn=lines.append), lines


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    from nin_keras import fit

    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    code = fit.main(["--preset", "tiny", "--output-dir", str(docs), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--overwrite refuses to replace" in err
    assert os.listdir(docs) == ["thesis.txt"] and (docs / "thesis.txt").read_text() == "years of work"


def test_overwrite_keeps_the_old_run_until_the_new_one_is_valid(tmp_path, capsys):
    from nin_keras import fit

    out = tmp_path / "run"
    _train(out)
    before = (out / "metrics.json").read_text()
    # A bad flag value found while loading data: the old run must be untouched.
    code = fit.main(["--preset", "tiny", "--epochs", "2", "--limit", "2000", "--test-limit", "300",
                     "--data-dir", str(tmp_path / "missing"), "--output-dir", str(out), "--overwrite"])
    assert code == 1 and (out / "metrics.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # A good one replaces it, and the moved-aside copy is gone once the new run has an epoch.
    code = fit.main(["--preset", "tiny", "--epochs", "1", "--limit", "2000", "--test-limit", "300",
                     "--precision", "float32", "--output-dir", str(out), "--overwrite", "--verbose", "0"])
    assert code == 0 and json.loads((out / "metrics.json").read_text())["epochs"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_kill_after_training_reruns_without_training_again(tmp_path, monkeypatch):
    """A crash between fit() and metrics.json keeps the backup; the rerun only evaluates and saves."""
    import nin_keras.plotting

    out = tmp_path / "run"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # what a Ctrl-C (or any crash) in the saving step looks like

    monkeypatch.setattr(nin_keras.plotting, "plot_history", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(out)
    assert not (out / "metrics.json").exists() and (out / "backup").is_dir()
    history_before = (out / "history.csv").read_text()
    monkeypatch.undo()
    metrics, lines = _train(out)
    assert metrics["epochs"] == 2 and metrics["examples_per_sec"] is None  # no epoch trained this time
    assert (out / "history.csv").read_text() == history_before
    assert not (out / "backup").exists() and (out / "metrics.json").exists()


def test_default_run_folders_started_in_the_same_second_differ(tmp_path):
    from nin_keras.fit import default_output_dir

    paths = {default_output_dir("tiny", root=str(tmp_path)) for _ in range(3)}
    assert len(paths) == 3 and all(os.path.isdir(p) and not os.listdir(p) for p in paths)
