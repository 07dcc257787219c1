"""``python -m tuning``: keras-tuner search over NiN, resumable and distributable.

Resumes by default (rerun the same command after an interruption; finished
trials are not run again). For distributed tuning, start the same command
with keras-tuner's environment variables on every machine:
``KERASTUNER_TUNER_ID=chief|tuner0|tuner1...``, ``KERASTUNER_ORACLE_IP``,
``KERASTUNER_ORACLE_PORT`` (see docs/tuning.md).
"""

import contextlib
import functools
import json
import os
import signal
import sys
import time

from nin_keras import config as config_lib
from nin_keras import rundir, settings
from nin_keras.errors import ConfigError, NinError, NoRoom, Stopped
from nin_keras.cli import OneLineParser, add_data_flags, check_backend, run_cli, SignalStop
from nin_keras.io import atomic_write_text, foreign_entries, read_json_object
from nin_keras.precision import precision_scope, resolve_precision
from tuning import budget, compat

TUNERS = ("bayesian", "random", "hyperband")
PROJECT = "search"


def build_parser():
    parser = OneLineParser(prog="python -m tuning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuner", default="bayesian", help=f"one of {', '.join(TUNERS)} (default bayesian)")
    parser.add_argument("--max-trials", type=int, default=10, help="trials to run (bayesian/random; default 10)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (hyperband: max epochs; default 3)")
    parser.add_argument("--patience", type=int, default=2, help="early-stopping patience in epochs (default 2)")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES",
                        help="start no trial once the finished trials in --output-dir have taken MINUTES, counted "
                             "over every sitting; then write the results (rerun with a larger budget to go on)")
    # Settings shared with fit come from the same schema, with tuning's defaults.
    settings.add_flags(parser, ("preset", "seed"), defaults={"preset": "fashion", "seed": 0})
    parser.add_argument("--output-dir", help="search directory, shared by workers (default: tuning_runs/<preset>)")
    parser.add_argument("--strategy", choices=[s for s in settings.STRATEGIES if s != "multi-worker"], default="auto",
                        help=settings.BY_NAME["strategy"].help.replace("multi-worker from $TF_CONFIG, ", ""))
    settings.add_flags(parser, ("cpu_replicas", "precision"), defaults={"precision": "auto"})
    parser.add_argument("--overwrite", action="store_true", help="discard a previous search in --output-dir")
    parser.add_argument("--retrain-best", action="store_true",
                        help="then retrain the best config on the full training set with nin_keras.fit")
    settings.add_flags(parser, ("verbose",), defaults={"verbose": 2})
    add_data_flags(parser, defaults={"limit": 20000})
    return parser


def validate_args(args):
    """Check the flags fit's config does not cover; fill in the default output folder."""
    if args.tuner not in TUNERS:
        raise ConfigError(f"--tuner must be one of {', '.join(TUNERS)}. Received: {args.tuner!r}")
    settings.validate_numeric_args(args)
    if args.tuner == "hyperband" and args.epochs < 2:
        raise ConfigError(f"--epochs (hyperband's max epochs) must be >= 2. Received: {args.epochs}")
    if args.time_budget is not None and is_distributed_tuning():
        # The chief's oracle server hands out trials until the search ends; workers stopping early would
        # leave it waiting.
        raise ConfigError("--time-budget is for a search on one machine, not distributed tuning. "
                          f"Received: --time-budget {args.time_budget:g} with $KERASTUNER_ORACLE_IP set")
    given = args.output_dir_given = args.output_dir is not None
    if not given:
        args.output_dir = os.path.join("tuning_runs", args.preset)
    rundir.check_outside_image_dir(args.image_dir, args.output_dir, given=given)


# What defines a search: a folder holding another search is not resumed with these.
SEARCH_SETTINGS = ("preset", "tuner", "max_trials", "epochs", "patience", "seed", "limit", "data_dir", "image_dir",
                   "tfds", "val_fraction", "precision", "image_size", "resize", "skip_bad_images")
SEARCH_FILE = "search.json"
#: What a search folder holds (keras-tuner's project folder, TensorBoard logs, the results, a photo search's split).
SEARCH_ENTRIES = (SEARCH_FILE, PROJECT, "tensorboard", "trials.json", "best_hparams.json", "best_config.json",
                  "split.json")


# How long a distributed-tuning worker waits for the chief's search.json to
# appear (the chief writes it first thing, before loading data).
WORKER_WAIT_SECONDS = 60


def check_search_dir(args):
    """Refuse a search folder that holds another search; record ours (chief) or check against it (worker).

    Called before keras-tuner touches the folder. ``--overwrite`` discards
    the old search only when its ``search.json`` marks it as one of ours
    (:func:`discard_search`). A keras-tuner worker never writes or deletes:
    it must have been started with the chief's settings.
    """
    path = os.path.join(args.output_dir, SEARCH_FILE)
    project = os.path.join(args.output_dir, PROJECT)
    settings = {k: getattr(args, k) for k in SEARCH_SETTINGS}
    if os.path.islink(project):
        raise ConfigError(f"{project} is a symbolic link; tuning neither follows nor deletes one. Move it away or "
                          f"pass another --output-dir. Received: {project} -> {os.readlink(project)}")
    if not distribute_is_tuning_chief():
        return check_worker_settings(args, path, settings)
    others = foreign_entries(args.output_dir, SEARCH_ENTRIES)
    if others and not os.path.exists(path):  # a training run, or the user's own folder: even with --overwrite
        raise ConfigError(f"{_folder(args)} holds files that are not a search ({', '.join(others[:3])}); choose an "
                          "empty or new folder")
    if args.overwrite:
        discard_search(args.output_dir)
    elif os.path.exists(path):
        saved = read_json_object(path, "search settings", "; pass --overwrite to start afresh")
        # More trials extend the same search (keras-tuner resumes it); anything else would be another search.
        diff = [k for k in _differences(saved, settings) if k != "max_trials"]
        if diff:
            raise ConfigError(f"{_folder(args)} holds a different search (settings differ: "
                              f"{', '.join(diff)}); pass --overwrite to replace it, or another --output-dir")
    elif os.path.isdir(project):
        raise ConfigError(f"{_folder(args)} holds a search without {SEARCH_FILE} (made by an older "
                          f"version, or not by nin_keras); remove {project} yourself, or pass another --output-dir")
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _folder(args):
    """How a message names the search folder: by the flag when the user gave it."""
    return (f"--output-dir {args.output_dir}" if getattr(args, "output_dir_given", True) else
            f"{args.output_dir} (the default search folder; --output-dir chooses another)")


def _differences(saved, settings):
    return sorted(k for k in SEARCH_SETTINGS if saved.get(k) != settings[k])


def discard_search(output_dir):
    """Delete ``output_dir``'s keras-tuner project for ``--overwrite``: only a nin_keras search, never through a link.

    The project folder goes only when ``search.json`` (which nin_keras writes
    beside it) marks the folder as a search. ``shutil.rmtree`` removes links
    inside it rather than following them (on Linux it works through file
    descriptors, so a link swapped in meanwhile is not followed either);
    keras-tuner's own overwrite uses ``tf.io.gfile.rmtree``, which follows a
    symlinked project folder.
    """
    import shutil

    project = os.path.join(output_dir, PROJECT)
    marker = os.path.join(output_dir, SEARCH_FILE)
    if not os.path.lexists(project):
        return
    if os.path.islink(marker) or not os.path.isfile(marker):
        raise ConfigError(f"--overwrite: {project} has no {SEARCH_FILE} beside it, so it is not known to be a "
                          "nin_keras search; nothing was deleted. Remove it yourself, or pass another --output-dir")
    try:
        shutil.rmtree(project)
    except OSError as e:
        raise ConfigError(f"--overwrite: cannot delete {project} ({e.strerror or e})") from None


def check_worker_settings(args, path, settings):
    """A distributed-tuning worker joins only a search with its own settings (the chief's ``search.json``).

    Waits up to :data:`WORKER_WAIT_SECONDS` for the chief to write the file,
    then refuses other settings in one line (nothing is written).
    """
    deadline = time.monotonic() + WORKER_WAIT_SECONDS
    while not os.path.isfile(path) and time.monotonic() < deadline:
        time.sleep(1)
    worker = os.environ.get("KERASTUNER_TUNER_ID")
    if not os.path.isfile(path):
        raise ConfigError(f"worker {worker}: no {path} after {WORKER_WAIT_SECONDS} s; start the chief with the same "
                          "--output-dir (a folder every machine shares)")
    saved = read_json_object(path, "search settings")
    diff = _differences(saved, settings)
    if diff:
        raise ConfigError(f"worker {worker}: the chief's search in {args.output_dir} has other settings ("
                          + ", ".join(f"{k}={saved.get(k)!r}" for k in diff) + "); start every worker with the "
                          "chief's flags. Received: " + ", ".join(f"{k}={settings[k]!r}" for k in diff))


def _timed(tuner_class):
    """Subclass a keras-tuner class so each trial's wall time lands in its trial folder, and no trial starts
    once ``budget_minutes`` of them are spent (:mod:`tuning.budget`)."""

    class Timed(tuner_class):
        budget_minutes = None
        signals = SignalStop()  # replaced by the search's own (outside a search, it never receives one)

        def pre_create_trial(self):
            super().pre_create_trial()
            self.signals.check()
            budget.check(self.project_dir, self.budget_minutes)

        def run_trial(self, trial, *args, **kwargs):
            import keras

            check = self.signals.check
            # Before keras-tuner's own checkpoint callback, which it appends: h5py on a full disk leaves a
            # cut file, reports part of it only from destructors, and crashed the process at exit.
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []),
                                   _room_for_checkpoint(self.get_trial_dir(trial.trial_id)),
                                   keras.callbacks.LambdaCallback(on_train_batch_end=check, on_test_batch_end=check)]
            start = time.perf_counter()
            try:
                try:
                    result = super().run_trial(trial, *args, **kwargs)
                except Exception as e:  # keras-tuner marks it failed and goes on: its time counts (a stop's does not)
                    if _stops_the_search(e) is None:
                        self._record_time(trial, time.perf_counter() - start, "failed")
                    raise
                self._record_time(trial, time.perf_counter() - start, "finished")
            except Exception as e:
                fatal = _stops_the_search(e)
                if fatal is None:
                    raise
                raise fatal from None
            return result

        def _record_time(self, trial, seconds, outcome):
            atomic_write_text(os.path.join(self.get_trial_dir(trial.trial_id), budget.TIME_FILE),
                              json.dumps({"seconds": seconds, "tuner_id": self.tuner_id}) + "\n")
            used = "" if self.budget_minutes is None else (
                f" ({budget.spent_seconds(self.project_dir) / 60:.1f} of {self.budget_minutes:g} budget minutes used)")
            print(f"{self.tuner_id}: {outcome} trial {trial.trial_id} in {seconds:.0f}s{used}", flush=True)

    Timed.__name__ = f"Timed{tuner_class.__name__}"
    return Timed


def _room_for_checkpoint(trial_dir):
    """A callback that stops the search in one line when ``trial_dir`` has no room for the trial's checkpoint."""
    import keras

    from nin_keras.callbacks import check_room, state_bytes

    class RoomForCheckpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            check_room(trial_dir, state_bytes(self.model) * 5 // 4, "this trial's checkpoint",
                       "rerun the same command (the search runs this trial again)")

    return RoomForCheckpoint()


@functools.cache
def _search_stopped_class():
    import keras_tuner

    class SearchStopped(NinError, keras_tuner.errors.FatalError):
        """A user-facing error inside a trial: keras-tuner lets a FatalError through (the trial stays
        unfinished, so the rerun runs it again) where any other error counts as a failed trial."""

    return SearchStopped


def _stops_the_search(error):
    """The error that stops the search for ``error`` inside a trial (a full disk, a folder that may not be
    written, a closed standard output), else None: a trial that fails on its own (a model that diverges,
    a setting it cannot take) is keras-tuner's to count, or a rerun would stop on the same trial forever."""
    import keras_tuner

    from nin_keras.errors import write_failure

    if isinstance(error, keras_tuner.errors.FatalError):  # ours (SearchStopped, PipeClosed) or keras-tuner's
        return error
    if isinstance(error, BrokenPipeError):  # `| head`: run_cli's one line, and the trial runs again
        return _pipe_closed_class()(*error.args)
    if isinstance(error, NoRoom):
        message = str(error)
    elif isinstance(error, NinError):  # nin_keras' own writes (a trial's time.json) say "cannot write (<reason>)"
        message = str(error) if write_failure(RuntimeError(str(error))) is not None else None
    else:
        message = write_failure(error)
    return None if message is None else _search_stopped_class()(message)


@functools.cache
def _pipe_closed_class():
    import keras_tuner

    class PipeClosed(BrokenPipeError, keras_tuner.errors.FatalError):
        """A BrokenPipeError keras-tuner lets through (it is a FatalError); run_cli says it in one line."""

    return PipeClosed


def start_from_defaults(oracle):
    """Make the oracle's first trial the hyperparameters' defaults (the untuned preset).

    keras-tuner starts random and Bayesian searches from random points; a
    first trial at the preset gives every search a known baseline to beat.
    Later trials (and resumed searches) are left to the oracle. On a
    distributed worker the oracle is a client of the chief's and is left
    alone: the chief's oracle picks every trial.
    """
    if not hasattr(type(oracle), "populate_space"):  # keras-tuner's OracleClient
        return oracle
    populate_space = oracle.populate_space

    def first_defaults(trial_id):
        result = populate_space(trial_id)
        if not oracle.trials and result.get("status") == "RUNNING":
            # The oracle's own bookkeeping (Hyperband's "tuner/epochs", bracket, round) stays.
            defaults = {hp.name: hp.default for hp in oracle.hyperparameters.space if not hp.name.startswith("tuner/")}
            result = {**result, "values": {**result["values"], **defaults}}
        return result

    oracle.populate_space = first_defaults
    return oracle


def is_distributed_tuning():
    """Whether a chief oracle is configured (keras-tuner's ``KERASTUNER_ORACLE_IP``): chief and workers alike."""
    return bool(os.environ.get("KERASTUNER_ORACLE_IP"))


def distribute_is_tuning_chief():
    """False on a keras-tuner worker: a chief oracle is configured and this is not it.

    Read from keras-tuner's documented environment variables rather than its
    private ``keras_tuner.src.distribute.utils``.
    """
    if not is_distributed_tuning():
        return True
    return os.environ.get("KERASTUNER_TUNER_ID", "chief") == "chief"


def make_tuner(args, hypermodel, strategy):
    """The keras-tuner tuner ``args`` ask for, resuming what is in its folder (:func:`check_search_dir` clears it)."""
    import keras_tuner

    compat.atomic_state_files()
    common = dict(
        objective="val_accuracy",
        directory=args.output_dir,
        project_name=PROJECT,
        # check_search_dir has already discarded an old search (never through a link); keras-tuner's own
        # overwrite follows a symlinked project folder, and on a worker would delete the chief's search.
        overwrite=False,
        seed=args.seed,
        distribution_strategy=strategy,
    )
    if args.tuner == "hyperband":
        tuner = _timed(keras_tuner.Hyperband)(hypermodel, max_epochs=args.epochs, factor=3, **common)
    elif args.tuner == "bayesian":
        # 3 random points, not keras-tuner's default 3 x 9 dimensions: with a
        # CPU-sized budget of ~10 trials the Gaussian process would never run.
        tuner = _timed(keras_tuner.BayesianOptimization)(hypermodel, max_trials=args.max_trials,
                                                          num_initial_points=3, **common)
    else:
        tuner = _timed(keras_tuner.RandomSearch)(hypermodel, max_trials=args.max_trials, **common)
    tuner.budget_minutes = args.time_budget
    start_from_defaults(tuner.oracle)
    retry_orphaned_trials(tuner.oracle)
    return tuner


def retry_orphaned_trials(oracle):
    """Queue for retry the trials a killed search left RUNNING that the oracle has forgotten.

    keras-tuner retries the trials its saved state lists as ongoing, but it
    writes a new trial's folder (status RUNNING) before it saves that state: a
    kill in between left the trial RUNNING forever, never retried and never
    finished (seen here with 1.4.8). Only for the local oracle of keras-tuner
    1.4.x, whose ``_retry_queue`` this uses; other versions are left alone.
    """
    import keras_tuner

    if not keras_tuner.__version__.startswith("1.4.") or not hasattr(oracle, "_retry_queue"):
        return []
    ongoing = {trial.trial_id for trial in getattr(oracle, "ongoing_trials", {}).values()}
    orphans = [trial_id for trial_id, trial in sorted(oracle.trials.items())
               if trial.status == "RUNNING" and trial_id not in ongoing and trial_id not in oracle._retry_queue]
    oracle._retry_queue.extend(orphans)
    return orphans


def trial_rows(tuner):
    """One dict per trial: id, status, val_accuracy, seconds, hyperparameters."""
    return [{"trial": trial_id, "status": trial.status, "val_accuracy": trial.score,
             "seconds": budget.trial_seconds(tuner.get_trial_dir(trial_id)),
             "hyperparameters": dict(trial.hyperparameters.values)}
            for trial_id, trial in sorted(tuner.oracle.trials.items())]


def format_rows(rows):
    """The trial table printed at the end (hyperband's own "tuner/..." bookkeeping left out)."""
    keys = sorted({k for r in rows for k in r["hyperparameters"] if not k.startswith("tuner/")})
    header = ["trial", "status", "val_acc", "seconds"] + keys
    lines = ["  ".join(f"{h:>12}" for h in header)]
    for r in rows:
        values = [r["trial"], r["status"], f"{r['val_accuracy']:.4f}" if r["val_accuracy"] is not None else "-",
                  f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"]
        for k in keys:
            v = r["hyperparameters"].get(k, "-")
            values.append(f"{v:.2e}" if isinstance(v, float) and 0 < abs(v) < 0.01 else
                          f"{v:g}" if isinstance(v, float) else str(v))
        lines.append("  ".join(f"{str(v):>12}" for v in values))
    return "\n".join(lines)


def run_search(args, print_fn=print):
    """Search, then write trials.json, best_hparams.json and best_config.json. Returns the best config path.

    Stages: the base config and the search folder's check, :func:`_search_data`
    (the split, kept in the search folder), the search itself, then
    :func:`write_results` on the chief.
    """
    from nin_keras import distribute

    check_backend()
    validate_args(args)
    # A mistyped folder: one line before TensorFlow loads (seconds). Not in a distributed search, where
    # every process must reach the data stage and stop with the same line.
    if args.image_dir is not None and not is_distributed_tuning() and not os.environ.get("TF_CONFIG"):
        from nin_keras.data.folders import check_image_dir

        check_image_dir(args.image_dir)
    base = config_lib.resolve_config({
        "preset": args.preset, "seed": args.seed, "data_dir": args.data_dir, "image_dir": args.image_dir,
        "tfds": args.tfds, "val_fraction": args.val_fraction, "test_limit": args.test_limit,
        "precision": args.precision, "image_size": args.image_size, "resize": args.resize,
        "skip_bad_images": args.skip_bad_images, "max_image_pixels": args.max_image_pixels,
    })
    strategy = distribute.make_strategy(args.strategy, args.cpu_replicas)
    if is_distributed_tuning():
        distribute.print_cluster_notice("keras-tuner's oracle port ($KERASTUNER_ORACLE_IP:$KERASTUNER_ORACLE_PORT)")
    with _chief_lock(args):
        # Before the split file is read: a folder holding another search is refused first (workers too).
        check_search_dir(args)
        return _search_and_write(args, base, strategy, print_fn)


@contextlib.contextmanager
def _chief_lock(args):
    """The search folder's lock (fit's :class:`~nin_keras.rundir.RunLock`), held by the chief: a second search
    started in the same folder is refused in one line. Distributed-tuning workers share the folder with
    their chief and take no lock."""
    if not distribute_is_tuning_chief():
        yield
        return
    lock = rundir.RunLock(args.output_dir, label=_folder(args)).acquire()
    try:
        yield
    except ConfigError:
        lock.release(remove=True)  # a refused folder (another search, the user's files) keeps nothing of ours
        raise
    finally:
        lock.release()


def _search_and_write(args, base, strategy, print_fn):
    """:func:`run_search`'s stages once the search folder is checked (and, on the chief, locked)."""
    from tuning.hypermodel import NinHyperModel

    splits = _search_data(args, base, print_fn)
    hypermodel = NinHyperModel(base, len(splits.x_train), len(splits.class_names), splits.input_shape,
                               trial_epochs=args.epochs)
    tuner = make_tuner(args, hypermodel, strategy)
    try:
        _search(args, base, tuner, splits, print_fn)
    except KeyboardInterrupt:
        _results_so_far(args, tuner, hypermodel, print_fn)
        if tuner.signals.received is None:
            raise
        # The command exits 128 + the signal, as fit's does (130 for Ctrl-C, 143 for SIGTERM).
        print(f"interrupted by {signal.Signals(tuner.signals.received).name}", file=sys.stderr)
        raise Stopped(tuner.signals.received) from None
    if not distribute_is_tuning_chief():
        print_fn(f"worker {os.environ.get('KERASTUNER_TUNER_ID')}: search finished; the chief writes the results")
        return None
    return write_results(args, tuner, hypermodel, print_fn)


def _search_data(args, base, print_fn):
    """The data the trials see; an image folder's split is kept in the search folder, so a resumed search
    tunes on the same images."""
    from nin_keras.data import load_data

    kwargs = config_lib.model_kwargs(base)
    split_file = os.path.join(args.output_dir, "split.json")
    splits = load_data(data_dir=base.data_dir, image_dir=base.image_dir, tfds_name=base.tfds,
                       val_fraction=base.val_fraction, seed=base.seed, limit=args.limit,
                       test_limit=base.test_limit, image_size=kwargs["input_shape"][:2],
                       channels=kwargs["input_shape"][2],
                       split_file=None if args.overwrite else split_file, skip_bad_images=base.skip_bad_images,
                       resize=base.resize, print_fn=print_fn, max_image_pixels=base.max_image_pixels)
    if distribute_is_tuning_chief() and splits.split_record is not None:
        from nin_keras.data.folders import write_split

        write_split(split_file, splits.split_record)
    return splits


def _search(args, base, tuner, splits, print_fn):
    """``tuner.search`` with early stopping and TensorBoard, in the base config's precision."""
    import keras

    from tuning.hypermodel import BATCH_SIZES

    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=args.patience, restore_best_weights=True),
        keras.callbacks.TensorBoard(os.path.join(args.output_dir, "tensorboard")),
    ]
    # best_config.json keeps the unresolved choice ("auto"), so a retrain on
    # another machine picks its own precision.
    precision = resolve_precision(base.precision)
    print_fn(f"tuning: {args.tuner} search over preset {args.preset!r}, {len(splits.x_train)} train / "
             f"{len(splits.x_val)} val examples, {args.epochs} epoch(s) per trial, {precision}, in {args.output_dir}")
    if len(splits.x_train) < min(BATCH_SIZES):  # trials differ in batch_size in name only
        from nin_keras.data import fitting_batch_size

        print_fn(f"note: {len(splits.x_train)} training examples are fewer than every batch_size choice "
                 f"({', '.join(map(str, BATCH_SIZES))}): each trial trains with a batch of "
                 f"{fitting_batch_size(min(BATCH_SIZES), len(splits.x_train))}")
    fit_kwargs = {} if args.tuner == "hyperband" else {"epochs": args.epochs}
    # A distributed chief only serves the oracle (keras-tuner sleeps in a loop): there a signal must act at once.
    signals = contextlib.nullcontext(tuner.signals) if _serves_oracle() else SignalStop()
    try:
        with precision_scope(precision), signals as tuner.signals:
            tuner.search((splits.x_train, splits.y_train), validation_data=(splits.x_val, splits.y_val),
                         callbacks=callbacks, verbose=args.verbose, **fit_kwargs)
    except budget.BudgetSpent as e:
        print_fn(f"time budget: {e}, so no more trials start (a larger --time-budget goes on, if trials are left)")
    tuner.signals.check()  # one that came after the last trial's last batch still stops (no --retrain-best)


def _serves_oracle():
    return is_distributed_tuning() and distribute_is_tuning_chief()


def _results_so_far(args, tuner, hypermodel, print_fn):
    """After Ctrl-C (or SIGTERM): write the finished trials' results, so a stopped search still has a best.

    Not in distributed tuning: a worker leaves results to the chief, and the chief's oracle is still being
    updated by its server threads.
    """
    if is_distributed_tuning():
        return
    try:
        write_results(args, tuner, hypermodel, print_fn)
    except NinError as e:
        print_fn(f"search stopped: {e}")
        return
    finished = sum(row["val_accuracy"] is not None for row in trial_rows(tuner))
    print_fn(f"search stopped after {finished} finished trial(s); results so far written; "
             "rerun the same command to go on")


def write_results(args, tuner, hypermodel, print_fn=print):
    """trials.json, best_hparams.json and best_config.json (the best trial's values checked against the
    search space first); returns the best config's path."""
    rows = trial_rows(tuner)
    done = [r for r in rows if r["val_accuracy"] is not None]
    if not done:
        raise NinError("no trial finished; nothing to report")
    best = max(done, key=lambda r: r["val_accuracy"])
    best_values = {k: v for k, v in best["hyperparameters"].items() if not k.startswith("tuner/")}
    # Trial values come from trial files and, in distributed tuning, from peers on an unauthenticated port.
    hypermodel.check_in_space(best_values, f"trial {best['trial']} in {args.output_dir}")
    best_cfg = hypermodel.config_for(best_values)
    # Retraining uses the full training set and the preset's epochs.
    best_cfg.limit = None
    best_cfg.output_dir = None
    atomic_write_text(os.path.join(args.output_dir, "trials.json"), json.dumps(rows, indent=2, default=str) + "\n")
    atomic_write_text(os.path.join(args.output_dir, "best_hparams.json"),
                      json.dumps({"trial": best["trial"], "val_accuracy": best["val_accuracy"],
                                  "hyperparameters": best_values}, indent=2) + "\n")
    best_config_path = os.path.join(args.output_dir, "best_config.json")
    keep = {k: v for k, v in best_cfg.to_dict().items() if v is not None}
    atomic_write_text(best_config_path, json.dumps(keep, indent=2, sort_keys=True) + "\n")
    print_fn(format_rows(rows))
    print_fn(f"best: trial {best['trial']} val acc {best['val_accuracy']:.4f}; config in {best_config_path}")
    print_fn(f"retrain it with: python -m nin_keras.fit --config {best_config_path}")
    return best_config_path


def tune(preset="fashion", print_fn=print, **settings):
    """Run a search from Python, as ``python -m tuning`` would with the same flags.

    ``settings`` are the CLI's flags by their Python names (``max_trials=4``,
    ``limit=2000``, ``output_dir=...``); the rest take the CLI's defaults.
    Returns the path of ``best_config.json`` (None on a keras-tuner worker).
    """
    from nin_keras.cli import namespace_from_kwargs

    return run_search(namespace_from_kwargs(build_parser(), preset=preset, **settings), print_fn=print_fn)


def main(argv=None):
    """CLI entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)

    def body():
        best_config = run_search(args)
        if best_config and args.retrain_best:
            from nin_keras.fit import train

            train(config_lib.resolve_config({}, best_config))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
