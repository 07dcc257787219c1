"""Presets: plain data, name -> description + model args + fit args.

``model`` holds keyword arguments of :func:`nin_keras.model.build_nin`;
``fit`` holds training settings (see :mod:`nin_keras.config`); the optional
``export`` holds defaults of ``python -m export`` for the preset's runs.
"""

import copy

from nin_keras.errors import ConfigError

PRESETS = {
    "fashion": {
        "description": (
            "The default: a CPU-sized NiN for 28x28 Fashion-MNIST. mlpconv blocks 32 (5x5, one 1x1) "
            "and 64 (3x3, two 1x1), then a 128 (3x3) + 10 (1x1) class block and global average "
            "pooling; BatchNorm only at 13x13 and below; 104,840 parameters. 8 epochs: >= 0.92 test "
            "accuracy in about 10 minutes on a 2-core AVX2 CPU in float32 (docs/benchmarks.md)."
        ),
        "model": {
            "input_shape": [28, 28, 1],
            "image_size": None,
            "blocks": [
                # With Keras' unfused BatchNorm ops, BN at 28x28 cost 2.3x the whole step on an
                # AVX2 CPU, at 13x13 and below about 10% (docs/benchmarks.md); kept as measured.
                {"filters": 32, "kernel_size": 5, "mlp_filters": [32], "pool": "max", "batch_norm": False},
                {"filters": 64, "kernel_size": 3, "pool": "max", "batch_norm": True},
            ],
            # Linear class maps before GAP (converges faster than d2l's final ReLU).
            "head_block": {"filters": 128, "kernel_size": 3, "mlp_filters": [None], "batch_norm": True},
            "head_activation": None,
        },
        "fit": {"epochs": 8, "batch_size": 128, "optimizer": "adam", "learning_rate": 0.004},
    },
    "fashion-best": {
        "description": (
            "The most accurate Fashion-MNIST NiN here: mlpconv blocks 32 (3x3, one 1x1) at 28x28, 64 (3x3, "
            "two 1x1) at 13x13 and 192 (3x3, two 1x1, no pooling) at 6x6, then a 192 (3x3) + 10 (1x1) "
            "class block and GAP; BatchNorm after the stem; flip + 3-pixel shift augmentation, AdamW, "
            "26 epochs; at inference it averages the class scores of the image and its mirror. 549,896 "
            "parameters (0.4% of VGG16's 138 M), 24.2 M multiply-adds per training image, 48.4 M per "
            "prediction; test accuracy 0.9431 +- 0.0004 over 3 seeds (0.9398 without the mirror), about "
            "48 minutes on 2 AVX2 cores (docs/benchmarks.md)."
        ),
        "model": {
            "input_shape": [28, 28, 1],
            "image_size": None,
            "blocks": [
                {"filters": 32, "kernel_size": 3, "mlp_filters": [32], "pool": "max", "batch_norm": False},
                {"filters": 64, "kernel_size": 3, "pool": "max", "batch_norm": True},
                # The widths go where they are cheap: a parameter at 6x6 costs 36
                # multiply-adds per image, at 13x13 169 and at 28x28 784.
                {"filters": 192, "kernel_size": 3, "pool": None, "batch_norm": True},
            ],
            "head_block": {"filters": 192, "kernel_size": 3, "mlp_filters": [None], "batch_norm": True},
            "head_activation": None,
            # Mirror-averaged scores: +0.3 point on the same weights (docs/benchmarks.md).
            "test_time_flip": True,
        },
        "fit": {"epochs": 26, "batch_size": 128, "optimizer": "adamw", "learning_rate": 0.003,
                "weight_decay": 0.05, "augment": True},
        # python -m export's defaults for this preset's runs: with one scale per tensor its int8
        # lost 0.07-0.31 point against Keras (3 seeds), with one per channel +0.03 (docs/benchmarks.md).
        "export": {"per_channel": True},
    },
    "fashion-best-v1": {
        "description": (
            "fashion-best's first version, kept so README's figures for it reproduce: the same recipe with "
            "128-wide 6x6 and class blocks. 286,088 parameters (0.2% of VGG16's 138 M), 14.7 M "
            "multiply-adds; test accuracy 0.936 +- 0.002 over 3 seeds, about 37 minutes on 2 AVX2 cores."
        ),
        "model": {
            "input_shape": [28, 28, 1],
            "image_size": None,
            "blocks": [
                {"filters": 32, "kernel_size": 3, "mlp_filters": [32], "pool": "max", "batch_norm": False},
                {"filters": 64, "kernel_size": 3, "pool": "max", "batch_norm": True},
                {"filters": 128, "kernel_size": 3, "pool": None, "batch_norm": True},
            ],
            "head_block": {"filters": 128, "kernel_size": 3, "mlp_filters": [None], "batch_norm": True},
            "head_activation": None,
        },
        "fit": {"epochs": 20, "batch_size": 128, "optimizer": "adamw", "learning_rate": 0.003,
                "weight_decay": 0.05, "augment": True},
    },
    "fashion-v1": {
        "description": (
            "The previous default, kept so README's earlier figures reproduce: 64 (5x5) and 128 (3x3) "
            "mlpconv blocks, no BatchNorm; 128,614 parameters, 0.906 test accuracy in 10 epochs "
            "(model-only 295 images/s on a 2-core AVX2 CPU in float32: about 31 minutes of training)."
        ),
        "model": {
            "input_shape": [28, 28, 1],
            "image_size": None,
            "blocks": [
                {"filters": 64, "kernel_size": 5, "pool": "max"},
                {"filters": 128, "kernel_size": 3, "pool": "max"},
            ],
            "head_block": {"filters": None, "kernel_size": 3},
            # Linear class maps before GAP: without BatchNorm (which halves CPU
            # throughput) this converges markedly faster than a final ReLU.
            "head_activation": None,
        },
        "fit": {"epochs": 10, "batch_size": 128, "optimizer": "adam", "learning_rate": 0.003},
    },
    "tiny": {
        "description": "A tiny NiN for tests and smoke runs: two narrow blocks, seconds per epoch.",
        "model": {
            "input_shape": [28, 28, 1],
            "image_size": None,
            "blocks": [
                {"filters": 16, "kernel_size": 5, "pool": "max"},
                {"filters": 32, "kernel_size": 3, "pool": "max"},
            ],
            "head_block": {"filters": None, "kernel_size": 3},
        },
        "fit": {"epochs": 2, "batch_size": 128, "optimizer": "adam", "learning_rate": 0.003},
    },
    "photo": {
        "description": (
            "For your own colour photos (--image-dir): 96x96 RGB, mlpconv blocks 32 (5x5 stride 2, one 1x1), "
            "64 and 128 (3x3), then a 256 (3x3) + classes (1x1) block and GAP; BatchNorm from 23x23 down; "
            "photo augmentation (random resized crop, flip, colour jitter) on; Adam 3e-3, 20 epochs. "
            "42.3 M multiply-adds per image (437,448 parameters for 10 classes). Change the resolution with --image-size."
        ),
        "model": {
            "input_shape": [96, 96, 3],
            "image_size": None,
            "blocks": [
                {"filters": 32, "kernel_size": 5, "strides": 2, "mlp_filters": [32], "pool": "max",
                 "batch_norm": False},
                {"filters": 64, "kernel_size": 3, "pool": "max", "batch_norm": True},
                {"filters": 128, "kernel_size": 3, "pool": "max", "batch_norm": True},
            ],
            "head_block": {"filters": 256, "kernel_size": 3, "mlp_filters": [None], "batch_norm": True},
            "head_activation": None,
            # A folder of a few hundred photos gives a few hundred steps: moving
            # statistics must settle within them.
            "batch_norm_momentum": 0.9,
        },
        "fit": {"epochs": 20, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.003, "augment": True},
    },
    "d2l": {
        "description": (
            "Exactly the d2l chapter's NiN: 28x28 resized to 224x224 in the graph, "
            "96/256/384 mlpconv blocks, dropout 0.5, 10-class block + GAP; 1,992,166 "
            "parameters. About an hour per epoch on 2 CPU cores: meant for GPUs."
        ),
        "model": {
            "input_shape": [28, 28, 1],
            "image_size": [224, 224],
            "blocks": [
                {"filters": 96, "kernel_size": 11, "strides": 4, "padding": "valid", "pool": "max"},
                {"filters": 256, "kernel_size": 5, "pool": "max"},
                {"filters": 384, "kernel_size": 3, "pool": "max", "dropout": 0.5},
            ],
            "head_block": {"filters": None, "kernel_size": 3},
        },
        "fit": {"epochs": 10, "batch_size": 128, "optimizer": "sgd", "learning_rate": 0.1},
    },
    "paper-cifar": {
        "description": (
            "Lin et al.'s CIFAR-10 NiN (32x32x3): 192/160/96, 192/192/192, 192/192/10 "
            "mlpconv blocks, max then average pooling, dropout, GAP; ~0.97M parameters."
        ),
        "model": {
            "input_shape": [32, 32, 3],
            "image_size": None,
            "blocks": [
                {"filters": 192, "kernel_size": 5, "mlp_filters": [160, 96], "pool": "max", "dropout": 0.5},
                {"filters": 192, "kernel_size": 5, "mlp_filters": [192, 192], "pool": "avg", "dropout": 0.5},
            ],
            "head_block": {"filters": 192, "kernel_size": 3, "mlp_filters": [192, None]},
        },
        "fit": {
            "epochs": 100,
            "batch_size": 128,
            "optimizer": "sgd",
            "learning_rate": 0.1,
            "momentum": 0.9,
            "weight_decay": 1e-4,
        },
    },
}

DEFAULT_PRESET = "fashion"


def get_preset(name):
    """Return a deep copy of preset ``name``; ConfigError lists the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}.")
    return copy.deepcopy(PRESETS[name])


def list_presets():
    """Names of the presets, in definition order (the default first)."""
    return list(PRESETS)


def create_model(preset=DEFAULT_PRESET, **overrides):
    """Build preset ``preset``'s model; keyword arguments override its ``build_nin`` arguments.

    Overrides whose value is None are dropped (timm's ``create_model``
    convention), so "not given" always means "the preset's".

    Example: ``create_model("fashion", num_classes=5, input_shape=(28, 28, 3))``.
    """
    from nin_keras.model import build_nin

    kwargs = get_preset(preset)["model"]
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return build_nin(**kwargs)


def describe_presets():
    """One line per preset: name and description."""
    width = max(len(name) for name in PRESETS)
    return "\n".join(f"{name:<{width}} {p['description']}" for name, p in PRESETS.items())
