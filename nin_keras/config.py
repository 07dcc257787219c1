"""Training configuration: preset defaults, overridden by a JSON file, then by flags.

A config is a flat dict of fit settings plus an optional ``model`` dict of
overrides for :func:`nin_keras.model.build_nin` (what the tuner writes). A
run's ``config.json`` (:func:`run_record`) is the whole recipe: every
setting, every ``build_nin`` argument, the export defaults, a format marker
and the nin_keras version. Passed back with ``--config`` it rebuilds exactly
that network, whatever the preset table says now.
"""

import json

from nin_keras.errors import ConfigError
from nin_keras.presets import get_preset
from nin_keras.settings import BY_NAME, FALLBACKS, FitConfig, validate

FIELDS = set(BY_NAME)


# build_nin's arguments when run format 1 was defined. A model section holding all of them is a
# recorded network: it is rebuilt as written, and an argument added to build_nin later takes
# build_nin's own default rather than whatever a preset says by then.
RECORDED_MODEL_KEYS = frozenset({
    "blocks", "head_block", "num_classes", "input_shape", "image_size", "mlp_layers", "mlp_kernel_size",
    "width_multiplier", "dropout", "batch_norm", "batch_norm_momentum", "head", "dense_units", "head_activation",
    "classifier_activation", "data_format", "test_time_flip", "name",
})


def load_config_file(path, print_fn=print):
    """Read a JSON config file; ConfigError on a missing, malformed or unknown-key file.

    A run's own ``config.json`` loses its format keys and its ``output_dir``
    (said through ``print_fn``): passing an old run's recipe back must not
    send the new run into the old run's folder.
    """
    from nin_keras.rundir import FORMAT_KEYS, run_format

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
    try:
        # Only a marked record: a config without the marker may be the user's own, output_dir included.
        recorded = bool(run_format(data))
    except ConfigError as e:
        raise ConfigError(f"--config {path}: {e}") from None
    if recorded:
        for key in FORMAT_KEYS:
            data.pop(key, None)
        old_dir = data.pop("output_dir", None)
        if old_dir:
            print_fn(f"--config {path} is a run's recorded recipe: its output_dir ({old_dir}) is not reused; "
                     "this run goes to --output-dir, or a new folder under runs/")
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


def resolve_config(overrides=None, config_file=None, print_fn=print):
    """Merge preset < config file < ``overrides`` (non-None values) and validate.

    Returns a :class:`FitConfig` with every field filled in.
    """
    merged = {}
    if config_file is not None:
        merged.update(load_config_file(config_file, print_fn))
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
    # A recorded network is rebuilt as written; otherwise the preset's, then the overrides.
    kwargs = {} if RECORDED_MODEL_KEYS <= set(cfg.model) else get_preset(cfg.preset)["model"]
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


def complete_model_kwargs(kwargs):
    """``kwargs`` with every other build_nin argument at its default: the whole network, written out."""
    import inspect

    from nin_keras.model import build_nin

    defaults = {name: p.default for name, p in inspect.signature(build_nin).parameters.items()
                if p.default is not inspect.Parameter.empty}
    full = {**defaults, **kwargs}
    # Written out, not left to build_nin's None, so the record reads as the layout it trained with.
    full["data_format"] = full["data_format"] or "channels_last"
    return full


def run_record(cfg, model=None):
    """What a run's ``config.json`` holds: the format marker, the nin_keras version, every setting,
    the whole network (``model``: all build_nin arguments) and the preset's export defaults.

    ``model`` is the run's resolved build_nin arguments (default: resolved
    from ``cfg`` without data). Normalised through JSON (tuples become lists)
    so it compares equal to the file read back.
    """
    from nin_keras import __version__
    from nin_keras.rundir import RUN_FORMAT, RUN_FORMAT_VERSION

    record = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "nin_keras_version": __version__,
              **cfg.to_dict()}
    record["model"] = complete_model_kwargs(model if model is not None else model_kwargs(cfg))
    record["export"] = get_preset(cfg.preset).get("export", {})
    from nin_keras.data.folders import preprocessing_contract

    # How a file becomes the model's input (resize mode, orientation, alpha, pad): what an app must repeat.
    record["preprocessing"] = preprocessing_contract(cfg.resize)
    return json.loads(json.dumps(record))


def save_config(cfg, path, model=None):
    """Write the run's recipe (:func:`run_record`) as JSON, atomically."""
    from nin_keras.io import atomic_write_text

    atomic_write_text(path, json.dumps(run_record(cfg, model), indent=2, sort_keys=True) + "\n")


def config_differences(saved, cfg, ignore=("verbose", "output_dir", "nin_keras_version", "format", "format_version",
                                           "export", "preprocessing")):
    """Settings whose values differ between a run's saved ``config.json`` and ``cfg`` (the resume check).

    The model is compared as the whole network, without its class count
    (that comes from the data). A run written before run records (format 0)
    is compared on its settings only.
    """
    from nin_keras.rundir import run_format

    current = run_record(cfg) if run_format(saved) else cfg.to_dict()

    def network(record):
        return {k: v for k, v in (record.get("model") or {}).items() if k != "num_classes"}

    keys = (set(saved) | set(current)) - set(ignore) - {"model"}
    diff = [k for k in keys if saved.get(k, getattr(BY_NAME.get(k), "before_it_existed", None)) != current.get(k)]
    if network(saved) != network(current):
        diff.append("model")
    return sorted(diff)

