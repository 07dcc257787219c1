"""Training configuration: preset defaults, overridden by a JSON file, then by flags.

A config is a flat dict of fit settings plus an optional ``model`` dict of
overrides for :func:`nin_keras.model.build_nin` (what the tuner writes). The
resolved config is saved as ``config.json`` in the run directory and can be
passed back with ``--config``.
"""

import dataclasses
import json

from nin_keras.errors import ConfigError
from nin_keras.precision import PRECISIONS
from nin_keras.presets import DEFAULT_PRESET, get_preset

OPTIMIZERS = ("sgd", "adam", "adamw")
STRATEGIES = ("auto", "mirrored", "one-device", "multi-worker")
SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass
class FitConfig:
    """Every setting of a training run. ``None`` fields take the preset's value."""

    preset: str = DEFAULT_PRESET
    epochs: int = None
    batch_size: int = None  # global batch: per-replica batch x replicas
    learning_rate: float = None
    optimizer: str = None
    momentum: float = None  # SGD only
    weight_decay: float = None
    lr_schedule: str = None
    warmup_fraction: float = None
    augment: bool = False  # random flips and shifts in the training pipeline
    time_budget: float = None  # minutes: pick the epochs (at most `epochs`) from the first epoch's time
    seed: int = 0
    data_dir: str = None
    image_dir: str = None
    tfds: str = None
    limit: int = None
    test_limit: int = None
    val_fraction: float = None
    output_dir: str = None
    strategy: str = "auto"
    cpu_replicas: int = None
    precision: str = "auto"  # auto | float32 | bfloat16 | float16 (see nin_keras.precision)
    xla: bool = False
    verbose: int = None  # None: progress bar on a terminal, one line per epoch otherwise
    model: dict = dataclasses.field(default_factory=dict)

    def to_dict(self):
        return dataclasses.asdict(self)


FIT_DEFAULTS = {
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
    "warmup_fraction": 0.05,
    "val_fraction": 1 / 12,  # 5,000 of Fashion-MNIST's 60,000
}
FIELDS = {f.name for f in dataclasses.fields(FitConfig)}


def load_config_file(path):
    """Read a JSON config file; ConfigError on a missing, malformed or unknown-key file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: malformed JSON ({e})") from None
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object. Received: {type(data).__name__}")
    if "mixed_precision" in data:
        # Configs written before `precision` existed (e.g. older best_config.json).
        legacy = data.pop("mixed_precision")
        data.setdefault("precision", "float16" if legacy else "auto")
    unknown = set(data) - FIELDS
    if unknown:
        raise ConfigError(f"--config {path}: unknown settings {sorted(unknown)}{did_you_mean(unknown, FIELDS)}")
    return data


def did_you_mean(unknown, known):
    """'; did you mean ...?' for misspelled keys (empty when nothing is close)."""
    import difflib

    guesses = {u: difflib.get_close_matches(u, sorted(known), n=1, cutoff=0.6) for u in sorted(unknown)}
    pairs = [f"{u!r} -> {g[0]!r}" for u, g in guesses.items() if g]
    return f"; did you mean {', '.join(pairs)}?" if pairs else ""


def resolve_config(overrides=None, config_file=None):
    """Merge preset < config file < ``overrides`` (non-None values) and validate.

    Returns a :class:`FitConfig` with every field filled in.
    """
    merged = {}
    if config_file is not None:
        merged.update(load_config_file(config_file))
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    cfg = FitConfig(**merged)
    preset = get_preset(cfg.preset)
    for key, value in {**FIT_DEFAULTS, **preset["fit"]}.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    validate_config(cfg)
    return cfg


def _require(condition, message, value):
    if not condition:
        raise ConfigError(f"{message} Received: {value!r}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_config(cfg):
    """Check every setting; ConfigError repeats the bad value."""
    _require(_is_int(cfg.epochs) and cfg.epochs >= 1, "epochs must be an integer >= 1.", cfg.epochs)
    _require(_is_int(cfg.batch_size) and cfg.batch_size >= 1, "batch size must be an integer >= 1.", cfg.batch_size)
    _require(_is_number(cfg.learning_rate) and cfg.learning_rate > 0, "learning rate must be > 0.", cfg.learning_rate)
    _require(cfg.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}.", cfg.optimizer)
    _require(_is_number(cfg.momentum) and 0 <= cfg.momentum < 1, "momentum must be in [0, 1).", cfg.momentum)
    _require(_is_number(cfg.weight_decay) and cfg.weight_decay >= 0, "weight decay must be >= 0.", cfg.weight_decay)
    _require(cfg.lr_schedule in SCHEDULES, f"lr schedule must be one of {', '.join(SCHEDULES)}.", cfg.lr_schedule)
    _require(
        _is_number(cfg.warmup_fraction) and 0 <= cfg.warmup_fraction < 1,
        "warmup fraction must be in [0, 1).",
        cfg.warmup_fraction,
    )
    _require(
        cfg.time_budget is None or (_is_number(cfg.time_budget) and cfg.time_budget > 0),
        "time budget must be a number of minutes > 0.",
        cfg.time_budget,
    )
    _require(_is_int(cfg.seed), "seed must be an integer.", cfg.seed)
    _require(isinstance(cfg.augment, bool), "augment must be true or false.", cfg.augment)
    _require(cfg.limit is None or (_is_int(cfg.limit) and cfg.limit >= 2), "limit must be an integer >= 2.", cfg.limit)
    _require(
        cfg.test_limit is None or (_is_int(cfg.test_limit) and cfg.test_limit >= 1),
        "test limit must be an integer >= 1.",
        cfg.test_limit,
    )
    _require(
        _is_number(cfg.val_fraction) and 0 < cfg.val_fraction < 1,
        "validation fraction must be in (0, 1).",
        cfg.val_fraction,
    )
    _require(cfg.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}.", cfg.strategy)
    _require(
        cfg.cpu_replicas is None or (_is_int(cfg.cpu_replicas) and cfg.cpu_replicas >= 1),
        "cpu replicas must be an integer >= 1.",
        cfg.cpu_replicas,
    )
    _require(cfg.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}.", cfg.precision)
    sources = [s for s in (cfg.data_dir, cfg.image_dir, cfg.tfds) if s is not None]
    _require(len(sources) <= 1, "give at most one data source (--data-dir, --image-dir, --tfds).", sources)
    _require(isinstance(cfg.model, dict), "model overrides must be a JSON object.", cfg.model)


def model_kwargs(cfg, num_classes=10, data_shape=None):
    """build_nin keyword arguments for this config: the preset's, then ``cfg.model``.

    ``data_shape`` (H, W, C of the loaded images) must equal the model's
    ``input_shape``: a preset is never silently rebuilt for other data
    (``--preset paper-cifar`` on Fashion-MNIST is refused, not turned into a
    28x28x1 model).
    """
    import inspect

    from nin_keras.model import build_nin

    known = set(inspect.signature(build_nin).parameters)
    unknown = set(cfg.model) - known
    if unknown:
        raise ConfigError(f"unknown model settings {sorted(unknown)} in the config's \"model\" section"
                          f"{did_you_mean(unknown, known)}")
    kwargs = get_preset(cfg.preset)["model"]
    kwargs.update(cfg.model)
    kwargs["num_classes"] = num_classes
    if data_shape is not None and list(data_shape) != list(kwargs["input_shape"]):
        def shape(s):
            return "x".join(str(d) for d in s)

        raise ConfigError(
            f"preset {cfg.preset!r} takes {shape(kwargs['input_shape'])} images but the data has "
            f"{shape(data_shape)}; choose a preset made for this data, or set model.input_shape in a --config file. "
            f"Received: input_shape={list(kwargs['input_shape'])}, data shape={list(data_shape)}"
        )
    return kwargs


def save_config(cfg, path):
    """Write the resolved config as JSON (atomically)."""
    from nin_keras.io import atomic_write_text

    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def config_differences(a, b, ignore=("verbose", "output_dir")):
    """Keys whose values differ between two config dicts (for the resume check)."""
    keys = (set(a) | set(b)) - set(ignore)
    return sorted(k for k in keys if a.get(k) != b.get(k))

