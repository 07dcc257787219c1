"""Shared fixtures (real data, a trained tiny run) and the ``slow`` tier; helpers live in ``helpers.py``.

The CPU is split into two logical devices for the whole session, so every
MirroredStrategy built by the tests runs two real replicas.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Run the suite the way most users' machines run it: `--precision auto` means
# float32 (CPUs without AMX/AVX512-BF16), whatever this host has. Tests that
# need bfloat16 ask for it explicitly; tests of `auto` itself clear this.
os.environ["NIN_KERAS_PRECISION"] = "float32"

import pytest  # noqa: E402

from nin_keras import data  # noqa: E402

TEST_REPLICAS = 2


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # pytest-xdist's controller runs no test: no TensorFlow in it
    from nin_keras.distribute import split_cpu

    split_cpu(TEST_REPLICAS)


#: Fixtures that train on real data, and helpers that start processes or train:
#: a test using any of them is marked ``slow``, so ``pytest -m "not slow"`` is
#: the quick development loop (CI runs everything).
SLOW_FIXTURES = {"trained_tiny_run", "exported"}
SLOW_CALLS = ("start_fit(", "run_tuning(", "run_cli(", "launch(", "fit.train(", "_train(", "search.main(", "bench.main(",
              "fit_main(", "mp_worker(", "_bench_inference(", "model.fit(", "evaluate_tflite(", "start_workers(")


def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or any(call in source for call in SLOW_CALLS):
            item.add_marker(pytest.mark.slow)
    items[:] = heaviest_files_first(items)


def heaviest_files_first(items):
    """The files with the most slow tests first, each file's tests in their own order.

    pytest-xdist's ``--dist loadfile --no-loadscope-reorder`` (pyproject.toml) hands a worker whole files
    in this order: a heavy file started last (test_tuning.py comes late alphabetically) would leave the
    other worker idle while it runs. Without ``--no-loadscope-reorder`` xdist orders files by their
    number of tests instead, which puts the heaviest, test_export.py, seventh.
    """
    files = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    weight = {name: sum(bool(item.get_closest_marker("slow")) for item in tests) for name, tests in files.items()}
    return [item for name in sorted(files, key=lambda name: -weight[name]) for item in files[name]]


@pytest.fixture(scope="session")
def fashion_dir():
    """The real Fashion-MNIST folder (CI installs Debian's dataset-fashion-mnist)."""
    return data.find_fashion_mnist_dir()


@pytest.fixture(scope="session")
def fashion_test(fashion_dir):
    """Real test images (uint8 NHWC) and labels."""
    return data.load_idx_split(fashion_dir, "test")


@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory):
    """A run directory of the tiny preset trained on real data (shared by several tests): (folder, metrics).

    Trained once per session: the first pytest-xdist worker to ask trains it under a file lock in the
    session's shared temporary folder (about 30 s); each worker gets its own copy, since tests write into
    the run folder (exports, reruns). A failed training is reported to every worker that asks, not retried.
    """
    import fcntl
    import shutil

    from nin_keras.rundir import read_finished_metrics

    # Under xdist every worker's base folder is inside the session's one; without it, the base is the session's.
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    golden, failed = shared / "trained-tiny-run", shared / "trained-tiny-run.failed"
    with open(shared / "trained-tiny-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not golden.exists() and not failed.exists():
            _train_tiny_run(golden, failed)
    if failed.exists():
        pytest.fail(f"the shared tiny run did not train: {failed.read_text()}")
    out = tmp_path_factory.mktemp("runs") / "tiny"
    shutil.copytree(golden, out)
    return str(out), read_finished_metrics(str(out))


def _train_tiny_run(golden, failed):
    """Train the tiny run into a folder beside ``golden``, renamed to it once finished; else write ``failed``."""
    import shutil

    from nin_keras.config import resolve_config
    from nin_keras.fit import train

    partial = golden.with_name(golden.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # float32 explicitly: bfloat16 is emulated (slow) on CPUs without AMX, and
    # the rerun tests repeat this exact command line.
    cfg = resolve_config({"preset": "tiny", "epochs": 3, "limit": 20000, "output_dir": str(partial), "verbose": 0,
                          "precision": "float32"})
    try:
        train(cfg, print_fn=lambda *a: None)
    except BaseException as e:
        failed.write_text(f"{type(e).__name__}: {e}")
        raise
    partial.rename(golden)
