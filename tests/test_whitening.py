"""--whiten-stem: the stem's filters whiten real Fashion-MNIST patches, and training leaves them alone."""

import re

import numpy as np
import pytest

from nin_keras import fit
from nin_keras.config import resolve_config
from nin_keras.data import load_data
from nin_keras.errors import ConfigError
from nin_keras.whitening import whitening_filters


@pytest.fixture(scope="module")
def train_images():
    return load_data(limit=2600, print_fn=lambda *a: None).x_train


def _stem_outputs(images, kernel, bias):
    """The stem convolution as the model computes it (valid positions), one row per pixel."""
    import tensorflow as tf

    x = tf.constant(images.astype(np.float32) / 255.0)
    return (tf.nn.conv2d(x, kernel, 1, "VALID") + bias).numpy().reshape(-1, kernel.shape[-1])


def test_the_filters_whiten_patches_of_images_they_were_not_computed_from(train_images):
    kernel, bias = whitening_filters(train_images[:2000], 5, 32)
    assert kernel.shape == (5, 5, 1, 32) and bias.shape == (32,)
    out = _stem_outputs(train_images[2000:2300], kernel, bias)  # held-out images
    assert np.abs(out.mean(axis=0)).max() < 0.1  # centred by the bias
    assert 0.8 < out.std(axis=0).min() and out.std(axis=0).max() < 1.2  # unit variance
    correlation = np.corrcoef(out[:, :16].T)
    assert np.abs(correlation - np.eye(16)).max() < 0.15  # decorrelated
    np.testing.assert_allclose(kernel[..., 16:], -kernel[..., :16])  # each filter and its negative


def test_the_kernel_is_in_keras_row_column_channel_order():
    """A transposed kernel whitens a symmetric covariance just as well; a lopsided image tells them apart."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 12, 12, 1)).astype(np.float64)
    images[:, :, 1:] += 0.9 * images[:, :, :-1]  # pixels correlated along rows only
    images = np.clip(images / images.max() * 255, 0, 255).astype(np.uint8)
    kernel, bias = whitening_filters(images, 3, 18)
    out = _stem_outputs(images, kernel, bias)
    assert np.abs(np.corrcoef(out[:, :9].T) - np.eye(9)).max() < 0.1
    transposed = kernel.transpose(1, 0, 2, 3)
    assert np.abs(np.corrcoef(_stem_outputs(images, transposed, bias)[:, :9].T) - np.eye(9)).max() > 0.2


@pytest.mark.slow  # trains
def test_a_whitened_run_keeps_its_stem_and_trains_the_rest(tmp_path, train_images):
    import keras

    cfg = resolve_config({"preset": "tiny", "epochs": 1, "limit": 2600, "test_limit": 200, "whiten_stem": True,
                          "output_dir": str(tmp_path / "r"), "verbose": 0})
    fit.train(cfg, print_fn=lambda *a: None)
    model = keras.saving.load_model(tmp_path / "r" / "model.keras")
    stem = model.get_layer("block1_conv0")
    assert not stem.trainable and json_config_trainable(tmp_path / "r") is False
    splits = load_data(val_fraction=cfg.val_fraction, seed=cfg.seed, limit=2600, print_fn=lambda *a: None)
    kernel, bias = whitening_filters(splits.x_train[:2000], 5, 16)
    np.testing.assert_allclose(stem.get_weights()[0], kernel, rtol=1e-6)  # untouched by training
    np.testing.assert_allclose(stem.get_weights()[1], bias, rtol=1e-6, atol=1e-7)
    assert model.get_layer("block1_conv1").trainable


def json_config_trainable(run):
    """The stem's ``trainable`` as the run's model.keras records it (what a loader anywhere sees)."""
    import json
    import zipfile

    with zipfile.ZipFile(run / "model.keras") as z:
        config = json.loads(z.read("config.json"))
    return next(layer["config"]["trainable"] for layer in config["config"]["layers"]
                if layer["config"]["name"] == "block1_conv0")


@pytest.mark.parametrize("stem, message", [
    ({"filters": 32, "kernel_size": 3}, "needs an even number of stem filters, at most 2 x 3x3x1 = 18"),
    ({"filters": 15, "kernel_size": 5}, "needs an even number of stem filters"),
    ({"filters": 32, "kernel_size": 5, "batch_norm": True}, "with a bias \\(one without BatchNorm\\)"),
])
def test_a_stem_that_cannot_be_whitened_is_a_one_line_error(train_images, stem, message):
    from nin_keras.model import build_nin
    from nin_keras.whitening import whiten_stem

    model = build_nin([stem, {"filters": 16}])
    with pytest.raises(ConfigError, match=message):
        whiten_stem(model, train_images[:50])


def test_a_stem_behind_a_resize_is_refused(train_images):
    """The stem of a model that resizes in the graph (d2l: 28 -> 224) sees other patches than the images'."""
    from nin_keras.model import build_nin
    from nin_keras.whitening import whiten_stem

    model = build_nin([{"filters": 32, "kernel_size": 5}, {"filters": 16}], image_size=(56, 56))
    with pytest.raises(ConfigError, match=re.escape("images (28, 28), stem input (56, 56)")):
        whiten_stem(model, train_images[:50])


def test_whitening_an_image_folder_is_refused_in_one_line(tmp_path, capsys):
    from nin_keras import images

    images.write_tinted_folder(str(tmp_path / "photos"), per_class=6, classes=2)
    out = tmp_path / "run"
    assert fit.main(["--preset", "tiny", "--image-dir", str(tmp_path / "photos"), "--whiten-stem",
                     "--output-dir", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: --whiten-stem works on in-memory data") and err.count("\n") == 1
    assert "data:" not in captured.out  # refused before the folder is read
    assert not out.exists() or not any(out.iterdir())
