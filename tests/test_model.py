import numpy as np
import pytest
import tensorflow as tf

from helpers import build_preset, random_images, save_and_reload
from nin_keras.errors import ConfigError
from nin_keras.model import block_summary, build_nin
from nin_keras.presets import PRESETS, get_preset

# REFERENCE.md: the d2l NiN at 224x224x1.
D2L_TABLE = [
    ("block1", (54, 54, 96), 30336),
    ("block1_pool", (26, 26, 96), 0),
    ("block2", (26, 26, 256), 746240),
    ("block2_pool", (12, 12, 256), 0),
    ("block3", (12, 12, 384), 1180800),
    ("block3_pool", (5, 5, 384), 0),
    ("head", (5, 5, 10), 34790),
    ("head_gap", (10,), 0),
]

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_predicts_and_round_trips(name, tmp_path):
    """Each preset: probabilities that sum to 1, a .keras save/reload and a float32 copy that predict the same."""
    from nin_keras.precision import float32_copy

    model = build_preset(name)
    shape = tuple(get_preset(name)["model"]["input_shape"])
    images = random_images(2, shape)
    probs = model.predict(images, verbose=0)
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(save_and_reload(model, tmp_path).predict(images, verbose=0), probs, atol=1e-6)
    np.testing.assert_allclose(float32_copy(model).predict(images, verbose=0), probs, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_counts_stated_in_preset_descriptions_are_true(name):
    import re

    stated = re.findall(r"(\d{1,3}(?:,\d{3})+) parameters", get_preset(name)["description"])
    if not stated:
        pytest.skip(f"preset {name} states no exact parameter count")
    assert build_preset(name).count_params() == int(stated[0].replace(",", ""))


def test_fashion_best_trains_a_step_with_its_own_recipe(tmp_path):
    """The accuracy preset's recipe (AdamW, augmentation, label smoothing) runs end to end on a few images."""
    import json

    from nin_keras.fit import main as fit_main

    out = tmp_path / "run"
    code = fit_main(["--preset", "fashion-best", "--epochs", "1", "--limit", "300", "--test-limit", "64",
                     "--output-dir", str(out), "--verbose", "0"])
    assert code == 0
    cfg = json.load(open(out / "config.json"))
    assert cfg["preset"] == "fashion-best" and cfg["augment"] is True
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["parameters"] == build_preset("fashion-best").count_params()
    assert np.isfinite(metrics["train_loss"]) and 0 <= metrics["test_accuracy"] <= 1


def test_d2l_preset_matches_reference_shapes_and_parameters():
    model = build_preset("d2l")
    rows = {name: (shape, params) for name, shape, params in block_summary(model, print_fn=lambda *a: None)}
    for name, shape, params in D2L_TABLE:
        assert rows[name] == (shape, params), name
    assert model.count_params() == 1_992_166
    assert model.get_layer("resize").output.shape[1:] == (224, 224, 1)

def test_paper_cifar_preset_has_about_097m_parameters():
    model = build_preset("paper-cifar")
    assert model.count_params() == 966_986
    assert [model.get_layer(f"block1_conv{i}").filters for i in range(3)] == [192, 160, 96]
    assert model.get_layer("block2_pool").__class__.__name__ == "AveragePooling2D"
    assert [model.get_layer(f"head_conv{i}").filters for i in range(3)] == [192, 192, 10]

def test_save_and_reload_gives_same_outputs(tmp_path):
    model = build_preset("tiny")
    x = random_images(4)
    restored = save_and_reload(model, tmp_path)
    np.testing.assert_allclose(model.predict(x, verbose=0), restored.predict(x, verbose=0), atol=1e-6)

def test_layers_carry_block_prefixed_names():
    model = build_preset("tiny")
    names = [layer.name for layer in model.layers[1:]]
    assert "block1_conv0" in names and "block2_conv2" in names and "head_gap" in names
    allowed = ("block", "head", "rescale", "resize", "predictions")
    assert all(name.startswith(allowed) for name in names), names

@pytest.mark.parametrize("mlp_layers", [1, 2, 3])
def test_mlp_layers_sets_number_of_1x1_convs(mlp_layers):
    model = build_preset("tiny", mlp_layers=mlp_layers)
    convs = [layer.name for layer in model.layers if layer.name.startswith("block1_conv")]
    assert len(convs) == 1 + mlp_layers
    assert model.get_layer(f"block1_conv{mlp_layers}").kernel_size == (1, 1)

def test_options_reach_the_model():
    assert build_preset("tiny", mlp_kernel_size=3).get_layer("block1_conv1").kernel_size == (3, 3)
    assert any(layer.name == "block1_bn0" for layer in build_preset("tiny", batch_norm=True).layers)
    assert build_preset("tiny", width_multiplier=2.0).get_layer("block1_conv0").filters == 32
    assert build_preset("tiny", dropout=0.25).get_layer("block2_dropout").rate == 0.25
    assert build_preset("tiny", head_activation=None).get_layer("head_conv2").activation.__name__ == "linear"
    model = build_preset("tiny", num_classes=7, input_shape=(40, 30, 3), image_size=(32, 32))
    assert model.output.shape[1:] == (7,) and model.get_layer("resize").output.shape[1:] == (32, 32, 3)

def test_dense_head_is_much_larger_than_gap():
    gap = build_preset("d2l")
    dense = build_preset("d2l", head="dense")
    assert dense.get_layer("head_dense1").units == 4096
    assert dense.count_params() > 20 * gap.count_params()

@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"mlp_layers": 4}, "Received: 4"),
        ({"num_classes": 1}, "Received: 1"),
        ({"input_shape": (28, 28)}, "Received: (28, 28)"),
        ({"head": "mlp"}, "Received: 'mlp'"),
        ({"width_multiplier": 0}, "Received: 0"),
        ({"blocks": [{"filters": -3}]}, "Received: -3"),
        ({"blocks": [{"filters": 8, "pool": "min"}]}, "Received: 'min'"),
        ({"blocks": [{"filters": 8, "kernal_size": 3}]}, "unknown keys ['kernal_size']"),
        ({"blocks": []}, "Received: []"),
        ({"test_time_flip": "yes"}, "Received: 'yes'"),
    ],
)
def test_invalid_arguments_repeat_the_bad_value(kwargs, fragment):
    base = {"blocks": [{"filters": 8}]}
    base.update(kwargs)
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        build_nin(**base)

def test_test_time_flip_averages_the_image_and_its_mirror(tmp_path):
    plain = build_preset("fashion-best", classifier_activation=None, test_time_flip=False)
    flip = build_preset("fashion-best", classifier_activation=None)
    assert flip.count_params() == plain.count_params()
    flip.set_weights(plain.get_weights())  # the two layers add no weights
    x = random_images(6).astype("float32")
    scores = plain.predict(x, verbose=0)
    expected = (scores + plain.predict(x[:, :, ::-1], verbose=0)) / 2
    # Untrained class scores are ~1e-2, so the tolerances are relative.
    np.testing.assert_allclose(flip.predict(x, verbose=0), expected, rtol=1e-3, atol=1e-6)
    assert np.abs(expected - scores).max() > 1e-3 * np.abs(scores).max()  # the mirror does change the scores
    restored = save_and_reload(flip, tmp_path)
    assert restored.get_layer("tta_mirror") is not None
    np.testing.assert_allclose(restored.predict(x, verbose=0), expected, rtol=1e-3, atol=1e-6)
    # Training sees the plain network: the same outputs, batch not doubled.
    np.testing.assert_allclose(flip(x, training=True), plain(x, training=True), rtol=1e-3, atol=1e-6)


def test_block_summary_prints_each_block(capsys):
    block_summary(build_preset("tiny"))
    out = capsys.readouterr().out
    assert "block1" in out and "28x28x16" in out and "total" in out and "10,822" in out

def test_channels_first_layout_computes_the_same_function():
    nhwc = build_preset("tiny", data_format="channels_last")
    nchw = build_preset("tiny", data_format="channels_first")
    assert nchw.input_shape == nhwc.input_shape == (None, 28, 28, 1)  # raw HWC pixels either way
    assert nchw.get_layer("block1_conv0").output.shape[1:] == (16, 28, 28)
    nchw.set_weights(nhwc.get_weights())  # kernels are (kh, kw, in, out) in both layouts
    images = random_images(4)
    try:
        got = nchw.predict(images, verbose=0)
    except tf.errors.UnimplementedError as e:
        # TensorFlow's CPU Conv2D runs NCHW only through oneDNN's bfloat16/AMX
        # paths; on AVX2-only CPUs it refuses the layout (a GPU layout anyway).
        pytest.skip(f"this CPU's TensorFlow has no NCHW Conv2D: {str(e).splitlines()[0][:80]}")
    np.testing.assert_allclose(got, nhwc.predict(images, verbose=0), atol=1e-5)

def test_bad_data_format_is_refused():
    with pytest.raises(ConfigError, match="Received: 'NHWC'"):
        build_preset("tiny", data_format="NHWC")


def test_batch_norm_can_be_set_per_block():
    """Keras' BatchNorm is unfused on TF: presets put it only where it is cheap (low resolution)."""
    blocks = [{"filters": 8, "kernel_size": 3, "batch_norm": False}, {"filters": 16, "kernel_size": 3}]
    model = build_nin(blocks, head_block={"filters": None, "kernel_size": 3, "batch_norm": True}, batch_norm=True)
    bn = {layer.name.split("_")[0] for layer in model.layers if "_bn" in layer.name}
    assert bn == {"block2", "head"}
    with pytest.raises(ConfigError, match="`batch_norm` must be true, false or null. Received: 'yes'"):
        build_nin([{"filters": 8, "batch_norm": "yes"}])


def test_public_api_builds_presets_and_drops_none_overrides():
    import nin_keras

    assert nin_keras.list_presets()[0] == "fashion" and set(nin_keras.PRESETS) == set(nin_keras.list_presets())
    model = nin_keras.create_model("tiny", num_classes=5, width_multiplier=None)
    assert model.output_shape == (None, 5)
    assert model.count_params() == nin_keras.create_model("tiny", num_classes=5).count_params()
    with pytest.raises(AttributeError):
        nin_keras.no_such_thing  # noqa: B018
