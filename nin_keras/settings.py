"""The one schema of training settings: type, default, choices, help and rule, each written once.

Everything else is derived from :data:`SETTINGS`: the :class:`FitConfig`
dataclass, the fallbacks used when a preset is silent, the validation of a
resolved config (:func:`validate`), the flags of ``nin_keras.fit`` and the
shared flags of ``tuning`` (:func:`add_flags`), and unknown-key suggestions.
``tests/test_settings.py`` fails when the parsers drift from it; the docs'
flag table is generated from it (``docs/hooks.py``).

A setting whose ``default`` is None takes the preset's value (or
``fallback`` when the preset has none), so "not given" always means "the
preset's"; flags default to None for the same reason.
"""

import argparse
import dataclasses
import math
import re

from nin_keras.errors import require
from nin_keras.precision import PRECISIONS
from nin_keras.presets import DEFAULT_PRESET, PRESETS

OPTIMIZERS = ("sgd", "adam", "adamw")
STRATEGIES = ("auto", "mirrored", "one-device", "multi-worker")
SCHEDULES = ("cosine", "constant")


def is_int(value):
    """An int that is not a bool (JSON ``true`` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    """A finite int or float that is not a bool (nor an int past float's range: JSON allows 400 digits)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # math.isfinite converts an int to float first
        return False


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training setting.

    ``check`` is a predicate on the resolved value and ``rule`` says it in
    words for the error ("epochs must be an integer >= 1. Received: 0").
    ``optional`` settings may stay None after resolution. ``flag`` False
    keeps a setting out of the command line (``model``: JSON only).
    """

    name: str
    type: type
    help: str
    default: object = None
    fallback: object = None
    choices: tuple = None
    check: object = None
    rule: str = ""
    optional: bool = False
    flag: bool = True
    aliases: tuple = ()
    metavar: str = None
    label: str = None

    @property
    def before_it_existed(self):
        """What a run recorded by a version without this setting counts as having used: its default, else
        its fallback (an upgrade that adds a setting is not a new recipe)."""
        return self.default if self.default is not None else self.fallback

    @property
    def option(self):
        """The command-line flag: ``--batch-size`` for ``batch_size``."""
        return "--" + self.name.replace("_", "-")

    def validate(self, value):
        """Raise a one-line ConfigError unless ``value`` is acceptable."""
        label = self.label or self.name.replace("_", " ")
        if self.optional and value is None:
            return
        # Past float's range (JSON allows any number of digits): every later check would say the wrong thing.
        require(not (is_int(value) and not is_number(value)), f"{label} is too large.", value)
        if self.choices is not None:
            require(value in self.choices, f"{label} must be one of {', '.join(map(str, self.choices))}.", value)
        if self.check is not None:
            require(self.check(value), f"{label} must be {self.rule}.", value)


def _int_at_least(low):
    return lambda v: is_int(v) and v >= low


SETTINGS = (
    Setting("preset", str, "model + recipe preset (default: fashion)", default=DEFAULT_PRESET,
            choices=tuple(sorted(PRESETS))),
    # The recipe: None takes the preset's value.
    Setting("epochs", int, "training epochs", check=_int_at_least(1), rule="an integer >= 1"),
    Setting("batch_size", int, "global batch size (split across replicas)", check=_int_at_least(1),
            rule="an integer >= 1"),
    Setting("learning_rate", float, "peak learning rate", check=lambda v: is_number(v) and v > 0, rule="> 0",
            aliases=("--lr",)),
    Setting("optimizer", str, "optimizer (adamw: decoupled weight decay)", choices=OPTIMIZERS),
    Setting("momentum", float, "SGD momentum", fallback=0.9, check=lambda v: is_number(v) and 0 <= v < 1,
            rule="in [0, 1)"),
    Setting("weight_decay", float, "weight decay", fallback=0.0, check=lambda v: is_number(v) and v >= 0,
            rule=">= 0"),
    Setting("lr_schedule", str, "learning-rate schedule (cosine: linear warm-up, then cosine decay)",
            fallback="cosine", choices=SCHEDULES, label="lr schedule"),
    Setting("warmup_fraction", float, "fraction of the steps spent warming up (cosine schedule)", fallback=0.05,
            check=lambda v: is_number(v) and 0 <= v < 1, rule="in [0, 1)"),
    Setting("ema", float, "keep an exponential moving average of the weights with this momentum and end with it "
            "(0: off; e.g. 0.999)", fallback=0.0, check=lambda v: is_number(v) and 0 <= v < 1, rule="in [0, 1)",
            metavar="MOMENTUM"),
    Setting("label_smoothing", float, "label smoothing of the cross-entropy loss (0: none)", fallback=0.0,
            check=lambda v: is_number(v) and 0 <= v < 1, rule="in [0, 1)"),
    Setting("augment", bool, "random flips and shifts while training", fallback=False,
            check=lambda v: isinstance(v, bool), rule="true or false"),
    Setting("augment_shift", int, "--augment on in-memory data: shift images by up to N pixels (0: flips only)",
            fallback=3, check=lambda v: is_int(v) and 0 <= v <= 8, rule="an integer from 0 to 8", metavar="N"),
    Setting("random_erasing", float, "in-memory data: erase one random rectangle (2 to 40 percent of the image, random "
            "pixels) of each training image with probability P (Zhong et al. 2017; 0: off)", fallback=0.0,
            check=lambda v: is_number(v) and 0 <= v <= 1, rule="a probability in [0, 1]", metavar="P"),
    Setting("whiten_stem", bool, "set the first convolution to whiten the training images' patches and freeze it "
            "(airbench's first layer; needs a stem without BatchNorm)", fallback=False,
            check=lambda v: isinstance(v, bool), rule="true or false"),
    Setting("time_budget", float, "choose the number of epochs (at most --epochs) from the first epoch's time so "
            "the whole run, data loading and test evaluation included, fits MINUTES", optional=True,
            check=lambda v: is_number(v) and v > 0, rule="a number of minutes > 0", metavar="MINUTES"),
    Setting("seed", int, "random seed (split, shuffle, augmentation, initial weights)", default=0,
            check=lambda v: is_int(v) and 0 <= v < 2**32, rule="an integer from 0 to 4294967295 (2**32 - 1)"),
    # Data.
    Setting("data_dir", str, "folder with Fashion-MNIST IDX files (.gz or raw); default $NIN_KERAS_DATA_DIR, "
            "then /usr/share/datasets/fashion-mnist", optional=True),
    Setting("image_dir", str, "folder of images, one sub-folder per class", optional=True),
    Setting("tfds", str, "name of a prepared tensorflow-datasets dataset", optional=True),
    Setting("limit", int, "use only the first N training examples (image folders: a seeded sample of N)",
            optional=True, check=_int_at_least(2),
            rule="an integer >= 2"),
    Setting("test_limit", int, "evaluate on only the first N test examples", optional=True,
            check=_int_at_least(1), rule="an integer >= 1"),
    Setting("image_size", int, "--image-dir: resize images to N x N (default: the preset's input size)",
            optional=True, check=_int_at_least(8), rule="an integer >= 8", metavar="N"),
    Setting("resize", str, "--image-dir: how images of another aspect ratio become square: stretch, pad "
            "(letterbox) or crop (centre)", default="stretch", choices=("stretch", "pad", "crop")),
    Setting("skip_bad_images", bool, "--image-dir: skip corrupt and unreadable files (counted) instead of stopping",
            default=False, check=lambda v: isinstance(v, bool), rule="true or false"),
    Setting("max_image_pixels", int, "--image-dir: refuse images larger than N pixels (width x height, read from "
            "the header before decoding: a guard against decompression bombs)", default=40_000_000,
            check=_int_at_least(1), rule="an integer >= 1", metavar="N"),
    Setting("val_fraction", float, "fraction of training data held out for validation", fallback=1 / 12,
            check=lambda v: is_number(v) and 0 < v < 1, rule="in (0, 1)", label="validation fraction"),
    # Where and how it runs.
    Setting("output_dir", str, "run directory (default: runs/<preset>-<timestamp>)", optional=True),
    Setting("strategy", str, "distribution strategy (auto: multi-worker from $TF_CONFIG, mirrored over several "
            "local devices, else TensorFlow's default)", default="auto", choices=STRATEGIES),
    Setting("cpu_replicas", int, "split the CPU into N logical devices (MirroredStrategy replicas)", optional=True,
            check=_int_at_least(1), rule="an integer >= 1"),
    Setting("precision", str, "compute precision (default auto: bfloat16 on CPUs with AMX/AVX512-BF16, else "
            "float32)", default="auto", choices=PRECISIONS),
    Setting("xla", bool, "XLA jit_compile (GPU; slower on CPU)", default=False,
            check=lambda v: isinstance(v, bool), rule="true or false"),
    Setting("fused_batch_norm", bool, "BatchNorm through TensorFlow's fused kernel (up to 1.5x faster training "
            "on AVX-512 CPUs; below AVX-512 only its gradient; same saved model); --no-fused-batch-norm: Keras' "
            "own ops", default=True,
            check=lambda v: isinstance(v, bool), rule="true or false"),
    Setting("verbose", int, "Keras progress output (default: a bar on a terminal, a line per epoch otherwise)",
            optional=True, choices=(0, 1, 2)),
    Setting("model", dict, "build_nin overrides (JSON only; what the tuner writes)", default=None, flag=False,
            check=lambda v: isinstance(v, dict), rule="a JSON object", label="model overrides"),
)
BY_NAME = {s.name: s for s in SETTINGS}

# The other tools' own numeric flags (export, tuning, bench): not training settings, but checked by the
# same rules, so no command has a hand-written check beside the schema (see validate_numeric_args).
TOOL_SETTINGS = (
    Setting("calibration_samples", int, "training images used to calibrate int8", check=_int_at_least(1),
            rule="an integer >= 1"),
    Setting("max_accuracy_drop", float, "largest int8 accuracy loss, in points", check=lambda v: is_number(v) and v >= 0,
            rule="a number of points >= 0"),
    Setting("mediapipe_scale", int, "MediaPipe frames are this many times the model's size", check=_int_at_least(1),
            rule="an integer >= 1"),
    Setting("max_trials", int, "tuning trials", check=_int_at_least(1), rule="an integer >= 1"),
    Setting("patience", int, "early-stopping patience in epochs", check=_int_at_least(1), rule="an integer >= 1"),
    Setting("steps", int, "training steps per measurement", check=_int_at_least(1), rule="an integer >= 1"),
    Setting("repeats", int, "measurements per setting", check=_int_at_least(1), rule="an integer >= 1"),
    Setting("rounds", int, "interleaved rounds against the peer", check=_int_at_least(1), rule="an integer >= 1"),
    Setting("intra_op_threads", int, "TensorFlow intra-op threads (0: TensorFlow's default)", optional=True,
            check=_int_at_least(0), rule="an integer >= 0 (0: TensorFlow's default)"),
    Setting("inter_op_threads", int, "TensorFlow inter-op threads (0: TensorFlow's default)", optional=True,
            check=_int_at_least(0), rule="an integer >= 0 (0: TensorFlow's default)"),
    Setting("sweep_timeout", float, "seconds before the sweep gives up on a setting",
            check=lambda v: is_number(v) and v > 0, rule="a number of seconds > 0"),
)
NUMERIC = {s.name: s for s in (*SETTINGS, *TOOL_SETTINGS) if s.type in (int, float)}
DATA_FLAGS = ("data_dir", "image_dir", "tfds", "image_size", "resize", "skip_bad_images", "max_image_pixels", "limit",
              "test_limit", "val_fraction")

# A setting's value when neither the preset nor the user gives one.
FALLBACKS = {s.name: s.fallback for s in SETTINGS if s.fallback is not None}


def _fit_config_fields():
    for s in SETTINGS:
        if s.type is dict:
            yield s.name, dict, dataclasses.field(default_factory=dict)
        else:
            yield s.name, s.type, dataclasses.field(default=s.default)


FitConfig = dataclasses.make_dataclass(
    "FitConfig", list(_fit_config_fields()),
    namespace={"to_dict": lambda self: dataclasses.asdict(self),
               "__doc__": "Every setting of a training run (see nin_keras.settings.SETTINGS). "
                          "None fields take the preset's value."},
)
FitConfig.__module__ = __name__


def validate(cfg):
    """Check every setting of a resolved config; ConfigError repeats the bad value."""
    for setting in SETTINGS:
        setting.validate(getattr(cfg, setting.name))
    sources = [s for s in (cfg.data_dir, cfg.image_dir, cfg.tfds) if s is not None]
    require(len(sources) <= 1, "give at most one data source (--data-dir, --image-dir, --tfds).", sources)
    # Image folders have their own augmentation (random resized crop, flip, colour jitter); not silently ignored.
    require(not (cfg.image_dir and cfg.random_erasing), "--random-erasing works on in-memory data "
            "(Fashion-MNIST, --data-dir, --tfds), not on --image-dir.", cfg.random_erasing)
    require(not (cfg.image_dir and cfg.whiten_stem), "--whiten-stem works on in-memory data "
            "(Fashion-MNIST, --data-dir, --tfds), not on --image-dir.", cfg.whiten_stem)


def validate_numeric_args(args):
    """Check every numeric flag of a parsed command line (fit's, export's, tuning's, bench's) against the
    schema; a one-line ConfigError repeats the bad value. Flags left at None are not checked."""
    for name, value in vars(args).items():
        setting = NUMERIC.get(name)
        if setting is not None and value is not None:
            setting.validate(value)


def add_flags(parser, names, defaults=None, group=None):
    """Add the flags for ``names`` to ``parser`` (or an argument ``group``), from the schema.

    Flags default to None (only what the user passes overrides the preset)
    unless ``defaults`` gives a value, as the tuning CLI does.
    """
    target = group or parser
    defaults = defaults or {}
    for name in names:
        s = BY_NAME[name]
        kwargs = {"help": s.help, "default": defaults.get(name)}
        if defaults.get(name) is not None:
            # The schema's help states fit's default, if any; a command with its own default states that one.
            stated = f"(default: {defaults[name]})"
            if "(default:" in s.help:
                kwargs["help"] = re.sub(r"\(default:[^)]*\)", stated, s.help)
            elif "(default" not in s.help:  # e.g. precision's "(default auto: ...)" already says it
                kwargs["help"] = f"{s.help} {stated}"
        if s.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = s.type
            if s.choices is not None:
                kwargs["choices"] = s.choices
            if s.metavar:
                kwargs["metavar"] = s.metavar
        target.add_argument(s.option, *s.aliases, **kwargs)
    return target


def flag_names():
    """The names of every setting that has a command-line flag."""
    return [s.name for s in SETTINGS if s.flag]
