import json
import os

import numpy as np
import pytest

from helpers import build_preset
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
    import warnings

    path = tmp_path / "b.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = bench.main(["--preset", "tiny", "--steps", "3", "--repeats", "1", "--formats", "float32,int8",
                           "--json", str(path)])
    assert code == 0
    assert not [w for w in caught if "shuffle" in str(w.message)]  # Keras' "shuffle=True ... ignored" in the output
    r = json.loads(path.read_text())
    for key in ("matmul_gflops", "model_only_images_per_sec", "end_to_end_images_per_sec", "pipeline_images_per_sec"):
        assert r[key]["median"] > 0, key
    assert set(r["inference"]) == {"keras", "tflite_float32", "tflite_int8"}
    assert r["inference"]["tflite_int8"]["size_bytes"] < r["inference"]["tflite_float32"]["size_bytes"]
    out = capsys.readouterr().out
    assert "matmul ceiling" in out and "oneDNN ISA in use:" in out
    assert r["cpu"]["model"] is not None and isinstance(r["cpu"]["features"], list)
    assert r["batch_norm_forward"] is None  # tiny has no BatchNorm (test_fused_bn checks the other answers)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "steps must be an integer >= 1. Received: 0"),
    (["--batch-size", "-4"], "batch size must be an integer >= 1. Received: -4"),
    (["--intra-op-threads", "-1"], "intra op threads must be an integer >= 0 (0: TensorFlow's default). Received: -1"),
    (["--sweep-timeout", "0"], "sweep timeout must be a number of seconds > 0. Received: 0.0"),
])
def test_bench_bad_settings(argv, message, capsys):
    assert bench.main(argv) == 1
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_bench_on_a_folder_with_fewer_classes_than_ten(tmp_path):
    """The model-only measure drew labels 0-9 whatever the folder: 2 classes stopped it with an 86-line
    "Received a label value of 9 which is outside the valid range of [0, 2)" traceback."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("left", "right"):
        os.makedirs(tmp_path / "photos" / cls)
        for i in range(12):
            pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / cls / f"{i}.jpg")
    path = tmp_path / "b.json"
    assert bench.main(["--preset", "photo", "--image-dir", str(tmp_path / "photos"), "--image-size", "32",
                       "--batch-size", "8", "--steps", "2", "--repeats", "1", "--no-inference", "--formats", "",
                       "--precision", "float32", "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert r["model_only_images_per_sec"]["median"] > 0 and r["images"] > 0


def test_report_counts_channels_first_layers_the_same():
    assert (report.resource_report(build_preset("tiny", data_format="channels_first"))["macs"]
            == report.resource_report(build_preset("tiny"))["macs"])


def test_bench_resize_in_the_pipeline_and_other_settings(tmp_path):
    path = tmp_path / "b.json"
    assert bench.main(["--preset", "d2l", "--batch-size", "2", "--steps", "2", "--repeats", "1", "--no-inference",
                       "--resize-in", "pipeline", "--precision", "float32", "--no-cache", "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert (r["resize_in"], r["precision"], r["cache"]) == ("pipeline", "float32", False)
    assert r["model"]["macs_per_image"] == 762_297_352  # same network, fed 224x224 images
    assert "inference" not in r and r["end_to_end_images_per_sec"]["median"] > 0


def test_bench_sweep_runs_each_setting_in_a_fresh_process(tmp_path, monkeypatch, capsys):
    # Three settings only (the full sweep takes minutes): defaults, a thread
    # setting that can only take effect in a new process.
    # setting that can only take effect in a new process, and one that fails.
    monkeypatch.setattr(bench, "sweep_variants", lambda preset, precision, settings, config_file: [
        ("defaults", []), ("intra-op 1 thread", ["--intra-op-threads", "1"]),
        ("broken", ["--inter-op-threads", "-3"])])
    path = tmp_path / "sweep.json"
    assert bench.main(["--preset", "tiny", "--steps", "2", "--repeats", "1", "--sweep", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert [row["name"] for row in rows] == ["defaults", "intra-op 1 thread", "broken"]
    assert rows[1]["result"]["intra_op_threads"] == 1 and rows[0]["result"]["intra_op_threads"] == 0
    assert rows[2]["result"]["error"] == ("error: inter op threads must be an integer >= 0 (0: TensorFlow's default). "
                                          "Received: -3")
    out = capsys.readouterr().out
    assert "vs defaults" in out and "intra-op 1 thread" in out and "1.00x" in out and "failed: error:" in out


def test_sweep_children_get_settings_not_edited_argv():
    args = bench.build_parser().parse_args(["--preset", "tiny", "--steps", "2", "--xla", "--json", "x.json",
                                            "--sweep", "--sweep-timeout", "5", "--isa-cap", "AVX2"])
    flags = bench.base_flags(args)
    assert flags[:2] == ["--batch-size", "128"] and "--isa-cap" in flags and "--preset" in flags
    assert not {"--json", "--sweep", "--sweep-timeout", "--xla"} & set(flags)
    names = dict(bench.sweep_variants("tiny", "float32", bench.BenchSettings.from_args(args)))
    assert names["defaults"] == ["--xla"]  # the user's settings are the sweep's baseline
    assert names["intra-op 1 thread"] == ["--xla", "--intra-op-threads", "1"]


def test_report_and_bench_honour_a_configs_model_section(tmp_path, capsys):
    from nin_keras import report

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"preset": "tiny", "model": {"width_multiplier": 2.0}}))
    assert report.main(["--config", str(config), "--json", str(tmp_path / "r.json")]) == 0
    assert report.main(["--preset", "tiny", "--json", str(tmp_path / "p.json")]) == 0
    wide = json.loads((tmp_path / "r.json").read_text())["gap"]["parameters"]
    plain = json.loads((tmp_path / "p.json").read_text())["gap"]["parameters"]
    assert wide > 3 * plain


def test_sweep_covers_every_compared_default():
    names = [name for name, _ in bench.sweep_variants("d2l", "bfloat16")]
    assert names[0] == "defaults"
    for expected in ("float32", "float16", "xla", "channels_first", "no tf.data cache", "resize in tf.data",
                     "intra-op 1 thread", "inter-op 1 thread"):
        assert expected in names
    assert "resize in tf.data" not in [name for name, _ in bench.sweep_variants("fashion", "float32")]
    assert "bfloat16" in [name for name, _ in bench.sweep_variants("fashion", "float32")]


def test_bench_data_format_choices_match_the_model():
    from nin_keras.model import DATA_FORMATS

    action = next(a for a in bench.build_parser()._actions if a.dest == "data_format")
    assert tuple(action.choices) == DATA_FORMATS


def test_a_failing_inference_measure_is_a_row_not_a_crash(monkeypatch):
    import export.evaluator
    from helpers import build_preset, random_images

    real = export.evaluator.TFLiteClassifier

    def flaky(*args, **kwargs):
        clf = real(*args, **kwargs)
        if clf.input["dtype"] == np.uint8:  # the int8 model
            raise RuntimeError("failed to create XNNPACK runtime\nTfLiteXNNPackDelegate failed to prepare")
        return clf

    monkeypatch.setattr(export.evaluator, "TFLiteClassifier", flaky)
    out = bench._bench_inference(build_preset("tiny"), random_images(20), ["float32", "int8"], repeats=1, n_latency=3)
    assert "images_per_sec_batch64" in out["tflite_float32"]
    assert out["tflite_int8"] == {"error": "RuntimeError: failed to create XNNPACK runtime TfLiteXNNPackDelegate "
                                           "failed to prepare"}
    table = bench.format_inference(out).splitlines()
    assert len(table) == 4 and table[3].startswith("  tflite_int8") and "failed: RuntimeError" in table[3]


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="oneDNN ISA caps are x86")
def test_isa_cap_is_honoured_and_reported():
    """ONEDNN_MAX_CPU_ISA below this CPU's own ISA is what oneDNN then reports (checked, not assumed)."""
    capped = bench.onednn_isa({"ONEDNN_MAX_CPU_ISA": "SSE41"})
    assert capped is not None and "SSE4.1" in capped
    assert bench.build_parser().parse_args(["--isa-cap", "AVX2"]).isa_cap == "AVX2"


def test_the_header_names_the_variable_that_capped_the_run(monkeypatch):
    from nin_keras.precision import onednn_cap, onednn_cap_variable

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx2")
    recorded = {"isa_cap": onednn_cap() or None, "isa_cap_variable": onednn_cap_variable()}  # as _describe does
    assert bench.cap_text(recorded) == " (capped: DNNL_MAX_CPU_ISA=AVX2)"
    assert bench.cap_text({"isa_cap": "AVX2"}) == " (capped: ONEDNN_MAX_CPU_ISA=AVX2)"  # an older results file
    assert bench.cap_text({"isa_cap": None, "isa_cap_variable": None}) == ""


def test_per_class_report_matches_a_hand_computed_case():
    from nin_keras.per_class import per_class_report, summary_line

    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 1, 1]
    r = per_class_report(y_true, y_pred, ["a", "b", "c"])
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 2, 2]]
    assert r["per_class"]["a"] == {"accuracy": 2 / 3, "examples": 3}
    assert r["per_class"]["b"]["accuracy"] == 0.5 and r["per_class"]["c"]["accuracy"] == 0.5
    assert r["most_confused"][0] == {"true": "c", "predicted": "b", "count": 2}
    assert r["accuracy"] == pytest.approx(5 / 9)
    assert summary_line(r).startswith("hardest classes: b 0.500, c 0.500, a 0.667; most confused: c -> b (2)")
    empty = per_class_report([0], [0], ["a", "b"])
    assert empty["per_class"]["b"] == {"accuracy": None, "examples": 0}


def test_class_names_the_font_cannot_draw_make_no_warnings(tmp_path):
    """Folder names with emoji or CJK (a user's own classes): boxes in the PNG, not a warning per glyph."""
    import warnings

    from nin_keras.per_class import per_class_report, plot_confusion
    from nin_keras.plotting import plot_history

    report = per_class_report([0, 1, 1], [0, 1, 0], ["🐱 cats", "狗 dogs"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_confusion(report, tmp_path / "confusion.png")
        plot_history([{"epoch": 1, "loss": 0.5, "accuracy": 0.8}], tmp_path / "history.png", title="🐱 狗 run")
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "history.png").stat().st_size > 0


def test_every_sweep_variant_is_the_defaults_with_fields_replaced_and_its_flags_parse_back():
    import dataclasses

    defaults = bench.BenchSettings()
    assert defaults.flags() == []
    for name, change in bench.SWEEP_CHANGES + [("resize", {"resize_in": "pipeline"}), ("bf16", {"precision": "bfloat16"})]:
        variant = dataclasses.replace(defaults, **change)
        args = bench.build_parser().parse_args(variant.flags())
        assert bench.BenchSettings.from_args(args) == variant, name


def test_report_counts_test_time_flip_twice_at_inference_only():
    plain = report.resource_report(build_preset("tiny"))
    flip = report.resource_report(build_preset("tiny", test_time_flip=True))
    assert flip["macs"] == plain["macs"] == plain["inference_macs"]  # training: one pass
    assert flip["inference_macs"] == 2 * plain["macs"]
    assert "x 2 at inference" in report.format_report(flip, None)


def test_onednn_caller_thread_is_set_in_the_environment_only_when_asked(monkeypatch):
    # setenv first so that teardown restores the variable's absence: the bench sets it in os.environ
    # itself, and every later process this worker starts would inherit it.
    monkeypatch.setenv("TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD", "0")
    monkeypatch.delenv("TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD")
    bench.set_onednn_environment(bench.BenchSettings())
    assert "TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD" not in os.environ
    args = bench.build_parser().parse_args(["--onednn-caller-thread"])
    bench.set_onednn_environment(bench.BenchSettings.from_args(args))
    assert os.environ["TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD"] == "1" and bench.onednn_caller_thread_on()
    monkeypatch.setenv("TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD", "false")  # the user's own, as TF reads it
    assert not bench.onednn_caller_thread_on()
    assert dict(bench.sweep_variants("tiny", "float32"))["oneDNN on the caller thread"] == ["--onednn-caller-thread"]
