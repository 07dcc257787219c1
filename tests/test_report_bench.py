import json

import pytest

from conftest import build_preset
from nin_keras import bench, report


def test_d2l_resource_figures_match_the_hand_count():
    r = report.resource_report(build_preset("d2l"))
    assert r["parameters"] == 1_992_166
    assert r["macs"] == 762_297_352  # 762.3 M multiply-adds
    assert r["parameter_bytes"] == {"float32": 7_968_664, "float16": 3_984_332, "int8": 1_992_166}


def test_tiny_preset_hand_computed():
    model = build_preset("tiny")
    r = report.resource_report(model, batch_size=8)
    macs = {row["layer"]: row["macs"] for row in r["layers"]}
    # block1: 5x5x1->16 at 28x28, then two 1x1 16->16; block2 at 13x13: 3x3x16->32, two 1x1 32->32;
    # head at 6x6: 3x3x32->10, two 1x1 10->10.
    assert macs["block1_conv0"] == 28 * 28 * 16 * 25
    assert macs["block2_conv0"] == 13 * 13 * 32 * 9 * 16
    assert macs["head_conv2"] == 6 * 6 * 10 * 10
    assert r["macs"] == 313_600 + 2 * 200_704 + 778_752 + 2 * 173_056 + 103_680 + 2 * 3_600
    assert r["parameters"] == 10_822
    assert r["inference_activation_bytes_batch1"] == 2 * 28 * 28 * 16 * 4  # conv0 output + its ReLU
    dense = report.resource_report(report.dense_head_twin(model))
    assert dense["parameters"] == (960 + 6752) + (1152 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 10 + 10)


def test_report_cli(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert report.main(["--preset", "d2l", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1,992,166" in out and "762.3 M multiply-adds" in out and "dense head" in out
    data = json.loads(path.read_text())
    assert data["gap"]["parameters"] == 1_992_166 and data["dense_head"]["parameters"] > 50_000_000


def test_bench_runs_and_reports_every_measure(tmp_path, capsys):
    path = tmp_path / "b.json"
    code = bench.main(["--preset", "tiny", "--steps", "3", "--repeats", "1", "--formats", "float32,int8",
                       "--json", str(path)])
    assert code == 0
    r = json.loads(path.read_text())
    for key in ("matmul_gflops", "model_only_images_per_sec", "end_to_end_images_per_sec", "pipeline_images_per_sec"):
        assert r[key]["median"] > 0, key
    assert set(r["inference"]) == {"keras", "tflite_float32", "tflite_int8"}
    assert r["inference"]["tflite_int8"]["size_bytes"] < r["inference"]["tflite_float32"]["size_bytes"]
    assert "matmul ceiling" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [(["--steps", "0"], "--steps must be >= 1. Received: 0"),
                                           (["--batch-size", "-4"], "--batch-size must be >= 1. Received: -4")])
def test_bench_bad_settings(argv, message, capsys):
    assert bench.main(argv) == 1
    assert capsys.readouterr().err.strip() == f"error: {message}"
