"""scripts/batchnorm_kernels.py: its BatchNorm paths give the same gradients, and it prints a row per shape."""

import numpy as np
import pytest

from test_ablation import load_script

kernels = load_script("batchnorm_kernels")


def test_the_three_paths_compute_the_same_gradients():
    import tensorflow as tf

    x = tf.random.stateless_normal([8, 3, 3, 10], seed=[1, 2]) * 2.0 + 1.0
    weights = tf.random.stateless_normal([8, 3, 3, 10], seed=[3, 4])
    gamma, beta = tf.linspace(0.5, 1.5, 10), tf.linspace(-0.3, 0.3, 10)
    gradients = {name: step(x, gamma, beta, weights) for name, step in kernels.step_functions().items()}
    assert all(float(tf.reduce_max(tf.abs(g))) > 0.1 for g in gradients["keras ops"])  # none vanishes
    for name in ("fused", "split"):
        for a, b in zip(gradients[name], gradients["keras ops"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def test_each_shape_gets_a_row_with_every_path(capsys):
    assert kernels.main(["--shapes", "4x3x3x10,4x2x2x16", "--calls", "1", "--rounds", "2"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("float32:") and rows[1].startswith("4x3x3x10: fused ")
    assert "; split " in rows[1] and "; keras ops " in rows[1]
    assert rows[2].startswith("4x2x2x16:") and rows[2].count(" / ") == 3  # two rounds of three paths


@pytest.mark.parametrize("text", ["128x6x6", "0x1x1x1", "axbxcxd"])
def test_a_bad_shape_is_one_line(text):
    with pytest.raises(SystemExit, match="four positive integers. Received: " + repr(text)):
        kernels.parse_shape(text)
