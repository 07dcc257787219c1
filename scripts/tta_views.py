"""Multi-view test-time augmentation on finished runs, scored on their VALIDATION split.

``python scripts/tta_views.py RUN [RUN ...]`` loads each run's ``model.keras``
and its validation images (the run's seed and validation fraction, Fashion-MNIST
or ``--data-dir``) and prints validation accuracy three ways: one pass; the
class scores of the image and its left-right mirror averaged (what
``build_nin(test_time_flip=True)`` does in the graph); and the image and its
four one-pixel shifts averaged (airbench's multi-view evaluation, by
translation). Chosen on validation, as every recipe change here.
"""

import argparse
import json
import os
import sys

import numpy as np

SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shifted(images, dy, dx):
    """``images`` (N, H, W, C) moved ``dy`` rows down and ``dx`` columns right, zeros where nothing moved in."""
    out = np.zeros_like(images)
    height, width = images.shape[1:3]
    out[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[:, max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return out


def view_accuracies(model, images, labels):
    """Validation accuracy of one pass, the mirror average and the 5-view shift average."""
    def scores(x):
        return model.predict(x, batch_size=1000, verbose=0)

    one = scores(images)
    mirror = one + scores(images[:, :, ::-1])
    shifts = sum(scores(shifted(images, dy, dx)) for dy, dx in SHIFTS)
    return {name: float((s.argmax(axis=1) == labels).mean())
            for name, s in (("one pass", one), ("mirror", mirror), ("5 shifts", shifts))}


def main(argv=None):
    """Print the three accuracies of every run; returns 0."""
    import keras

    from nin_keras.data import load_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    print(f"{'run':<48}{'one pass':>10}{'mirror':>10}{'5 shifts':>10}")
    for run in args.runs:
        with open(os.path.join(run, "config.json")) as f:
            cfg = json.load(f)
        splits = load_data(data_dir=cfg.get("data_dir"), val_fraction=cfg["val_fraction"], seed=cfg["seed"],
                           limit=cfg.get("limit"), print_fn=lambda *a: None)
        model = keras.saving.load_model(os.path.join(run, "model.keras"))
        acc = view_accuracies(model, splits.x_val, splits.y_val)
        print(f"{run:<48}{acc['one pass']:>10.4f}{acc['mirror']:>10.4f}{acc['5 shifts']:>10.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
