"""Version-guarded workarounds for keras-tuner 1.4.x: each says what it fixes and does nothing on other versions."""

import json

from nin_keras.errors import ConfigError
from nin_keras.io import atomic_write_text


def atomic_state_files():
    """Make keras-tuner write its state files (``oracle.json``, ``trial.json``, ``tuner0.json``) atomically,
    and name the file when one cannot be read.

    keras-tuner 1.4.x's ``utils.save_json`` truncates the file, then writes it:
    a kill -9 or a power cut in between leaves a file the next sitting cannot
    read, and the whole search has to be discarded. Local files are now
    written to a temporary file and renamed over the old one; remote paths
    (``gs://``) keep keras-tuner's own writer. A state file that is not JSON
    (cut short by an older writer, a full disk) is a one-line ConfigError
    naming it instead of a JSONDecodeError traceback. Idempotent.
    """
    import keras_tuner
    from keras_tuner.src import utils

    if not keras_tuner.__version__.startswith("1.4.") or getattr(utils.save_json, "atomic", False):
        return
    original = utils.save_json

    def save_json(path, obj):
        if "://" in str(path):
            return original(path, obj)
        text = json.dumps(obj)
        atomic_write_text(str(path), text)
        return text

    save_json.atomic = True
    utils.save_json = save_json  # stateful.py and tuner.py call it as utils.save_json
    utils.load_json = _named_errors(utils.load_json)


def _named_errors(load_json):
    def load_or_refuse(path):
        try:
            return load_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: keras-tuner's saved state cannot be read ({e}); pass --overwrite to "
                              "start the search afresh, or another --output-dir") from None

    return load_or_refuse
