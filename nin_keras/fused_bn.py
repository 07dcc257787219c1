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

Below AVX-512 the forward pass is split: oneDNN's AVX2 BatchNorm forward
kernel measured 8x slower than its AVX-512 one on a 2-core Xeon with AMX
capped to AVX2 (10 ms against 1.25 ms for a 128x13x13x64 batch, inference
as slow as training), while its backward kernel is fast on both. So on a
CPU where oneDNN runs AVX2 (no AVX-512, or ``ONEDNN_MAX_CPU_ISA`` capping
it), float32 training computes the batch moments and the normalisation
with TensorFlow's own ops and only the gradient with the fused kernel
(:func:`split_batch_norm`). ``NIN_KERAS_BATCH_NORM_FORWARD=fused|split``
overrides the choice (the bench's measurements).

Eligible: TensorFlow backend, 4-D input normalised over its last axis
(channels_last), with both ``scale`` and ``center``, no renorm, not
synchronized. Where oneDNN runs, also a number of channels its JIT
kernels take (:func:`has_jit_kernel`: a multiple of 8 in float32, of 16 in
bfloat16 and float16). Anything else keeps Keras' call, and so does a call
with a mask.
"""

import os
import types

from nin_keras.errors import ConfigError

#: Overrides the forward kernel's choice: "fused", "split" (or unset: by the CPU).
FORWARD_ENV = "NIN_KERAS_BATCH_NORM_FORWARD"


def forward_override(env=None):
    """``$NIN_KERAS_BATCH_NORM_FORWARD`` ("fused", "split" or None); a one-line ConfigError for anything else.

    The commands check it at start-up (:func:`nin_keras.cli.run_cli`), before a run folder or a trial exists.
    """
    env = os.environ if env is None else env
    choice = env.get(FORWARD_ENV, "").lower()
    if choice not in ("", "fused", "split"):
        raise ConfigError(f"{FORWARD_ENV} must be 'fused' or 'split'. Received: {env[FORWARD_ENV]!r}")
    return choice or None


def split_forward(flags=None, env=None, gpu=None):
    """True if float32 training should normalise with TensorFlow's ops and differentiate with the fused kernel.

    That is where oneDNN runs below AVX-512 on an x86 CPU (module docstring): Linux reports AVX2 and no
    AVX-512, or ``ONEDNN_MAX_CPU_ISA`` caps it. Never with a GPU (whose gradient kernel reads the inverse
    variance; a ConfigError if the override asks for it there), nor with oneDNN off or CPU flags unknown,
    unless ``$NIN_KERAS_BATCH_NORM_FORWARD`` says so.
    """
    from nin_keras.precision import cpu_flags, onednn_cap_below_avx512

    env = os.environ if env is None else env
    choice = forward_override(env)
    gpu = gpu_visible() if gpu is None else gpu
    if choice == "split" and gpu:
        raise ConfigError(f"{FORWARD_ENV}=split is for CPUs: a GPU's gradient kernel reads the inverse variance, so "
                          "its gradients would be wrong; unset it. Received: 'split' with a GPU visible")
    if choice:
        return choice == "split"
    flags = cpu_flags() if flags is None else flags
    below_avx512 = "avx512f" not in flags or onednn_cap_below_avx512(env)
    return onednn_on_cpu(env, gpu) and "avx2" in flags and below_avx512


def gpu_visible():
    """True if TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def onednn_on_cpu(env=None, gpu=None):
    """True if BatchNorm runs in oneDNN: no GPU visible and ``TF_ENABLE_ONEDNN_OPTS`` not turned off."""
    env = os.environ if env is None else env
    gpu = gpu_visible() if gpu is None else gpu
    return not gpu and env.get("TF_ENABLE_ONEDNN_OPTS", "1").lower() not in ("0", "false")


def split_batch_norm(x, gamma, beta, epsilon):
    """Training-mode BatchNorm of NHWC float32 ``x``: returns ``y``, the batch mean and biased variance.

    The forward pass is TensorFlow's moments and one multiply-add; the
    gradient is ``FusedBatchNormGradV3``'s (oneDNN's backward kernel), the
    same gradient as autodiff through Keras' ops, to rounding.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def normalise(x, gamma, beta):
        mean, variance = tf.nn.moments(x, [0, 1, 2])
        scale = gamma * tf.math.rsqrt(variance + epsilon)
        y = x * scale + (beta - mean * scale)

        def gradient(dy, *_):
            dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy, x=x, scale=gamma, reserve_space_1=mean, reserve_space_2=variance,
                reserve_space_3=tf.zeros([0]), epsilon=epsilon, data_format="NHWC", is_training=True)
            return dx, dgamma, dbeta

        return (y, mean, variance), gradient  # the statistics only feed the moving averages

    return normalise(x, tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta))


def eligible(layer):
    """True if ``layer`` is a BatchNormalization this module can fuse."""
    import keras

    if not (keras.backend.backend() == "tensorflow" and isinstance(layer, keras.layers.BatchNormalization)
            and not layer.renorm and not layer.synchronized and layer.scale and layer.center):
        return False
    rank = len(layer.input.shape)
    return rank == 4 and layer.axis % rank == 3


def has_jit_kernel(channels, dtype):
    """True if oneDNN has a JIT BatchNorm kernel for ``channels`` channels of ``dtype`` activations.

    Its JIT kernels take channels in blocks of 8 (float32) or 16 (bfloat16; float16, not measured, is
    treated alike); any other count runs its generic kernel (``nspc_bnorm:any`` in ``ONEDNN_VERBOSE``),
    which took 2-3x the time of Keras' own ops on a class map of 10 channels in every precision and ISA
    measured (docs/benchmarks.md). Where oneDNN runs (:func:`onednn_on_cpu`), such a layer keeps Keras' call.
    """
    return channels is not None and channels % (8 if dtype == "float32" else 16) == 0


def _fused_call(self, inputs, training=None, mask=None):
    """BatchNormalization.call through ``FusedBatchNormV3``, or :func:`split_batch_norm` where the layer's
    forward is split (same arguments, same results)."""
    import tensorflow as tf

    if mask is not None:  # not a case nin_keras builds; Keras' own path handles it
        return type(self).call(self, inputs, training=training, mask=mask)
    # The fused kernel takes float32 or bfloat16/float16 activations with float32 statistics.
    x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
    split = x.dtype == tf.float32 and self._nin_split_forward
    if training and self.trainable:
        if split:
            y, mean, variance = split_batch_norm(x, self.gamma, self.beta, self.epsilon)
        else:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
            count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)  # Keras' biased variance
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
    elif split:  # oneDNN's AVX2 inference forward is as slow as its training one
        scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
        y = x * scale + (self.beta - self.moving_mean * scale)
    else:
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance, epsilon=self.epsilon,
            data_format="NHWC", is_training=False)
    return tf.cast(y, self.compute_dtype)


def fuse_batch_norm(model):
    """Give every eligible BatchNormalization layer of ``model`` the fused call; returns how many.

    Where oneDNN runs, only layers whose channel count its JIT kernels take (:func:`has_jit_kernel`).
    """
    from nin_keras.precise_bn import batchnorm_layers

    fused = 0
    gpu = gpu_visible()  # asked once: both choices below depend on it
    split, onednn = split_forward(gpu=gpu), onednn_on_cpu(gpu=gpu)
    for layer in batchnorm_layers(model):
        if eligible(layer) and (not onednn or has_jit_kernel(layer.input.shape[-1], layer.compute_dtype)):
            layer._nin_split_forward = split
            layer.call = types.MethodType(_fused_call, layer)
            fused += 1
    return fused


def _fused_layers(model):
    from nin_keras.precise_bn import batchnorm_layers

    return [layer for layer in batchnorm_layers(model) if getattr(layer.call, "__func__", None) is _fused_call]


def count_fused(model):
    """How many of the model's BatchNorm layers run the fused call (the tests check it)."""
    return len(_fused_layers(model))


def forward_in_use(model):
    """How the model's fused BatchNorm layers train: "split", "fused", or None when none is fused."""
    fused = _fused_layers(model)
    if not fused:
        return None
    split = fused[0]._nin_split_forward and fused[0].compute_dtype == "float32"
    return "split" if split else "fused"
