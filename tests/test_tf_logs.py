"""TensorFlow's start-up: the lines its log level does not reach (nin_keras/tf_logs.py), and the mistakes a
command answers before it loads."""

import os
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO
from nin_keras.tf_logs import min_log_level, shown_lines

# What TensorFlow 2.21's import and first device discovery wrote on a CPU machine with
# TF_CPP_MIN_LOG_LEVEL=2 (each library of the wheel logs its own copy).
TF_START = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796102739.027314   22959 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders.\n"
    b"I0000 00:00:1796102739.027799   22959 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    b"will not be used.\n"
    b"E0000 00:00:1796102744.881831   22959 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    b"Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
WARNING_LINE = b"W0000 00:00:1796102744.9   22959 op_kernel.cc:1857] a warning\n"
ERROR_LINE = b"E0000 00:00:1796102745.1   22959 mkl_util.h:90] an error\n"
PYTHON_LINES = b"/x/y.py:3: UserWarning: kept\n  warnings.warn('kept')\n"


def test_cuda_errors_other_than_no_gpu_stay():
    mismatch = (b"E0000 00:00:1796102744.881831   22959 cuda_platform.cc:52] failed call to cuInit: "
                b"CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: system has unsupported display driver / cuda driver combination\n")
    fatal = b"F0000 00:00:1796102744.9   22959 cuda_platform.cc:99] Check failed: UNKNOWN ERROR (303)\n"
    assert shown_lines(mismatch + fatal, 2) == mismatch + fatal
    assert shown_lines(mismatch + fatal, 3) == fatal


def test_the_start_up_chatter_goes_and_everything_else_stays():
    data = TF_START + WARNING_LINE + PYTHON_LINES + ERROR_LINE
    assert shown_lines(data, 2) == PYTHON_LINES + ERROR_LINE
    # Level 1 shows warnings and errors, but not TensorFlow's INFO lines nor a failed cuInit.
    assert shown_lines(data, 1) == WARNING_LINE + PYTHON_LINES + ERROR_LINE
    assert shown_lines(data, 3) == PYTHON_LINES
    assert shown_lines(PYTHON_LINES + b"no newline at the end", 2) == PYTHON_LINES + b"no newline at the end"


def test_litert_and_converter_lines_follow_the_level_too():
    """What LiteRT's minimal logger and the MLIR quantizer print, which no log level reaches."""
    info = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
            b"fully_quantize: 0, inference_type: 6, input_inference_type: UINT8, output_inference_type: FLOAT32\n")
    warning = b"WARNING: Attempting to use a delegate that only supports static-sized tensors\n"
    error = b"ERROR: tensorflow/lite/kernels/conv.cc:349 input->dims->size != 4 (3 != 4)\n"
    data = info + warning + PYTHON_LINES + error
    assert shown_lines(data, 0) == data
    assert shown_lines(data, 1) == warning + PYTHON_LINES + error
    assert shown_lines(data, 2) == PYTHON_LINES + error
    # Python's logging format is not LiteRT's: a user's "INFO:root:" line stays.
    assert shown_lines(b"INFO:root:mine\n", 3) == b"INFO:root:mine\n"


@pytest.mark.parametrize("level", ["0", "2"])
def test_a_quiet_block_filters_what_native_code_writes_to_the_descriptor(capfd, monkeypatch, level):
    """What LiteRT writes with fprintf goes to file descriptor 2, past sys.stderr: the block filters there,
    and gives the descriptor back even when the call inside raises."""
    from nin_keras.tf_logs import quiet_native_logs

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    chatter, kept = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n", b"ERROR: a real one\n"
    with pytest.raises(ZeroDivisionError):
        with quiet_native_logs():
            os.write(2, chatter + kept)
            1 / 0
    os.write(2, b"after\n")
    err = capfd.readouterr().err.encode()
    assert err == (chatter + kept if level == "0" else kept) + b"after\n"


@pytest.mark.parametrize("value, level", [(None, 0), ("2", 2), ("", 0), ("loud", 0), ("3", 3)])
def test_the_level_is_read_as_tensorflow_reads_it(value, level):
    assert min_log_level({} if value is None else {"TF_CPP_MIN_LOG_LEVEL": value}) == level


FAKE_TENSORFLOW = """
    import os, warnings
    os.write(2, {noise!r})
    warnings.warn("a Python warning written during the import")
    {extra}

    class config:
        @staticmethod
        def list_physical_devices():
            os.write(2, {cuinit!r})
            return []
"""


def run_with_fake_tensorflow(tmp_path, level, extra=""):
    """Import a stand-in tensorflow package the way a command does (run_cli first); its stderr and code."""
    package = tmp_path / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(FAKE_TENSORFLOW).format(
        noise=TF_START.split(b"\n", 3)[1] + b"\n", cuinit=TF_START.split(b"\n")[3] + b"\n", extra=extra))
    code = ("from nin_keras.cli import run_cli\n"
            "def body():\n    import tensorflow\n    print('imported', flush=True)\n"
            "raise SystemExit(run_cli(body))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO]), "TF_CPP_MIN_LOG_LEVEL": level}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, cwd=tmp_path, timeout=60)
    return done.stdout.decode(), done.stderr.decode(), done.returncode


def test_the_import_keeps_python_warnings_and_drops_the_chatter(tmp_path):
    out, err, code = run_with_fake_tensorflow(tmp_path, "2")
    assert (out, code) == ("imported\n", 0)
    assert "a Python warning written during the import" in err
    assert "port.cc" not in err and "cuInit" not in err


def test_a_crash_inside_the_import_is_still_shown(tmp_path):
    """An old CPU without AVX: TensorFlow writes one fatal line and aborts. Replayed after the import, the
    captured line died with the process; now the reader passes it on as it comes."""
    fatal = ("os.write(2, b'F0000 00:00:1796102744.9   1 cpu_feature_guard.cc:95] The TensorFlow library was compiled "
             "to use AVX instructions, but these are not available on your machine.\\n'); os.abort()")
    _, err, code = run_with_fake_tensorflow(tmp_path, "2", extra=fatal)
    assert code == -6  # SIGABRT
    assert "cpu_feature_guard.cc:95] The TensorFlow library was compiled to use AVX" in err
    assert "a Python warning written during the import" in err and "port.cc" not in err


def test_asked_for_every_line_the_chatter_stays(tmp_path):
    _, err, _ = run_with_fake_tensorflow(tmp_path, "0")
    assert "port.cc:153" in err


def test_a_failing_import_still_shows_its_traceback(tmp_path):
    _, err, code = run_with_fake_tensorflow(tmp_path, "2", extra="raise ImportError('libtensorflow.so: boom')")
    assert code == 1
    assert "ImportError: libtensorflow.so: boom" in err
    assert "a Python warning written during the import" in err and "port.cc" not in err


def test_an_error_after_tensorflow_loaded_is_the_commands_only_line(tmp_path):
    """With the real TensorFlow: before this, the error came after five lines of start-up chatter."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    missing = tmp_path / "no-such-data"
    done = subprocess.run([sys.executable, "-m", "nin_keras.fit", "--data-dir", str(missing), "--output-dir",
                           str(tmp_path / "run")], env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error: --data-dir {missing}: no such directory"], done.stderr
    report = subprocess.run([sys.executable, "-m", "nin_keras.report", "--preset", "tiny"], env=env,
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert report.returncode == 0 and report.stderr == "" and "parameters" in report.stdout, report.stderr


@pytest.mark.parametrize("command", [["nin_keras.fit", "--image-dir"], ["tuning", "--image-dir"], ["export"]])
def test_a_mistyped_path_is_answered_before_tensorflow_loads(tmp_path, command):
    """A typo in a path cost the TensorFlow import (5-7 s here) before its one-line error."""
    module, *flags = command
    missing = str(tmp_path / "no-such-folder")
    code = (f"import sys, runpy; sys.argv = ['x', *{flags + [missing]!r}]\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__')\n"
            "except SystemExit as e:\n    print('tensorflow' in sys.modules, e.code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.stdout.split() == ["False", "1"], done.stderr
    assert done.stderr.startswith("error: ") and missing in done.stderr and done.stderr.count("\n") == 1


def test_a_finished_run_is_reported_done_though_its_photos_are_gone(tmp_path, capsys):
    """The early check must not refuse what needs no photos: a rerun of a finished run (copied to a read-only
    share, or its folder since moved) reports it done."""
    import json

    from nin_keras import fit
    from nin_keras.config import resolve_config, save_config

    run, photos = tmp_path / "run", tmp_path / "photos"  # trained on, since moved away
    run.mkdir()
    flags = {"preset": "tiny", "output_dir": str(run), "precision": "float32", "image_dir": str(photos)}
    save_config(resolve_config(flags), str(run / "config.json"))
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 0.9}))
    argv = ["--preset", "tiny", "--precision", "float32", "--image-dir", str(photos), "--output-dir", str(run)]
    assert fit.main(argv) == 0
    assert "already holds this finished run (test acc 0.900)" in capsys.readouterr().out


def test_on_a_cluster_the_folder_is_checked_where_every_worker_agrees(tmp_path, monkeypatch):
    """A worker that refused early would stop alone while the others wait for it (docs/fault-tolerance.md:
    missing data on one worker ends every worker with the same line, from the data stage)."""
    from nin_keras import fit
    from nin_keras.config import resolve_config
    from nin_keras.errors import DataError

    cfg = resolve_config({"preset": "tiny", "image_dir": str(tmp_path / "missing"), "output_dir": str(tmp_path / "r")})
    with pytest.raises(DataError, match="no such directory"):
        fit._check_image_dir_early(cfg)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, '
                                    '"task": {"type": "worker", "index": 1}}')
    fit._check_image_dir_early(cfg)  # left to the data stage
