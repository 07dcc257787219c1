"""Callbacks the stock Keras ones do not cover: atomic writes and safe interrupts."""

import contextlib
import csv
import io
import math
import os
import signal
import time

import keras

from nin_keras.io import atomic_path, atomic_write_text, file_mode


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes to a temporary file and renames it.

    A crash or a full disk while saving leaves the previous best model intact
    (the stock callback writes the `.keras` zip in place). An epoch whose loss
    is NaN/inf is never saved: after ``TerminateOnNaN`` Keras still validates
    and could otherwise keep the diverged weights as the "best" model.

    The path is used as given: Keras' ``str.format`` placeholders
    (``{epoch}``) are not expanded, so a run folder whose name holds ``{`` or
    ``}`` saves where it says (nin_keras never uses placeholders).

    With ``history_path``, a resumed run starts from the best value its
    history recorded up to the restored epoch: the stock callback starts from
    nothing, so the first epoch after a resume replaced a better model. Epochs
    after the restored one are trained again and their rows replaced, so they
    do not count: ``best.keras`` follows the history the run ends with.
    """

    def __init__(self, filepath, *args, history_path=None, **kwargs):
        super().__init__(filepath, *args, **kwargs)
        self.history_path = history_path

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._resumed_best_pending = self.history_path is not None

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if not self._resumed_best_pending:
            return
        # The first epoch's index is the number of epochs the backup restored (known only after its
        # on_train_begin, which runs after this callback's: this one saves first at an epoch's end).
        self._resumed_best_pending = False
        if not epoch or not os.path.exists(self.filepath):
            return
        values = [row[self.monitor] for row in read_history(self.history_path)
                  if row["epoch"] <= epoch and math.isfinite(row.get(self.monitor, math.nan))]
        if values:
            self.best = max(values) if self.mode == "max" else min(values)

    def _get_file_path(self, epoch, batch, logs):
        return self.filepath

    def _save_model(self, epoch, batch, logs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return
        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):
            with atomic_path(filepath) as tmp:
                if self.save_weights_only:
                    self.model.save_weights(tmp, overwrite=True)
                else:
                    self.model.save(tmp, overwrite=True)


class FiniteBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that never backs up non-finite weights, and never leaves a broken backup.

    After ``TerminateOnNaN`` stops an epoch, Keras still calls
    ``on_epoch_end``, and the stock callback would replace the last good
    backup with NaN weights, so a ``--resume`` with a lower learning rate
    would restore them and fail the same way. Here the previous backup stays.

    The stock callback also writes ``latest.weights.h5`` in place: on a full
    disk h5py leaves it cut short (part of the error only reaches h5py's
    object destructors, so no exception says so), its ``.bkp`` copy is made
    from it an epoch later, and the resume fails on it with a traceback. Here
    a disk without room is refused before h5py writes a byte; the weights and
    the epoch count go to temporary files, the weights are read back as a
    resume would read them, and the pair replaces the last one by renames.
    """

    def on_train_begin(self, logs=None):
        # Not the stock restore: it copies the earlier pair over the newest one on any OSError, before knowing
        # the earlier one loads (a transient read error cost the newest backup), and reads an epoch count
        # whose weights file is missing as "start there from random weights".
        if not os.path.exists(self._weights_path) and not os.path.exists(self._training_metadata_path):
            return  # a new run
        try:
            self._load_pair(self._weights_path, self._training_metadata_path)
            return
        except (OSError, ValueError) as e:  # ValueError: a file that opens but lacks variables
            error = e
        self._restore_earlier(error)

    def _load_pair(self, weights_path, metadata_path):
        import json

        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        if weights_path.endswith(".weights.h5"):
            self.model.load_weights(weights_path)  # FileNotFoundError (an OSError) when it is missing
        else:  # Keras loads by extension: the earlier copy (".bkp") under a name it reads
            staged = os.path.join(self.backup_dir, ".earlier.tmp.weights.h5")
            _link_over(weights_path, staged)
            try:
                self.model.load_weights(staged)
            finally:
                _remove(staged)
        with open(metadata_path) as f:
            self.model._initial_epoch = json.load(f)["epoch"]

    def _restore_earlier(self, error):
        """Load the ``.bkp`` pair (the epoch before); only once it has loaded does it become the newest."""
        from nin_keras.errors import DataError

        problem = f"{self.backup_dir}: the backup does not load ({type(error).__name__})"
        if not os.path.exists(self._prev_weights_path):
            raise DataError(f"{problem}, and there is no earlier copy; start the run again with --overwrite "
                            "(the backup is left as it is)") from None
        try:
            self._load_pair(self._prev_weights_path, self._prev_training_metadata_path)
        except (OSError, ValueError, KeyError) as e:
            # Neither loads: a network other than the backup's (a --resume with other classes), or both
            # damaged. Nothing is replaced: the files may be fine for the run they came from.
            raise DataError(f"{problem}, nor does the copy of the epoch before ({type(e).__name__}): if this "
                            "run's network or data changed, start it again with --overwrite (the backup is "
                            "left as it is)") from None
        os.replace(self._prev_weights_path, self._weights_path)
        os.replace(self._prev_training_metadata_path, self._training_metadata_path)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return
        if not all_weights_finite(self.model):
            return
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        import json

        epoch = self._current_epoch
        os.makedirs(self.backup_dir, exist_ok=True)
        # The new file is written beside the two it replaces (h5py's layout adds about 5%).
        check_room(self.backup_dir, state_bytes(self.model) * 5 // 4, f"the backup of epoch {epoch}",
                   rerun_hint(epoch))
        tmp = os.path.join(self.backup_dir, ".latest.tmp.weights.h5")
        tmp_metadata = os.path.join(self.backup_dir, ".training_metadata.tmp.json")
        try:
            self.model.save_weights(tmp, overwrite=True)
            # Read back as a resume would: h5py reports a failed flush of the file's structure only from
            # an object's destructor, so the file can be short without an exception. Values that load
            # are the ones just saved, so the model is unchanged; a short file fails before any is wrong.
            self.model.load_weights(tmp)
            with open(tmp_metadata, "w") as f:
                f.write(json.dumps({"epoch": epoch, "batch": self._last_batch_seen}))
        except (OSError, RuntimeError, ValueError) as e:
            _remove(tmp)
            _remove(tmp_metadata)
            raise _backup_failed(self.backup_dir, epoch, e) from None
        if self.double_checkpoint and os.path.exists(self._weights_path):
            # The pair becomes the earlier copy through links, so a newest pair exists at every moment.
            _link_over(self._weights_path, self._prev_weights_path)
            _link_over(self._training_metadata_path, self._prev_training_metadata_path)
        # Weights, then the count: a kill between the two renames leaves epoch N's weights under epoch N-1's
        # count, and the rerun trains epoch N once more from them (never an epoch skipped, never random weights).
        os.replace(tmp, self._weights_path)
        os.chmod(tmp_metadata, file_mode())
        os.replace(tmp_metadata, self._training_metadata_path)


def _link_over(source, target):
    """Make ``target`` hold what ``source`` holds, atomically, leaving ``source`` where it is: a hard link
    where the filesystem has them (no space needed), a copy otherwise."""
    import shutil

    staged = f"{target}.tmp"
    _remove(staged)
    try:
        os.link(source, staged)
    except OSError:  # FAT/exFAT drives, some network filesystems
        shutil.copyfile(source, staged)
    os.replace(staged, target)


def state_bytes(model):
    """Bytes of ``model``'s weights and its optimizer's variables: the least a weights file of both holds."""
    optimizer = getattr(model, "optimizer", None)  # absent until compiled
    variables = list(model.weights) + list(getattr(optimizer, "variables", None) or [])
    return sum(int(v.numpy().nbytes) for v in variables)


def check_room(folder, needed, what, then):
    """Raise a one-line :class:`~nin_keras.errors.NoRoom` if ``folder``'s filesystem has less than ``needed``
    bytes (+ 1 MiB) free."""
    import shutil

    from nin_keras.errors import NoRoom

    free = shutil.disk_usage(folder).free
    if free < needed + 2**20:
        raise NoRoom(f"no space left on the device of {folder} for {what} ({free / 2**20:.1f} MiB free, "
                     f"{(needed + 2**20) / 2**20:.1f} MiB needed): free space, then {then}")


def rerun_hint(epoch):
    """What rerunning does after the backup of ``epoch`` (1-based) could not be written."""
    return ("rerun the same command (it resumes from the backup of epoch "
            f"{epoch - 1})" if epoch > 1 else "rerun the same command")


def _backup_failed(folder, epoch, error):
    from nin_keras.errors import DataError, write_advice

    # h5py's strerror is its C error stack; a file that does not read back is usually a disk that filled.
    reason = (os.strerror(error.errno) if isinstance(error, OSError) and error.errno else
              "it did not read back whole: the disk may be full")
    return DataError(f"{folder}: cannot write the backup of epoch {epoch} ({reason}): {write_advice(error)}, "
                     f"then {rerun_hint(epoch)}")


def _remove(path):
    with contextlib.suppress(OSError):
        os.remove(path)


def all_weights_finite(model):
    """True when every weight of ``model`` is finite (a NaN in one batch can reach the weights first)."""
    import numpy as np

    return all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


def read_history(path):
    """Rows of a history CSV as dicts of floats (``epoch`` as int); [] if absent."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in rows]
    except (OSError, ValueError, TypeError, csv.Error, UnicodeDecodeError) as e:
        from nin_keras.errors import DataError

        raise DataError(f"{path}: corrupt training history ({type(e).__name__}: {e}); "
                        "fix or delete it, or pass --overwrite") from None


def write_history(path, rows):
    """Write history rows as CSV atomically."""
    keys = ["epoch"] + sorted({k for row in rows for k in row} - {"epoch"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class HistoryCSV(keras.callbacks.Callback):
    """Per-epoch history in a CSV that survives crashes and resumes.

    Unlike ``CSVLogger(append=True)``, a resumed run first drops rows of
    epochs that ``BackupAndRestore`` will train again, so every epoch appears
    exactly once; each write is atomic. It goes *before* ``BackupAndRestore``
    in the callback list, so an epoch's row is on disk before its backup: a
    kill between the two retrains that epoch and replaces the row, instead of
    losing it.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.rows = []

    def on_train_begin(self, logs=None):
        self.rows = read_history(self.path)

    def on_epoch_begin(self, epoch, logs=None):
        # ``epoch`` is the number of epochs already done (restored by BackupAndRestore).
        self.rows = [row for row in self.rows if row["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.rows = [r for r in self.rows if r["epoch"] < epoch + 1] + [row]
        write_history(self.path, self.rows)


class Interrupted(Exception):
    """Raised at a batch boundary after SIGINT/SIGTERM."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopOnSignal(keras.callbacks.Callback):
    """Turn SIGINT/SIGTERM into :class:`Interrupted` at the next batch boundary.

    Raising (rather than setting ``stop_training``) keeps Keras from running
    ``on_epoch_end`` for a half-finished epoch, so ``BackupAndRestore`` keeps
    the last *complete* epoch and a rerun resumes from there. The handler
    (:class:`nin_keras.cli.SignalStop`) stays installed after ``fit``
    returns, through the test evaluation and the saving, until the caller
    calls :meth:`restore`; call :meth:`check` between those steps.
    """

    def __init__(self):
        super().__init__()
        from nin_keras.cli import SignalStop

        self.signals = SignalStop(error=Interrupted)

    @property
    def received(self):
        return self.signals.received

    def on_train_begin(self, logs=None):
        if not self.signals.installed:  # once: fit() may begin more than once
            self.signals.__enter__()

    def _check(self, *args, **kwargs):
        self.signals.check()

    # predict() too: the final test pass stops at its next batch, not after the whole set.
    on_train_batch_end = on_test_batch_end = on_predict_batch_end = on_epoch_end = _check
    check = _check

    def restore(self):
        """Put the previous handlers back (the caller does, once the run's files are written)."""
        self.signals.__exit__(None, None, None)


class TrainThroughput(keras.callbacks.Callback):
    """Seconds spent in training batches (validation excluded), for examples/sec."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0
        self.epochs = 0
        self._start = self._last = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += self._last - self._start
        self.epochs += 1


class TimeBudget(keras.callbacks.Callback):
    """Choose the number of epochs once the first one is timed, so the run fits ``minutes``.

    ``started`` is when the run began (``time.monotonic()``), so data loading
    and model building count. After the first epoch (validation included)
    the callback picks the most epochs that fit, between that one and
    ``max_epochs``, keeping ``reserve`` of the budget for the test
    evaluation and saving; it tells ``schedule`` (a
    :class:`nin_keras.schedules.WarmupCosine`, or None) the new length and
    stops training after the chosen epoch. A resumed run times its first
    epoch after the restart and counts the budget from then.
    """

    def __init__(self, minutes, started, steps_per_epoch, max_epochs, *, schedule=None, reserve=0.05, print_fn=print):
        super().__init__()
        self.seconds = 60.0 * minutes
        self.started = started
        self.steps_per_epoch = steps_per_epoch
        self.max_epochs = max_epochs
        self.schedule = schedule
        self.reserve = reserve
        self.print_fn = print_fn
        self.chosen = None
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if self.chosen is None:
            now = time.monotonic()
            epoch_seconds = now - self._epoch_start
            left = self.seconds * (1 - self.reserve) - (now - self.started)
            self.chosen = int(min(self.max_epochs, max(epoch + 1, epoch + 1 + left // max(epoch_seconds, 1e-9))))
            if self.schedule is not None:
                self.schedule.set_total_steps(self.chosen * self.steps_per_epoch)
            self.print_fn(f"time budget {self.seconds / 60:g} min: epoch {epoch + 1} took {epoch_seconds:.0f} s "
                          f"({now - self.started:.0f} s used so far); training {self.chosen} epochs "
                          f"(at most {self.max_epochs}: raise it with --epochs)")
        if epoch + 1 >= self.chosen:
            self.model.stop_training = True


def first_non_finite(rows, key="loss"):
    """Epoch number of the first row whose ``key`` is NaN/inf, else None."""
    for row in rows:
        if key in row and not math.isfinite(row[key]):
            return row["epoch"]
    return None
