"""Recipe ablation for a preset: one training per variant and seed, compared on VALIDATION accuracy.

``python scripts/ablation.py OUT [--preset P] [--variants a,b] [--seeds 0,1,2]``
trains a preset (``fashion`` unless ``--preset`` says otherwise) once per
variant and seed (each the preset plus one change, in a fresh
``python -m nin_keras.fit`` process, one after another so they do not share
the cores) and prints a table: validation accuracy, training accuracy and
wall minutes. Test accuracy is written in each run's metrics.json but not
shown: designs are chosen on validation, test is reported once per shipped
configuration (``--test``: the variant with the best validation accuracy's).
Runs are resumable: rerunning skips variants already finished.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

STRIDE2_STEM = {"filters": 32, "kernel_size": 4, "strides": 2, "padding": "valid", "mlp_filters": [32], "pool": None,
                "batch_norm": False}
DEFAULT_STEM = {"filters": 32, "kernel_size": 5, "mlp_filters": [32], "pool": "max", "batch_norm": False}
DEFAULT_BLOCK2 = {"filters": 64, "kernel_size": 3, "pool": "max", "batch_norm": True}

# name -> fit flags, or {"model": build_nin overrides, "flags": [...]} for a change of network.
VARIANTS = {
    "default": [],
    "Keras BatchNorm ops": ["--no-fused-batch-norm"],
    "bfloat16": ["--precision", "bfloat16"],
    "label smoothing 0.1": ["--label-smoothing", "0.1"],
    "flip + 2-pixel shift": ["--augment", "--augment-shift", "2"],
    "AdamW weight decay 0.05": ["--optimizer", "adamw", "--weight-decay", "0.05"],
    "AdamW and label smoothing 0.1": ["--optimizer", "adamw", "--weight-decay", "0.05", "--label-smoothing", "0.1"],
    "11 epochs": ["--epochs", "11"],
    "AdamW 11 epochs": ["--optimizer", "adamw", "--weight-decay", "0.05", "--epochs", "11"],
    # Second round: the airbench-style recipe changes that cost no extra step time.
    "label smoothing 0.2": ["--label-smoothing", "0.2"],
    "flips only": ["--augment", "--augment-shift", "0"],
    "flips only 10 epochs": ["--augment", "--augment-shift", "0", "--epochs", "10"],
    "EMA 0.999": ["--ema", "0.999"],
    # Third round: the anchors' regulariser (ResNet-20 + random erasing, about 0.955 on Fashion-MNIST).
    "random erasing 0.5": ["--random-erasing", "0.5"],
    "random erasing 0.5 11 epochs": ["--random-erasing", "0.5", "--epochs", "11"],
    # Fourth round: the two that paid (label smoothing 0.1, more epochs) together, at 10 epochs, the most
    # that might fit 10 AVX2 minutes (it took 5.0-5.5 capped minutes, about 10-11: docs/benchmarks.md).
    "label smoothing 0.1 10 epochs": ["--label-smoothing", "0.1", "--epochs", "10"],
    # A stride-2 4x4 stem straight to 13x13: the default's 28x28 stage (32 channels, a 5x5 and a 1x1
    # convolution, then max pooling) is 16% of its multiply-adds but about 22% of its step time (bench).
    "stride-2 stem 10 epochs": {"model": {"blocks": [STRIDE2_STEM, DEFAULT_BLOCK2]}, "flags": ["--epochs", "10"]},
    # ...and what it saves spent on a 128-wide 3x3 block at 6x6 (fashion-best-v1's third block).
    "stride-2 stem and a 6x6 block 10 epochs": {
        "model": {"blocks": [STRIDE2_STEM, DEFAULT_BLOCK2, {"filters": 128, "kernel_size": 3, "pool": None,
                                                            "batch_norm": True}]},
        "flags": ["--epochs", "10"]},
    # Fifth round: the batch size x learning rate (256 about as fast per image as 128 in the bench, 64
    # 20% slower: docs/benchmarks.md), and BatchNorm in the 28x28 stem, which the fused kernel made
    # affordable (about 12% slower steps, so one epoch fewer).
    "batch 256 learning rate 8e-3": ["--batch-size", "256", "--learning-rate", "0.008"],
    "batch 64 learning rate 2e-3 7 epochs": ["--batch-size", "64", "--learning-rate", "0.002", "--epochs", "7"],
    "BatchNorm in the stem 7 epochs": {"model": {"blocks": [dict(DEFAULT_STEM, batch_norm=True), DEFAULT_BLOCK2]},
                                       "flags": ["--epochs", "7"]},
    # Sixth round: airbench's first layer, the stem's 5x5 filters set to whiten the images' patches and frozen.
    "whitened stem": ["--whiten-stem"],
    # It fits faster and overfits sooner (training accuracy +1 point, validation lower): with regularisers.
    "whitened stem with flip + 2-pixel shift": ["--whiten-stem", "--augment", "--augment-shift", "2"],
    "whitened stem with label smoothing 0.1": ["--whiten-stem", "--label-smoothing", "0.1"],
    "whitened stem with random erasing 0.25": ["--whiten-stem", "--random-erasing", "0.25"],
    # Seventh round: the changes that each paid a little, together. BatchNorm in the stem (more accurate per
    # epoch, about 12% slower steps) with label smoothing 0.1, at the epochs 10 AVX2 minutes hold.
    "BatchNorm in the stem with label smoothing 0.1": {
        "model": {"blocks": [dict(DEFAULT_STEM, batch_norm=True), DEFAULT_BLOCK2]}, "flags": ["--label-smoothing", "0.1"]},
    "BatchNorm in the stem with label smoothing 0.1 9 epochs": {
        "model": {"blocks": [dict(DEFAULT_STEM, batch_norm=True), DEFAULT_BLOCK2]},
        "flags": ["--label-smoothing", "0.1", "--epochs", "9"]},
    # Tenth round: dropout, the regulariser d2l's NiN uses and the default never tried. The default ends 2
    # points above its validation accuracy in training; dropout adds no convolution, so no minutes.
    "dropout 0.2 before the class block": {
        "model": {"blocks": [DEFAULT_STEM, dict(DEFAULT_BLOCK2, dropout=0.2)]}, "flags": []},
    "dropout 0.1 after each pool": {
        "model": {"blocks": [dict(DEFAULT_STEM, dropout=0.1), dict(DEFAULT_BLOCK2, dropout=0.1)]}, "flags": []},
}


def variant_flags(out, name):
    """The fit flags of variant ``name``; a network change is written to ``OUT/configs/`` and passed as --config."""
    variant = VARIANTS[name]
    if isinstance(variant, list):
        return variant
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)
    path = os.path.join(out, "configs", folder_name(name) + ".json")
    with open(path, "w") as f:
        json.dump({"model": variant["model"]}, f, indent=1)
    return ["--config", path, *variant["flags"]]


def folder_name(name):
    """A variant's run-folder name."""
    return name.replace(" ", "_").replace(",", "").replace("+", "and")


def run(out, name, flags, seed, preset="fashion"):
    """Train one variant with one seed (or find it finished); returns its metrics and wall seconds."""
    folder = os.path.join(out, folder_name(name) if preset == "fashion" else f"{preset}-{folder_name(name)}")
    if seed:  # seed 0 keeps the folder names of the first ablation
        folder += f"-seed{seed}"
    extra = ["--seed", str(seed)]
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "nin_keras.fit", "--preset", preset, "--output-dir", folder,
                    "--verbose", "2", *flags, *extra], check=True)
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    # Every round compares the last epoch's validation accuracy (BatchNorm statistics from 512 training
    # images), which metrics.json held until it became the saved model's (2,048 images): the same measure
    # for runs made before and after.
    history = os.path.join(folder, "history.csv")
    if os.path.exists(history):
        with open(history) as f:
            metrics["val_accuracy"] = float(list(csv.DictReader(f))[-1]["val_accuracy"])
    timing = os.path.join(folder, "ablation_seconds.json")
    if not os.path.exists(timing):  # first time: this process trained it
        with open(timing, "w") as f:
            json.dump(time.monotonic() - started, f)
    with open(timing) as f:
        return metrics, json.load(f)


def main(argv=None):
    """Train every variant once per seed (or find it trained) and print the validation table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--preset", default="fashion", help="the preset every variant starts from")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from VARIANTS")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each variant is trained once per seed")
    parser.add_argument("--test", action="store_true",
                        help="also print test accuracy: once, for the configuration chosen on validation")
    args = parser.parse_args(argv)
    unknown = [name for name in args.variants.split(",") if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"ablation.py: unknown variant; known: {', '.join(VARIANTS)}. Received: {unknown[0]!r}")
    networks = [name for name in args.variants.split(",") if isinstance(VARIANTS[name], dict)]
    if networks and args.preset != "fashion":  # their --config replaces the whole block list with fashion's
        raise SystemExit(f"ablation.py: network variants change the fashion preset's blocks; use flag variants "
                         f"with --preset {args.preset}. Received: {networks[0]!r}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print(f"seeds {args.seeds}; accuracies as mean +- standard deviation over the seeds")
    print(f"{'variant':<32}{'val acc':>16}{'train acc':>11}{'minutes':>9}")
    chosen = None
    for name in args.variants.split(","):
        runs = [run(args.out, name, variant_flags(args.out, name), seed, args.preset) for seed in seeds]
        print(f"{name:<32}{spread([m['val_accuracy'] for m, _ in runs]):>16}"
              f"{statistics.mean(m['train_accuracy'] for m, _ in runs):>11.4f}"
              f"{statistics.mean(s for _, s in runs) / 60:>9.1f}", flush=True)
        val = statistics.mean(m["val_accuracy"] for m, _ in runs)
        if chosen is None or val > chosen[0]:
            chosen = (val, name, runs)
    if args.test:  # one variant's, chosen before looking: a test column would invite choosing on test
        _, name, runs = chosen
        print(f"test accuracy of {name!r}, chosen on validation: {spread([m['test_accuracy'] for m, _ in runs])}")
    return 0


def spread(values):
    """'mean +-sd' of a list of accuracies (sd 0 for one value)."""
    return f"{statistics.mean(values):.4f} +-{statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


if __name__ == "__main__":
    sys.exit(main())
