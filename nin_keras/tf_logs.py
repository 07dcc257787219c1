"""TensorFlow's start-up lines that ``TF_CPP_MIN_LOG_LEVEL`` does not reach.

TensorFlow logs through Abseil, which writes every message to standard error, whatever its level, until
``absl::InitializeLog()`` is called, and TensorFlow's wheel never calls it (abseil/abseil-cpp#1718,
tensorflow/tensorflow#102212; seen with TensorFlow 2.21). So every command began with the oneDNN notice,
"Could not find cuda drivers" and an E-level "failed call to cuInit" on a CPU machine, twice over, before
its first epoch or its one-line error.

:func:`quiet_tensorflow_import` makes the first ``import tensorflow`` (and the device discovery that logs
cuInit) run with file descriptor 2 pointed at a pipe, whose reader passes on everything but the lines the
log level hides, as it comes. Anything else written meanwhile (a Python warning, a traceback, a fatal
error and the abort after it, another library's message) is shown, not lost.

Exporting meets two more libraries that ignore the level: LiteRT (and MediaPipe's copy of it) prints
"INFO: Created TensorFlow Lite XNNPACK delegate for CPU." at its first interpreter, and the int8 converter
prints its settings ("fully_quantize: 0, inference_type: 6, ..."). :func:`quiet_native_logs` filters a
block the same way; the export wraps those calls in it.
"""

import contextlib
import os
import re
import sys

_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Abseil's prefix: severity letter, MMDD, hh:mm:ss.micros (seconds since the epoch before
# InitializeLog), thread id, file:line]
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\] ")
# A machine without an NVIDIA driver or GPU: no error, TensorFlow carries on on the CPU. Other CUDA errors (a
# driver that does not match) and every fatal line are shown.
_NO_GPU = re.compile(rb"cuda_platform\.cc:\d+\] failed call to cuInit: .*(UNKNOWN ERROR \(303\)|CUDA_ERROR_NO_DEVICE)")
# LiteRT's minimal logger: "SEVERITY: message", with no level of its own to set from Python.
_LITERT_LINE = re.compile(rb"^(VERBOSE|INFO|WARNING|ERROR): ")
_LITERT_SEVERITY = {b"VERBOSE": 0, b"INFO": 0, b"WARNING": 1, b"ERROR": 2}
# The MLIR quantizer's settings, one line per int8 conversion: information, not a warning.
_QUANTIZER_SETTINGS = re.compile(rb"^fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
                                 rb"output_inference_type: \w+\r?\n?$")


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
        severity = _severity(line)
        if severity is not None and (severity < level or severity == 2 and _NO_GPU.search(line)):
            continue
        kept.append(line)
    return b"".join(kept)


def _severity(line):
    """0-3 (INFO to FATAL) for a line of a native library's log, None for anything else."""
    match = _ABSL_LINE.match(line)
    if match:
        return b"IWEF".index(match.group(1))
    match = _LITERT_LINE.match(line)
    if match:
        return _LITERT_SEVERITY[match.group(1)]
    return 0 if _QUANTIZER_SETTINGS.match(line) else None


def quiet_native_logs():
    """A context manager: native log lines written inside it that the log level hides are dropped.

    For calls into TensorFlow's converter, LiteRT and MediaPipe after the import; everything else written
    meanwhile passes, as it comes. A no-op context when ``TF_CPP_MIN_LOG_LEVEL`` asks for every line.
    """
    level = min_log_level()
    return _FilteredStderr(level) if level >= 1 else contextlib.nullcontext()


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
            with _FilteredStderr(level):
                original(module)
                # Device discovery is where cuInit is tried and logged: now, inside the capture.
                module.config.list_physical_devices()

        loader.exec_module = exec_module
        return spec


class _FilteredStderr:
    """File descriptor 2 into a pipe for the block. A small child process (this file run as a script) reads
    it and writes what ``level`` shows to the real standard error, line by line as it comes: so a crash
    inside the block (TensorFlow's fatal "compiled to use AVX" line, then an abort) is still shown, which
    a capture replayed after the block would lose with the process."""

    def __init__(self, level):
        self.level = level
        self._saved = self._child = None

    def __enter__(self):
        import subprocess

        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            # Its own session: the terminal's Ctrl-C goes to this process, not to the one showing its errors.
            self._child = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(self.level)],
                                           stdin=subprocess.PIPE, stdout=self._saved, stderr=subprocess.DEVNULL,
                                           start_new_session=True)
        except (AttributeError, OSError, ValueError):  # no standard error, or no process to spare: unfiltered
            if self._saved is not None:
                os.close(self._saved)
            self._saved = None
            return self
        os.dup2(self._child.stdin.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import subprocess

        if self._saved is None:
            return False
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._child.stdin.close()  # the pipe's last writer: the child reads to its end, then exits
        try:
            self._child.wait(timeout=10)  # what the block wrote is shown before what the command writes next
        except subprocess.TimeoutExpired:  # a process the block started holds the pipe too: the child goes on
            pass
        return False


def _forward(level):
    """The child's loop: standard input to standard output, without the lines ``level`` hides."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin.buffer:
        shown = shown_lines(line, level)
        try:
            sys.stdout.buffer.write(shown)
            sys.stdout.buffer.flush()
        except OSError:  # standard error is a closed pipe: read on, so the writer never blocks
            pass
    return 0


if __name__ == "__main__":
    sys.exit(_forward(int(sys.argv[1])))
