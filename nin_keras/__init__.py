"""nin_keras: Network in Network (Lin, Chen & Yan 2013) for Keras 3, from training to a phone.

Use it from Python::

    import nin_keras

    model = nin_keras.create_model("fashion")            # a preset's model, untrained
    model = nin_keras.create_model("tiny", num_classes=5, width_multiplier=None)  # None: the preset's
    cfg = nin_keras.resolve_config({"preset": "tiny", "epochs": 1, "limit": 2000})
    metrics = nin_keras.train(cfg)                       # what `python -m nin_keras.fit` does

Attributes are imported on first use (PEP 562), so ``import nin_keras`` and
the command-line entry points stay fast and load TensorFlow only when needed.
"""

import os as _os

__version__ = "0.1.0"

# nin_keras trains through tf.data and tf.distribute, so Keras must run on TensorFlow whatever a user's
# ~/.keras/keras.json says (its "backend": "jax" made every command a ModuleNotFoundError traceback).
# Keras reads this variable before keras.json; one the user sets is kept, and the commands refuse another
# backend in one line (nin_keras.cli.run_cli).
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

_EXPORTS = {
    "build_nin": "nin_keras.model",
    "mlpconv_block": "nin_keras.model",
    "block_summary": "nin_keras.model",
    "create_model": "nin_keras.presets",
    "list_presets": "nin_keras.presets",
    "get_preset": "nin_keras.presets",
    "PRESETS": "nin_keras.presets",
    "load_data": "nin_keras.data",
    "make_dataset": "nin_keras.data",
    "train": "nin_keras.fit",
    "FitConfig": "nin_keras.settings",
    "resolve_config": "nin_keras.config",
    "NinError": "nin_keras.errors",
}

__all__ = sorted(_EXPORTS)

from nin_keras._lazy import lazy_exports as _lazy_exports  # noqa: E402  (light: no TensorFlow)

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
