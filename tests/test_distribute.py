import numpy as np
import pytest

from helpers import build_preset
from nin_keras import keras_compat
from nin_keras.data import make_dataset
from nin_keras.distribute import is_chief, make_strategy, tf_config_workers


@pytest.mark.parametrize("fused", [False, True])
def test_uneven_last_batch_with_batchnorm_under_two_replicas(fused):
    """keras#20585: the symbolic build must not MEAN-reduce a batch split 63/62 across replicas (Keras'
    BatchNorm and the fused one, whose moving statistics are assigned in each replica's context)."""
    from nin_keras.fused_bn import fuse_batch_norm

    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2 and keras_compat.apply()
    with strategy.scope():
        model = build_preset("tiny", batch_norm=True)
        if fused:
            assert fuse_batch_norm(model) > 0
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).integers(0, 256, (125, 28, 28, 1), dtype=np.uint8)
    y = np.arange(125, dtype=np.int32) % 10
    history = model.fit(make_dataset(x[:64], y[:64], 64), validation_data=make_dataset(x, y, 128), epochs=1, verbose=0)
    assert np.isfinite(history.history["val_loss"][0])
    assert model.evaluate(make_dataset(x, y, 128), verbose=0)[0] > 0
    moving = [w for w in model.non_trainable_weights if "moving_variance" in w.path]
    assert moving and not np.allclose(moving[0].numpy(), 1.0)  # the statistics moved


def test_tf_config_parsing(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config_workers() == 0
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}')
    assert tf_config_workers() == 2
    assert is_chief(make_strategy("one-device"))
