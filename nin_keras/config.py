"""Training configuration: preset defaults, overridden by a JSON file, then by flags.

A config is a flat dict of fit settings plus an optional ``model`` dict of
overrides for :func:`nin_keras.model.build_nin` (what the tuner writes). The
resolved config is saved as ``config.json`` in the run directory and can be
passed back with ``--config``.
"""

import json

from nin_keras.errors import ConfigError
from nin_keras.presets import get_preset
from nin_keras.settings import BY_NAME, FALLBACKS, FitConfig, validate

FIELDS = set(BY_NAME)


def load_config_file(path):
    """Read a JSON config file; ConfigError on a missing, malformed or unknown-key file."""
    try:
        with open(path, encoding="utf-8") as f:  # JSON is UTF-8 (RFC 8259), whatever the locale says
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: malformed JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except RecursionError:
        raise ConfigError(f"--config {path}: JSON nested too deeply to be a config") from None
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
    BY_NAME["preset"].validate(cfg.preset)  # before the preset's values are read
    preset = get_preset(cfg.preset)
    for key, value in {**FALLBACKS, **preset["fit"]}.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    validate(cfg)
    return cfg


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
    if cfg.image_size:
        kwargs["input_shape"] = [cfg.image_size, cfg.image_size, kwargs["input_shape"][2]]
    kwargs["num_classes"] = num_classes
    if data_shape is not None and list(data_shape) != list(kwargs["input_shape"]):
        def shape(s):
            return "x".join(str(d) for d in s)

        raise ConfigError(
            f"preset {cfg.preset!r} takes {shape(kwargs['input_shape'])} images but the data has "
            f"{shape(data_shape)}; choose a preset made for this data, pass --image-size for an image folder, or set model.input_shape in a "
            f"--config file. "
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

