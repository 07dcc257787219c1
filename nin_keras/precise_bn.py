"""Precise BatchNorm: after training, BatchNorm's moving statistics from a pass over training images.

Why: BatchNorm normalises with each batch's statistics while training and
with its moving averages (momentum 0.9-0.99) at inference. A short run has
too few steps for the averages to catch up with the weights: `--limit 12800
--epochs 2` (default preset) trained to 0.85 and validated at 0.106, and a
200-photo folder (2.5 steps an epoch) validated at chance for 14 of 20
epochs. The fix of fvcore's ``update_bn_stats`` and pycls' precise BN: with
the weights frozen, run training batches through the model and set every
layer's moving mean and variance to the average of its batch statistics.

How, here: every BatchNorm layer's momentum is set to 0 and every dropout
rate to 0 (inference has no dropout, so the statistics must be those of
inputs without it); the model is called with ``training=True`` on
un-augmented training batches of the per-replica batch size training used
(under MirroredStrategy each replica normalised its own share of a batch),
so after each call a layer's moving mean and variance are exactly that
batch's; they are averaged over the batches and assigned at the end, and
momentum and rates restored. Only the moving statistics change. The pass
runs in the strategy's cross-replica context, on one device: the moving
statistics are mirrored variables, so the assignment sets every replica's
copy to the same value (and every worker of a multi-worker run computes the
same values from the same images).
"""

import math
import time
import weakref

import numpy as np

#: Images in the recalibration pass: enough for stable averages (pycls uses about 1,000-8,000), a few
#: seconds on a CPU.
DEFAULT_IMAGES = 2048


def _layers(model):
    """Every layer of ``model``, nested models' layers included."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def batchnorm_layers(model):
    """The model's BatchNormalization layers (nested models included)."""
    import keras

    return [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def _noise_layers(model):
    """(layer, attribute) of every layer that adds noise only in training (dropout and its kin)."""
    import keras

    kinds = {"Dropout": "rate", "GaussianDropout": "rate", "AlphaDropout": "rate", "GaussianNoise": "stddev"}
    found = []
    for layer in _layers(model):
        for name, attribute in kinds.items():
            cls = getattr(keras.layers, name, None)
            if cls is not None and isinstance(layer, cls):
                found.append((layer, attribute))
                break
    return found


_FORWARD = weakref.WeakKeyDictionary()


def _forward(model):
    """The model's training-mode call as one tf.function per model, traced once (momentum and rates are 0
    whenever it runs: :func:`recalibrate` sets them around every call)."""
    import tensorflow as tf

    if model not in _FORWARD:
        _FORWARD[model] = tf.function(lambda x: model(x, training=True), reduce_retracing=True)
    return _FORWARD[model]


def recalibrate(model, dataset, max_batches=None):
    """Set every BatchNorm layer's moving mean/variance to the average batch statistics over ``dataset``.

    ``dataset`` yields ``(images, labels)`` or images, un-augmented, in
    batches of the per-replica batch size training used. Returns
    ``{"layers", "batches", "images", "seconds"}``, or None when the model
    has no BatchNorm (nothing is run).
    """
    bns = batchnorm_layers(model)
    if not bns:
        return None
    start = time.perf_counter()
    saved = [(layer, "momentum", layer.momentum) for layer in bns]
    saved += [(layer, attribute, getattr(layer, attribute)) for layer, attribute in _noise_layers(model)]
    sums = [[np.zeros(bn.moving_mean.shape, np.float64), np.zeros(bn.moving_variance.shape, np.float64)] for bn in bns]
    batches = images = 0
    try:
        for layer, attribute, _ in saved:
            setattr(layer, attribute, 0.0)
        forward = _forward(model)
        for batch in dataset:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            forward(x)
            for bn, (mean, var) in zip(bns, sums):
                mean += np.asarray(bn.moving_mean.numpy(), np.float64)
                var += np.asarray(bn.moving_variance.numpy(), np.float64)
            batches += 1
            images += int(x.shape[0])
            if max_batches is not None and batches >= max_batches:
                break
    finally:
        for layer, attribute, value in saved:
            setattr(layer, attribute, value)
    if not batches:
        return None
    for bn, (mean, var) in zip(bns, sums):
        bn.moving_mean.assign((mean / batches).astype(np.float32))
        bn.moving_variance.assign((var / batches).astype(np.float32))
    return {"layers": len(bns), "batches": batches, "images": images,
            "seconds": round(time.perf_counter() - start, 2)}


def recalibrate_on_training_images(model, x_train, y_train, batch_size, *, replicas=1, seed=0, images=DEFAULT_IMAGES):
    """:func:`recalibrate` on a seeded sample of ``images`` training images, un-augmented.

    Batches are ``batch_size // replicas`` images (training's per-replica
    batch, so the statistics are those the layers normalised with), full
    batches only. Returns :func:`recalibrate`'s summary, or None.
    """
    from nin_keras.data import make_dataset

    if not batchnorm_layers(model):
        return None
    per_replica = max(1, int(batch_size) // max(1, int(replicas)))
    n = min(len(x_train), images)
    batches = max(1, n // per_replica)
    dataset = make_dataset(x_train, y_train, per_replica, shuffle=True, seed=seed + 7,
                           drop_remainder=len(x_train) >= per_replica)
    return recalibrate(model, dataset, max_batches=math.ceil(batches))


#: Images of the pass before each epoch's validation: a cheaper estimate, for monitoring and best.keras.
VALIDATION_IMAGES = 512


def before_validation(x_train, y_train, batch_size, *, replicas=1, seed=0, images=VALIDATION_IMAGES):
    """A Keras callback that recalibrates before every validation, so ``val_accuracy`` (and the choice of
    ``best.keras``) judges the weights, not moving statistics that lag them.

    Training is unaffected: batches are normalised with their own statistics
    whatever the moving ones hold.
    """
    import keras

    class PreciseBatchNorm(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            recalibrate_on_training_images(self.model, x_train, y_train, batch_size, replicas=replicas, seed=seed,
                                           images=images)

    return PreciseBatchNorm()
