"""Atomic file writes: write a temporary file beside the target, then rename.

A crash, a full disk or a failed export never leaves a half-written file, and
never replaces a good file with a broken one.
"""

import contextlib
import os
import tempfile

from nin_keras.errors import NinError


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``suffix`` defaults to the target's extension (Keras and matplotlib pick
    the file format from it).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}", dir=directory)
        os.close(fd)
    except OSError as e:
        raise NinError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        yield tmp
        # mkstemp makes 0600 files: give the file what the user's umask gives any new file (0644 under 022).
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise NinError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def file_mode():
    """The mode a new file gets under the process's umask (0o666 & ~umask): what every file nin_keras writes gets."""
    umask = None
    try:
        # Linux >= 4.7 reports it without changing it (os.umask would, briefly, for every thread).
        with open("/proc/self/status") as f:
            umask = next((int(line.split()[1], 8) for line in f if line.startswith("Umask:")), None)
    except (OSError, ValueError):
        pass
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)


def read_json_object(path, what, hint=""):
    """Read a JSON file that must hold an object; ConfigError ``"<path>: unreadable <what> (<why>)<hint>"``."""
    import json

    from nin_keras.errors import ConfigError

    try:
        with open(path, encoding="utf-8") as f:  # JSON is UTF-8 (RFC 8259), whatever the locale says
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"{path}: unreadable {what} ({e}){hint}") from None
    except RecursionError:  # a file of deeply nested lists, not a traceback
        raise ConfigError(f"{path}: unreadable {what} (JSON nested too deeply){hint}") from None
    return data


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def is_utf8(name):
    """False for a file or folder name that is not UTF-8 (Python reads its bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(name):
    """``name`` for a message: its bytes as UTF-8, with any other byte as ``\\xNN`` (what ``ls -b`` shows)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


#: Files an operating system's file manager writes into any folder it shows (macOS Finder's are hidden
#: dot-files): not a user's work, and they go with the folder.
SYSTEM_FILES = ("thumbs.db", "ehthumbs.db", "desktop.ini")


def foreign_entries(folder, known):
    """What ``folder`` holds that is not in ``known`` (names), hidden and file-manager files aside: what
    replacing the folder would delete without having written it. Empty when the folder does not exist;
    the path's own name when it is not a folder. A symbolic link to a folder is listed through."""
    if not os.path.lexists(folder):
        return []
    if not os.path.isdir(folder):
        return [os.path.basename(folder)]
    return sorted(name for name in set(os.listdir(folder)) - set(known)
                  if not name.startswith(".") and name.lower() not in SYSTEM_FILES)
