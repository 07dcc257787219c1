"""TensorFlow's start-up lines that ``TF_CPP_MIN_LOG_LEVEL`` does not reach.

TensorFlow logs through Abseil, which writes every message to standard error, whatever its level, until
``absl::InitializeLog()`` is called, and TensorFlow's wheel never calls it (abseil/abseil-cpp#1718,
tensorflow/tensorflow#102212; seen with TensorFlow 2.21). So every command began with the oneDNN notice,
"Could not find cuda drivers" and an E-level "failed call to cuInit" on a CPU machine, twice over, before
its first epoch or its one-line error.

:func:`quiet_tensorflow_import` makes the first ``import tensorflow`` (and the device discovery that logs
cuInit) run with file descriptor 2 pointed at a temporary file; then the descriptor is put back and the
captured bytes are written out again without the lines the log level hides. Anything else written
meanwhile (a Python warning, a traceback, another library's message) is replayed, not lost.
"""

import os
import re
import sys
import tempfile

_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Abseil's prefix: severity letter, MMDD, hh:mm:ss.micros (seconds since the epoch before
# InitializeLog), thread id, file:line]
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ ([\w.]+):\d+\] ")
# Where nin_keras trains (a CPU), a failed CUDA start is no error: TensorFlow carries on without a GPU.
_NO_GPU = (b"cuda_platform.cc", b"cudart_stub.cc")


def min_log_level(environ=None):
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it: 0 (everything) when unset or not a number."""
    value = (os.environ if environ is None else environ).get("TF_CPP_MIN_LOG_LEVEL", "0")
    try:
        return int(value)
    except ValueError:
        return 0


def shown_lines(data, level):
    """The bytes of ``data`` (captured standard error) that log level ``level`` shows, in order."""
    kept = []
    for line in data.splitlines(keepends=True):
        if line.rstrip(b"\r\n") == _ABSL_NOTICE:
            continue
        match = _ABSL_LINE.match(line)
        if match and ("IWEF".index(match.group(1).decode()) < level or match.group(2) in _NO_GPU):
            continue
        kept.append(line)
    return b"".join(kept)


def quiet_tensorflow_import():
    """Make the process's first ``import tensorflow`` keep the start-up lines its log level hides.

    A no-op when TensorFlow is already imported or ``TF_CPP_MIN_LOG_LEVEL`` asks for every line (0).
    """
    level = min_log_level()
    if "tensorflow" in sys.modules or level < 1 or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder(level))


class _QuietFinder:
    """A meta-path finder that finds nothing: it wraps the tensorflow package's loader, once."""

    def __init__(self, level):
        self.level = level

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, level = spec.loader, self.level
        original = loader.exec_module

        def exec_module(module):
            del loader.exec_module  # an instance attribute over the class's method: once only
            with _CapturedStderr(level):
                original(module)
                # Device discovery is where cuInit is tried and logged: now, inside the capture.
                module.config.list_physical_devices()

        loader.exec_module = exec_module
        return spec


class _CapturedStderr:
    """File descriptor 2 into a temporary file for the block; then what ``level`` shows is written back."""

    def __init__(self, level):
        self.level = level
        self._saved = self._file = None

    def __enter__(self):
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
        except (AttributeError, OSError, ValueError):  # no standard error to restore: leave it alone
            return self
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        shown = shown_lines(self._file.read(), self.level)
        self._file.close()
        try:
            while shown:
                shown = shown[os.write(2, shown):]
        except OSError:  # standard error is a closed pipe: nothing to show it to
            pass
        return False
