"""The NiN search space as a ``keras_tuner.HyperModel``.

``build(hp)`` only turns hyperparameter values into the project's own model
builder and compile call, so a tuned config retrains with ``nin_keras.fit``.
"""

import dataclasses
import keras_tuner

from nin_keras import config as config_lib
from nin_keras.fit import compile_model
from nin_keras.model import build_nin

# Hyperparameters that are model overrides (build_nin kwargs); the rest are fit settings.
MODEL_HPARAMS = ("width_multiplier", "mlp_layers", "dropout", "batch_norm")
FIT_HPARAMS = ("learning_rate", "optimizer", "weight_decay", "batch_size", "augment")


def preset_dropout(cfg):
    """Dropout of the preset's last feature block (the one the tuner varies)."""
    blocks = config_lib.model_kwargs(cfg)["blocks"]
    return float(blocks[-1].get("dropout", 0.0))


class NinHyperModel(keras_tuner.HyperModel):
    """Search space over a base :class:`FitConfig` (preset, data size, epochs).

    Defaults of every hyperparameter are the preset's own values, so
    ``build(keras_tuner.HyperParameters())`` is the untuned preset.
    """

    def __init__(self, base_config, num_train_examples, num_classes=10, input_shape=None):
        super().__init__(name="nin")
        self.base = base_config
        self.num_train = num_train_examples
        self.num_classes = num_classes
        self.input_shape = input_shape

    def declare(self, hp):
        """Declare every hyperparameter (with the preset's defaults); return their values."""
        base = self.base
        return {
            "learning_rate": hp.Float("learning_rate", 3e-4, 1e-2, sampling="log", default=base.learning_rate),
            # No "adamw": Keras 3's Adam applies weight decay decoupled, exactly
            # as AdamW does, so the two choices would be the same trial twice.
            "optimizer": hp.Choice("optimizer", ["adam", "sgd"],
                                   default="adam" if base.optimizer == "adamw" else base.optimizer),
            "weight_decay": hp.Choice("weight_decay", [0.0, 1e-5, 1e-4, 1e-3], default=base.weight_decay),
            "width_multiplier": hp.Choice("width_multiplier", [0.5, 0.75, 1.0, 1.5], default=1.0),
            "mlp_layers": hp.Int("mlp_layers", 1, 3, default=2),
            "dropout": hp.Float("dropout", 0.0, 0.5, step=0.1, default=round(preset_dropout(base), 1)),
            "batch_norm": hp.Boolean("batch_norm", default=False),
            "augment": hp.Boolean("augment", default=False),
            "batch_size": hp.Choice("batch_size", [64, 128, 256], default=base.batch_size
                                    if base.batch_size in (64, 128, 256) else 128),
        }

    def config_for(self, values):
        """The FitConfig these hyperparameter values stand for (what fit retrains)."""
        model = dict(self.base.model)
        model.update({k: values[k] for k in MODEL_HPARAMS})
        fit = {k: values[k] for k in FIT_HPARAMS}
        return dataclasses.replace(self.base, model=model, **fit)

    def build(self, hp):
        cfg = self.config_for(self.declare(hp))
        model = build_nin(**config_lib.model_kwargs(cfg, self.num_classes, self.input_shape))
        compile_model(model, cfg, max(1, self.num_train // cfg.batch_size))
        return model

    def fit(self, hp, model, x, *args, validation_data=None, **kwargs):
        """Batch the in-memory (images, labels) with the trial's batch size, then fit."""
        from nin_keras.data import make_dataset, make_train_dataset

        images, labels = x
        batch = hp.get("batch_size")
        train, _ = make_train_dataset(images, labels, batch, seed=self.base.seed, augment=hp.get("augment"))
        val = make_dataset(*validation_data, batch) if validation_data is not None else None
        return model.fit(train, *args, validation_data=val, shuffle=False, **kwargs)
