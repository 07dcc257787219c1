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


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) that leave out its native bfloat16 instructions.
CAPS_WITHOUT_NATIVE_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
#: ...and those below AVX-512, where oneDNN has no bfloat16 kernels at all.
CAPS_WITHOUT_BF16_KERNELS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2")


def onednn_cap(env=None):
    """oneDNN's ISA cap, ``$ONEDNN_MAX_CPU_ISA`` (or its older name ``DNNL_MAX_CPU_ISA``), upper case; "" if none."""
    env = os.environ if env is None else env
    variable = onednn_cap_variable(env)
    return env[variable].upper() if variable else ""


def onednn_cap_variable(env=None):
    """The name of the variable that caps oneDNN's ISA (``ONEDNN_MAX_CPU_ISA`` or ``DNNL_MAX_CPU_ISA``), None if
    neither is set.

    oneDNN reads ``ONEDNN_MAX_CPU_ISA`` first, then its older name ``DNNL_MAX_CPU_ISA`` (as :func:`onednn_cap`
    does): a message that quoted only the first would call a ``DNNL_MAX_CPU_ISA`` run uncapped.
    """
    env = os.environ if env is None else env
    return next((name for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA") if env.get(name)), None)


def onednn_cap_below_avx512(env=None):
    """True if oneDNN's ISA cap leaves out AVX-512 (``AVX2``, ``AVX2_VNNI``...)."""
    return onednn_cap(env) in CAPS_WITHOUT_BF16_KERNELS


def bf16_capped_away(isa_cap=None, kernels=False):
    """The oneDNN cap (``isa_cap``, else :func:`onednn_cap`'s) when it leaves out native bfloat16 (with
    ``kernels``: every bfloat16 kernel), else None. A capped CPU stands for one without them."""
    cap = (isa_cap or "").upper() or onednn_cap()
    return cap if cap in (CAPS_WITHOUT_BF16_KERNELS if kernels else CAPS_WITHOUT_NATIVE_BF16) else None


def bf16_aborts(flags=None):
    """The oneDNN cap under which bfloat16 would abort here, else None: an AVX-512 CPU (TensorFlow then sends
    bfloat16 to oneDNN) capped below AVX-512 (oneDNN then has no bfloat16 kernel). Seen with TensorFlow 2.21:
    "could not create a primitive descriptor for the convolution" as a traceback at the first step."""
    flags = cpu_flags() if flags is None else flags
    cap = bf16_capped_away(kernels=True)
    return cap if cap and "avx512f" in flags else None


def check_bf16_runs(flags=None, asked_by="--precision bfloat16"):
    """Refuse bfloat16 in one line where it would abort (:func:`bf16_aborts`)."""
    cap = bf16_aborts(flags)
    if cap:
        raise ConfigError(f"bfloat16 cannot run with {onednn_cap_variable()}={cap} on this AVX-512 CPU (oneDNN has no "
                          f"bfloat16 kernel below AVX-512); use --precision float32, or unset the cap. "
                          f"Received: {asked_by}")


def resolve_precision(name, has_gpu=None, flags=None):
    """Turn ``auto`` into a concrete precision; check the others.

    ``NIN_KERAS_PRECISION`` in the environment overrides ``auto`` (handy for
    forcing float32 on a shared machine without editing configs).
    """
    if name not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}. Received: {name!r}")
    if name == "bfloat16":
        check_bf16_runs(flags)
    if name != "auto":
        return name
    forced = os.environ.get("NIN_KERAS_PRECISION")
    if forced:
        if forced not in PRECISIONS[1:]:
            raise ConfigError(f"NIN_KERAS_PRECISION must be one of {', '.join(PRECISIONS[1:])}. Received: {forced!r}")
        if forced == "bfloat16":
            check_bf16_runs(flags, asked_by="NIN_KERAS_PRECISION=bfloat16")
        return forced
    if has_gpu is None:
        import tensorflow as tf

        has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if has_gpu:
        return "float32"
    # A cap like a user's AVX2 machine (ONEDNN_MAX_CPU_ISA=AVX2) gets what that machine gets: float32.
    return "bfloat16" if cpu_has_native_bf16(flags) and not bf16_capped_away() else "float32"


def keras_policy(precision):
    """The Keras dtype policy name for a concrete precision."""
    return _POLICIES[precision]


@contextlib.contextmanager
def precision_scope(precision):
    """Build models in ``precision`` inside the block (in :func:`keras_config_scope`); restore the previous
    global policy after."""
    import keras

    previous = keras.mixed_precision.global_policy()
    with keras_config_scope():
        keras.mixed_precision.set_global_policy(keras_policy(precision))
        try:
            yield
        finally:
            keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def keras_config_scope():
    """Keras' global settings as nin_keras' models are built for, whatever ~/.keras/keras.json says.

    Why: a user's ``"floatx": "float16"`` gave the loss and metric trackers float16 totals, which
    overflowed past about 36,000 training images (a false "training diverged"), and
    ``"image_data_format": "channels_first"`` broke the RGB wrapper of the export. The previous
    settings come back after the block (a notebook keeps its own).
    """
    import keras

    previous = keras.config.floatx(), keras.config.image_data_format(), keras.config.epsilon()
    keras.config.set_floatx("float32")
    keras.config.set_image_data_format("channels_last")
    keras.config.set_epsilon(1e-7)
    try:
        yield
    finally:
        keras.config.set_floatx(previous[0])
        keras.config.set_image_data_format(previous[1])
        keras.config.set_epsilon(previous[2])


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
