"""Precise BatchNorm: moving statistics recomputed from a pass over training images, weights untouched."""

import numpy as np
import pytest

from nin_keras import precise_bn


def _model(momentum=0.99):
    import keras

    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(6, 3, use_bias=False, name="conv")(x)
    x = keras.layers.BatchNormalization(momentum=momentum, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(momentum=momentum, name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Softmax()(x))


def _images(n=96, seed=0):
    rng = np.random.default_rng(seed)
    # Bright, offset images: their statistics are far from a fresh layer's (mean 0, variance 1).
    return (rng.integers(100, 256, (n, 12, 12, 3))).astype(np.uint8)


def _expected_stats(model, x, batch):
    """Average batch mean/variance of each BatchNorm's input, computed independently of the module.

    bn2's input is computed by hand as training computed it: bn1 normalising
    with the batch's own statistics, and no dropout (inference has none).
    """
    import keras

    conv = keras.Model(model.input, model.get_layer("conv").output)
    bn1, conv2 = model.get_layer("bn1"), model.get_layer("conv2")
    stats = {"bn1": ([], []), "bn2": ([], [])}
    for i in range(0, len(x), batch):
        a = conv(x[i : i + batch]).numpy()
        mean, var = a.mean((0, 1, 2)), a.var((0, 1, 2))
        normalised = (a - mean) / np.sqrt(var + bn1.epsilon) * bn1.gamma.numpy() + bn1.beta.numpy()
        b = conv2(np.maximum(normalised, 0)).numpy()
        for name, t in (("bn1", a), ("bn2", b)):
            stats[name][0].append(t.mean((0, 1, 2)))
            stats[name][1].append(t.var((0, 1, 2)))
    return {name: (np.mean(m, 0), np.mean(v, 0)) for name, (m, v) in stats.items()}


def test_recalibration_sets_the_average_batch_statistics_and_changes_nothing_else():
    import tensorflow as tf

    model = _model()
    x = _images()
    weights = {w.path: w.numpy().copy() for w in model.trainable_weights}
    stale = model.get_layer("bn1").moving_mean.numpy().copy()
    summary = precise_bn.recalibrate(model, tf.data.Dataset.from_tensor_slices(x).batch(16))
    assert summary["layers"] == 2 and summary["batches"] == 6 and summary["images"] == 96
    expected = _expected_stats(model, x, 16)
    assert not np.allclose(stale, expected["bn1"][0], atol=1e-2)
    for name in ("bn1", "bn2"):  # bn2: without dropout (with it, its input's variance is about twice)
        mean, var = expected[name]
        np.testing.assert_allclose(model.get_layer(name).moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(model.get_layer(name).moving_variance.numpy(), var, rtol=1e-3, atol=1e-5)
    bn1 = model.get_layer("bn1")
    for w in model.trainable_weights:
        np.testing.assert_array_equal(w.numpy(), weights[w.path])
    assert bn1.momentum == 0.99 and model.get_layer("drop").rate == 0.5


def test_inference_after_recalibration_matches_training_mode_statistics():
    """A model whose moving statistics lag (few steps) predicts like its training-mode self afterwards."""
    import tensorflow as tf

    model = _model()
    x = _images(256, seed=1)
    before = np.abs(model.predict(x, verbose=0) - model(x, training=True).numpy()).max()
    precise_bn.recalibrate(model, tf.data.Dataset.from_tensor_slices(x).batch(256))
    model.get_layer("drop").rate = 0.0  # compare without dropout's noise
    after = np.abs(model.predict(x, verbose=0) - model(x, training=True).numpy()).max()
    assert before > 0.05 and after < 1e-3, (before, after)


def test_a_model_without_batchnorm_is_left_alone():
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert precise_bn.recalibrate(model, [np.zeros((2, 4), np.float32)]) is None


def test_recalibration_under_two_mirrored_replicas_sets_every_copy():
    import tensorflow as tf

    from nin_keras.distribute import make_strategy

    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    x = _images(64, seed=2)
    single = _model()
    with strategy.scope():
        mirrored = _model()
    mirrored.set_weights(single.get_weights())
    precise_bn.recalibrate(single, tf.data.Dataset.from_tensor_slices(x).batch(16))
    with strategy.scope():
        precise_bn.recalibrate(mirrored, tf.data.Dataset.from_tensor_slices(x).batch(16))
    for name in ("bn1", "bn2"):
        variable = mirrored.get_layer(name).moving_mean
        copies = [v.numpy() for v in getattr(variable.value, "values", [variable.value])]
        assert len(copies) == 2, "not a mirrored variable"
        for copy in copies:
            np.testing.assert_allclose(copy, single.get_layer(name).moving_mean.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mirrored.predict(x, verbose=0), single.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("replicas, per_replica", [(1, 32), (2, 16)])
def test_training_images_are_read_in_per_replica_batches(replicas, per_replica):
    model = _model()
    x = _images(200, seed=3)
    summary = precise_bn.recalibrate_on_training_images(model, x, np.zeros(200, np.int32), 32, replicas=replicas, images=96)
    assert summary["images"] == 96 and summary["batches"] == 96 // per_replica
