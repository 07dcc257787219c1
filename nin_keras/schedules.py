"""Learning-rate schedule as a callback, so its length can change mid-run.

Keras' ``CosineDecay`` stores ``decay_steps`` as a Python number that the
traced train step captures as a constant, and a custom schedule object would
be serialized into every ``model.keras`` (which then fails to load where
nin_keras is not imported). ``--time-budget`` only knows how many epochs fit
once the first epoch has been timed, so the schedule is a callback that sets
the optimizer's learning rate before each step from ``optimizer.iterations``
(which ``BackupAndRestore`` restores, so a resumed run continues the curve).
Saved models keep a plain float learning rate.
"""

import math

import keras


def warmup_cosine(step, peak, total_steps, warmup_steps=0):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(keras.callbacks.Callback):
    """Set the learning rate of every training step to :func:`warmup_cosine`.

    ``set_total_steps`` changes the length in place; the warm-up keeps its
    share of the length (a warm-up sized for ``--epochs 200`` would outlast
    a 3-epoch run chosen by ``--time-budget``).
    """

    def __init__(self, peak, total_steps, warmup_steps=0):
        super().__init__()
        self.peak = float(peak)
        self.total_steps = int(max(1, total_steps))
        self.warmup_steps = int(warmup_steps)

    def set_total_steps(self, total_steps):
        total_steps = int(max(1, total_steps))
        self.warmup_steps = int(self.warmup_steps * total_steps / self.total_steps)
        self.total_steps = int(max(self.warmup_steps + 1, total_steps))

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.model.optimizer.learning_rate = warmup_cosine(step, self.peak, self.total_steps, self.warmup_steps)
