"""Train NiN with ``model.fit`` under a tf.distribute strategy.

Entry point: ``python -m nin_keras.fit [flags]`` (or ``nin-fit``). Flags
default to None so only what the user passes overrides the preset; the
resolved config, model, history, metrics, labels, TensorBoard logs and a
plot are written into the run directory.
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

from nin_keras import config as config_lib
from nin_keras import precise_bn, settings
from nin_keras.cli import OneLineParser, add_data_flags, run_cli
from nin_keras.errors import ClusterError, ConfigError, TrainingDiverged
from nin_keras.io import atomic_path, atomic_write_text, read_json_object
from nin_keras.precision import precision_scope, resolve_precision
from nin_keras.presets import describe_presets

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
}


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
    mode.add_argument("--overwrite", action="store_true", help="delete what --output-dir holds and start afresh")
    return parser


def overrides_from_args(args):
    """The settings the user passed (None for the rest)."""
    skip = {"config", "resume", "overwrite"}
    return {k: v for k, v in vars(args).items() if k not in skip}


# ------------------------------------------------------------------ run folder


def prepare_run_dir(cfg, resume=False, overwrite=False):
    """Check the run directory; refuse one that holds a different run or files that are not a run.

    Returns ("new" | "resume" | "done" | "replace", path). Rerunning the same
    settings on an unfinished run resumes it; a finished one is reported as
    done. "replace" (``--overwrite`` on a folder holding a nin_keras run)
    deletes nothing yet: :func:`replace_old_run` moves the old run aside once
    the new run's data and model are known good.
    """
    run_dir = cfg.output_dir
    config_path = os.path.join(run_dir, RUN_FILES["config"])
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"--output-dir {run_dir}: exists and is not a directory")
    holds_files = os.path.isdir(run_dir) and bool(os.listdir(run_dir))
    if overwrite and holds_files:
        if not os.path.isfile(config_path):
            # Never delete what we did not write: `--output-dir . --overwrite` must not empty the folder.
            raise ConfigError(f"--overwrite refuses to replace {run_dir}: it holds files but no nin_keras run "
                              f"(no {RUN_FILES['config']}); choose an empty or new --output-dir")
        return "replace", _check_writable(run_dir)
    state = "new"
    if os.path.exists(config_path):
        saved = read_json_object(config_path, "run config", "; use --overwrite to start afresh")
        diff = config_lib.config_differences(saved, cfg.to_dict())
        if diff and not resume:
            raise ConfigError(
                f"--output-dir {run_dir} holds a different run (settings differ: {', '.join(diff)}); "
                "pass --resume to continue it with the new settings, --overwrite to replace it, or another --output-dir"
            )
        state = "done" if os.path.exists(os.path.join(run_dir, RUN_FILES["metrics"])) else "resume"
    elif holds_files and not resume:
        raise ConfigError(f"--output-dir {run_dir}: not empty and holds no nin_keras run; choose another folder or --overwrite")
    return state, _check_writable(run_dir)


def _check_writable(run_dir):
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--output-dir {run_dir}: cannot write ({e.strerror or e})") from None
    return run_dir


def replace_old_run(run_dir):
    """Move the run in ``run_dir`` aside (``<run_dir>.replaced-<time>``) and recreate ``run_dir`` empty.

    Returns the aside path; the caller deletes it once the new run has
    finished its first epoch, so a new run that fails early loses nothing.
    """
    aside = f"{run_dir.rstrip(os.sep)}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
        os.rename(run_dir, aside)
        os.makedirs(run_dir)
    except OSError as e:
        raise ConfigError(f"--overwrite: cannot move the old run in {run_dir} aside ({e.strerror or e})") from None
    return aside


def default_output_dir(preset, root="runs"):
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
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, weight_decay=weight_decay)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=weight_decay)
    return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)


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
    """Compile with cross-entropy (smoothed with ``cfg.label_smoothing``) and accuracy."""
    import keras

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

    @property
    def path(self):
        """The run's files (``RUN_FILES``) inside ``run_dir``."""
        return {k: os.path.join(self.run_dir, v) for k, v in RUN_FILES.items()}


def train(cfg, resume=False, overwrite=False, print_fn=print):
    """Run one training job described by a resolved :class:`FitConfig`.

    Stages: strategy, :func:`open_run` (the run folder's state, agreed by
    every worker), :func:`load_run_data` (agreed too), then build, fit and
    finish in :func:`fit_run`. Returns the metrics dict (also written to
    ``metrics.json``). Raises :class:`NinError` subclasses for user-facing
    problems; under multi-worker training every worker raises the same one.
    """
    started = time.monotonic()
    from nin_keras import distribute

    # The CPU split and strategy must exist before any other TensorFlow work.
    strategy = distribute.make_strategy(cfg.strategy, cfg.cpu_replicas)
    # Resolved before the run-dir check so config.json records what ran and a
    # rerun of the same command matches it.
    cfg.precision = resolve_precision(cfg.precision)
    run = open_run(cfg, strategy, resume, overwrite, print_fn, started)
    if run.state == "done":
        return run.finished_metrics
    try:
        load_run_data(run)
        with precision_scope(cfg.precision):
            return fit_run(run)
    finally:
        if not run.chief:
            shutil.rmtree(run.run_dir, ignore_errors=True)


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


def read_finished_metrics(run_dir):
    """The metrics of a finished run, or a one-line error if they cannot be read."""
    metrics_path = os.path.join(run_dir, RUN_FILES["metrics"])
    try:
        with open(metrics_path) as f:
            metrics = json.load(f)
        float(metrics["test_accuracy"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{metrics_path}: unreadable metrics of a finished run ({type(e).__name__}: {e}); "
                          "pass --overwrite to train it again") from None
    return metrics


def open_run(cfg, strategy, resume, overwrite, print_fn=print, started=0.0):
    """Decide the run folder's state on the chief and share it with every worker.

    This is the first agreement point: no worker has built a model or touched
    a collective yet, so a finished run, a refused folder or a bad setting
    ends every worker the same way (the finished run's metrics, or the same
    one-line error) instead of leaving the others hanging.
    """
    from nin_keras import distribute

    chief = distribute.is_chief(strategy)

    def decide():
        _check_strategy_settings(cfg, strategy)
        if not chief:
            return None
        if cfg.output_dir is None:
            cfg.output_dir = default_output_dir(cfg.preset)
        state, run_dir = prepare_run_dir(cfg, resume, overwrite)
        metrics = read_finished_metrics(run_dir) if state == "done" else None
        return {"state": state, "run_dir": run_dir, "metrics": metrics}

    decision, shared = distribute.agree(strategy, decide, share=lambda d: d)
    if not chief:
        decision = shared[0]
        # The chief may have chosen the default folder: every worker names the same one.
        cfg.output_dir = decision["run_dir"]
    run = Run(cfg, strategy, chief, decision["state"], decision["run_dir"], decision["run_dir"], print_fn, started,
              finished_metrics=decision["metrics"])
    if run.state == "done":
        print_fn(f"{run.final_dir} already holds this finished run (test acc "
                 f"{run.finished_metrics['test_accuracy']:.3f}); pass --overwrite to train it again.")
    elif not chief:
        # Non-chief workers must save too (they take part in collectives), but somewhere private.
        import tempfile

        run.run_dir = tempfile.mkdtemp(prefix="nin_keras-worker-")
    return run


def load_run_data(run):
    """Load and check the data on every worker (the second agreement point).

    A non-chief worker resuming a run also copies the chief's training backup
    into its private folder here, so every worker restores the same epoch;
    that needs the run folder on storage all workers see.
    """
    from nin_keras import distribute
    from nin_keras.data import load_data

    cfg = run.cfg

    def load():
        kwargs = config_lib.model_kwargs(cfg)
        # A resumed run reads its split back (nothing is re-split); a new one writes it with config.json.
        split_file = os.path.join(run.final_dir, RUN_FILES["split"]) if run.state == "resume" else None
        splits = load_data(cfg.data_dir, cfg.image_dir, cfg.tfds, cfg.val_fraction, cfg.seed, cfg.limit,
                           cfg.test_limit, image_size=kwargs["input_shape"][:2], channels=kwargs["input_shape"][2],
                           split_file=split_file, skip_bad_images=cfg.skip_bad_images, resize=cfg.resize,
                           print_fn=run.print_fn, max_image_pixels=cfg.max_image_pixels)
        kwargs = config_lib.model_kwargs(cfg, len(splits.class_names), splits.input_shape)
        if not run.chief and run.state == "resume":
            _copy_chief_backup(run)
        return splits, kwargs

    (run.splits, run.model_kwargs), _ = distribute.agree(run.strategy, load)


def _copy_chief_backup(run):
    chief_backup = os.path.join(run.final_dir, RUN_FILES["backup"])
    if not os.path.isfile(os.path.join(run.final_dir, RUN_FILES["config"])):
        raise ConfigError(f"cannot see the run folder {run.final_dir} that the chief resumes: resuming a "
                          "multi-worker run needs --output-dir on storage every worker shares (same path)")
    if os.path.isdir(chief_backup):
        shutil.copytree(chief_backup, run.path["backup"])


def fit_run(run):
    """Build and compile the model under the strategy, ``model.fit`` it, then evaluate and save."""
    import keras

    from nin_keras import distribute
    from nin_keras.callbacks import (AtomicModelCheckpoint, HistoryCSV, Interrupted, StopOnSignal, TimeBudget,
                                     TrainThroughput)
    from nin_keras.data import make_dataset, make_train_dataset
    from nin_keras.model import build_nin

    cfg, strategy, splits, path, print_fn = run.cfg, run.strategy, run.splits, run.path, run.print_fn
    state, chief, run_dir, final_dir = run.state, run.chief, run.run_dir, run.final_dir
    keras.utils.set_random_seed(cfg.seed)

    import tensorflow as tf

    shard = tf.data.experimental.AutoShardPolicy.DATA if distribute.is_multi_worker(strategy) else None
    one_hot = one_hot_classes(cfg, len(splits.class_names))
    train_ds, steps_per_epoch = make_train_dataset(splits.x_train, splits.y_train, cfg.batch_size, cfg.seed, shard,
                                                   augment=cfg.augment, augment_shift=cfg.augment_shift,
                                                   one_hot_classes=one_hot)
    val_ds = make_dataset(splits.x_val, splits.y_val, cfg.batch_size, shard_policy=shard, one_hot_classes=one_hot)
    test_ds = make_dataset(splits.x_test, splits.y_test, cfg.batch_size, shard_policy=shard, one_hot_classes=one_hot)

    schedule = make_adjustable_schedule(cfg, steps_per_epoch) if cfg.time_budget else None
    with strategy.scope():
        model = build_nin(**run.model_kwargs)
        compile_model(model, cfg, steps_per_epoch, schedule)
    aside = None
    if chief:
        if state == "replace":
            # Only now that data and model are good; deleted after the new run's first epoch.
            aside = replace_old_run(run_dir)
            print_fn(f"--overwrite: the previous run is kept in {aside} until this run's first epoch is saved")
        # Written only once the data and model are known good, so a typo in a
        # flag does not leave a "different run" behind in the folder.
        if splits.split_record is not None and not os.path.exists(path["split"]):
            from nin_keras.images import write_split

            write_split(path["split"], splits.split_record)
        config_lib.save_config(cfg, path["config"])

    print_fn(f"nin_keras: preset {cfg.preset}, {model.count_params():,} parameters, {cfg.precision}, "
             f"{strategy.num_replicas_in_sync} replica(s) ({distribute.describe(strategy)}), global batch {cfg.batch_size}")
    print_fn(f"data: {splits.source}: {len(splits.x_train)} train, {len(splits.x_val)} val, {len(splits.x_test)} test")
    if state == "resume":
        print_fn(f"resuming the run in {final_dir}")

    throughput = TrainThroughput()
    history_csv = HistoryCSV(path["history"])
    stopper = StopOnSignal()
    callbacks = [
        # History first: an epoch's row is written before its backup (see HistoryCSV).
        history_csv,
        precise_bn.before_validation(splits.x_train, splits.y_train, cfg.batch_size, strategy.num_replicas_in_sync,
                                     cfg.seed),
        # The backup outlives fit(): it is deleted only once metrics.json is
        # written, so a kill during the test evaluation or the saving reruns
        # into a finished training instead of epoch 1.
        keras.callbacks.BackupAndRestore(path["backup"], double_checkpoint=True, delete_checkpoint=False),
        AtomicModelCheckpoint(path["best"], monitor="val_accuracy", mode="max", save_best_only=True),
        keras.callbacks.TensorBoard(path["logs"]),
        keras.callbacks.TerminateOnNaN(),
        throughput,
        stopper,
    ]
    if aside:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: shutil.rmtree(aside, ignore_errors=True)))
    if cfg.time_budget:
        # The schedule first: TimeBudget shortens it once epoch 1 is timed.
        if schedule is not None:
            callbacks.append(schedule)
        callbacks.append(TimeBudget(cfg.time_budget, run.started, steps_per_epoch, cfg.epochs, schedule, print_fn=print_fn))
    try:
        # shuffle=False: the tf.data pipeline already shuffles (seeded).
        verbose = cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 2)
        model.fit(train_ds, epochs=cfg.epochs, validation_data=val_ds, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
        metrics, per_class = _finish(cfg, model, strategy, splits, test_ds, history_csv.rows, throughput,
                                     steps_per_epoch, path, chief, stopper)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as e:
        if not distribute.is_multi_worker(strategy):
            raise
        # A worker was killed or lost: the collectives were aborted. Every
        # worker's restart resumes from the chief's last saved epoch.
        raise ClusterError(f"{distribute.cluster_failure(e)} from the last finished epoch "
                           f"(saved in {os.path.join(final_dir, RUN_FILES['backup'])})") from None
    except Interrupted as e:
        code = 128 + e.signum
        print_fn(f"\ninterrupted by {e}: the last finished epoch is saved in {path['backup']}; "
                 f"resume with: python -m nin_keras.fit --output-dir {final_dir} (same settings)")
        raise SystemExit(code) from None
    finally:
        stopper.restore()
    if chief:
        shutil.rmtree(path["backup"], ignore_errors=True)
    eps = metrics["examples_per_sec"]
    speed = f"{eps:.1f} examples/sec" if eps else "examples/sec n/a"
    # One line like the seeds': loss, train acc, test acc, throughput.
    print_fn(f"loss {metrics['train_loss']:.3f}, train acc {metrics['train_accuracy']:.3f}, "
             f"test acc {metrics['test_accuracy']:.3f}, {speed} on {strategy.num_replicas_in_sync} replica(s)")
    if chief:
        if per_class is not None:
            from nin_keras.per_class import summary_line

            print_fn(summary_line(per_class))
        print_fn(f"run saved in {final_dir}")
    return metrics


def _finish(cfg, model, strategy, splits, test_ds, history, throughput, steps_per_epoch, path, chief, stopper):
    """After fit: divergence check, test evaluation, per-class results, model/labels/plot/metrics files.

    Returns (metrics, per-class report or None).

    Signals still stop the run here (``stopper.check``), between whole files,
    and the training backup still exists, so a rerun finishes these steps
    without training again.
    """
    from nin_keras import distribute
    from nin_keras.callbacks import first_non_finite
    from nin_keras.plotting import plot_history

    bad_epoch = first_non_finite(history)
    if bad_epoch is not None:
        kept = f"; the best model so far is kept in {path['best']}" if os.path.exists(path["best"]) else ""
        raise TrainingDiverged(
            f"training diverged: the loss became NaN/inf in epoch {bad_epoch} "
            f"(learning rate {cfg.learning_rate} may be too high){kept}"
        )

    with strategy.scope():  # BatchNorm's moving statistics from training images, before anything is evaluated or saved
        precise = precise_bn.recalibrate_on_training_images(model, splits.x_train, splits.y_train, cfg.batch_size,
                                                            strategy.num_replicas_in_sync, cfg.seed)
    per_class = None
    if distribute.is_multi_worker(strategy):
        # Sharded across workers: only evaluate() combines their results.
        test_loss, test_acc = model.evaluate(test_ds, verbose=0, callbacks=[stopper])
    else:
        # One pass gives the loss, the accuracy and the per-class results.
        import keras

        from nin_keras.per_class import per_class_report

        probs = model.predict(test_ds, verbose=0, callbacks=[stopper])
        test_loss = float(keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(
            splits.y_test, probs)).mean())
        per_class = per_class_report(splits.y_test, probs.argmax(axis=1), splits.class_names)
        test_acc = per_class["accuracy"]
    last = history[-1] if history else {}
    metrics = {
        "preset": cfg.preset,
        "parameters": int(model.count_params()),
        "epochs": len(history),
        "train_loss": last.get("loss"),
        "train_accuracy": last.get("accuracy"),
        "val_accuracy": last.get("val_accuracy"),
        "test_loss": float(test_loss),
        "test_accuracy": float(test_acc),
        "test_examples": int(len(splits.x_test)),
        # Full batches only: the pipeline drops the last partial one. None
        # when this process trained no epoch (a rerun that only finished up).
        "examples_per_sec": (steps_per_epoch * cfg.batch_size * throughput.epochs / throughput.seconds)
        if throughput.seconds else None,
        "replicas": int(strategy.num_replicas_in_sync),
        "precise_bn": precise,
    }
    stopper.check()
    # Every worker must take part in saving (collectives); only the chief's files are kept.
    with atomic_path(path["model"]) as tmp:
        model.save(tmp)
    if chief:
        stopper.check()
        atomic_write_text(path["labels"], "\n".join(splits.class_names) + "\n")
        if per_class is not None:
            from nin_keras.per_class import plot_confusion

            atomic_write_text(path["per_class"], json.dumps(per_class, indent=2) + "\n")
            plot_confusion(per_class, path["confusion"], title=f"NiN ({cfg.preset}) on the test set")
        plot_history(history, path["plot"], test_accuracy=metrics["test_accuracy"], title=f"NiN ({cfg.preset})")
        stopper.check()
        # Last: its presence marks the run finished.
        atomic_write_text(path["metrics"], json.dumps(metrics, indent=2) + "\n")
    return metrics, per_class


def main(argv=None):
    """CLI entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)

    def body():
        cfg = config_lib.resolve_config(overrides_from_args(args), args.config)
        train(cfg, resume=args.resume, overwrite=args.overwrite)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
