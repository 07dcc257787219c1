"""Distribution strategies: MirroredStrategy on one machine, MultiWorker from TF_CONFIG.

On a CPU-only machine, :func:`split_cpu` turns the CPU into several logical
devices so MirroredStrategy runs real replicas (used by the tests, and handy
to check batch sizes and metrics across replicas without a GPU).
"""

import json
import os
import sys

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
    """Number of workers (chief included) that $TF_CONFIG describes; 0 if unset.

    Raises :class:`ConfigError` (one line) for a $TF_CONFIG that
    MultiWorkerMirroredStrategy could not use: not JSON, no cluster, a task
    missing or outside the cluster, an address that is not ``host:port``.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0

    def bad(problem):
        return f"$TF_CONFIG is not usable for multi-worker training: {problem}. Received: {raw[:120]!r}"

    try:
        spec = json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigError(bad("not valid JSON")) from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError(bad("no 'cluster' object"))
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() and a.rpartition(":")[0] for a in addresses):
            raise ConfigError(bad(f"cluster.{job} must be a list of 'host:port' strings"))
    task = spec.get("task")
    if task is not None:
        if not isinstance(task, dict) or task.get("type") not in cluster:
            raise ConfigError(bad(f"task.type must be one of {sorted(cluster)}"))
        index = task.get("index", 0)
        if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
            raise ConfigError(bad(f"task.index must be 0..{len(cluster[task['type']]) - 1}"))
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(name="auto", cpu_replicas=None):
    """Create the tf.distribute strategy called ``name``.

    - ``auto``: multi-worker when $TF_CONFIG lists more than one worker,
      MirroredStrategy over several GPUs or a CPU split asked for with
      ``cpu_replicas`` > 1, and TensorFlow's default strategy otherwise (a
      CPU split this process made for another reason, as the test suite
      does, does not turn it on). (On one CPU device, MirroredStrategy and
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
        elif len(tf.config.list_logical_devices("GPU")) > 1 or (cpu_replicas or 1) > 1:
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
        if not tf_config_workers():
            raise ConfigError("--strategy multi-worker needs $TF_CONFIG describing the cluster and this task.")
        if not isinstance(json.loads(os.environ["TF_CONFIG"]).get("task"), dict):
            raise ConfigError("--strategy multi-worker: $TF_CONFIG has no 'task' naming this worker "
                              '(e.g. {"type": "worker", "index": 0})')
        print_cluster_notice("MultiWorkerMirroredStrategy's gRPC port (from $TF_CONFIG)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"unknown strategy. Received: {name!r}")


_NOTICED = set()


def print_cluster_notice(service, print_fn=None):
    """Say once per process that a cluster port is open without authentication (stderr by default).

    TensorFlow's collective gRPC server and keras-tuner's oracle accept any
    peer that reaches them; README's Security section says what to do.
    """
    if service in _NOTICED:
        return
    _NOTICED.add(service)
    message = (f"note: {service} is unauthenticated: anyone who can reach it can make this job read or write "
               "files and change its results; keep the cluster on a trusted network (a firewall, or an SSH "
               "tunnel). See README, Security.")
    (print_fn or (lambda m: print(m, file=sys.stderr, flush=True)))(message)


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


# ------------------------------------------------------------ worker agreement

# How long a worker waits for the others at an agreement point (they may be
# loading a large image folder); a worker that never arrives ends the wait
# with a one-line error instead of a hang.
AGREEMENT_TIMEOUT_SECONDS = 1800
_MESSAGE_BYTES = 4096


def worker_name(strategy):
    """``chief``, ``worker 1``... for messages; "local" outside multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return "local"
    return "chief" if resolver.task_type == "chief" else f"{resolver.task_type} {resolver.task_id}"


def exchange(strategy, message, timeout=AGREEMENT_TIMEOUT_SECONDS):
    """Send a small JSON-able ``message`` to every worker; returns all workers' messages, chief first.

    One all-reduce: each replica writes its worker's message (UTF-8 bytes, at
    most 4 KiB) into its own row of a zero matrix and the rows are summed, so
    every worker ends with every message. Raises :class:`ConfigError` if a
    worker does not arrive within ``timeout`` seconds or the cluster fails.
    """
    import numpy as np
    import tensorflow as tf

    data = json.dumps(message).encode()
    if len(data) > _MESSAGE_BYTES:
        raise ValueError(f"agreement message of {len(data)} bytes exceeds {_MESSAGE_BYTES}")
    row = np.zeros(_MESSAGE_BYTES, np.float32)  # bytes 0-255 are exact in float32
    row[: len(data)] = np.frombuffer(data, np.uint8)
    replicas = strategy.num_replicas_in_sync

    def rows():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.one_hot(replica, replicas)[:, None] * tf.constant(row)[None, :]

    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    try:
        total = strategy.extended.reduce_to(tf.distribute.ReduceOp.SUM, strategy.run(rows), "/cpu:0", options=options)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as e:
        from nin_keras.errors import ClusterError

        raise ClusterError(f"{cluster_failure(e)} (while the workers agreed on the run's state)") from None
    messages = []
    for values in total.numpy().astype(np.uint8):
        decoded = json.loads(bytes(values).rstrip(b"\0").decode())
        if not messages or decoded != messages[-1]:  # one row per local replica: keep one per worker
            messages.append(decoded)
    return sorted(messages, key=lambda m: m.get("worker") != "chief")


def cluster_failure(error):
    """One line for a collective that failed because a worker stopped, hung or is unreachable."""
    import tensorflow as tf

    if isinstance(error, tf.errors.DeadlineExceededError):
        what = f"a worker did not arrive within {AGREEMENT_TIMEOUT_SECONDS} s"
    else:
        what = "a worker of the cluster stopped or is unreachable"
    return f"multi-worker training: {what}; restart every worker with the same command to resume"


def agree(strategy, step, share=None):
    """Run ``step()`` on every worker and make all of them act on the same outcome.

    Outside multi-worker training this is just ``step()``. Under
    MultiWorkerMirroredStrategy every worker reports whether its step raised a
    :class:`NinError` (and, with ``share``, a JSON-able summary of its result);
    if any did, *every* worker raises the same one-line error (the chief's
    first), so none is left waiting in a collective for a worker that exited.
    Returns ``(result, shared)``: this worker's own result and the workers'
    ``share(result)`` dicts, chief first (``[]`` locally).
    """
    from nin_keras.errors import NinError

    if not is_multi_worker(strategy):
        return step(), []
    result, error = None, None
    try:
        result = step()
    except NinError as e:
        error = e
    name = worker_name(strategy)
    message = {"worker": "chief" if is_chief(strategy) else name,
               "error": None if error is None else [type(error).__name__, str(error)],
               "shared": share(result) if share is not None and error is None else None}
    messages = exchange(strategy, _bounded(message, name))
    for m in messages:
        if m["error"]:
            kind, text = m["error"]
            error_type = _error_types().get(kind, ConfigError)
            raise error_type(text if m["worker"] == "chief" else f"{m['worker']}: {text}")
    return result, [m["shared"] for m in messages]


def _bounded(message, name):
    """``message`` when it fits an exchange row; otherwise a shortened error that every worker raises.

    Raising here instead would leave this worker's peers waiting in the
    collective for :data:`AGREEMENT_TIMEOUT_SECONDS`.
    """
    def size(m):
        return len(json.dumps(m).encode())

    if size(message) <= _MESSAGE_BYTES:
        return message
    if message["error"] is None:
        message = {**message, "shared": None, "error": [
            "ClusterError", f"{name}: its summary for the other workers is {size(message)} bytes, more than the "
                            f"{_MESSAGE_BYTES} an agreement carries"]}
    kind, text = message["error"]
    while size(message) > _MESSAGE_BYTES:  # JSON escapes may triple non-ASCII text: cut until it fits
        text = text[: len(text) // 2]
        message = {**message, "shared": None, "error": [kind, text + " [...]"]}
    return message


def _error_types():
    from nin_keras import errors

    return {c.__name__: c for c in (errors.NinError, errors.DataError, errors.ConfigError, errors.ClusterError,
                                           errors.TrainingDiverged)}
