"""One BatchNorm layer's training step (forward and gradient) through oneDNN's fused kernel and through Keras' ops.

``python scripts/batchnorm_kernels.py [--precision float32|bfloat16] [--shapes 128x6x6x10,128x13x13x64]
[--calls 30] [--rounds 3]`` times, per activation shape (N x H x W x C), TensorFlow's ``FusedBatchNormV3``,
nin_keras' split forward (below AVX-512) and the moments-and-multiply-add ops Keras' own layer runs, each
forward and backward in one ``tf.function``; it prints each round's median milliseconds per call, the
paths alternating. This is the evidence behind :func:`nin_keras.fused_bn.has_jit_kernel`: for a channel
count oneDNN's JIT kernels do not take (a 10-class map), its generic kernel is slower than Keras' ops.
Run it with ``ONEDNN_VERBOSE=1`` to see which kernel oneDNN picks, and with ``ONEDNN_MAX_CPU_ISA=AVX2``
as an AVX2 CPU would run.
"""

import argparse
import statistics
import sys
import time

EPSILON = 1e-3


def parse_shape(text):
    """"128x6x6x10" -> [128, 6, 6, 10]; a one-line error for anything else."""
    try:
        shape = [int(n) for n in text.lower().split("x")]
    except ValueError:
        shape = []
    if len(shape) != 4 or min(shape) < 1:
        raise SystemExit(f"error: a shape is N x H x W x C, four positive integers. Received: {text!r}")
    return shape


def step_functions():
    """{"fused": f, "split": f, "keras ops": f}: f(x, gamma, beta, weights) returns the gradients of
    ``sum(weights * y)`` (fixed random weights, so that no gradient vanishes) with respect to x, gamma and beta.

    "split" is nin_keras' forward below AVX-512 (:func:`nin_keras.fused_bn.split_batch_norm`: TensorFlow's
    ops forward, the fused kernel's gradient), "keras ops" autodiff through what Keras' layer computes.
    """
    import tensorflow as tf

    from nin_keras.fused_bn import split_batch_norm

    def fused(x, gamma, beta):
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=EPSILON, data_format="NHWC",
                                                   is_training=True)
        return y

    def split(x, gamma, beta):  # float32 only, as nin_keras uses it
        return tf.cast(split_batch_norm(tf.cast(x, tf.float32), gamma, beta, EPSILON)[0], x.dtype)

    def keras_ops(x, gamma, beta):  # what keras.layers.BatchNormalization computes, in float32
        x32 = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x32, [0, 1, 2])
        scale = gamma * tf.math.rsqrt(variance + EPSILON)
        return tf.cast(x32 * scale + (beta - mean * scale), x.dtype)

    def with_gradient(forward):
        @tf.function
        def step(x, gamma, beta, weights):
            with tf.GradientTape() as tape:
                tape.watch([x, gamma, beta])
                loss = tf.reduce_sum(weights * tf.cast(forward(x, gamma, beta), tf.float32))
            return tape.gradient(loss, [x, gamma, beta])
        return step

    return {"fused": with_gradient(fused), "split": with_gradient(split), "keras ops": with_gradient(keras_ops)}


def time_shape(shape, precision, calls, rounds):
    """{name: [median ms per call of each round]} for one activation shape."""
    import tensorflow as tf

    x = tf.cast(tf.random.stateless_normal(shape, seed=[0, 0]), precision)
    weights = tf.random.stateless_normal(shape, seed=[0, 1])
    gamma, beta = tf.ones([shape[-1]]), tf.zeros([shape[-1]])
    steps = step_functions()
    for step in steps.values():  # trace and warm up
        for _ in range(3):
            step(x, gamma, beta, weights)[0].numpy()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            calls_ms = []
            for _ in range(calls):
                start = time.perf_counter()
                step(x, gamma, beta, weights)[0].numpy()
                calls_ms.append(1e3 * (time.perf_counter() - start))
            times[name].append(statistics.median(calls_ms))
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--shapes", default="128x6x6x10,128x6x6x128,128x13x13x64",
                        help="activation shapes N x H x W x C, comma-separated (default: the fashion preset's)")
    parser.add_argument("--calls", type=int, default=30, help="calls per round (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the paths alternating (default 3)")
    args = parser.parse_args(argv)
    shapes = [parse_shape(text) for text in args.shapes.split(",")]
    print(f"{args.precision}: median ms per forward and backward call, each round")
    for shape in shapes:
        times = time_shape(shape, args.precision, max(1, args.calls), max(1, args.rounds))
        cells = "; ".join(f"{name} " + " / ".join(f"{ms:.2f}" for ms in rounds) for name, rounds in times.items())
        print(f"{'x'.join(map(str, shape))}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
