"""Compute precision: float32, or mixed bfloat16 / float16 with float32 weights.

``auto`` (the default) picks ``bfloat16`` when training runs on a CPU with
native bfloat16 matrix units (Intel AMX-BF16 or AVX512-BF16, which oneDNN
uses), and ``float32`` otherwise. On this project's 2-core AMX machine mixed
bfloat16 trains the ``fashion`` preset about twice as fast as float32 (see
README, "Defaults chosen by measurement"); CPUs without those units have no
fast bfloat16 path (not measurable on this machine), hence the detection.
GPUs get ``float32`` unless the user asks for ``float16``/``bfloat16``.

Variables stay float32 under both mixed policies (Keras' ``mixed_*``), and the
model's softmax runs in float32, so checkpoints and exports are float32.
"""

import contextlib
import os

from nin_keras.errors import ConfigError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU feature flags Linux reports (empty set elsewhere)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(flags=None):
    """True if the CPU has bfloat16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_CPU_FLAGS)


def resolve_precision(name, has_gpu=None, flags=None):
    """Turn ``auto`` into a concrete precision; check the others.

    ``NIN_KERAS_PRECISION`` in the environment overrides ``auto`` (handy for
    forcing float32 on a shared machine without editing configs).
    """
    if name not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}. Received: {name!r}")
    if name != "auto":
        return name
    forced = os.environ.get("NIN_KERAS_PRECISION")
    if forced:
        if forced not in PRECISIONS[1:]:
            raise ConfigError(f"NIN_KERAS_PRECISION must be one of {', '.join(PRECISIONS[1:])}. Received: {forced!r}")
        return forced
    if has_gpu is None:
        import tensorflow as tf

        has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if has_gpu:
        return "float32"
    return "bfloat16" if cpu_has_native_bf16(flags) else "float32"


def keras_policy(precision):
    """The Keras dtype policy name for a concrete precision."""
    return _POLICIES[precision]


@contextlib.contextmanager
def precision_scope(precision):
    """Build models in ``precision`` inside the block; restore the previous global policy after."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(keras_policy(precision))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_copy(model):
    """A float32-compute copy of ``model`` with the same weights.

    Models trained under a mixed policy compute in bfloat16/float16; TFLite
    conversion and reference accuracy want the float32 graph. Returns
    ``model`` itself when it already computes in float32.
    """
    import keras

    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model

    def as_float32(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=as_float32)
    copy.set_weights(model.get_weights())
    return copy
