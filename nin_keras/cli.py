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
        if message.startswith("unrecognized arguments:"):
            from nin_keras.config import did_you_mean

            known = {o for action in self._actions for o in action.option_strings if o.startswith("--")}
            unknown = {a.split("=")[0] for a in message.split(":", 1)[1].split() if a.startswith("--")}
            message += did_you_mean(unknown, known)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_data_flags(parser):
    """Data-source flags shared by fit, tuning and export."""
    from nin_keras.settings import DATA_FLAGS, add_flags

    return add_flags(parser, DATA_FLAGS, group=parser.add_argument_group("data"))


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
