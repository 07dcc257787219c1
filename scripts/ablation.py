"""Recipe ablation for the default preset: one training per variant, compared on VALIDATION accuracy.

``python scripts/ablation.py OUT [--epochs N] [--variants a,b]`` trains the
``fashion`` preset once per variant (each the default plus one change, in a
fresh ``python -m nin_keras.fit`` process, one after another so they do not
share the cores) and prints a table: validation accuracy, training accuracy
and wall minutes. Test accuracy is written in each run's metrics.json but not
shown: designs are chosen on validation, test is reported once per shipped
configuration. Runs are resumable: rerunning skips variants already finished.
"""

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "default": [],
    "label smoothing 0.1": ["--label-smoothing", "0.1"],
    "flip + 2-pixel shift": ["--augment", "--augment-shift", "2"],
    "AdamW weight decay 0.05": ["--optimizer", "adamw", "--weight-decay", "0.05"],
}


def run(out, name, flags, extra):
    """Train one variant (or find it finished); returns its metrics and wall seconds."""
    folder = os.path.join(out, name.replace(" ", "_").replace(",", "").replace("+", "and"))
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "nin_keras.fit", "--preset", "fashion", "--output-dir", folder,
                    "--verbose", "2", *flags, *extra], check=True)
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    timing = os.path.join(folder, "ablation_seconds.json")
    if not os.path.exists(timing):  # first time: this process trained it
        with open(timing, "w") as f:
            json.dump(time.monotonic() - started, f)
    with open(timing) as f:
        return metrics, json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from VARIANTS")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = []
    for name in args.variants.split(","):
        metrics, seconds = run(args.out, name, VARIANTS[name], ["--seed", str(args.seed)])
        rows.append((name, metrics["val_accuracy"], metrics["train_accuracy"], seconds / 60))
    print(f"{'variant':<28}{'val acc':>9}{'train acc':>11}{'minutes':>9}")
    for name, val, train, minutes in rows:
        print(f"{name:<28}{val:>9.4f}{train:>11.4f}{minutes:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
