"""Shared command-line plumbing: one-line usage errors, data flags, errors as exit codes."""

import argparse
import codecs
import os
import signal
import sys
import threading

from nin_keras.errors import ConfigError, NinError, SignalInterrupt, Stopped, write_failure
from nin_keras.fused_bn import forward_override
from nin_keras.io import is_utf8, shown_name
from nin_keras.tf_logs import quiet_tensorflow_import

# Before TensorFlow is imported (entry points import this module first): hide its C++ INFO and WARNING
# lines (run_cli also filters those its start-up writes before the level applies: nin_keras.tf_logs).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line and exits 2."""

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            from nin_keras.config import did_you_mean

            known = {o for action in self._actions for o in action.option_strings if o.startswith("--")}
            unknown = {a.split("=")[0] for a in message.split(":", 1)[1].split() if a.startswith("--")}
            message += did_you_mean(unknown, known)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, then a one-line error for an ``--output-dir`` that is not UTF-8."""
        parsed, extras = super().parse_known_args(args, namespace)
        # A folder name that is not UTF-8 reaches Python as lone surrogates, which TensorFlow's writers
        # (TensorBoard, checkpoints, the tuner's) refuse with a traceback after the run has started.
        value = getattr(parsed, "output_dir", None)
        if isinstance(value, str) and not is_utf8(value):
            self.error(f"--output-dir must be a UTF-8 path: TensorFlow cannot write to '{shown_name(value)}'; "
                       "rename the folder or choose another")
        return parsed, extras


def add_data_flags(parser, exclude=(), defaults=None):
    """Data-source flags shared by fit, tuning and export (without ``exclude``; ``defaults``: a command's own)."""
    from nin_keras.settings import DATA_FLAGS, add_flags

    names = [name for name in DATA_FLAGS if name not in exclude]
    return add_flags(parser, names, defaults=defaults, group=parser.add_argument_group("data"))


def _silence_stdout():
    """Point the process's standard output at /dev/null: Python flushes it once more at exit, and a closed
    pipe would raise again there. Not for a stdout that is no file (a notebook's, a test's capture)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _escape_names(error):
    """A codec error handler: a file name's undecodable byte (a lone surrogate) as ``\\xNN``, as
    :func:`nin_keras.io.shown_name` and ``ls -b`` show it; a character the stream cannot encode as ``\\uNNNN``."""
    if not isinstance(error, UnicodeEncodeError):
        return codecs.backslashreplace_errors(error)
    text = error.object[error.start:error.end]
    return "".join(_escaped(ord(c)) for c in text), error.end


def _escaped(code):
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"  # a character this stream cannot show


ESCAPE_NAMES = "nin_keras.escape_names"
codecs.register_error(ESCAPE_NAMES, _escape_names)


def check_backend():
    """A one-line ConfigError unless Keras runs, or will run, on TensorFlow (see nin_keras/__init__.py).

    The commands check before anything is loaded; the library's entry points (``train``, ``tune``,
    ``export``) check again, since a notebook may have imported Keras on another backend first.
    """
    check_keras_json()
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):  # already imported: what it runs on decides
        backend = keras.backend.backend()
    if backend != "tensorflow":  # Keras compares exactly: "TensorFlow" fails to import
        raise ConfigError(f"nin_keras runs Keras on TensorFlow (tf.data, tf.distribute, TFLite); unset "
                          f"KERAS_BACKEND or set it to tensorflow before Keras is imported. Received: "
                          f"KERAS_BACKEND={backend}")


def run_cli(body):
    """Run ``body()`` and return the process exit code.

    ``body`` returns an exit code (None means 0). A :class:`NinError` is a
    user mistake: printed as one ``error: ...`` line, exit code 1. Ctrl-C
    where no stage handles it (scanning images, building the model) is one
    line and exit code 130, like a shell's (143 for a second SIGTERM).
    """
    if sys.stdout is None:  # started with standard output closed (`cmd >&-`): Keras' progress lines need one
        sys.stdout = open(os.devnull, "w")
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 (lone surrogates in Python) is printed escaped, not raised on.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=ESCAPE_NAMES)
    quiet_tensorflow_import()
    try:
        check_backend()
        forward_override()  # a mistyped NIN_KERAS_BATCH_NORM_FORWARD: one line now, not at compile time
        code = body()
    except NinError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `| head` read what it wanted and left
        _silence_stdout()
        print("error: standard output was closed (the reader of a pipe ended): stopped; a training run or a "
              "search resumes where it stopped", file=sys.stderr)
        return 1
    except Stopped as e:  # the stage that stopped has said what it kept
        return e.exit_code
    except Exception as e:
        from nin_keras.data.folders import decode_failure

        reason = decode_failure(e)  # an image that changed after the scan, reported inside TensorFlow's error
        if reason is not None:
            print(f"error: {reason}; the file changed after the scan (moved, deleted or rewritten): restore it "
                  "and rerun (a training run resumes from its last finished epoch)", file=sys.stderr)
            return 1
        failed = write_failure(e)  # from a writer nin_keras does not wrap (TensorFlow's, Keras', h5py's)
        if failed is None:
            raise
        print(f"error: {failed}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        # A second Ctrl-C or SIGTERM (SignalStop's SecondSignal) lands here too, so the message names neither.
        print("\ninterrupted: stopped; nothing was half-written", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM, as a shell's
    return 0 if code is None else code


# What TensorFlow's and Keras' imports accept in keras.json; anything else stops them with an assertion
# or ValueError traceback before a command starts. (The values themselves do not reach nin_keras: see
# nin_keras.precision.keras_config_scope.)
_KERAS_JSON_CHOICES = {"floatx": ("float16", "float32", "float64"),
                       "image_data_format": ("channels_last", "channels_first")}


def keras_json_paths():
    """The keras.json files TensorFlow and Keras read at import (``$KERAS_HOME``, else ``~/.keras``, or
    ``/tmp/.keras`` where Keras finds the home folder unwritable)."""
    if "KERAS_HOME" in os.environ:
        return [os.path.join(os.path.expanduser(os.environ["KERAS_HOME"]), "keras.json")]
    home = os.path.expanduser("~")
    paths = [os.path.join(home, ".keras", "keras.json")]
    if not os.access(home, os.W_OK):
        paths.append(os.path.join("/tmp", ".keras", "keras.json"))
    return paths


def check_keras_json():
    """A one-line ConfigError for a keras.json value that would stop TensorFlow's or Keras' import."""
    import json

    for path in keras_json_paths():
        if os.path.isdir(path):  # TensorFlow's import opens it and stops with IsADirectoryError
            raise ConfigError(f"{path}: a folder where Keras reads its settings file; move it away")
        try:
            with open(path) as f:
                config = json.load(f)
        except (OSError, ValueError):  # absent, unreadable or not JSON: both imports ignore it
            continue
        if not isinstance(config, dict):
            continue
        for key, choices in _KERAS_JSON_CHOICES.items():
            if key in config and config[key] not in choices:
                raise ConfigError(f"{path}: Keras accepts {key} {' or '.join(choices)}, and TensorFlow stops at "
                                  f"import on anything else; fix or delete the line. Received: {config[key]!r}")
        if "epsilon" in config and not isinstance(config["epsilon"], float):
            raise ConfigError(f"{path}: Keras accepts a decimal number for epsilon (1e-07 by default), and "
                              f"TensorFlow stops at import on anything else. Received: {config['epsilon']!r}")


class SecondSignal(SignalInterrupt):
    """A second SIGINT or SIGTERM inside a :class:`SignalStop` block: stop at once."""


class SignalStop:
    """Within the block, SIGINT and SIGTERM (Ctrl-C, ``kill``, a job scheduler's stop) are recorded, and
    :meth:`check` raises at the caller's next safe point; a second signal raises :class:`SecondSignal` (a
    KeyboardInterrupt) at once.

    Raised from the handler itself, the interrupt lands wherever Python happens to be, and there it can be
    swallowed: in a weakref callback during garbage collection ("Exception ignored in ..."), or in
    keras-tuner, which counts any error in a trial as a failed trial and starts the next. A signal the
    process inherited as ignored (SIGINT in a shell script's background job) stays ignored. Outside the
    main thread, where handlers cannot be set, the block runs without it.
    """

    def __init__(self, error=KeyboardInterrupt):
        self.received = None
        self.error = error  # called with the signal number: what check() raises
        self._previous = {}

    def _handler(self, signum, frame):
        if self.received is not None:  # the second one: the user insists
            raise SecondSignal(signum)
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            # None: a handler set from C, which Python cannot put back; the default is the nearest.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}
        return False

    @property
    def installed(self):
        """Whether the block's handlers are in place (entered and not yet exited)."""
        return bool(self._previous)

    def __deepcopy__(self, memo):
        return self  # one per process: keras-tuner deep-copies a trial's callbacks, and with them this

    def check(self, *args, **kwargs):
        """Raise ``error`` if a signal came (arguments ignored, so it serves as a Keras callback hook)."""
        if self.received is not None:
            raise self.error(self.received)


def namespace_from_kwargs(parser, positionals=(), **settings):
    """The argparse namespace a command line would give, for library calls.

    Starts from the parser's defaults (``positionals`` fill required
    arguments), then sets ``settings`` by their Python names
    (``max_trials=4``); an unknown name is a one-line error with a
    suggestion. So a notebook call and the CLI share defaults and checks.
    """
    from nin_keras.config import did_you_mean
    from nin_keras.errors import ConfigError

    args = parser.parse_args(list(positionals))
    unknown = set(settings) - set(vars(args))
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)} for {parser.prog}{did_you_mean(unknown, set(vars(args)))}")
    for key, value in settings.items():
        setattr(args, key, value)
    return args
