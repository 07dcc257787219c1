"""The project's own error type.

Every mistake a user can make (bad flag value, missing file, corrupt data, a
run directory that holds another run) is raised as :class:`NinError` with a
one-line message. Entry points catch it and print ``error: <message>`` instead
of a traceback.
"""


class NinError(Exception):
    """A user-facing error whose message is one line and names the problem."""

    def __init__(self, message):
        # Keep it one line even when the message embeds another error's text.
        super().__init__(" ".join(str(message).split()))


class DataError(NinError):
    """Input data is missing, unreadable, or inconsistent."""


class ConfigError(NinError):
    """A setting, preset, or config file is invalid."""


class ClusterError(NinError):
    """A multi-worker cluster lost a worker or could not agree in time."""


class TrainingDiverged(NinError):
    """The loss became NaN or infinite."""


class SignalInterrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM as a KeyboardInterrupt that says which: ``signum``, and the command's
    :attr:`exit_code` (130 for Ctrl-C, 143 for SIGTERM, as a shell's)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum


class Stopped(SignalInterrupt):
    """Training or a search stopped on SIGINT/SIGTERM after keeping what it had finished, and said so.

    A KeyboardInterrupt, so a Python caller (a notebook's ``nin_keras.train``) sees what Ctrl-C means in
    Python rather than a ``SystemExit``; the command-line entry points exit with :attr:`exit_code` without
    a second message.
    """


def require(condition, message, value):
    """Raise :class:`ConfigError` ``"<message> Received: <value>"`` unless ``condition`` holds.

    The one validation helper of the tree (model arguments, settings, CLI
    flags), in the Keras applications' "Received: ..." form.
    """
    if not condition:
        shown = repr(value)
        if len(shown) > 80:  # a 400-digit number or a pasted blob: the error stays one readable line
            shown = f"{shown[:60]}... ({len(shown)} characters)"
        raise ConfigError(f"{message} Received: {shown}")
