"""The project's own error type, and the one-line reading of a full disk.

Every mistake a user can make (bad flag value, missing file, corrupt data, a
run directory that holds another run) is raised as :class:`NinError` with a
one-line message. Entry points catch it and print ``error: <message>`` instead
of a traceback.
"""

import errno
import os
import re
import tempfile

# What a full disk or an exhausted quota looks like in an OSError's errno, and in the text of a TensorFlow
# error (TensorFlow's C++ writers report the system's strerror inside the message, as ResourceExhaustedError).
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = re.compile(r"(No space left on device|Disk quota exceeded)")


class NinError(Exception):
    """A user-facing error whose message is one line and names the problem."""

    def __init__(self, message):
        # Keep it one line even when the message embeds another error's text.
        super().__init__(" ".join(str(message).split()))


class DataError(NinError):
    """Input data is missing, unreadable, or inconsistent."""


class ConfigError(NinError):
    """A setting, preset, or config file is invalid."""


class ClusterError(NinError):
    """A multi-worker cluster lost a worker or could not agree in time."""


class TrainingDiverged(NinError):
    """The loss became NaN or infinite."""


class SignalInterrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM as a KeyboardInterrupt that says which: ``signum``, and the command's
    :attr:`exit_code` (130 for Ctrl-C, 143 for SIGTERM, as a shell's)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum


class Stopped(SignalInterrupt):
    """Training or a search stopped on SIGINT/SIGTERM after keeping what it had finished, and said so.

    A KeyboardInterrupt, so a Python caller (a notebook's ``nin_keras.train``) sees what Ctrl-C means in
    Python rather than a ``SystemExit``; the command-line entry points exit with :attr:`exit_code` without
    a second message.
    """


def require(condition, message, value):
    """Raise :class:`ConfigError` ``"<message> Received: <value>"`` unless ``condition`` holds.

    The one validation helper of the tree (model arguments, settings, CLI
    flags), in the Keras applications' "Received: ..." form.
    """
    if not condition:
        shown = repr(value)
        if len(shown) > 80:  # a 400-digit number or a pasted blob: the error stays one readable line
            shown = f"{shown[:60]}... ({len(shown)} characters)"
        raise ConfigError(f"{message} Received: {shown}")


def disk_full(error):
    """The one-line message for ``error`` if it is a full disk (or quota), else None.

    Where nin_keras writes a file itself, :func:`~nin_keras.io.atomic_path` already says so in one
    line; this reads the rest: TensorFlow's checkpoint and SavedModel writers, TensorBoard, Keras'
    own saving. The message names the folder and, for a temporary one, the variable that moves it.
    """
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        # h5py's strerror is its whole C error stack, over several lines: the system's words suffice.
        path, reason = error.filename, os.strerror(error.errno)
    else:
        found = _DISK_FULL_TEXT.search(str(error))
        if found is None:
            return None
        # TensorFlow: "... <op>}} /path/to/file.tempstate123; No space left on device [Op:SaveV2]"
        words = str(error)[:found.start()].rstrip("; :'\"").split()
        path, reason = (words[-1] if words and os.path.isabs(words[-1]) else None), found.group(1)
    where = os.path.dirname(os.fspath(path)) if path else None
    tmp = os.path.join(os.path.abspath(tempfile.gettempdir()), "")
    if where and os.path.join(os.path.abspath(where), "").startswith(tmp):
        return (f"{reason} in the temporary folder {tmp.rstrip(os.sep)}: free space there, or set TMPDIR to a "
                "folder with room, and rerun (finished files were not replaced)")
    return (f"{reason}{f' writing in {where}' if where else ''}: free space and rerun (finished files were not "
            "replaced; a training run resumes from its last finished epoch)")
