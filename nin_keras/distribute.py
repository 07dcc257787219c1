"""Distribution strategies: MirroredStrategy on one machine, MultiWorker from TF_CONFIG.

On a CPU-only machine, :func:`split_cpu` turns the CPU into several logical
devices so MirroredStrategy runs real replicas (used by the tests, and handy
to check batch sizes and metrics across replicas without a GPU).
"""

import json
import os

from nin_keras.errors import ConfigError


def split_cpu(replicas):
    """Split the first physical CPU into ``replicas`` logical devices.

    Must run before TensorFlow initialises its devices; a later call is
    ignored only if the split already matches, otherwise it raises.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * replicas
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != replicas:
            raise ConfigError(
                f"cannot split the CPU into {replicas} replicas: TensorFlow already started with {have}. "
                f"Received: cpu_replicas={replicas}"
            ) from None


def local_devices():
    """Names of the devices a local MirroredStrategy should use: GPUs, else logical CPUs."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def tf_config_workers():
    """Number of workers (chief included) that $TF_CONFIG describes; 0 if unset."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError(f"$TF_CONFIG is not valid JSON with a 'cluster' key. Received: {raw[:80]!r}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(name="auto", cpu_replicas=None):
    """Create the tf.distribute strategy called ``name``.

    - ``auto``: multi-worker when $TF_CONFIG lists more than one worker,
      MirroredStrategy when there are several local devices (GPUs, or a CPU
      split with ``cpu_replicas``), and TensorFlow's default strategy on a
      single device. (On one CPU device, MirroredStrategy and
      OneDeviceStrategy trained a 105k-parameter NiN at 338 and 447 images/s
      against 765 for the default strategy, with 10x the system time: the
      distributed input iterator's overhead, for nothing with one replica.)
    - ``mirrored``: MirroredStrategy over the local devices.
    - ``one-device``: OneDeviceStrategy on the first GPU or the CPU.
    - ``multi-worker``: MultiWorkerMirroredStrategy configured by $TF_CONFIG.
    """
    import tensorflow as tf

    from nin_keras import keras_compat

    if cpu_replicas:
        split_cpu(cpu_replicas)
    keras_compat.apply()
    if name == "auto":
        if tf_config_workers() > 1:
            name = "multi-worker"
        elif len(local_devices()) > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = local_devices()
        cross_device_ops = None
        if not tf.config.list_logical_devices("GPU"):
            # CPU replicas: reduce through one device instead of collective ops,
            # whose instance keys clash when a process builds several strategies
            # (tuning then --retrain-best) and are no faster on one host's memory.
            cross_device_ops = tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)
    if name == "one-device":
        return tf.distribute.OneDeviceStrategy(local_devices()[0])
    if name == "multi-worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("--strategy multi-worker needs $TF_CONFIG describing the cluster and this task.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"unknown strategy. Received: {name!r}")


def describe(strategy):
    """A short name for logs: the strategy's class, or "default strategy, one device"."""
    import tensorflow as tf

    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        return "default strategy, one device"
    return type(strategy).__name__


def is_multi_worker(strategy):
    """True for MultiWorkerMirroredStrategy (several processes that must act in step)."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy):
    """True on the worker that writes the run directory (always true locally)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief
