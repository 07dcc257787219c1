"""Network in Network (Lin, Chen & Yan 2013) with the Keras 3 functional API.

An *mlpconv* block is a k x k convolution followed by 1 x 1 convolutions (a
small MLP shared across pixels), each with ReLU. The classifier is one more
mlpconv block whose last convolution has one channel per class, followed by
global average pooling, so the network needs no dense layers at all.

Layer names are block-prefixed (``block2_conv1``, ``block2_pool``,
``head_gap``) so summaries, weights and TFLite graphs read well.
"""

import keras
from keras import layers

from nin_keras.errors import require

POOL_TYPES = (None, "max", "avg")
PADDINGS = ("valid", "same")
HEADS = ("gap", "dense")
DATA_FORMATS = ("channels_last", "channels_first")


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _validate_block(spec, index, mlp_layers, is_head=False):
    """Normalise one block spec dict; raise ConfigError naming the bad field."""
    where = f"block {index}" if not is_head else "head block"
    require(isinstance(spec, dict), f"{where} must be a dict.", spec)
    known = {"filters", "kernel_size", "strides", "padding", "mlp_filters", "pool", "dropout", "batch_norm"}
    unknown = set(spec) - known
    require(not unknown, f"{where} has unknown keys {sorted(unknown)}.", spec)
    out = {
        "filters": spec.get("filters"),
        "kernel_size": spec.get("kernel_size", 3),
        "strides": spec.get("strides", 1),
        "padding": spec.get("padding", "same"),
        "pool": spec.get("pool", None if is_head else "max"),
        "dropout": spec.get("dropout", 0.0),
        "batch_norm": spec.get("batch_norm"),
    }
    if not (is_head and out["filters"] is None):
        require(_positive_int(out["filters"]), f"{where}: `filters` must be a positive int.", out["filters"])
    require(_positive_int(out["kernel_size"]), f"{where}: `kernel_size` must be a positive int.", out["kernel_size"])
    require(_positive_int(out["strides"]), f"{where}: `strides` must be a positive int.", out["strides"])
    require(out["padding"] in PADDINGS, f"{where}: `padding` must be one of {PADDINGS}.", out["padding"])
    require(out["pool"] in POOL_TYPES, f"{where}: `pool` must be one of {POOL_TYPES}.", out["pool"])
    require(
        isinstance(out["dropout"], (int, float)) and 0 <= out["dropout"] < 1,
        f"{where}: `dropout` must be in [0, 1).",
        out["dropout"],
    )
    require(out["batch_norm"] in (None, True, False), f"{where}: `batch_norm` must be true, false or null.",
           out["batch_norm"])
    mlp = spec.get("mlp_filters")
    if mlp is None:
        mlp = [out["filters"]] * mlp_layers
    require(isinstance(mlp, (list, tuple)) and 1 <= len(mlp) <= 3, f"{where}: `mlp_filters` must list 1 to 3 widths.", mlp)
    for width in mlp:
        if not (is_head and width is None):
            require(_positive_int(width), f"{where}: `mlp_filters` entries must be positive ints.", mlp)
    out["mlp_filters"] = list(mlp)
    return out


def mlpconv_block(
    x,
    filters,
    kernel_size,
    *,
    strides=1,
    padding="same",
    mlp_filters=(None, None),
    mlp_kernel_size=1,
    batch_norm=False,
    last_activation="relu",
    data_format="channels_last",
    name="block1",
    batch_norm_momentum=0.99,
):
    """Apply one NiN mlpconv block to tensor ``x``.

    Args:
        x: input tensor (NHWC).
        filters: channels of the k x k convolution.
        kernel_size, strides, padding: of the k x k convolution.
        mlp_filters: channels of each following "1 x 1" convolution; ``None``
            entries repeat ``filters``. Its length is the number of 1 x 1 convs.
        mlp_kernel_size: kernel size of those convolutions (1 in the paper; the
            seeds' exercises ask what happens with larger ones).
        batch_norm: insert BatchNormalization between each conv and its ReLU.
        batch_norm_momentum: momentum of BatchNorm's moving statistics.
        last_activation: activation of the block's last convolution.
        data_format: "channels_last" (NHWC) or "channels_first" (NCHW) layout of ``x``.
        name: block prefix of every layer (``block2`` gives ``block2_conv0``).

    Returns:
        The output tensor.
    """
    widths = [filters] + [filters if w is None else w for w in mlp_filters]
    kernels = [kernel_size] + [mlp_kernel_size] * len(mlp_filters)
    for i, (width, kernel) in enumerate(zip(widths, kernels)):
        is_last = i == len(widths) - 1
        activation = last_activation if is_last else "relu"
        x = layers.Conv2D(
            width,
            kernel,
            strides=strides if i == 0 else 1,
            padding=padding if i == 0 else "same",
            # Bias is redundant when BatchNorm follows.
            use_bias=not batch_norm,
            kernel_initializer="glorot_uniform",  # Xavier uniform, as in the d2l recipe
            data_format=data_format,
            name=f"{name}_conv{i}",
        )(x)
        if batch_norm:
            axis = -1 if data_format == "channels_last" else 1
            x = layers.BatchNormalization(axis=axis, momentum=batch_norm_momentum, name=f"{name}_bn{i}")(x)
        if activation is not None:
            x = layers.Activation(activation, name=f"{name}_relu{i}" if activation == "relu" else f"{name}_act{i}")(x)
    return x


def _pool(x, kind, name, data_format):
    if kind == "max":
        return layers.MaxPooling2D(pool_size=3, strides=2, data_format=data_format, name=f"{name}_pool")(x)
    if kind == "avg":
        return layers.AveragePooling2D(pool_size=3, strides=2, data_format=data_format, name=f"{name}_pool")(x)
    return x


@keras.saving.register_keras_serializable(package="nin_keras")
class MirrorBatch(layers.Layer):
    """At inference, append each image's left-right mirror to the batch.

    Images are (batch, height, width, channels); the output batch is the
    input followed by its mirrors, so :class:`MirrorAverage` can pair them up
    again. BatchNorm uses its moving statistics at inference, so the two
    halves do not mix. In training it passes the batch through: augmentation
    already flips there, and a doubled batch would double the step's cost.
    """

    def call(self, inputs, training=None):
        if training:
            return inputs
        return keras.ops.concatenate([inputs, keras.ops.flip(inputs, axis=2)], axis=0)


@keras.saving.register_keras_serializable(package="nin_keras")
class MirrorAverage(layers.Layer):
    """At inference, average each image's class scores with its mirror's (see :class:`MirrorBatch`)."""

    def call(self, inputs, training=None):
        if training:
            return inputs
        original, mirrored = keras.ops.split(inputs, 2, axis=0)
        return (original + mirrored) / 2.0


def build_nin(
    blocks,
    head_block=None,
    *,
    num_classes=10,
    input_shape=(28, 28, 1),
    image_size=None,
    mlp_layers=2,
    mlp_kernel_size=1,
    width_multiplier=1.0,
    dropout=None,
    batch_norm=False,
    batch_norm_momentum=0.99,
    head="gap",
    dense_units=(4096, 4096),
    head_activation="relu",
    classifier_activation="softmax",
    data_format=None,
    test_time_flip=False,
    name="nin",
):
    """Build a Network-in-Network classifier as a functional ``keras.Model``.

    The model takes raw images (uint8 or float in [0, 255]) of ``input_shape``;
    it rescales them to [0, 1] and resizes them to ``image_size`` inside the
    graph, so the input pipeline and a phone app ship raw pixels.

    Args:
        blocks: list of feature-block specs, each a dict with ``filters``,
            ``kernel_size`` (3), ``strides`` (1), ``padding`` ("same"),
            optional ``mlp_filters`` (widths of the 1 x 1 convs), ``pool``
            ("max", "avg" or None; 3 x 3 window, stride 2, after the block) and
            ``dropout`` (rate after the pool, 0) and ``batch_norm`` (None: the
            model-wide ``batch_norm``).
        head_block: spec of the classifier mlpconv block (GAP head only). Its
            ``filters`` and ``mlp_filters`` entries may be None, meaning
            ``num_classes``; its last convolution must be ``num_classes`` wide.
            Default: ``{"filters": None, "kernel_size": 3}``.
        num_classes: number of classes.
        input_shape: raw input shape (H, W, C).
        image_size: (H, W) the model resizes to, or None to keep the input size.
        mlp_layers: number of 1 x 1 convs per block when a spec does not list
            ``mlp_filters`` (1 to 3).
        mlp_kernel_size: kernel size of those convs (default 1).
        width_multiplier: scales the width of every feature block.
        dropout: if not None, overrides the dropout rate of the last feature
            block (the one before the classifier, as in d2l).
        batch_norm: BatchNormalization after every convolution of blocks
            whose spec does not set ``batch_norm`` itself. (BatchNorm at full
            resolution measured 2.3x slower on a 2-core AVX2 CPU with Keras'
            unfused ops, hence per-block control; training now fuses it,
            see :mod:`nin_keras.fused_bn`.)
        batch_norm_momentum: momentum of every BatchNorm's moving mean and
            variance (Keras' 0.99 by default; 0.9 settles within the few
            hundred steps a small photo folder gives).
        head: "gap" (global average pooling, NiN) or "dense" (flatten, then
            ``dense_units`` ReLU layers with dropout 0.5, then a dense
            classifier, as in AlexNet/VGG) for comparison.
        dense_units: hidden widths of the dense head.
        head_activation: activation of the classifier block's last conv
            before global average pooling: "relu" (d2l, the paper) or None
            (linear class scores, which trains faster without BatchNorm).
        classifier_activation: "softmax" (probabilities) or None (logits).
        data_format: layout of the convolutions, "channels_last" (NHWC) or
            "channels_first" (NCHW); None means "channels_last", whatever
            ``keras.json`` says (the layout is part of the recipe).
            The input is always (H, W, C) raw pixels; for channels_first the
            model transposes it after rescaling. (NHWC is the default because
            it measured 2.4-3x faster on CPU; see README.)
        test_time_flip: if True, at inference (predict, evaluate, every
            export) the model scores each image and its left-right mirror and
            averages the two class scores before the softmax: test-time
            augmentation inside the graph, so a phone app gets it unchanged.
            Training is untouched (the two layers pass through), as are the
            weights; inference costs twice the multiply-adds.
        name: model name.

    Returns:
        A ``keras.Model``.
    """
    _check_arguments(blocks, num_classes, input_shape, image_size, mlp_layers, mlp_kernel_size=mlp_kernel_size,
                     width_multiplier=width_multiplier, dropout=dropout, batch_norm_momentum=batch_norm_momentum,
                     head=head, head_activation=head_activation, classifier_activation=classifier_activation,
                     data_format=data_format, test_time_flip=test_time_flip)
    # Not keras.config.image_data_format(): a user's ~/.keras/keras.json must not change the network a
    # preset or a recorded run builds (TensorFlow's CPU Conv2D refuses NCHW on AVX2-only machines).
    data_format = data_format or "channels_last"
    specs = [_validate_block(spec, i + 1, mlp_layers) for i, spec in enumerate(blocks)]
    head_spec = _validate_block(head_block or {"filters": None, "kernel_size": 3}, 0, mlp_layers, is_head=True)
    if dropout is not None:
        specs[-1]["dropout"] = dropout
    conv = {"mlp_kernel_size": mlp_kernel_size, "data_format": data_format, "batch_norm_momentum": batch_norm_momentum}

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _stem(inputs, input_shape, image_size, data_format, test_time_flip)
    for i, spec in enumerate(specs, start=1):
        spec = {**spec, "filters": _scaled(spec["filters"], width_multiplier),
                "mlp_filters": [_scaled(w, width_multiplier) for w in spec["mlp_filters"]]}
        x = _feature_block(x, spec, f"block{i}", batch_norm, conv)
    if head == "gap":
        x = _gap_head(x, head_spec, num_classes, batch_norm=batch_norm, head_activation=head_activation, conv=conv)
    else:
        x = _dense_head(x, dense_units, num_classes)
    if test_time_flip:
        x = MirrorAverage(name="tta_average")(x)
    if classifier_activation == "softmax":
        # float32 output even under mixed precision, for a stable loss.
        x = layers.Activation("softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


def _check_arguments(blocks, num_classes, input_shape, image_size, mlp_layers, **kw):
    """build_nin's argument checks, each a one-line ConfigError that repeats the bad value."""
    require(isinstance(blocks, (list, tuple)) and len(blocks) >= 1, "`blocks` must be a non-empty list of block specs.",
            blocks)
    require(_positive_int(num_classes) and num_classes >= 2, "`num_classes` must be an int >= 2.", num_classes)
    require(
        isinstance(input_shape, (list, tuple)) and len(input_shape) == 3 and all(_positive_int(d) for d in input_shape),
        "`input_shape` must be (height, width, channels) of positive ints.",
        input_shape,
    )
    if image_size is not None:
        require(
            isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(_positive_int(d) for d in image_size),
            "`image_size` must be (height, width) of positive ints or None.",
            image_size,
        )
    require(mlp_layers in (1, 2, 3), "`mlp_layers` must be 1, 2 or 3.", mlp_layers)
    require(_positive_int(kw["mlp_kernel_size"]), "`mlp_kernel_size` must be a positive int.", kw["mlp_kernel_size"])
    require(isinstance(kw["width_multiplier"], (int, float)) and kw["width_multiplier"] > 0,
            "`width_multiplier` must be > 0.", kw["width_multiplier"])
    dropout = kw["dropout"]
    if dropout is not None:
        require(isinstance(dropout, (int, float)) and 0 <= dropout < 1, "`dropout` must be in [0, 1).", dropout)
    momentum = kw["batch_norm_momentum"]
    require(isinstance(momentum, float) and 0 < momentum < 1, "`batch_norm_momentum` must be a float in (0, 1).",
            momentum)
    require(kw["head"] in HEADS, f"`head` must be one of {HEADS}.", kw["head"])
    require(kw["head_activation"] in ("relu", None), "`head_activation` must be 'relu' or None.", kw["head_activation"])
    require(kw["classifier_activation"] in ("softmax", None), "`classifier_activation` must be 'softmax' or None.",
            kw["classifier_activation"])
    data_format = kw["data_format"] or "channels_last"
    require(data_format in DATA_FORMATS, f"`data_format` must be one of {DATA_FORMATS}.", data_format)
    require(isinstance(kw["test_time_flip"], bool), "`test_time_flip` must be True or False.", kw["test_time_flip"])


def _scaled(width, multiplier):
    return max(1, int(round(width * multiplier)))


def _stem(inputs, input_shape, image_size, data_format, test_time_flip):
    """Rescale raw pixels, add the mirrors (test_time_flip), resize, and transpose for NCHW."""
    # Pixels arrive as raw [0, 255] values; scaling inside the graph means a
    # phone app (and the int8 TFLite model) can feed camera bytes directly.
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if test_time_flip:
        x = MirrorBatch(name="tta_mirror")(x)
    if image_size is not None and tuple(image_size) != tuple(input_shape[:2]):
        # The input is NHWC whatever keras.json says.
        x = layers.Resizing(image_size[0], image_size[1], data_format="channels_last", name="resize")(x)
    if data_format == "channels_first":
        x = layers.Permute((3, 1, 2), name="to_channels_first")(x)
    return x


def _feature_block(x, spec, name, batch_norm, conv):
    """One validated block spec: its mlpconv block, its pool and its dropout."""
    x = mlpconv_block(
        x, spec["filters"], spec["kernel_size"], strides=spec["strides"], padding=spec["padding"],
        mlp_filters=spec["mlp_filters"], mlp_kernel_size=conv["mlp_kernel_size"],
        batch_norm=batch_norm if spec["batch_norm"] is None else spec["batch_norm"],
        data_format=conv["data_format"], name=name, batch_norm_momentum=conv["batch_norm_momentum"],
    )
    x = _pool(x, spec["pool"], name, conv["data_format"])
    if spec["dropout"]:
        x = layers.Dropout(spec["dropout"], name=f"{name}_dropout")(x)
    return x


def _gap_head(x, spec, num_classes, *, batch_norm, head_activation, conv):
    """NiN's head: a class block (its last conv ``num_classes`` wide), then global average pooling."""
    filters = spec["filters"] or num_classes
    mlp = [num_classes if w is None else w for w in spec["mlp_filters"]]
    require(mlp[-1] == num_classes, "head block: its last convolution must have `num_classes` filters.", mlp)
    x = mlpconv_block(
        x, filters, spec["kernel_size"], strides=spec["strides"], padding=spec["padding"], mlp_filters=mlp,
        mlp_kernel_size=conv["mlp_kernel_size"],
        batch_norm=batch_norm if spec["batch_norm"] is None else spec["batch_norm"],
        last_activation=head_activation, data_format=conv["data_format"], name="head",
        batch_norm_momentum=conv["batch_norm_momentum"],
    )
    return layers.GlobalAveragePooling2D(data_format=conv["data_format"], name="head_gap")(x)


def _dense_head(x, dense_units, num_classes):
    """The AlexNet/VGG head NiN replaced (for comparison): flatten, ReLU dense layers with dropout, logits."""
    x = layers.Flatten(name="head_flatten")(x)
    for j, units in enumerate(dense_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"head_dense{j}")(x)
        x = layers.Dropout(0.5, name=f"head_dense{j}_dropout")(x)
    return layers.Dense(num_classes, name="head_logits")(x)


def block_summary(model, print_fn=print):
    """Print each block's output shape and parameters, like the seeds do.

    Rows are the last layer of each block prefix (``block1``, ``block1_pool``
    is folded into its block), so d2l's table ``block 1 -> 54x54x96`` reads
    directly. Returns the rows as a list of (name, shape, params).
    """
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        prefix = layer.name.split("_")[0]
        params = layer.count_params()
        shape = tuple(layer.output.shape[1:])
        group = layer.name if layer.name.endswith(("_pool", "_dropout", "_gap", "_flatten")) else prefix
        if rows and rows[-1][0] == group:
            rows[-1] = (group, shape, rows[-1][2] + params)
        else:
            rows.append((group, shape, params))
    for name, shape, params in rows:
        print_fn(f"{name:<22} output shape: {'x'.join(str(d) for d in shape):<14} params: {params:,}")
    print_fn(f"{'total':<22} {'':<28} params: {model.count_params():,}")
    return rows
