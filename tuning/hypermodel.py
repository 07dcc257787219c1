"""The NiN search space as a ``keras_tuner.HyperModel``.

``build(hp)`` only turns hyperparameter values into the project's own model
builder and compile call, so a tuned config retrains with ``nin_keras.fit``.

The space covers the architecture (depth, the width and number of 1 x 1
convolutions of every block, the class block's width, where BatchNorm goes,
dropout) and the recipe (learning rate, optimizer, weight decay, schedule,
label smoothing, augmentation and its strength, batch size). Every default
is the preset's own value, so ``build(keras_tuner.HyperParameters())`` is the
untuned preset.
"""

import copy
import dataclasses
import math

import keras
import keras_tuner

from nin_keras import config as config_lib
from nin_keras import precise_bn
from nin_keras.data import fitting_batch_size
from nin_keras.errors import ConfigError
from nin_keras.fit import compile_model, one_hot_classes
from nin_keras.model import build_nin

MAX_DEPTH = 4
WIDTHS = (16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
# Where BatchNorm goes. "after_stem" skips only the full-resolution first
# block, where Keras' unfused BatchNorm cost 2.3x the whole step on CPU.
BATCH_NORM = ("none", "after_stem", "all")
BATCH_SIZES = (64, 128, 256)
FIT_HPARAMS = ("learning_rate", "optimizer", "weight_decay", "lr_schedule", "label_smoothing", "batch_size",
               "augment", "augment_shift")


def _base_blocks(cfg):
    """The preset's feature blocks and class block, with mlp widths spelled out."""
    kwargs = config_lib.model_kwargs(cfg)
    mlp_layers = kwargs.get("mlp_layers", 2)
    blocks = copy.deepcopy(kwargs["blocks"])
    head = copy.deepcopy(kwargs.get("head_block") or {"filters": None, "kernel_size": 3})
    for spec in blocks:
        spec.setdefault("mlp_filters", [spec["filters"]] * mlp_layers)
    head.setdefault("mlp_filters", [head.get("filters")] * (mlp_layers - 1) + [None])
    return blocks, head, kwargs


def _batch_norm_layout(blocks, head, model_wide):
    """Name the preset's BatchNorm placement, or None if it is none of BATCH_NORM's."""
    flags = [model_wide if spec.get("batch_norm") is None else spec["batch_norm"] for spec in blocks + [head]]
    if not any(flags):
        return "none"
    if all(flags):
        return "all"
    if not flags[0] and all(flags[1:]):
        return "after_stem"
    return None


class NinHyperModel(keras_tuner.HyperModel):
    """Search space over a base :class:`FitConfig` (preset, data size, epochs).

    ``trial_epochs`` is how many epochs a trial trains (the learning-rate
    schedule spans them, so every trial is scored at the end of its decay);
    under Hyperband each trial's own ``tuner/epochs`` budget is used instead.
    """

    def __init__(self, base_config, num_train_examples, num_classes=10, input_shape=None, trial_epochs=None):
        super().__init__(name="nin")
        self.base = base_config
        self.num_train = num_train_examples
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.trial_epochs = trial_epochs or base_config.epochs

    def declare(self, hp):
        """Declare every hyperparameter (with the preset's defaults); return their values."""
        base = self.base
        blocks, head, kwargs = _base_blocks(base)
        depth = len(blocks)
        layout = _batch_norm_layout(blocks, head, kwargs.get("batch_norm", False))
        values = {
            # Architecture. One block fewer or one more than the preset; an
            # added block keeps the resolution (no pooling) at twice the width.
            "depth": hp.Int("depth", max(1, depth - 1), min(MAX_DEPTH, depth + 1), default=depth),
        }
        for i in range(1, MAX_DEPTH + 1):
            spec = blocks[i - 1] if i <= depth else None
            width = spec["filters"] if spec else min(2 * blocks[-1]["filters"], WIDTHS[-1])
            values[f"block{i}_filters"] = hp.Choice(f"block{i}_filters", sorted(set(WIDTHS) | {width}),
                                                    default=width)
            values[f"block{i}_mlp_layers"] = hp.Int(f"block{i}_mlp_layers", 1, 3,
                                                    default=len(spec["mlp_filters"]) if spec else 2)
        # 0: the class block is one convolution per class.
        head_width = head.get("filters") or 0
        values["head_filters"] = hp.Choice("head_filters", sorted({0, 64, 128, 192, 256, head_width}),
                                           default=head_width)
        values["batch_norm"] = hp.Choice("batch_norm", list(BATCH_NORM) + ([] if layout else ["preset"]),
                                         default=layout or "preset")
        dropout = float(blocks[-1].get("dropout", 0.0))
        values["dropout"] = hp.Float("dropout", 0.0, 0.5, step=0.1, default=round(dropout, 1))
        values.update({
            # The recipe.
            "learning_rate": hp.Float("learning_rate", 3e-4, 1e-2, sampling="log", default=base.learning_rate),
            # No "adamw": Keras 3's Adam applies weight decay decoupled, exactly
            # as AdamW does, so the two choices would be the same trial twice.
            "optimizer": hp.Choice("optimizer", ["adam", "sgd"],
                                   default="adam" if base.optimizer == "adamw" else base.optimizer),
            # float(): a config's integer 0 must not mix types in one Choice.
            "weight_decay": hp.Choice("weight_decay", sorted({0.0, 1e-5, 1e-4, 1e-3, 1e-2, 5e-2,
                                                              float(base.weight_decay)}),
                                      default=float(base.weight_decay)),
            "lr_schedule": hp.Choice("lr_schedule", ["cosine", "constant"], default=base.lr_schedule),
            "label_smoothing": hp.Choice("label_smoothing", sorted({0.0, 0.05, 0.1, 0.2,
                                                                    float(base.label_smoothing)}),
                                         default=float(base.label_smoothing)),
            "augment": hp.Boolean("augment", default=base.augment),
            "augment_shift": hp.Int("augment_shift", 0, 4, default=min(base.augment_shift, 4)),
            "batch_size": hp.Choice("batch_size", list(BATCH_SIZES), default=base.batch_size
                                    if base.batch_size in BATCH_SIZES else 128),
        })
        return values

    def check_in_space(self, values, source="the search"):
        """Refuse (one line) hyperparameter ``values`` outside the space this hypermodel declares.

        The space is declared afresh here, not read from the oracle: trial
        values arrive from files and, in distributed tuning, from peers over
        an unauthenticated port, and ``best_config.json`` is what
        ``--retrain-best`` trains.
        """
        space = keras_tuner.HyperParameters()
        self.declare(space)
        declared = {hp.name: hp for hp in space.space}
        for name in sorted(set(values) | set(declared)):
            if name.startswith("tuner/"):  # Hyperband's own bookkeeping, never part of a config
                continue
            hp, value = declared.get(name), values.get(name, "(missing)")
            if hp is None or name not in values or not _in_space(hp, value):
                why = "not a hyperparameter of this search" if hp is None else f"outside {_describe(hp)}"
                raise ConfigError(f"{source}: hyperparameter {name!r} {why}; refusing to write or retrain it. "
                                  f"Received: {value!r}")

    def model_overrides(self, values):
        """The build_nin overrides (explicit ``blocks`` and ``head_block``) these values stand for."""
        blocks, head, _ = _base_blocks(self.base)
        depth = values["depth"]
        while len(blocks) < depth:
            blocks.append({**copy.deepcopy(blocks[-1]), "pool": None, "dropout": 0.0})
        blocks = blocks[:depth]
        for i, spec in enumerate(blocks, start=1):
            width, layers = values[f"block{i}_filters"], values[f"block{i}_mlp_layers"]
            # The preset's own 1 x 1 widths stay when its block is unchanged.
            if width != spec["filters"] or layers != len(spec["mlp_filters"]):
                spec["filters"], spec["mlp_filters"] = width, [width] * layers
            spec["dropout"] = 0.0
        blocks[-1]["dropout"] = values["dropout"]
        head_width = values["head_filters"] or None
        if head_width != head.get("filters"):
            head["filters"] = head_width
            head["mlp_filters"] = [head_width] * (len(head["mlp_filters"]) - 1) + [None]
        if values["batch_norm"] != "preset":
            for i, spec in enumerate(blocks + [head]):
                spec["batch_norm"] = values["batch_norm"] == "all" or (values["batch_norm"] == "after_stem" and i > 0)
        return {"blocks": blocks, "head_block": head}

    def config_for(self, values):
        """The FitConfig these hyperparameter values stand for (what fit retrains)."""
        model = dict(self.base.model)
        model.update(self.model_overrides(values))
        fit = {k: values[k] for k in FIT_HPARAMS}
        return dataclasses.replace(self.base, model=model, **fit)

    def build(self, hp):
        cfg = self.config_for(self.declare(hp))
        # The schedule spans the epochs this trial trains (Hyperband: its bracket's budget).
        epochs = hp.values.get("tuner/epochs", self.trial_epochs) - hp.values.get("tuner/initial_epoch", 0)
        # No weight average in a trial: Keras scores it (and EarlyStopping restores) on the raw weights; the
        # retrain of best_config.json keeps the base config's --ema.
        cfg = dataclasses.replace(cfg, epochs=max(1, epochs), ema=0.0)
        # Seeded as fit seeds a run: the same values build the same initial weights in every search, so a
        # rerun reproduces a trial (the untuned preset's first trial varied by 8 points between searches).
        keras.utils.set_random_seed(self.base.seed)
        model = build_nin(**config_lib.model_kwargs(cfg, self.num_classes, self.input_shape))
        compile_model(model, cfg, max(1, self.num_train // fitting_batch_size(cfg.batch_size, self.num_train)))
        return model

    def fit(self, hp, model, x, *args, validation_data=None, **kwargs):
        """Batch the in-memory (images, labels) with the trial's batch size, then fit."""
        from nin_keras.data import make_dataset, make_train_dataset

        images, labels = x
        cfg = self.config_for(self.declare(hp))
        one_hot = one_hot_classes(cfg, self.num_classes)
        strategy = getattr(model, "distribute_strategy", None)
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        batch = fitting_batch_size(cfg.batch_size, len(images), replicas)  # as fit's, for a small folder
        train, _ = make_train_dataset(images, labels, batch, seed=self.base.seed, augment=cfg.augment,
                                      augment_shift=cfg.augment_shift, random_erasing=cfg.random_erasing,
                                      one_hot_classes=one_hot)
        val = (make_dataset(*validation_data, batch, one_hot_classes=one_hot)
               if validation_data is not None else None)
        # A trial is judged on validation: with BatchNorm statistics that match its weights (precise BN).
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []),
                               precise_bn.before_validation(images, labels, batch, replicas=replicas, seed=self.base.seed)]
        return model.fit(train, *args, validation_data=val, shuffle=False, **kwargs)


def _in_space(hp, value):
    """Whether ``value`` is one keras-tuner hyperparameter ``hp`` can take."""
    kind = type(hp).__name__
    if value == hp.default and isinstance(value, bool) == isinstance(hp.default, bool):
        return True  # the preset's own value (the first trial), which may lie outside a range
    if kind == "Choice":
        return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in hp.values)
    if kind == "Boolean":
        return isinstance(value, bool)
    if kind == "Fixed":
        return value == hp.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    slack = 1e-9 * (hp.max_value - hp.min_value) if kind == "Float" else 0  # log sampling's rounding
    if not hp.min_value - slack <= value <= hp.max_value + slack:
        return False
    if kind == "Int":
        return isinstance(value, int) and (value - hp.min_value) % (hp.step or 1) == 0
    return kind == "Float"


def _describe(hp):
    kind = type(hp).__name__
    if kind == "Choice":
        return f"its choices {list(hp.values)}"
    if kind in ("Int", "Float"):
        return f"its range {kind}({hp.min_value}..{hp.max_value})"
    return f"its {kind} values"
