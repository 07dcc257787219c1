"""Narrow, version-guarded workarounds for Keras 3 + tf.distribute bugs.

Upstream: keras-team/keras#20585 and tensorflow/tensorflow#72388 (open when
this was written). Checked with Keras 3.15.1 / TensorFlow 2.21; applied only
to Keras versions in :data:`COVERED` (others are left untouched, with a
warning), and each patch is tested in ``tests/test_distribute.py``.

1. ``TensorFlowTrainer._maybe_symbolic_build`` reduces the first distributed
   batch with ``strategy.reduce("MEAN", batch, axis=None)``. That fails when
   replicas hold different batch sizes (a final partial batch under
   MirroredStrategy: "AddN must have the same size and shape") and under
   MultiWorkerMirroredStrategy. Any single replica's local batch has the
   structure a symbolic build needs, so we take the first one.
2. ``reduce_per_replica`` reduces multi-worker scalar logs (loss, metrics)
   with ``axis=0``, which fails for 0-d values ("Invalid reduction dimension
   0"). For scalars we reduce with ``axis=None``.
"""

import warnings

COVERED = ((3, 6), (3, 15))  # inclusive (major, minor) range verified to need and accept the patches
_applied = False


def _version(text):
    return tuple(int(p) for p in text.split(".")[:2])


def apply():
    """Install both patches once, if this Keras version is covered. Returns True if applied."""
    global _applied
    if _applied:
        return True
    import keras

    if not COVERED[0] <= _version(keras.__version__) <= COVERED[1]:
        warnings.warn(f"nin_keras.keras_compat: Keras {keras.__version__} is outside the verified range "
                      f"{COVERED}; distribution workarounds not applied")
        return False

    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v,
                    batch,
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):

            def _reduce(v):
                if getattr(v, "shape", None) is not None and v.shape.rank == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return strategy.reduce("MEAN", v, axis=0)

            return tree.map_structure(_reduce, values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _applied = True
    return True
