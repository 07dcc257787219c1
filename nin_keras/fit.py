"""Train NiN with ``model.fit`` under a tf.distribute strategy.

Entry point: ``python -m nin_keras.fit [flags]`` (or ``nin-fit``). Flags
default to None so only what the user passes overrides the preset; the
resolved config, model, history, metrics, labels, TensorBoard logs and a
plot are written into the run directory.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time

from nin_keras import config as config_lib
from nin_keras import precise_bn, rundir, settings
from nin_keras.cli import OneLineParser, add_data_flags, check_backend, run_cli
from nin_keras.errors import ClusterError, ConfigError, Stopped, TrainingDiverged
from nin_keras.io import atomic_path, atomic_write_text
from nin_keras.precision import precision_scope, resolve_precision
from nin_keras.presets import describe_presets
from nin_keras.rundir import RUN_FILES, default_output_dir, read_finished_metrics  # noqa: F401  (public here too)

def build_parser():
    """The ``nin_keras.fit`` command-line parser (every flag defaults to None)."""
    parser = OneLineParser(
        prog="python -m nin_keras.fit",
        description="Train a Network-in-Network classifier (default: Fashion-MNIST, preset 'fashion').",
        epilog="presets:\n" + describe_presets(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="JSON file of settings (same names as the flags, with underscores)")
    # Every training setting's flag comes from the one schema (nin_keras.settings).
    settings.add_flags(parser, [n for n in settings.flag_names() if n not in settings.DATA_FLAGS])
    add_data_flags(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --output-dir even if settings changed")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace the nin_keras run in --output-dir (its files come back if the new run fails)")
    return parser


def overrides_from_args(args):
    """The settings the user passed (None for the rest)."""
    skip = {"config", "resume", "overwrite"}
    return {k: v for k, v in vars(args).items() if k not in skip}


# ------------------------------------------------------------------ run folder


def prepare_run_dir(cfg, resume=False, overwrite=False, print_fn=print):
    """Decide what to do with the run folder; refuse one that is not a nin_keras run or holds a different run.

    Call with the folder's :class:`~nin_keras.rundir.RunLock` held. Returns
    ("new" | "resume" | "done" | "replace", path). Rerunning the same
    settings on an unfinished run resumes it (rebuilding the network its
    ``config.json`` records); a finished one is reported as done. "replace"
    (``--overwrite`` on a nin_keras run) moves nothing yet: the old run is
    set aside once the new run's data and model are known good.
    """
    run_dir = cfg.output_dir
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"--output-dir {run_dir}: exists and is not a directory")
    rundir.recover_interrupted_replacement(run_dir, print_fn)
    saved, version = rundir.read_run_config(run_dir)
    if saved is None:
        if rundir.folder_entries(run_dir):
            # Never touch what we did not write: `--output-dir . --overwrite` must not empty the folder.
            action = ("--overwrite refuses to replace" if overwrite else "--resume refuses to adopt" if resume
                      else "--output-dir: not empty and no run to continue in")
            raise rundir.not_a_run(run_dir, action)
        return "new", rundir.check_writable(run_dir)
    if overwrite:
        return "replace", rundir.check_writable(run_dir)
    finished = os.path.exists(os.path.join(run_dir, rundir.RUN_FILES["metrics"]))
    if version == 0 and not finished:
        raise ConfigError(f"--output-dir {run_dir} holds an unfinished run of an older nin_keras that did not record "
                          "its network, so it cannot be resumed exactly; pass --overwrite to replace it or choose "
                          "another --output-dir")
    diff = config_lib.config_differences(saved, cfg)
    if diff and not resume:
        raise ConfigError(
            f"--output-dir {run_dir} holds a different run (settings differ: {', '.join(diff)}); "
            "pass --resume to continue it with the new settings, --overwrite to replace it, or another --output-dir"
        )
    if version and not finished:
        _check_ema_unchanged(saved, cfg, run_dir)
        if "model" in diff:
            print_fn(f"--resume: the network is the one {run_dir} recorded (its weights are saved for it); "
                     "model settings given now are not used")
        # Whatever the preset table says today, the run continues with the network it trained.
        cfg.model = saved["model"]
    return ("done" if finished else "resume"), rundir.check_writable(run_dir)


def _check_ema_unchanged(saved, cfg, run_dir):
    """--resume cannot switch the weight average on or off: the optimizer's saved state (Adam's moments, the
    step count) would no longer match its variables, and Keras would skip restoring it with only a warning."""
    recorded = saved.get("ema", 0.0)
    if bool(recorded) != bool(cfg.ema):
        raise ConfigError(f"--resume: the run in {run_dir} trained with ema={recorded}; switching the weight "
                          "average on or off mid-run would lose the optimizer's state, so keep --ema "
                          f"{recorded} or start another run. Received: ema={cfg.ema}")


def ema_warning(cfg, steps_per_epoch):
    """A warning when ``cfg.ema``'s average would still hold much of the random initial weights at the end.

    Keras' average has no bias correction: it starts at the initial weights, which keep a share of
    momentum ** steps (0.999 over 200 steps: 82%).
    """
    steps = cfg.epochs * steps_per_epoch
    left = cfg.ema ** steps if cfg.ema else 0.0
    if left <= 0.01:
        return None
    suggested = 1 - 5 / steps if steps > 5 else 0.0
    return (f"warning: --ema {cfg.ema} over {steps} steps leaves {left:.0%} of the random initial weights in the "
            f"average this run ends with; use --ema {suggested:.4g} or less, or more epochs")


# -------------------------------------------------------------------- training


def make_optimizer(cfg, steps_per_epoch, adjustable_schedule=None):
    """The optimizer ``cfg`` asks for, with its learning-rate schedule.

    With ``adjustable_schedule`` (a :class:`~nin_keras.schedules.WarmupCosine`
    callback, used by ``--time-budget``) the optimizer gets a plain learning
    rate that the callback sets every step; otherwise the schedule is Keras'
    own ``CosineDecay``.
    """
    import keras

    lr = cfg.learning_rate
    if adjustable_schedule is not None:
        lr = adjustable_schedule.peak
    elif cfg.lr_schedule == "cosine":
        total = max(1, cfg.epochs * steps_per_epoch)
        warmup = int(total * cfg.warmup_fraction)
        # Linear warm-up then cosine decay: lets Adam/SGD take a large peak
        # learning rate without the early divergence NiN (no BatchNorm) is prone to.
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else lr, total - warmup, warmup_target=lr if warmup else None, warmup_steps=warmup
        )
    weight_decay = cfg.weight_decay or None
    # Keras keeps the average in the optimizer (saved with the run's backup) and fit() ends by copying
    # it into the model; precise BN then recomputes the BatchNorm statistics for the averaged weights.
    ema = {"use_ema": True, "ema_momentum": cfg.ema} if cfg.ema else {}
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, weight_decay=weight_decay, **ema)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=weight_decay, **ema)
    return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, **ema)


def make_adjustable_schedule(cfg, steps_per_epoch):
    """A WarmupCosine callback for ``cfg`` (None for a constant learning rate)."""
    from nin_keras.schedules import WarmupCosine

    if cfg.lr_schedule != "cosine":
        return None
    total = max(1, cfg.epochs * steps_per_epoch)
    return WarmupCosine(cfg.learning_rate, total, int(total * cfg.warmup_fraction))


def one_hot_classes(cfg, num_classes):
    """How many classes the datasets one-hot encode their labels into (None: integer labels).

    Keras' sparse cross-entropy has no label smoothing, so a run with label
    smoothing feeds one-hot labels to the built-in CategoricalCrossentropy,
    which keeps saved models free of custom objects.
    """
    return num_classes if cfg.label_smoothing else None


def compile_model(model, cfg, steps_per_epoch, adjustable_schedule=None):
    """Compile with cross-entropy (smoothed with ``cfg.label_smoothing``) and accuracy.

    With ``cfg.fused_batch_norm`` the model's BatchNorm layers run through TensorFlow's fused kernel
    (:mod:`nin_keras.fused_bn`; the saved model is unchanged).
    """
    import keras

    if cfg.fused_batch_norm:
        from nin_keras.fused_bn import fuse_batch_norm

        fuse_batch_norm(model)

    if cfg.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss, accuracy = "sparse_categorical_crossentropy", "accuracy"
    model.compile(
        optimizer=make_optimizer(cfg, steps_per_epoch, adjustable_schedule),
        loss=loss,
        metrics=[accuracy],
        jit_compile=bool(cfg.xla),
    )


@dataclasses.dataclass
class Run:
    """One training job as it moves through :func:`train`'s stages.

    ``run_dir`` is where this process writes: the run folder on the chief, a
    private temporary folder on other workers (only the chief's files are
    kept). ``state`` is the chief's decision, shared by every worker:
    "new", "resume", "done" or "replace" (see :func:`prepare_run_dir`).
    """

    cfg: config_lib.FitConfig
    strategy: object
    chief: bool
    state: str
    run_dir: str
    final_dir: str
    print_fn: object = print
    started: float = 0.0
    finished_metrics: dict = None
    splits: object = None
    model_kwargs: dict = None
    lock: object = None
    aside: str = None
    stopper: object = None
    batch_size: int = None  # the global batch it trains with: cfg.batch_size, or less for a small folder

    @property
    def path(self):
        """The run's files (``RUN_FILES``) inside ``run_dir``."""
        return {k: os.path.join(self.run_dir, v) for k, v in RUN_FILES.items()}


def train(cfg, resume=False, overwrite=False, print_fn=print):
    """Run one training job described by a resolved :class:`FitConfig`.

    Stages: strategy, :func:`open_run` (the run folder's state, agreed by
    every worker; the chief locks the folder), :func:`load_run_data` (agreed
    too), then build, fit and finish in :func:`fit_run`. Returns the metrics
    dict (also written to ``metrics.json``). Raises :class:`NinError`
    subclasses for user-facing problems; under multi-worker training every
    worker raises the same one.
    """
    started = time.monotonic()
    from nin_keras import distribute

    check_backend()
    # The CPU split and strategy must exist before any other TensorFlow work.
    strategy = distribute.make_strategy(cfg.strategy, cfg.cpu_replicas)
    # Resolved before the run-dir check so config.json records what ran and a
    # rerun of the same command matches it.
    cfg.precision = resolve_precision(cfg.precision)
    # A folder this run makes (or the default one, made fresh) goes again if nothing gets written into it.
    created = cfg.output_dir is None or not os.path.exists(cfg.output_dir)
    run = open_run(cfg, strategy, resume, overwrite, print_fn=print_fn, started=started)
    try:
        if run.state == "done":
            return run.finished_metrics
        load_run_data(run)
        with precision_scope(cfg.precision):
            return fit_run(run)
    finally:
        if not run.chief and run.run_dir != run.final_dir:
            # A worker's private folder (never the shared run folder a finished run leaves it pointing at).
            shutil.rmtree(run.run_dir, ignore_errors=True)
        _close_run_dir(run, created)


def _close_run_dir(run, created):
    """Release the folder's lock; a folder this run created and never wrote into goes again."""
    if run.lock is None:
        return
    untouched = rundir.folder_entries(run.final_dir) == []
    run.lock.release(remove=untouched)
    if created and untouched:
        # Refused before anything was written (bad data, say): leave no empty run folder behind.
        with contextlib.suppress(OSError):
            os.rmdir(run.final_dir)


def _check_strategy_settings(cfg, strategy):
    from nin_keras import distribute

    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ConfigError(
            f"global batch size {cfg.batch_size} is not divisible by the {replicas} replicas; "
            f"use a multiple of {replicas}. Received: batch_size={cfg.batch_size}"
        )
    if cfg.time_budget and distribute.is_multi_worker(strategy):
        # Each worker would time its own first epoch and could stop after a
        # different count, leaving the others waiting in a collective.
        raise ConfigError("--time-budget is not supported with multi-worker training; give --epochs. "
                          f"Received: time_budget={cfg.time_budget}")


def open_run(cfg, strategy, resume, overwrite, *, print_fn=print, started=0.0):
    """Decide the run folder's state on the chief and share it with every worker.

    This is the first agreement point: no worker has built a model or touched
    a collective yet, so a finished run, a refused folder or a bad setting
    ends every worker the same way (the finished run's metrics, or the same
    one-line error) instead of leaving the others hanging.
    """
    from nin_keras import distribute

    chief = distribute.is_chief(strategy)

    lock = None

    def decide():
        nonlocal lock
        _check_strategy_settings(cfg, strategy)
        if not chief:
            return None
        # Checked before the default folder is made under runs/.
        rundir.check_outside_image_dir(cfg.image_dir, cfg.output_dir or rundir.RUNS_ROOT,
                                       given=cfg.output_dir is not None)
        if cfg.output_dir is None:
            cfg.output_dir = default_output_dir(cfg.preset)
        # Before anything is read or written: a second process on this folder stops here.
        lock = _lock_unless_only_reading(cfg, resume, overwrite)
        try:
            state, run_dir = prepare_run_dir(cfg, resume, overwrite, print_fn)
            metrics = read_finished_metrics(run_dir) if state == "done" else None
        except BaseException:
            if lock is not None:
                lock.release(remove=True)
            raise
        if lock is None and state != "done":  # unlocked only to report a finished run
            raise rundir.LockUnavailable(f"--output-dir {cfg.output_dir}: cannot write (it is read-only here)")
        return {"state": state, "run_dir": run_dir, "metrics": metrics, "model": cfg.model}

    decision, shared = distribute.agree(strategy, decide, share=lambda d: d)
    if not chief:
        decision = shared[0]
        # The chief may have chosen the default folder, and a resumed run's recorded network:
        # every worker names the same folder and builds the same model.
        cfg.output_dir, cfg.model = decision["run_dir"], decision["model"]
    run = Run(cfg, strategy, chief, decision["state"], decision["run_dir"], decision["run_dir"], print_fn, started,
              finished_metrics=decision["metrics"], lock=lock)
    if run.state == "done":
        print_fn(f"{run.final_dir} already holds this finished run (test acc "
                 f"{run.finished_metrics['test_accuracy']:.3f}); pass --overwrite to train it again.")
    elif not chief:
        # Non-chief workers must save too (they take part in collectives), but somewhere private.
        import tempfile

        run.run_dir = tempfile.mkdtemp(prefix="nin_keras-worker-")
    return run


def _lock_unless_only_reading(cfg, resume, overwrite):
    """The run folder's lock; None for a finished run in a folder this process may not write (a copy on a
    read-only share), which a plain rerun only reports."""
    try:
        return rundir.RunLock(cfg.output_dir).acquire()
    except rundir.LockUnavailable:
        finished = os.path.exists(os.path.join(cfg.output_dir, RUN_FILES["metrics"]))
        if resume or overwrite or not finished:
            raise
        return None


def load_run_data(run):
    """Load and check the data on every worker (the second agreement point).

    A non-chief worker resuming a run also copies the chief's training backup
    into its private folder here, so every worker restores the same epoch;
    that needs the run folder on storage all workers see.
    """
    from nin_keras import distribute
    from nin_keras.data import fitting_batch_size, load_data

    cfg = run.cfg

    def load():
        kwargs = config_lib.model_kwargs(cfg)
        # A resumed run reads its split back (nothing is re-split); a new one writes it with config.json.
        split_file = os.path.join(run.final_dir, RUN_FILES["split"]) if run.state == "resume" else None
        splits = load_data(data_dir=cfg.data_dir, image_dir=cfg.image_dir, tfds_name=cfg.tfds,
                           val_fraction=cfg.val_fraction, seed=cfg.seed, limit=cfg.limit,
                           test_limit=cfg.test_limit, image_size=kwargs["input_shape"][:2],
                           channels=kwargs["input_shape"][2],
                           split_file=split_file, skip_bad_images=cfg.skip_bad_images, resize=cfg.resize,
                           print_fn=run.print_fn, max_image_pixels=cfg.max_image_pixels)
        kwargs = config_lib.model_kwargs(cfg, len(splits.class_names), splits.input_shape)
        if not run.chief and run.state == "resume":
            _copy_chief_backup(run)
        return splits, kwargs

    (run.splits, run.model_kwargs), _ = distribute.agree(run.strategy, load)
    # The same on every worker: the split is.
    run.batch_size = fitting_batch_size(cfg.batch_size, len(run.splits.x_train), run.strategy.num_replicas_in_sync)


def _copy_chief_backup(run):
    chief_backup = os.path.join(run.final_dir, RUN_FILES["backup"])
    if not os.path.isfile(os.path.join(run.final_dir, RUN_FILES["config"])):
        raise ConfigError(f"cannot see the run folder {run.final_dir} that the chief resumes: resuming a "
                          "multi-worker run needs --output-dir on storage every worker shares (same path)")
    if os.path.isdir(chief_backup):
        shutil.copytree(chief_backup, run.path["backup"])


def fit_run(run):
    """Build and compile the model under the strategy, ``model.fit`` it, then evaluate and save.

    Stages: :func:`make_datasets`, :func:`build_model`, :func:`start_writing`
    (where a replaced run is set aside and the recipe recorded),
    :func:`train_and_finish`. A replaced run comes back if the new one fails
    in any way before its metrics are written.
    """
    import keras

    keras.utils.set_random_seed(run.cfg.seed)
    datasets = make_datasets(run)
    schedule = make_adjustable_schedule(run.cfg, datasets.steps_per_epoch) if run.cfg.time_budget else None
    model = build_model(run, datasets.steps_per_epoch, schedule)
    warning = ema_warning(run.cfg, datasets.steps_per_epoch)
    if warning:
        run.print_fn(warning)
    try:
        # Inside: a failure writing the recipe (a full disk, Ctrl-C) also gives a replaced run back.
        start_writing(run, model)
        metrics, per_class = train_and_finish(run, model, datasets, schedule)
    except TrainingDiverged as e:
        raise TrainingDiverged(f"{e}{_after_failure(run)}") from None
    except BaseException:
        restored = _after_failure(run)
        if restored:
            run.print_fn(restored.lstrip("; "))
        raise
    if run.aside:
        rundir.discard(run.aside)
    _print_summary(run, metrics, per_class)
    return metrics


def _after_failure(run):
    """Undo a replacement after a failed run; returns what to tell the user ('' if nothing was replaced)."""
    if not (run.chief and run.aside):
        return ""
    rundir.restore(run.final_dir, run.aside)
    return f"; the previous run in {run.final_dir} is restored"


@dataclasses.dataclass
class Datasets:
    """The tf.data pipelines of a run and the number of training steps per epoch."""

    train: object
    val: object
    test: object
    steps_per_epoch: int


def make_datasets(run):
    """The run's training (shuffled, augmented), validation and test pipelines."""
    import tensorflow as tf

    from nin_keras import distribute
    from nin_keras.data import make_dataset, make_train_dataset

    cfg, splits = run.cfg, run.splits
    shard = tf.data.experimental.AutoShardPolicy.DATA if distribute.is_multi_worker(run.strategy) else None
    one_hot = one_hot_classes(cfg, len(splits.class_names))
    train_ds, steps_per_epoch = make_train_dataset(splits.x_train, splits.y_train, run.batch_size, seed=cfg.seed,
                                                   shard_policy=shard,
                                                   augment=cfg.augment, augment_shift=cfg.augment_shift,
                                                   random_erasing=cfg.random_erasing, one_hot_classes=one_hot)
    val_ds = make_dataset(splits.x_val, splits.y_val, run.batch_size, shard_policy=shard, one_hot_classes=one_hot)
    test_ds = make_dataset(splits.x_test, splits.y_test, run.batch_size, shard_policy=shard, one_hot_classes=one_hot)
    return Datasets(train_ds, val_ds, test_ds, steps_per_epoch)


def build_model(run, steps_per_epoch, schedule=None):
    """The run's network, built and compiled inside the strategy's scope."""
    from nin_keras.model import build_nin

    with run.strategy.scope():
        model = build_nin(**run.model_kwargs)
        if run.cfg.whiten_stem:
            _whiten_stem(run, model)
        compile_model(model, run.cfg, steps_per_epoch, schedule)
    return model


def _whiten_stem(run, model):
    """--whiten-stem (in-memory data only: settings.validate): the stem from the first training images'
    patches, the same on a resume, frozen."""
    from nin_keras.whitening import DEFAULT_IMAGES, whiten_stem

    whiten_stem(model, run.splits.x_train[:DEFAULT_IMAGES])


def start_writing(run, model):
    """On the chief, once data and model are known good: set a replaced run aside, write split.json and
    config.json (the whole recipe), and say what runs."""
    from nin_keras import distribute

    cfg, splits, path = run.cfg, run.splits, run.path
    if run.chief:
        if run.state == "replace":
            run.aside = rundir.set_aside(run.run_dir)
            run.print_fn(f"--overwrite: the previous run is set aside in {run.aside} and comes back if this run "
                         "fails; it is deleted once this run has finished")
        # Written only now, so a typo in a flag does not leave a "different run" behind in the folder.
        if splits.split_record is not None and not os.path.exists(path["split"]):
            from nin_keras.data.folders import write_split

            write_split(path["split"], splits.split_record)
        config_lib.save_config(cfg, path["config"], run.model_kwargs)
    run.print_fn(f"nin_keras: preset {cfg.preset}, {model.count_params():,} parameters, {cfg.precision}, "
                 f"{run.strategy.num_replicas_in_sync} replica(s) ({distribute.describe(run.strategy)}), "
                 f"global batch {run.batch_size}{_lowered_batch(run)}")
    run.print_fn(f"data: {splits.source}: {len(splits.x_train)} train, {len(splits.x_val)} val, "
                 f"{len(splits.x_test)} test")
    if run.state == "resume":
        run.print_fn(f"resuming the run in {run.final_dir}")


def _lowered_batch(run):
    """Why the run's batch is not the one asked for ('' when it is)."""
    if run.batch_size == run.cfg.batch_size:
        return ""
    return (f" (a batch of {run.cfg.batch_size} is more than the {len(run.splits.x_train)} training examples; "
            "--batch-size sets another)")


def make_callbacks(run, steps_per_epoch, schedule=None):
    """The run's callbacks: history, backup, best model, TensorBoard, NaN stop, throughput, signals, budget."""
    import keras

    from nin_keras.callbacks import (AtomicModelCheckpoint, FiniteBackupAndRestore, HistoryCSV, StopOnSignal,
                                     TimeBudget, TrainThroughput)

    path = run.path
    run.stopper = StopOnSignal()
    callbacks = [
        # History first: an epoch's row is written before its backup (see HistoryCSV).
        HistoryCSV(path["history"]),
        precise_bn.before_validation(run.splits.x_train, run.splits.y_train, run.batch_size,
                                     replicas=run.strategy.num_replicas_in_sync, seed=run.cfg.seed),
        # The best model before the backup: an epoch whose best.keras could not be written (a full disk)
        # has no backup either, so the rerun trains it again and saves it, instead of finding it done.
        AtomicModelCheckpoint(path["best"], monitor="val_accuracy", mode="max", save_best_only=True,
                              history_path=path["history"]),
        # The backup outlives fit(): it is deleted only once metrics.json is
        # written, so a kill during the test evaluation or the saving reruns
        # into a finished training instead of epoch 1. It never keeps NaN weights.
        FiniteBackupAndRestore(path["backup"], double_checkpoint=True, delete_checkpoint=False),
        keras.callbacks.TensorBoard(path["logs"]),
        keras.callbacks.TerminateOnNaN(),
        TrainThroughput(),
        run.stopper,
    ]
    if run.cfg.time_budget:
        # The schedule first: TimeBudget shortens it once epoch 1 is timed.
        if schedule is not None:
            callbacks.append(schedule)
        callbacks.append(TimeBudget(run.cfg.time_budget, run.started, steps_per_epoch, run.cfg.epochs, schedule=schedule,
                                    print_fn=run.print_fn))
    return callbacks


def train_and_finish(run, model, datasets, schedule=None):
    """``model.fit`` with the run's callbacks, then :func:`_finish`; returns (metrics, per-class report).

    A signal raises :class:`~nin_keras.errors.Stopped` (a KeyboardInterrupt; the command exits 128 +
    signal) with the last finished epoch saved; a lost worker of a multi-worker cluster is a one-line ClusterError.
    """
    import tensorflow as tf

    from nin_keras import distribute
    from nin_keras.callbacks import HistoryCSV, Interrupted, TrainThroughput

    cfg = run.cfg
    callbacks = make_callbacks(run, datasets.steps_per_epoch, schedule)
    history = next(c for c in callbacks if isinstance(c, HistoryCSV))
    throughput = next(c for c in callbacks if isinstance(c, TrainThroughput))
    try:
        # shuffle=False: the tf.data pipeline already shuffles (seeded).
        verbose = cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 2)
        model.fit(datasets.train, epochs=cfg.epochs, validation_data=datasets.val, callbacks=callbacks,
                  verbose=verbose, shuffle=False)
        return _finish(run, model, datasets, history.rows, throughput)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as e:
        if not distribute.is_multi_worker(run.strategy):
            raise
        # A worker was killed or lost: the collectives were aborted. Every
        # worker's restart resumes from the chief's last saved epoch.
        raise ClusterError(f"{distribute.cluster_failure(e)} from the last finished epoch "
                           f"(saved in {os.path.join(run.final_dir, RUN_FILES['backup'])})") from None
    except Interrupted as e:
        where = _what_an_interrupt_kept(run)
        run.aside = None
        run.print_fn(f"\ninterrupted by {e}: {where}")
        raise Stopped(e.signum) from None
    finally:
        run.stopper.restore()


def _what_an_interrupt_kept(run):
    """What the "interrupted by ..." line says: a replaced run restored, the last finished epoch, or none."""
    restored = _after_failure(run)
    if restored:
        return f"the new run is abandoned{restored}"
    command = f"python -m nin_keras.fit --output-dir {run.final_dir} (same settings)"
    if os.path.exists(os.path.join(run.path["backup"], "training_metadata.json")):
        return f"the last finished epoch is saved in {run.path['backup']}; resume with: {command}"
    return f"no epoch had finished, so none is saved; start it again with: {command}"


def _divergence(run, history):
    """The one-line TrainingDiverged for a history whose loss became NaN/inf, or None."""
    from nin_keras.callbacks import first_non_finite

    bad_epoch = first_non_finite(history)
    if bad_epoch is None:
        return None
    cfg, path = run.cfg, run.path
    message = (f"training diverged: the loss became NaN/inf in epoch {bad_epoch} "
               f"(learning rate {cfg.learning_rate} may be too high)")
    if not run.aside:
        kept = f"the best model so far is kept in {path['best']}; " if os.path.exists(path["best"]) else ""
        saved = (f"epochs 1-{bad_epoch - 1} are saved; " if bad_epoch > 1 else "")
        message += (f"; {kept}{saved}continue with a lower learning rate: python -m nin_keras.fit "
                    f"--output-dir {run.final_dir} --resume --learning-rate {cfg.learning_rate / 10:g}")
    return TrainingDiverged(message)


def evaluate_test(run, model, test_ds):
    """Test loss, accuracy and (single machine) the per-class report, in one pass."""
    from nin_keras import distribute

    if distribute.is_multi_worker(run.strategy):
        # Sharded across workers: only evaluate() combines their results.
        test_loss, test_acc = model.evaluate(test_ds, verbose=0, callbacks=[run.stopper])
        return float(test_loss), float(test_acc), None
    import keras

    from nin_keras.per_class import per_class_report

    splits = run.splits
    probs = model.predict(test_ds, verbose=0, callbacks=[run.stopper])
    test_loss = float(keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(
        splits.y_test, probs)).mean())
    per_class = per_class_report(splits.y_test, probs.argmax(axis=1), splits.class_names)
    return test_loss, float(per_class["accuracy"]), per_class


def _finish(run, model, datasets, history, throughput):
    """After fit: divergence check, test evaluation, per-class results, model/labels/plot/metrics files.

    Returns (metrics, per-class report or None). Signals still stop the run
    here (``stopper.check``), between whole files, and the training backup
    still exists, so a rerun finishes these steps without training again.
    """
    cfg, strategy, splits, path, stopper = run.cfg, run.strategy, run.splits, run.path, run.stopper
    diverged = _divergence(run, history)
    if diverged is not None:
        raise diverged
    with strategy.scope():  # BatchNorm's moving statistics from training images, before anything is evaluated or saved
        precise = precise_bn.recalibrate_on_training_images(model, splits.x_train, splits.y_train, run.batch_size,
                                                            replicas=strategy.num_replicas_in_sync, seed=cfg.seed)
    test_loss, test_acc, per_class = evaluate_test(run, model, datasets.test)
    last = history[-1] if history else {}
    # The saved model's own validation accuracy, like the test's: the last epoch was validated with
    # BatchNorm statistics from fewer images (precise_bn.VALIDATION_IMAGES) and, under --ema, raw weights.
    val_acc = float(model.evaluate(datasets.val, verbose=0, callbacks=[stopper])[1]) if history else None
    metrics = {
        "preset": cfg.preset,
        "parameters": int(model.count_params()),
        "epochs": len(history),
        "train_loss": last.get("loss"),
        "train_accuracy": last.get("accuracy"),
        "val_accuracy": val_acc,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "test_examples": int(len(splits.x_test)),
        # Full batches only: the pipeline drops the last partial one. None
        # when this process trained no epoch (a rerun that only finished up).
        "examples_per_sec": (datasets.steps_per_epoch * run.batch_size * throughput.epochs / throughput.seconds)
        if throughput.seconds else None,
        "replicas": int(strategy.num_replicas_in_sync),
        "batch_size": int(run.batch_size),  # the global batch trained with (less than asked for a small folder)
        "precise_bn": precise,
    }
    stopper.check()
    # Every worker must take part in saving (collectives); only the chief's files are kept.
    with atomic_path(path["model"]) as tmp:
        model.save(tmp)
    if run.chief:
        _write_results(run, history, metrics, per_class)
    return metrics, per_class


def _write_results(run, history, metrics, per_class):
    """The chief's result files; ``metrics.json`` last, since its presence marks the run finished."""
    from nin_keras.plotting import plot_history

    cfg, path, stopper = run.cfg, run.path, run.stopper
    stopper.check()
    atomic_write_text(path["labels"], "\n".join(run.splits.class_names) + "\n")
    if per_class is not None:
        from nin_keras.per_class import plot_confusion

        atomic_write_text(path["per_class"], json.dumps(per_class, indent=2) + "\n")
        plot_confusion(per_class, path["confusion"], title=f"NiN ({cfg.preset}) on the test set")
    plot_history(history, path["plot"], test_accuracy=metrics["test_accuracy"], title=f"NiN ({cfg.preset})")
    stopper.check()
    atomic_write_text(path["metrics"], json.dumps(metrics, indent=2) + "\n")
    # The backup is kept until now so a crash above reruns into a finished training.
    shutil.rmtree(path["backup"], ignore_errors=True)


def _print_summary(run, metrics, per_class):
    """The seeds' one-line summary (loss, train acc, test acc, throughput), then where the run is."""
    eps = metrics["examples_per_sec"]
    speed = f"{eps:.1f} examples/sec" if eps else "examples/sec n/a"
    run.print_fn(f"loss {metrics['train_loss']:.3f}, train acc {metrics['train_accuracy']:.3f}, "
                 f"test acc {metrics['test_accuracy']:.3f}, {speed} on {run.strategy.num_replicas_in_sync} replica(s)")
    if run.chief:
        if per_class is not None:
            from nin_keras.per_class import summary_line

            run.print_fn(summary_line(per_class))
        run.print_fn(f"run saved in {run.final_dir}")

def _check_image_dir_early(cfg):
    """A mistyped ``--image-dir``: one line before TensorFlow loads (seconds, not the import's 5-7).

    Not where the folder need not exist (a finished run is reported as done without its photos, e.g. on a
    read-only share) nor on a cluster, where every worker must stop with the same line (:func:`load_run_data`).
    """
    if cfg.image_dir is None or os.environ.get("TF_CONFIG"):
        return
    if cfg.output_dir and os.path.exists(os.path.join(cfg.output_dir, RUN_FILES["metrics"])):
        return
    from nin_keras.data.folders import check_image_dir

    check_image_dir(cfg.image_dir)


def main(argv=None):
    """CLI entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)

    def body():
        cfg = config_lib.resolve_config(overrides_from_args(args), args.config)
        _check_image_dir_early(cfg)
        train(cfg, resume=args.resume, overwrite=args.overwrite)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
