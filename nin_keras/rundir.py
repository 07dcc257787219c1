"""The run folder's lifecycle: recognise a run, lock it, decide its state, replace it safely.

A folder is a nin_keras run when its ``config.json`` says so (a format
marker and version, :data:`RUN_FORMAT`), not because a file of that name
exists: ``--overwrite`` and ``--resume`` act on nothing else. Replacing a
run never deletes the folder: the old run's own files (:data:`RUN_FILES`)
are set aside inside it, and put back if the new run fails for any reason
before its metrics are written. One process at a time holds a folder
(:class:`RunLock`).
"""

import contextlib
import errno
import os
import shutil
import time

from nin_keras.errors import ConfigError
from nin_keras.io import read_json_object

#: ``config.json``'s marker: what wrote it, and the layout version of the run folder.
RUN_FORMAT = "nin_keras.run"
RUN_FORMAT_VERSION = 1
#: Keys of ``config.json`` that describe the file, not a setting.
FORMAT_KEYS = ("format", "format_version", "nin_keras_version", "export", "preprocessing")

RUN_FILES = {
    "config": "config.json",
    "model": "model.keras",
    "best": "best.keras",
    "history": "history.csv",
    "metrics": "metrics.json",
    "labels": "labels.txt",
    "plot": "history.png",
    "per_class": "per_class.json",
    "confusion": "confusion.png",
    "logs": "logs",
    "backup": "backup",
    "split": "split.json",
    # python -m export's default folder: it describes this run's model, so it goes with it.
    "export": "export",
}
LOCK_NAME = ".nin_keras.lock"
ASIDE_NAME = ".nin_keras-replaced"


def run_format(data):
    """The run-folder version a ``config.json`` object was written with: 1.., 0 (before markers), or None.

    Version 0 is a run written before the marker existed: an object whose
    keys are all training settings and that names a preset. Anything else
    (a user's own ``config.json``) is None. A newer version than this
    nin_keras knows is a one-line error.
    """
    from nin_keras.settings import BY_NAME

    if data.get("format") == RUN_FORMAT:
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= RUN_FORMAT_VERSION:
            raise ConfigError(f"its config.json was written by another nin_keras version (run format "
                              f"{version!r}; this one reads 0..{RUN_FORMAT_VERSION}). Received: format_version={version!r}")
        return version
    if "format" not in data and isinstance(data.get("preset"), str) and "epochs" in data and set(data) <= set(BY_NAME):
        return 0
    return None


def _looks_like_a_run(run_dir):
    """Files only a training run writes beside its config.json (for folders from before the format marker)."""
    return any(os.path.lexists(os.path.join(run_dir, RUN_FILES[k])) for k in ("history", "model", "backup", "metrics"))


def read_run_config(run_dir):
    """``(config dict, format version)`` of the run in ``run_dir``; ``(None, None)`` when there is none.

    A ``config.json`` that is not JSON, or not a nin_keras run's, gives
    ``(None, None)`` as well: the folder is then not a run, whatever it holds.
    """
    path = os.path.join(run_dir, RUN_FILES["config"])
    if not os.path.isfile(path):
        return None, None
    try:
        data = read_json_object(path, "run config")
    except ConfigError:
        return None, None
    version = run_format(data)
    if version == 0 and not _looks_like_a_run(run_dir):
        # A hand-written {"preset": ..., "epochs": ...} beside the user's files is not a run to replace.
        return None, None
    return (data, version) if version is not None else (None, None)


def folder_entries(run_dir):
    """What ``run_dir`` holds besides the lock file."""
    if not os.path.isdir(run_dir):
        return []
    return sorted(set(os.listdir(run_dir)) - {LOCK_NAME})


def not_a_run(run_dir, action):
    """The one-line refusal (``action``: "--overwrite refuses to replace", say) for a folder that holds
    files but no nin_keras run."""
    config_path = os.path.join(run_dir, RUN_FILES["config"])
    found = ("a config.json that nin_keras did not write" if os.path.exists(config_path)
             else f"no {RUN_FILES['config']}")
    return ConfigError(f"{action} {run_dir}: it holds files but no nin_keras run ({found}); "
                       "choose an empty or new --output-dir")


class LockUnavailable(ConfigError):
    """The lock file cannot be written or locked (permissions, a read-only or flock-less filesystem), as
    opposed to being held by another process."""


#: Tries at taking a lock whose file is being removed and made again under us (see RunLock.acquire).
LOCK_ATTEMPTS = 5


def _same_file(fd, path):
    """Whether ``path`` (not followed if a link) is still the file open as ``fd``."""
    try:
        at_path = os.lstat(path)
    except OSError:
        return False
    return os.path.samestat(at_path, os.fstat(fd))


class RunLock:
    """An exclusive lock on a run folder, held by one process (``fcntl.flock`` on ``.nin_keras.lock``).

    The kernel drops the lock when its holder exits, however it dies, so a
    lock left by a killed process never blocks the next run. The holder
    writes its process id into the file so a refused process can name it.
    """

    def __init__(self, run_dir, label=None, advice="or choose another --output-dir"):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.fd = None
        self.created = False
        # How a refusal names the folder and what it suggests: fit's --output-dir, or export's run folder.
        self.label = label or f"--output-dir {run_dir}"
        self.advice = advice

    def acquire(self):
        """Take the lock or raise a one-line ConfigError naming the holder's process id."""
        if os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            raise ConfigError(f"{self.label}: exists and is not a directory")
        # An export removes the lock file it made as it lets go (and the output folder, if it made it and left
        # it empty): a process that opened that file just before would lock a file no longer in the folder
        # while a third locks a new one. So the lock counts only if the name still leads to the file locked;
        # if not, or if the file or folder went between two steps here, again with what is there now.
        for _ in range(LOCK_ATTEMPTS):
            fd = self._open()
            if fd is None:
                continue
            self._lock(fd)
            if _same_file(fd, self.path):
                break
            os.close(fd)
        else:  # other processes kept taking and letting go of it: in use, not unlockable (which runs unlocked)
            raise ConfigError(f"{self.label} is in use by other nin_keras processes; wait for them to finish "
                              f"{self.advice}")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def _open(self):
        """The lock file's descriptor, the file made if missing (``self.created`` says this process made it);
        None if the file or the folder went between two steps here (another process letting go)."""
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                self.created = True
            except FileExistsError:
                # O_NOFOLLOW: a lock file planted as a symlink (to ~/.bashrc, say) must not be truncated.
                fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
                self.created = False
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ConfigError(f"{self.label}: its {LOCK_NAME} is a symbolic link, not a lock "
                                  "file nin_keras made; remove it") from None
            raise LockUnavailable(f"{self.label}: cannot write ({e.strerror or e})") from None
        return fd

    def _lock(self, fd):
        """``flock`` ``fd`` without waiting; a held lock is a one-line ConfigError naming its holder."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockUnavailable(f"{self.label}: cannot lock ({e.strerror or e})") from None
            raise ConfigError(f"{self.label} is in use by another nin_keras process (pid {holder}); wait for it to "
                              f"finish {self.advice}") from None

    def release(self, remove=False):
        """Drop the lock. ``remove``: also delete the lock file if this process created it (a refused
        folder gets nothing of ours left in it); otherwise the file stays, since removing a lock file
        races with a process opening it."""
        if self.fd is None:
            return
        if remove and self.created:
            with contextlib.suppress(OSError):
                os.remove(self.path)
        os.close(self.fd)
        self.fd = None


def _remove(path):
    """Delete one of a run's entries without following a symlink out of the folder."""
    if os.path.islink(path) or not os.path.isdir(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    else:
        shutil.rmtree(path)


def set_aside(run_dir):
    """Move the run's own files (:data:`RUN_FILES`) into ``run_dir/.nin_keras-replaced``; return that path.

    Nothing else in the folder moves or goes. :func:`restore` puts them
    back, :func:`discard` deletes them once the new run has finished.
    """
    aside = os.path.join(run_dir, ASIDE_NAME)
    if os.path.lexists(aside):
        raise ConfigError(f"--overwrite: {aside} already exists and is not an interrupted replacement nin_keras "
                          "can undo (a symbolic link, or not a folder); move it away first")
    # metrics.json first: until the old run's metrics are gone, the folder never looks like a finished new run
    # to recover_interrupted_replacement (a kill part-way through must not read as "the new run finished").
    names = ["metrics.json"] + [n for n in RUN_FILES.values() if n != "metrics.json"]
    try:
        os.makedirs(aside)
        for name in names:
            if os.path.lexists(os.path.join(run_dir, name)):
                os.rename(os.path.join(run_dir, name), os.path.join(aside, name))
    except OSError as e:
        restore(run_dir, aside)
        raise ConfigError(f"--overwrite: cannot set the old run in {run_dir} aside ({e.strerror or e})") from None
    return aside


def restore(run_dir, aside):
    """Delete every file the new run wrote (all of :data:`RUN_FILES`, not only the names the old run had)
    and put the set-aside run back."""
    if os.path.islink(aside) or not os.path.isdir(aside):
        return
    for name in RUN_FILES.values():
        target = os.path.join(run_dir, name)
        if os.path.lexists(target):
            _remove(target)
    for name in os.listdir(aside):
        os.rename(os.path.join(aside, name), os.path.join(run_dir, name))
    os.rmdir(aside)


def discard(aside):
    """Delete a set-aside run (the new run has finished)."""
    if os.path.isdir(aside) and not os.path.islink(aside):
        shutil.rmtree(aside)


def recover_interrupted_replacement(run_dir, print_fn=print):
    """Finish what a killed ``--overwrite`` left: restore the old run, or drop it if the new one finished."""
    aside = os.path.join(run_dir, ASIDE_NAME)
    if not os.path.isdir(aside) or os.path.islink(aside):
        return
    if os.path.exists(os.path.join(run_dir, RUN_FILES["metrics"])):
        discard(aside)
        return
    restore(run_dir, aside)
    print_fn(f"{run_dir}: an earlier --overwrite was interrupted before its run finished; the run it was "
             "replacing is restored")


def check_writable(run_dir):
    """Create ``run_dir`` if needed and prove a file can be written in it (one-line ConfigError otherwise)."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--output-dir {run_dir}: cannot write ({e.strerror or e})") from None
    return run_dir


def check_outside_image_dir(image_dir, output_dir, *, given=True):
    """Refuse a run or search folder inside --image-dir: the next run would read its models and plots as photos
    of a class, or its folder as a class (``runs/`` when the command runs from inside the photo folder).
    ``given``: the user passed ``output_dir`` (else it is the command's default)."""
    if not image_dir:
        return
    images = os.path.realpath(image_dir)
    if os.path.commonpath([images, os.path.realpath(output_dir)]) == images:
        where = f"--output-dir {output_dir}" if given else f"the default folder {output_dir}/"
        raise ConfigError(f"{where} is inside --image-dir {image_dir}, where its files would be read as photos; "
                          "pass an --output-dir outside the image folder")


#: Where run folders go unless --output-dir says otherwise.
RUNS_ROOT = "runs"


def default_output_dir(preset, root=RUNS_ROOT):
    """A new, empty ``runs/<preset>-<time>`` folder, created exclusively (two runs started
    in the same second get ``-2``, ``-3``...)."""
    stem = os.path.join(root, f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    for n in range(1, 1000):
        path = stem if n == 1 else f"{stem}-{n}"
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot create the run folder {path} ({e.strerror or e}); pass --output-dir") from None
    raise ConfigError(f"cannot find a free run folder name after {stem}; pass --output-dir")


def read_finished_metrics(run_dir):
    """The metrics of a finished run, or a one-line error if they cannot be read."""
    import json

    metrics_path = os.path.join(run_dir, RUN_FILES["metrics"])
    try:
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
        float(metrics["test_accuracy"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{metrics_path}: unreadable metrics of a finished run ({type(e).__name__}: {e}); "
                          "pass --overwrite to train it again") from None
    return metrics
