"""Fused BatchNorm on TensorFlow: one oneDNN kernel per BatchNorm layer instead of Keras 3's unfused ops.

Why: Keras 3's ``BatchNormalization`` on TensorFlow computes the batch
moments and the normalisation as separate ops (about ten passes over the
activations with their gradients) and, under mixed bfloat16, casts to
float32 and back around them. TensorFlow's ``FusedBatchNormV3`` does it in
one kernel (oneDNN's on x86, bfloat16 input with float32 statistics
included). What that was worth per preset and precision is in
docs/benchmarks.md.

How: :func:`fuse_batch_norm` gives each eligible BatchNorm layer of a model
its own ``call`` (an instance attribute), so the layer's class, weights,
config and saved files are Keras' own and a model loaded anywhere else runs
Keras' unfused path with the same numbers. The moving statistics follow
Keras' rule exactly (momentum ``m`` keeps ``m`` of the old value; the batch
variance is the biased one, as Keras uses, not the fused kernel's
Bessel-corrected one).

Eligible: TensorFlow backend, 4-D input normalised over its last axis
(channels_last), with both ``scale`` and ``center``, no renorm, not
synchronized. Anything else keeps Keras' call, and so does a call with a
mask.
"""

import types


def eligible(layer):
    """True if ``layer`` is a BatchNormalization this module can fuse."""
    import keras

    if not (keras.backend.backend() == "tensorflow" and isinstance(layer, keras.layers.BatchNormalization)
            and not layer.renorm and not layer.synchronized and layer.scale and layer.center):
        return False
    rank = len(layer.input.shape)
    return rank == 4 and layer.axis % rank == 3


def _fused_call(self, inputs, training=None, mask=None):
    """BatchNormalization.call through ``FusedBatchNormV3`` (same arguments, same results)."""
    import tensorflow as tf

    if mask is not None:  # not a case nin_keras builds; Keras' own path handles it
        return type(self).call(self, inputs, training=training, mask=mask)
    # The fused kernel takes float32 or bfloat16/float16 activations with float32 statistics.
    x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
    if training and self.trainable:
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, self.gamma, self.beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)  # Keras' biased variance
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
    else:
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance, epsilon=self.epsilon,
            data_format="NHWC", is_training=False)
    return tf.cast(y, self.compute_dtype)


def fuse_batch_norm(model):
    """Give every eligible BatchNormalization layer of ``model`` the fused call; returns how many."""
    from nin_keras.precise_bn import batchnorm_layers

    fused = 0
    for layer in batchnorm_layers(model):
        if eligible(layer):
            layer.call = types.MethodType(_fused_call, layer)
            fused += 1
    return fused


def count_fused(model):
    """How many of the model's BatchNorm layers run the fused call (the tests check it)."""
    from nin_keras.precise_bn import batchnorm_layers

    return sum(getattr(layer.call, "__func__", None) is _fused_call for layer in batchnorm_layers(model))
