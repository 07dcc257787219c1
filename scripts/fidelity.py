"""Do short trials rank recipes as full runs do? Spearman's rank correlation of the two, on validation.

``python scripts/fidelity.py OUT [--configs a,b] [--fidelities "1,20000;3,20000"]`` trains each
configuration of ``CONFIGS`` (the ``fashion`` preset plus some flags, chosen to differ by more than
seed noise) once in full (the preset's 8 epochs on the 55,000 training images, in the same folders as
``scripts/ablation.py`` so its runs are reused) and once per short fidelity (E epochs on the first N
training images, the learning-rate schedule spanning those E epochs, as a tuner trial of that budget
trains), then prints every configuration's validation accuracy at each fidelity and the rank
correlation of each short fidelity with the full runs. Validation only: test accuracy is not read.
A short run holds out its validation images from its own N (1/12: 1,667 of 20,000), as a tuner
trial on that subset does, so its scores are on fewer images than the full runs' 5,000.
Resumable: finished runs are found, not retrained.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/ is not a package: import its sibling
from ablation import VARIANTS, run  # noqa: E402

#: name -> fit flags. The ablation's variants where it has them (their full runs are shared), plus
#: learning rates and an optimizer far enough from the default to change the outcome, not just the noise.
CONFIGS = {
    "default": VARIANTS["default"],
    "label smoothing 0.1": VARIANTS["label smoothing 0.1"],
    "label smoothing 0.2": VARIANTS["label smoothing 0.2"],
    "AdamW weight decay 0.05": VARIANTS["AdamW weight decay 0.05"],
    "flip + 2-pixel shift": VARIANTS["flip + 2-pixel shift"],
    "flips only": VARIANTS["flips only"],
    "learning rate 5e-4": ["--learning-rate", "0.0005"],
    "learning rate 3e-2": ["--learning-rate", "0.03"],
    "SGD momentum 0.9 lr 0.05": ["--optimizer", "sgd", "--learning-rate", "0.05"],
}


def parse_fidelities(text):
    """'E,N;E,N' -> [(epochs, images), ...]: the short budgets to compare with the full runs."""
    try:
        pairs = [tuple(int(v) for v in part.split(",")) for part in text.split(";")]
    except ValueError:
        raise SystemExit(f"fidelity.py: --fidelities must look like '1,20000;3,20000'. Received: {text!r}")
    if any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise SystemExit(f"fidelity.py: each fidelity is EPOCHS,IMAGES, both >= 1. Received: {text!r}")
    return pairs


def main(argv=None):
    """Train every configuration in full and at each short fidelity (or find them trained), print the table
    and the rank correlations; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from CONFIGS")
    parser.add_argument("--fidelities", default="1,20000;3,20000",
                        help="short budgets, EPOCHS,IMAGES separated by ';' (default: a Hyperband first rung and "
                             "python -m tuning's default trial)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"fidelity.py: unknown configuration; known: {', '.join(CONFIGS)}. Received: {unknown[0]!r}")
    fidelities = parse_fidelities(args.fidelities)
    scores = {}  # (name, fidelity or None for the full run) -> validation accuracy
    for name in names:
        scores[name, None] = run(args.out, name, CONFIGS[name], args.seed)[0]["val_accuracy"]
        for epochs, images in fidelities:
            short = [*CONFIGS[name], "--epochs", str(epochs), "--limit", str(images)]
            metrics, _ = run(args.out, f"{name} short {epochs}x{images}", short, args.seed)
            scores[name, (epochs, images)] = metrics["val_accuracy"]
    print_table(names, fidelities, scores)
    return 0


def print_table(names, fidelities, scores):
    """Validation accuracy per configuration and fidelity, then each fidelity's rank correlation with the full runs."""
    from scipy.stats import spearmanr

    heads = [f"{e} ep x {n}" for e, n in fidelities]
    print(f"{'configuration':<28}{'full run':>10}" + "".join(f"{h:>18}" for h in heads))
    for name in names:
        print(f"{name:<28}{scores[name, None]:>10.4f}" + "".join(f"{scores[name, f]:>18.4f}" for f in fidelities))
    full = [scores[name, None] for name in names]
    for head, fidelity in zip(heads, fidelities):
        rho = spearmanr(full, [scores[name, fidelity] for name in names]).statistic
        print(f"Spearman rank correlation, {head} with the full runs: {rho:+.2f} ({len(names)} configurations)")


if __name__ == "__main__":
    sys.exit(main())
