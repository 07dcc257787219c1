"""The project's own error type, and the one-line reading of a failed write (a full disk, permissions).

Every mistake a user can make (bad flag value, missing file, corrupt data, a
run directory that holds another run) is raised as :class:`NinError` with a
one-line message. Entry points catch it and print ``error: <message>`` instead
of a traceback.
"""

import errno
import os
import re
import tempfile

# Failures to write that the user can act on, by errno, and as TensorFlow's C++ writers spell them inside
# an error's message (ResourceExhaustedError, PermissionDeniedError).
_WRITE_FAILURES = {errno.ENOSPC: "free space", errno.EDQUOT: "free space",
                   errno.EACCES: "check the folder's permissions", errno.EPERM: "check the folder's permissions",
                   errno.EROFS: "write somewhere writable"}
_WRITE_FAILURE_TEXT = re.compile("(" + "|".join(re.escape(os.strerror(n)) for n in _WRITE_FAILURES) + ")")


class NinError(Exception):
    """A user-facing error whose message is one line and names the problem."""

    def __init__(self, message):
        # Keep it one line even when the message embeds another error's text.
        super().__init__(" ".join(str(message).split()))


class DataError(NinError):
    """Input data is missing, unreadable, or inconsistent."""


class NoRoom(DataError):
    """A folder's filesystem has no room for what is about to be written (checked before writing)."""


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


def write_failure(error):
    """The one-line message for ``error`` if it is a full disk, a quota, or a folder that may not be written
    (permissions, a read-only filesystem), else None.

    Where nin_keras writes a file itself, :func:`~nin_keras.io.atomic_path` already says so in one
    line; this reads the rest: TensorFlow's checkpoint, SavedModel and TensorBoard writers, h5py,
    keras-tuner. The message names the folder and, for a temporary one, the variable that moves it.
    """
    if isinstance(error, OSError) and error.errno in _WRITE_FAILURES:
        # h5py's strerror is its whole C error stack, over several lines: the system's words suffice.
        path, reason = error.filename, os.strerror(error.errno)
    else:
        # Only where the system's words are the error's own: TensorFlow's C++ errors, h5py's RuntimeError.
        if not (type(error).__module__.startswith("tensorflow") or isinstance(error, RuntimeError)):
            return None
        found = _WRITE_FAILURE_TEXT.search(str(error))
        if found is None:
            return None
        # TensorFlow: "... <op>}} /path/to/file.tempstate123; No space left on device [Op:SaveV2]"
        words = str(error)[:found.start()].rstrip("; :'\"").split()
        path, reason = (words[-1] if words and os.path.isabs(words[-1]) else None), found.group(1)
    advice = next(a for n, a in _WRITE_FAILURES.items() if os.strerror(n) == reason)
    # OSError.filename may be a file descriptor, or absent (a write to standard output).
    where = os.path.dirname(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) and path else None
    if where and _staged_in_tmp(where):
        return (f"{reason} in the temporary folder {tempfile.gettempdir()}: {advice} there, or set TMPDIR to "
                "another folder, and rerun (finished files were not replaced)")
    return (f"{reason}{f' (in {where})' if where else ''}: {advice} and rerun (finished files were not "
            "replaced; a training run resumes from its last finished epoch)")


def _staged_in_tmp(folder):
    """Whether ``folder`` is inside one of nin_keras' own temporary folders (``nin_keras-*`` in TMPDIR), not
    an --output-dir the user chose under /tmp."""
    tmp = os.path.join(os.path.abspath(tempfile.gettempdir()), "")
    folder = os.path.abspath(folder)
    return folder.startswith(tmp) and folder[len(tmp):].split(os.sep)[0].startswith("nin_keras-")


def write_advice(error):
    """What to do about an OSError while writing: "free space", "check the folder's permissions", ..."""
    return _WRITE_FAILURES.get(getattr(error, "errno", None), "free space")
