"""Facts about this machine that decide training and inference speed, for the bench and the exporter.

The CPU's model and vector/matrix features (its "class": AVX2-only,
AVX-512 with BF16, AMX), the instruction set oneDNN actually uses (which
``ONEDNN_MAX_CPU_ISA`` caps), the float matmul ceiling, and TensorFlow's
thread pools. A low module: it imports nothing else of nin_keras but the
CPU flags reader, so ``export`` and ``nin_keras.bench`` both use it.
"""

import os
import sys
import time

def matmul_gflops(size=2048, iterations=10, dtype="float32"):
    """Matrix-multiply GFLOP/s in ``dtype`` on the default device."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size)), dtype)
    b = tf.cast(tf.random.normal((size, size)), dtype)
    fn = tf.function(tf.linalg.matmul, autograph=False)
    fn(a, b).numpy()
    start = time.perf_counter()
    for _ in range(iterations):
        c = fn(a, b)
    c.numpy()
    return 2 * size**3 * iterations / (time.perf_counter() - start) / 1e9


ISA_CAPS = ("AVX2", "AVX512_CORE", "AVX512_CORE_BF16", "AVX512_CORE_AMX", "SSE41")


def cpu_class():
    """This CPU's model name and the vector/matrix features that decide its speed class."""
    from nin_keras.precision import cpu_flags

    flags = cpu_flags()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    keys = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
    return {"model": model, "features": [k for k in keys if k in flags]}


def onednn_isa(env=None):
    """The instruction set oneDNN picks for a convolution in a fresh TensorFlow process (None if unknown).

    Runs a tiny convolution with ``ONEDNN_VERBOSE=1`` and reads its ``isa:``
    line, so ``ONEDNN_MAX_CPU_ISA`` caps can be checked, not assumed.
    """
    return read_onednn_isa(start_onednn_isa_probe(env))


def start_onednn_isa_probe(env=None):
    """Start :func:`onednn_isa`'s probe process (a ``Popen``, or None if it cannot start); read it with
    :func:`read_onednn_isa`. Started before this process imports TensorFlow, the two imports overlap."""
    import subprocess

    code = ("import tensorflow as tf; x = tf.random.normal((1, 8, 8, 1)); "
            "tf.nn.conv2d(x, tf.random.normal((3, 3, 1, 4)), 1, 'SAME').numpy()")
    full_env = {**os.environ, **(env or {}), "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=full_env)
    except OSError:
        return None


def read_onednn_isa(probe, timeout=120):
    """Wait for a probe from :func:`start_onednn_isa_probe` and return the ISA it saw (None if unknown)."""
    import subprocess

    if probe is None:
        return None
    try:
        out = probe.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        return None
    line = next((line for line in out.splitlines() if ",info,cpu,isa:" in line), None)
    return line.split("isa:", 1)[1].strip() if line else None


def stop_probe(probe):
    """Kill a probe that is still running (an error or Ctrl-C came first); no-op otherwise."""
    if probe is not None and probe.poll() is None:
        probe.kill()
        probe.wait()


def configure_threads(intra_op_threads, inter_op_threads):
    """Set TensorFlow's thread pools (before any op runs); return the values in effect (0 = TF's default)."""
    import tensorflow as tf

    if intra_op_threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    if inter_op_threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())
