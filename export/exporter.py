"""``python -m export``: TFLite/SavedModel export with a verified size/accuracy/latency report."""

import argparse
import json
import os
import sys

import numpy as np

from export.converter import (
    ALL_FORMATS,
    BYTES_PER_PARAM,
    IO_TYPES,
    TFLITE_FORMATS,
    block_names,
    check_float_blocks,
    convert,
    convert_onnx,
    image_rules,
    export_saved_model,
    onnx_sidecar,
    load_keras_model,
    load_labels,
    resolve_model_path,
    sidecar,
    write_tflite,
)
from nin_keras.settings import BY_NAME, FALLBACKS, validate_numeric_args
from nin_keras.errors import NinError
from nin_keras.cli import OneLineParser, add_data_flags, run_cli
from nin_keras.io import atomic_write_text, read_json_object

EXIT_ACCURACY_GATE = 3


def build_parser():
    parser = OneLineParser(prog="python -m export", description=__doc__)
    parser.add_argument("model", help="a nin_keras run directory or a .keras file")
    parser.add_argument("--output-dir", help="where to write the models (default: <run dir>/export)")
    parser.add_argument("--format", dest="formats", action="append", choices=ALL_FORMATS + ("web",),
                        help="format to export; repeat for several (default: all four TFLite formats); "
                             "web: a page that runs the int8 model in a phone's browser (export/web.py)")
    parser.add_argument("--web-runtime", choices=("auto", "npm", "cdn"), default="auto",
                        help="web: copy MediaPipe Tasks from npm into the folder (auto: when npm is available) "
                             "or load it from a CDN")
    parser.add_argument("--browser-benchmark", action="store_true",
                        help="web: time every exported TFLite file in headless Chromium (needs chromium, playwright)")
    parser.add_argument("--calibration-samples", type=int, default=300,
                        help="training images used to calibrate int8 (default 300)")
    parser.add_argument("--int8-input", choices=IO_TYPES, default="uint8",
                        help="input type of the int8 model (default uint8: raw pixel bytes)")
    parser.add_argument("--int8-output", choices=IO_TYPES, default="float32",
                        help="output type of the int8 model (default float32 probabilities)")
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction,
                        help="int8: one scale per output channel (larger file) instead of one per tensor "
                             "(default: what the run's preset says, e.g. fashion-best: per channel; else per tensor)")
    parser.add_argument("--int8-float-blocks", type=block_names, default=(), metavar="BLOCKS",
                        help="int8: keep these blocks (comma-separated, e.g. block1) in float32 (selective "
                             "quantization; input and output become float32). On x86 CPUs without VNNI, "
                             "block1 makes int8 as fast as float32 (README)")
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0,
                        help="fail (exit 3) if int8 accuracy is more than this many points below Keras (default 1.0)")
    parser.add_argument("--rgb-input", action=argparse.BooleanOptionalAction,
                        help="TFLite input takes RGB camera frames; a grayscale model gets a fixed luminance layer "
                             "in front (default: on for grayscale models, so MediaPipe Tasks can load them)")
    parser.add_argument("--metadata", action=argparse.BooleanOptionalAction, default=True,
                        help="embed MediaPipe/TFLite metadata (name, labels, normalisation) in every .tflite "
                             "(default on; needs: pip install \"nin_keras[phone]\")")
    parser.add_argument("--mediapipe-scale", type=int, default=2,
                        help="verification feeds MediaPipe RGB frames this many times the model's size (default 2)")
    parser.add_argument("--litert-benchmark", action=argparse.BooleanOptionalAction, default=True,
                        help="also time each file with LiteRT's own benchmark tool, 1 and 2 threads (default on)")
    parser.add_argument("--no-verify", action="store_true", help="skip the LiteRT/MediaPipe evaluation and report")
    parser.add_argument("--seed", type=int,
                        help="data split seed (default: the run's, from its config.json; else 0)")
    # No --image-size: an export feeds the model the size it was trained at (its input shape).
    add_data_flags(parser, exclude=("image_size",))
    return parser


def parameter_report(model):
    """Parameter counts and bytes, and what a dense head would weigh instead of GAP."""
    from nin_keras.report import dense_head_twin

    params = int(model.count_params())
    out = {"parameters": params, "parameter_bytes": {f: params * b for f, b in BYTES_PER_PARAM.items()}}
    twin = dense_head_twin(model)
    if twin is not None:
        out["dense_head_parameters"] = int(twin.count_params())
        out["dense_head_bytes_float32"] = int(twin.count_params()) * 4
    return out


def format_table(rows):
    """Markdown table of the per-format results."""
    header = ("format", "size KB", "x float32", "accuracy", "agree w/ Keras", "mean ms", "p95 ms",
              "LiteRT tool ms, 1 / 2 threads", "param bytes",
              "MediaPipe accuracy", "MediaPipe = LiteRT", "MediaPipe = Keras")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["format"], f"{r['size_bytes'] / 1024:,.1f}", f"{r['size_ratio_to_float32']:.3f}",
            f"{r['accuracy']:.4f}" if "accuracy" in r else "-",
            f"{r['agreement_with_keras']:.4f}" if "agreement_with_keras" in r else "-",
            f"{r['latency_ms_mean']:.3f}" if "latency_ms_mean" in r else "-",
            f"{r['latency_ms_p95']:.3f}" if "latency_ms_p95" in r else "-",
            " / ".join("-" if r.get(k) is None else f"{r[k]:.3f}" for k in ("litert_tool_ms_1_thread",
                                                                             "litert_tool_ms_2_threads")),
            f"{r['parameter_bytes']:,}",
            *_mediapipe_cells(r),
        ]) + " |")
    return "\n".join(lines)


SPLIT_SETTINGS = ("seed", "val_fraction", "limit")
SOURCE_SETTINGS = ("data_dir", "image_dir", "tfds")


def run_dir(model_path):
    """The folder that holds ``model_path``: a run directory, with config.json (and split.json) beside it."""
    return os.path.dirname(os.path.abspath(model_path))


def _relative(path, start):
    """``path`` relative to the folder ``start``, or its base name across drives (Windows)."""
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return os.path.basename(os.path.abspath(path))


def run_config(model_path):
    """The resolved settings saved beside the model (``config.json``), or {} for a bare .keras file."""
    config_path = os.path.join(run_dir(model_path), "config.json")
    return read_json_object(config_path, "run config") if os.path.isfile(config_path) else {}


def data_settings(args, model_path):
    """Data source and split for calibration and the test accuracy: the run's own.

    Calibration must see only the run's training images and the report only
    its test images, so the split settings (seed, validation fraction,
    limit) come from the run's ``config.json``; a flag that contradicts them
    is refused. Source flags (``--data-dir``...) override the run's (data
    moved to another folder); without a run config, flags and defaults apply.
    """
    run = run_config(model_path)
    out = {}
    for key in SPLIT_SETTINGS:
        flag, saved = getattr(args, key), run.get(key)
        if key in run and flag is not None and flag != saved:
            raise NinError(f"--{key.replace('_', '-')} {flag}: the run was trained with {key}={saved!r}; export uses "
                           "the run's split so calibration never sees its test images (drop the flag)")
        out[key] = saved if key in run else flag
    if out["seed"] is None:
        out["seed"] = 0
    if out["val_fraction"] is None:
        out["val_fraction"] = FALLBACKS["val_fraction"]
    given = {k: getattr(args, k) for k in SOURCE_SETTINGS if getattr(args, k) is not None}
    out.update(given or {k: run.get(k) for k in SOURCE_SETTINGS})
    out["test_limit"] = args.test_limit
    # An image-folder run's split file: calibration and test images are exactly the run's.
    split_file = os.path.join(run_dir(model_path), "split.json")
    out["split_file"] = split_file if os.path.isfile(split_file) else None
    for key in ("skip_bad_images", "resize", "max_image_pixels"):
        flag = getattr(args, key)
        # A flag wins, then the run's setting, then the schema's default (a run from before the setting existed).
        out[key] = flag if flag is not None else run.get(key, BY_NAME[key].default)
    return out


def preset_export_settings(model_path):
    """The export defaults the run recorded in its ``config.json`` (its preset's at training time), or {}.

    A preset knows how its model quantizes best (measured, README): e.g.
    fashion-best's int8 keeps its accuracy only with per-channel scales. A
    run from before run records falls back to today's preset table.
    """
    from nin_keras.presets import PRESETS

    run = run_config(model_path)
    if isinstance(run.get("export"), dict):
        return dict(run["export"])
    return dict(PRESETS.get(run.get("preset"), {}).get("export", {}))


def per_class_by_format(y_test, predictions, labels):
    """Per-class accuracy of Keras and each format: (dict for report.json, markdown table)."""
    from nin_keras.per_class import per_class_report

    reports = {name: per_class_report(y_test, top1, labels) for name, top1 in predictions.items()}
    accuracy = {name: {c: r["per_class"][c]["accuracy"] for c in labels} for name, r in reports.items()}
    names = list(predictions)
    lines = ["| class | examples | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    support = reports["keras"]["per_class"]
    for c in labels:
        cells = ["-" if accuracy[n][c] is None else f"{accuracy[n][c]:.4f}" for n in names]
        lines.append(f"| {c} | {support[c]['examples']} | " + " | ".join(cells) + " |")
    pair = reports["keras"]["most_confused"][:3]
    confused = "; ".join(f"{p['true']} -> {p['predicted']} ({p['count']})" for p in pair)
    return accuracy, "\n".join(lines) + (f"\n\nMost confused (Keras): {confused}." if confused else "")


def _mediapipe_cells(row):
    if "mediapipe_error" in row:
        return ["refused: " + row["mediapipe_error"][:60], "-", "-"]
    if "mediapipe_accuracy" not in row:
        return ["-", "-", "-"]
    return [f"{row['mediapipe_accuracy']:.4f}", f"{row['mediapipe_agreement_with_litert']:.4f}",
            f"{row['mediapipe_agreement_with_keras']:.4f}"]


def run_export(args, print_fn=print):
    """Export and verify, then write the web page if asked; returns (report dict, exit code)."""
    if args.browser_benchmark and "web" not in (args.formats or ()):
        raise NinError("--browser-benchmark times the models in the web page: add --format web")
    report, code = _export_files(args, print_fn)
    if "web" in (args.formats or ()):
        web_step(args, report, print_fn)
    return report, code


def web_step(args, report, print_fn=print):
    """``--format web``: the page folder beside the int8 model, and (``--browser-benchmark``) its latencies."""
    from export.web import browser_benchmark, write_web

    out_dir = report["output_dir"]
    model_path = resolve_model_path(args.model)
    web_dir = write_web(out_dir, os.path.join(out_dir, "nin_int8.tflite"), report,
                        resize=run_config(model_path).get("resize"), run_name=os.path.basename(run_dir(model_path)),
                        runtime=args.web_runtime, print_fn=print_fn)
    if not args.browser_benchmark:
        return
    written = {f: os.path.join(out_dir, f"nin_{f}.tflite") for f in TFLITE_FORMATS if f in export_formats(args)}
    timings = browser_benchmark(web_dir, written, print_fn=print_fn)
    report["browser_benchmark"] = {"runtime": "MediaPipe Tasks for the Web, CPU delegate, headless Chromium",
                                   "per_format": timings}
    for row in report.get("formats", []):
        if row["format"] in timings:
            row["browser_ms_median"] = timings[row["format"]]["median_ms"]
    atomic_write_text(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2) + "\n")
    lines = [f"| {f} | {t['median_ms']:.2f} | {t['mean_ms']:.2f} |" for f, t in timings.items()]
    md_path = os.path.join(out_dir, "report.md")
    previous = open(md_path).read() if os.path.isfile(md_path) else "# Export report\n"
    atomic_write_text(md_path, previous + "\n## In-browser latency (MediaPipe Tasks Web, headless Chromium, this CPU)\n\n"
                      "| format | median ms | mean ms |\n|---|---|---|\n" + "\n".join(lines) + "\n")


def export_formats(args):
    """The formats to write: the flags' (default: the four TFLite ones); the web page needs the int8 model."""
    formats = [f for f in (args.formats or TFLITE_FORMATS) if f != "web"]
    if "web" in (args.formats or ()) and "int8" not in formats:
        formats.append("int8")
    return formats


def _export_files(args, print_fn=print):
    """Export and verify the model files; returns (report dict, exit code)."""
    from export.evaluator import evaluate_tflite
    from nin_keras.data import load_data

    validate_numeric_args(args)  # before anything is loaded or written
    model_path = resolve_model_path(args.model)
    model = load_keras_model(model_path)
    out_dir = args.output_dir or os.path.join(run_dir(model_path), "export")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise NinError(f"--output-dir {out_dir}: cannot create ({e.strerror})") from None
    formats = export_formats(args)
    per_channel = args.per_channel
    if per_channel is None:
        per_channel = preset_export_settings(model_path).get("per_channel", False)

    num_classes = int(model.output.shape[-1])
    labels = load_labels(model_path, num_classes)
    tflite_formats = [f for f in formats if f in TFLITE_FORMATS]
    verify = (tflite_formats or "onnx" in formats) and not args.no_verify
    splits = None
    if "int8" in formats or verify:
        data = data_settings(args, model_path)
        splits = load_data(data["data_dir"], data["image_dir"], data["tfds"], val_fraction=data["val_fraction"],
                           seed=data["seed"], limit=data["limit"], test_limit=data["test_limit"],
                           image_size=model.input_shape[1:3], num_classes=num_classes,
                           channels=model.input_shape[3], split_file=data["split_file"],
                           skip_bad_images=data["skip_bad_images"], resize=data["resize"],
                           max_image_pixels=data["max_image_pixels"])
        if list(splits.input_shape) != list(model.input_shape[1:]):
            raise NinError(f"data images are {splits.input_shape} but the model expects {list(model.input_shape[1:])}")
        if len(splits.class_names) != num_classes:
            raise NinError(f"{data['split_file'] or splits.source}: {len(splits.class_names)} classes but the model "
                           f"has {num_classes} outputs. Received: classes={splits.class_names[:20]}")

    from export.phone import add_metadata, with_rgb_input
    from nin_keras.images import ORIENTATION_RULE

    # The run's resize mode (the preprocessing contract the sidecar and metadata record).
    resize = (data["resize"] if splits is not None else
              args.resize or run_config(model_path).get("resize", BY_NAME["resize"].default))

    channels = model.input_shape[-1]
    rgb = args.rgb_input if args.rgb_input is not None else channels == 1
    deployed = with_rgb_input(model) if rgb else model
    if args.metadata and tflite_formats:
        from export.phone import import_metadata_writers

        import_metadata_writers()  # a missing mediapipe is one line now, not after the first conversion
    float_blocks = block_names(args.int8_float_blocks)  # a string from Python callers too
    check_float_blocks(model, float_blocks)  # before anything is converted or written
    run_name = os.path.basename(run_dir(model_path))
    written = {}
    for fmt in formats:
        if fmt == "saved_model":
            written[fmt] = export_saved_model(model, out_dir)
            print_fn(f"wrote {written[fmt]}")
            continue
        if fmt == "onnx":
            # The model's own input (desktop and server runtimes); phones get the TFLite files.
            onnx = convert_onnx(model)
            written[fmt] = write_tflite(out_dir, "onnx", onnx, onnx_sidecar(onnx, labels, model, resize), suffix=".onnx")
            print_fn(f"wrote {written[fmt]} ({len(onnx) / 1024:,.1f} KB)")
            continue
        calibration = None
        if fmt == "int8":
            # Calibrate on training images, drawn through the project's own pipeline.
            from nin_keras.data import make_dataset

            ds = make_dataset(splits.x_train, splits.y_train, args.calibration_samples, shuffle=True, seed=data["seed"])
            calibration = next(iter(ds))[0].numpy()
            if deployed.input_shape[-1] == 3 and calibration.shape[-1] == 1:
                calibration = np.repeat(calibration, 3, axis=-1)
        tflite = convert(deployed, fmt, calibration, args.int8_input, args.int8_output, per_channel,
                         float_blocks=float_blocks)
        if args.metadata:
            tflite = add_metadata(tflite, labels, name=f"NiN {run_name} ({fmt})",
                                  description=f"Network-in-Network image classifier ({len(labels)} classes), "
                                              f"{fmt} TFLite exported by nin_keras. Input: {image_rules(resize)['app']}; "
                                              f"{ORIENTATION_RULE}.")
        written[fmt] = write_tflite(out_dir, fmt, tflite,
                                    sidecar(fmt, tflite, labels, deployed, per_channel, args.metadata,
                                            float_blocks=float_blocks, resize=resize))
        print_fn(f"wrote {written[fmt]} ({len(tflite) / 1024:,.1f} KB)")

    # Relative to the run folder: reports are shared, and absolute paths carry user names.
    run = run_dir(model_path)
    report = {"model": _relative(model_path, run), "output_dir": _relative(out_dir, run), **parameter_report(model),
              "rgb_input": bool(deployed.input_shape[-1] == 3), "metadata": bool(args.metadata)}
    if not verify:
        return report, 0

    from nin_keras.images import as_array

    x_test, y_test = as_array(splits.x_test), splits.y_test
    keras_probs = model.predict(x_test, batch_size=256, verbose=0)
    keras_top1 = keras_probs.argmax(1)
    report["keras_accuracy"] = float(np.mean(keras_top1 == y_test))
    report["test_examples"] = int(len(y_test))
    float32_size = os.path.getsize(written["float32"]) if "float32" in written else None
    rows = []
    from export.evaluator import evaluate_mediapipe, litert_benchmark

    predictions = {"keras": keras_top1}
    for fmt in tflite_formats:
        result = evaluate_tflite(written[fmt], x_test, y_test, keras_top1, label=fmt)
        litert_top1 = result.pop("top1")
        predictions[fmt] = litert_top1
        if args.metadata and deployed.input_shape[-1] == 3:
            result.update(evaluate_mediapipe(written[fmt], x_test, y_test, litert_top1, keras_top1,
                                             scale=args.mediapipe_scale, label=f"{fmt} (MP)"))
        if args.litert_benchmark:
            result["litert_tool_ms_1_thread"] = litert_benchmark(written[fmt], threads=1)
            result["litert_tool_ms_2_threads"] = litert_benchmark(written[fmt], threads=2)
        size = os.path.getsize(written[fmt])
        rows.append({"format": fmt, "path": _relative(written[fmt], run), "size_bytes": size,
                     "size_ratio_to_float32": size / float32_size if float32_size else float("nan"),
                     "parameter_bytes": report["parameter_bytes"][fmt], **result})
    if "onnx" in written:
        from export.evaluator import evaluate_onnx

        result = evaluate_onnx(written["onnx"], x_test, y_test, keras_top1, label="onnx")
        predictions["onnx"] = result.pop("top1")
        size = os.path.getsize(written["onnx"])
        rows.append({"format": "onnx (onnxruntime)", "path": _relative(written["onnx"], run), "size_bytes": size,
                     "size_ratio_to_float32": size / float32_size if float32_size else float("nan"),
                     "parameter_bytes": report["parameter_bytes"]["float32"], **result})
    report["formats"] = rows
    table = format_table(rows)
    dense = (f"\nWith a dense head (4096-4096 ReLU layers) instead of global average pooling, the same network "
             f"would have {report['dense_head_parameters']:,} parameters ({report['dense_head_bytes_float32'] / 2**20:,.1f} MiB "
             f"in float32) instead of {report['parameters']:,} ({report['parameter_bytes']['float32'] / 2**20:,.2f} MiB).") \
        if "dense_head_parameters" in report else ""
    summary = (f"Keras accuracy on {len(y_test)} test images: {report['keras_accuracy']:.4f}. "
               "Latency: LiteRT from Python, batch 1, 1 thread, this CPU; and LiteRT's own benchmark tool "
               "(mean of 50 runs, as on a device)."
               + (" Input: RGB (a fixed luminance layer feeds the grayscale model)." if rgb and channels == 1 else "")
               + (f" MediaPipe: Tasks ImageClassifier on {args.mediapipe_scale}x-size RGB frames, as an app feeds it."
                  if args.metadata and deployed.input_shape[-1] == 3 else ""))
    report["per_class_accuracy"], per_class_table = per_class_by_format(y_test, predictions, labels)
    code, gate_line = int8_gate(report, rows, args.max_accuracy_drop)
    markdown = f"# Export report\n\n{summary}\n\n{table}\n{dense}\n\n## Accuracy per class\n\n{per_class_table}\n"
    # After the gate, so report.json holds the int8 drop and the verdict.
    atomic_write_text(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "report.md"), markdown)
    print_fn(markdown)
    if gate_line:
        print_fn(gate_line)
    return report, code


def int8_gate(report, rows, max_drop):
    """Record the int8 accuracy drop and the gate's verdict in ``report``; return (exit code, error line or None)."""
    for row in rows:
        if row["format"] == "int8" and "accuracy" in row:
            drop = (report["keras_accuracy"] - row["accuracy"]) * 100
            report["int8_accuracy_drop_points"] = drop
            report["int8_gate"] = {"max_accuracy_drop_points": max_drop, "passed": drop <= max_drop}
            if drop > max_drop:
                return EXIT_ACCURACY_GATE, (
                    f"error: int8 accuracy {row['accuracy']:.4f} is {drop:.2f} points below Keras "
                    f"{report['keras_accuracy']:.4f}, more than --max-accuracy-drop {max_drop}")
    return 0, None


def export(model, print_fn=print, **settings):
    """Export and verify from Python, as ``python -m export MODEL`` would with the same flags.

    ``model`` is a run directory or a ``.keras`` file; ``settings`` are the
    CLI's flags by their Python names (``formats=["int8"]``, ``output_dir=...``).
    Returns the report dict (also written as ``report.json``); its
    ``int8_gate["passed"]`` is False when int8 lost more than
    ``max_accuracy_drop`` points (the CLI then exits 3).
    """
    from nin_keras.cli import namespace_from_kwargs

    return run_export(namespace_from_kwargs(build_parser(), [str(model)], **settings), print_fn=print_fn)[0]


def main(argv=None):
    """CLI entry point; returns the process exit code (3: the int8 accuracy gate failed)."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run_export(args)[1])


if __name__ == "__main__":
    sys.exit(main())
