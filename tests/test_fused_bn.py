"""nin_keras.fused_bn: TensorFlow's fused BatchNorm kernel behind Keras' own BatchNormalization layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import build_preset, needs_bf16_kernels, random_images, save_and_reload
from nin_keras.fused_bn import count_fused, fuse_batch_norm, has_jit_kernel
from nin_keras.precise_bn import batchnorm_layers


def twin_models(preset="fashion", **overrides):
    """Two models with the same weights: Keras' BatchNorm and the fused one."""
    keras.utils.set_random_seed(0)
    plain = build_preset(preset, **overrides)
    fused = build_preset(preset, **overrides)
    fused.set_weights(plain.get_weights())
    return plain, fused


def perturbed_fused_twins(**overrides):
    """Twin models whose BatchNorm weights and statistics are away from 0/1, the second one fused."""
    plain, fused = twin_models(**overrides)
    perturb_statistics(plain)
    fused.set_weights(plain.get_weights())
    fuse_batch_norm(fused)
    return plain, fused


def perturb_statistics(model, seed=1):
    """Moving statistics and BatchNorm weights away from their initial 0/1 (where formulas coincide)."""
    rng = np.random.default_rng(seed)
    for layer in batchnorm_layers(model):
        n = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, n))
        layer.beta.assign(rng.normal(0, 0.3, n))
        layer.moving_mean.assign(rng.normal(0, 0.5, n))
        layer.moving_variance.assign(rng.uniform(0.2, 3.0, n))


def test_every_channels_last_batchnorm_of_a_preset_is_fused_but_its_class_map():
    _, fused = twin_models()
    layers = batchnorm_layers(fused)
    assert fuse_batch_norm(fused) == len(layers) - 1 == 4
    assert count_fused(fused) == 4
    # The 10-channel class map runs Keras' own ops: oneDNN has only its slow generic kernel for 10 channels.
    assert layers[-1].gamma.shape == (10,) and "call" not in vars(layers[-1])


def test_without_onednn_the_class_map_is_fused_too(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # TensorFlow's own kernels: the channel rule is oneDNN's
    _, fused = twin_models()
    assert fuse_batch_norm(fused) == 5


@pytest.mark.parametrize("channels, dtype, expected", [
    (64, "float32", True), (8, "float32", True), (24, "float32", True), (10, "float32", False),
    (64, "bfloat16", True), (24, "bfloat16", False), (10, "bfloat16", False),
    (None, "float32", False)])
def test_only_channel_counts_with_a_onednn_jit_kernel_are_fused(channels, dtype, expected):
    # As ONEDNN_VERBOSE names the kernels: jit for float32 in blocks of 8, bfloat16 of 16; else nspc_bnorm:any.
    assert has_jit_kernel(channels, dtype) is expected


def test_inference_and_training_outputs_match_keras():
    plain, fused = perturbed_fused_twins()
    x = random_images(32).astype("float32")
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=1e-5)
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), atol=1e-5)


def test_moving_statistics_follow_keras_rule_with_the_biased_variance():
    plain, fused = twin_models()
    fuse_batch_norm(fused)
    x = random_images(16).astype("float32")
    plain(x, training=True)
    fused(x, training=True)
    for a, b in zip(batchnorm_layers(plain), batchnorm_layers(fused)):
        np.testing.assert_allclose(b.moving_mean, a.moving_mean, atol=1e-6)
        # Keras: 0.99 * 1 + 0.01 * biased variance; the fused kernel's own would be Bessel-corrected.
        np.testing.assert_allclose(b.moving_variance, a.moving_variance, rtol=1e-5)


@needs_bf16_kernels
def test_bfloat16_activations_keep_float32_statistics():
    from nin_keras.precision import precision_scope

    with precision_scope("bfloat16"):
        model = build_preset("fashion")
    fuse_batch_norm(model)
    out = model(random_images(8).astype("float32"), training=True)
    assert out.dtype == "float32" and np.isfinite(out).all()
    layer = batchnorm_layers(model)[0]
    assert layer.moving_variance.dtype == "float32" and not np.allclose(layer.moving_variance, 1.0)


def test_a_saved_fused_model_is_keras_own_and_predicts_the_same(tmp_path):
    plain, fused = twin_models()
    perturb_statistics(fused)
    fuse_batch_norm(fused)
    x = random_images(8)
    reloaded = save_and_reload(fused, tmp_path)  # no custom objects needed
    assert count_fused(reloaded) == 0
    assert all(type(layer) is keras.layers.BatchNormalization for layer in batchnorm_layers(reloaded))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), fused.predict(x, verbose=0), atol=1e-6)


def test_layouts_and_options_it_cannot_fuse_keep_keras_call():
    if "channels_first" in __import__("nin_keras.model", fromlist=["DATA_FORMATS"]).DATA_FORMATS:
        nchw = build_preset("fashion", data_format="channels_first")
        assert fuse_batch_norm(nchw) == 0
    inputs = keras.Input((8, 8, 4))
    renorm = keras.layers.BatchNormalization(renorm=True)(inputs)
    flat = keras.layers.BatchNormalization()(keras.layers.Flatten()(inputs))
    no_scale = keras.layers.BatchNormalization(scale=False)(inputs)
    model = keras.Model(inputs, [renorm, flat, no_scale])
    assert fuse_batch_norm(model) == 0


@pytest.mark.parametrize("setting, expected", [(True, 4), (False, 0)])
def test_fit_compiles_fused_and_the_bench_can_turn_it_off(setting, expected):
    from nin_keras import bench
    from nin_keras.config import resolve_config
    from nin_keras.fit import compile_model

    model = build_preset("fashion")
    compile_model(model, resolve_config({"preset": "fashion", "fused_batch_norm": setting}), steps_per_epoch=10)
    assert count_fused(model) == expected
    assert "--no-fused-batch-norm" in bench.BenchSettings(fused_batch_norm=False).flags()
    assert bench.build_parser().parse_args(["--no-fused-batch-norm"]).fused_batch_norm is False


X86_AVX512 = {"avx2", "avx512f"}


@pytest.mark.parametrize("flags, env, gpu, expected", [
    (X86_AVX512, {}, False, False),                                    # AVX-512: oneDNN's fused forward
    ({"avx2"}, {}, False, True),                                       # an AVX2-only CPU
    (X86_AVX512, {"ONEDNN_MAX_CPU_ISA": "avx2"}, False, True),         # capped like a user's machine
    (X86_AVX512, {"DNNL_MAX_CPU_ISA": "AVX2_VNNI_2"}, False, True),    # oneDNN's older variable
    (X86_AVX512, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False, False),
    (X86_AVX512, {"ONEDNN_MAX_CPU_ISA": "DEFAULT"}, False, False),
    ({"avx2"}, {}, True, False),                                       # a GPU's kernel reads the inverse variance
    ({"avx2"}, {"TF_ENABLE_ONEDNN_OPTS": "0"}, False, False),          # oneDNN off: nothing measured
    (set(), {}, False, False),                                         # flags unknown (macOS, Windows)
    ({"asimd", "sve"}, {}, False, False),                              # an ARM CPU
    ({"avx2"}, {"NIN_KERAS_BATCH_NORM_FORWARD": "fused"}, False, False),  # the override wins both ways
    (X86_AVX512, {"NIN_KERAS_BATCH_NORM_FORWARD": "Split"}, False, True),
])
def test_the_forward_is_split_where_onednn_runs_below_avx512(flags, env, gpu, expected):
    from nin_keras.fused_bn import split_forward

    assert split_forward(flags, env, gpu=gpu) is expected


def test_a_bad_forward_override_is_one_line_that_repeats_it():
    from nin_keras.errors import ConfigError
    from nin_keras.fused_bn import split_forward

    with pytest.raises(ConfigError, match=r"NIN_KERAS_BATCH_NORM_FORWARD .*Received: 'onednn'"):
        split_forward({"avx2"}, {"NIN_KERAS_BATCH_NORM_FORWARD": "onednn"}, gpu=False)


@pytest.mark.parametrize("forward", ["split", "fused"])
def test_both_forwards_train_like_keras(forward, monkeypatch):
    """Outputs, every weight's gradient and the moving statistics, against Keras' own BatchNorm ops."""
    monkeypatch.setenv("NIN_KERAS_BATCH_NORM_FORWARD", forward)
    # 16 classes: the class map's BatchNorm (no ReLU after it, so its gradients compare exactly) is fused too.
    plain, fused = perturbed_fused_twins(num_classes=16)
    assert count_fused(fused) == 5
    assert all(layer._nin_split_forward is (forward == "split") for layer in batchnorm_layers(fused))
    x, y = random_images(16).astype("float32"), np.arange(16) % 10

    def step(model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
        return loss, tape.gradient(loss, model.trainable_weights)

    (loss_a, grads_a), (loss_b, grads_b) = step(plain), step(fused)
    assert float(loss_b) == pytest.approx(float(loss_a), abs=1e-6)
    for weight, a, b in zip(plain.trainable_weights, grads_a, grads_b):
        # Fused: where a ReLU sits on an activation's rounding, gradients differ; the head's BatchNorm has no ReLU.
        if forward == "split" or weight.path.startswith("head_bn1"):
            np.testing.assert_allclose(b, a, atol=2e-6, rtol=1e-4, err_msg=weight.path)
    for a, b in zip(batchnorm_layers(plain), batchnorm_layers(fused)):
        np.testing.assert_allclose(b.moving_mean, a.moving_mean, atol=1e-6)
        np.testing.assert_allclose(b.moving_variance, a.moving_variance, rtol=1e-5)


def test_the_split_override_is_refused_with_a_gpu():
    from nin_keras.errors import ConfigError
    from nin_keras.fused_bn import split_forward

    with pytest.raises(ConfigError, match=r"=split is for CPUs.*Received: 'split' with a GPU visible"):
        split_forward({"avx2"}, {"NIN_KERAS_BATCH_NORM_FORWARD": "split"}, gpu=True)


def test_a_split_layer_predicts_like_keras_from_its_moving_statistics(monkeypatch):
    monkeypatch.setenv("NIN_KERAS_BATCH_NORM_FORWARD", "split")
    plain, fused = perturbed_fused_twins()
    expected = plain.predict(random_images(16), verbose=0)

    def slow_kernel(*args, **kwargs):
        raise AssertionError("inference took oneDNN's fused forward")

    monkeypatch.setattr(tf.compat.v1.nn, "fused_batch_norm", slow_kernel)  # not Keras' path: it has its own ops
    np.testing.assert_allclose(fused.predict(random_images(16), verbose=0), expected, atol=1e-6)


def test_a_mistyped_forward_override_stops_a_command_in_one_line_before_it_starts(tmp_path, monkeypatch, capsys):
    from nin_keras.fit import main

    monkeypatch.setenv("NIN_KERAS_BATCH_NORM_FORWARD", "fast")
    assert main(["--preset", "tiny", "--output-dir", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == "error: NIN_KERAS_BATCH_NORM_FORWARD must be 'fused' or 'split'. Received: 'fast'\n"
    assert not (tmp_path / "run").exists()


def test_the_bench_reads_which_forward_the_model_trains_with(monkeypatch):
    from nin_keras.fused_bn import forward_in_use
    from nin_keras.precision import precision_scope

    assert forward_in_use(build_preset("fashion")) is None  # not fused
    for forward in ("split", "fused"):
        monkeypatch.setenv("NIN_KERAS_BATCH_NORM_FORWARD", forward)
        model = build_preset("fashion")
        fuse_batch_norm(model)
        assert forward_in_use(model) == forward
    monkeypatch.setenv("NIN_KERAS_BATCH_NORM_FORWARD", "split")
    with precision_scope("float16"):  # only float32 activations split
        model = build_preset("fashion")
    fuse_batch_norm(model)
    assert forward_in_use(model) == "fused"
