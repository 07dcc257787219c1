"""Shared command-line plumbing: one-line usage errors, data flags, errors as exit codes."""

import argparse
import os
import sys

from nin_keras.errors import NinError

# Before TensorFlow is imported (entry points import this module first): hide
# its C++ start-up chatter (e.g. cuInit on CPU machines).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_data_flags(parser):
    """Data-source flags shared by fit, tuning and export."""
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", help="folder with Fashion-MNIST IDX files (.gz or raw); default "
                       "$NIN_KERAS_DATA_DIR, then /usr/share/datasets/fashion-mnist")
    group.add_argument("--image-dir", help="folder of images, one sub-folder per class")
    group.add_argument("--tfds", help="name of a prepared tensorflow-datasets dataset")
    group.add_argument("--limit", type=int, help="use only the first N training examples")
    group.add_argument("--test-limit", type=int, help="evaluate on only the first N test examples")
    group.add_argument("--val-fraction", type=float, help="fraction of training data held out for validation")
    return group


def run_cli(body):
    """Run ``body()`` and return the process exit code.

    ``body`` returns an exit code (None means 0). A :class:`NinError` is a
    user mistake: printed as one ``error: ...`` line, exit code 1.
    """
    try:
        code = body()
    except NinError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0 if code is None else code
