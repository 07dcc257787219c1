"""``python -m export``: TFLite/SavedModel export with a verified size/accuracy/latency report."""

import argparse
import contextlib
import dataclasses
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
    check_saved_model_folder,
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
from nin_keras.cli import OneLineParser, add_data_flags, check_backend, run_cli
from nin_keras.io import atomic_write_text, is_utf8, shown_name

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
            r["format"], f"{r['size_bytes'] / 1024:,.1f}",
            "-" if r["size_ratio_to_float32"] is None else f"{r['size_ratio_to_float32']:.3f}",
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
    """The resolved settings saved beside the model (``config.json``), or {} for a bare .keras file.

    Only a nin_keras run's config counts (:func:`nin_keras.rundir.read_run_config`): a ``config.json``
    another tool wrote beside a model is not read as this model's recipe.
    """
    from nin_keras.rundir import read_run_config

    config, _ = read_run_config(run_dir(model_path))
    return config or {}


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
    source = given or run  # a source flag replaces the run's source, all of it
    out.update({k: source.get(k) for k in SOURCE_SETTINGS})
    out["test_limit"] = args.test_limit
    # An image-folder run's split file: calibration and test images are exactly the run's.
    split_file = os.path.join(run_dir(model_path), "split.json")
    out["split_file"] = split_file if os.path.isfile(split_file) else None
    for key in ("skip_bad_images", "resize", "max_image_pixels"):
        flag = getattr(args, key)
        # A flag wins, then the run's setting, then what a run from before the setting existed used.
        out[key] = flag if flag is not None else run.get(key, BY_NAME[key].before_it_existed)
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
    check_backend()
    if args.browser_benchmark and "web" not in (args.formats or ()):
        raise NinError("--browser-benchmark times the models in the web page: add --format web")
    resolve_model_path(args.model)  # a mistyped path: one line before TensorFlow loads (seconds)
    from nin_keras.precision import keras_config_scope

    with keras_config_scope(), _locked_run(args.model), _locked_output(args):
        report, code = _export_files(args, print_fn)
        if "web" in (args.formats or ()):
            web_step(args, report, print_fn)
    return report, code


@contextlib.contextmanager
def _locked_run(model):
    """Hold the run folder's lock (fit's) while exporting it: a training into it, a ``fit --overwrite`` of it
    or a second export of it would change the files this export reads and writes. A bare ``.keras``
    file, or a folder whose lock file this process cannot write or lock, is not locked."""
    from nin_keras.rundir import LockUnavailable, RunLock, read_run_config

    folder = model if os.path.isdir(model) else os.path.dirname(os.path.abspath(model))
    lock = None
    if read_run_config(folder)[0] is not None:
        try:
            lock = RunLock(folder, label=folder, advice="(a training or an export of it)").acquire()
        except LockUnavailable:  # a shared or read-only run folder: exported unlocked, as before the lock
            pass
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def _locked_output(args):
    """Hold the output folder's lock too when it is not the locked run folder: two exports of different
    runs into one ``--output-dir`` left a report describing one run's models beside the other's (and
    failed one export's check against the other's files). A folder this export made and left empty
    goes again, and so does the lock file this export made."""
    from nin_keras.rundir import LockUnavailable, RunLock, folder_entries

    model_path = resolve_model_path(args.model)
    out_dir = export_dir(args, model_path)
    if (os.path.realpath(out_dir) == os.path.realpath(run_dir(model_path))  # _locked_run holds it already
            or os.path.exists(out_dir) and not os.path.isdir(out_dir)):  # _open_export says so, naming it
        yield
        return
    made = not os.path.exists(out_dir)
    label = f"--output-dir {out_dir}" if args.output_dir else out_dir
    try:
        lock = RunLock(out_dir, label=label, advice="(another export into it)").acquire()
    except LockUnavailable:  # cannot write there: _open_export says so in its own words
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            # The lock file goes with the export (the folder is the user's to copy to an app); an export that
            # opened it just before it went takes the lock on the file there after (RunLock.acquire).
            lock.release(remove=True)
            if made and folder_entries(out_dir) == []:
                with contextlib.suppress(OSError):
                    os.rmdir(out_dir)


def web_step(args, report, print_fn=print):
    """``--format web``: the page folder beside the int8 model, and (``--browser-benchmark``) its latencies."""
    from export.web import browser_benchmark, write_web

    model_path = resolve_model_path(args.model)
    out_dir = export_dir(args, model_path)  # report["output_dir"] is relative to the run folder
    # The sidecar's preprocessing.resize_mode is what the page reads first; this is only its fallback.
    web_dir = write_web(out_dir, os.path.join(out_dir, "nin_int8.tflite"), report,
                        resize=args.resize or run_config(model_path).get("resize"),
                        run_name=os.path.basename(run_dir(model_path)),
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


@dataclasses.dataclass
class Export:
    """One export as it moves through :func:`_export_files`' stages."""

    args: object
    model_path: str
    model: object
    out_dir: str
    formats: list
    labels: list
    per_channel: bool
    splits: object = None
    data: dict = None
    resize: str = "stretch"
    deployed: object = None
    written: dict = dataclasses.field(default_factory=dict)
    # The SignalStop's check(): raises at a safe point once Ctrl-C or SIGTERM came (a no-op outside one).
    check_signals: object = lambda: None

    @property
    def tflite_formats(self):
        return [f for f in self.formats if f in TFLITE_FORMATS]

    @property
    def verify(self):
        return bool((self.tflite_formats or "onnx" in self.formats) and not self.args.no_verify)


def export_dir(args, model_path):
    """Where the files go: ``--output-dir``, else ``<run>/export``."""
    return args.output_dir or os.path.join(run_dir(model_path), "export")


def _export_files(args, print_fn=print):
    """Export and verify the model files; returns (report dict, exit code).

    Stages: :func:`_open_export` (flags, model, output folder),
    :func:`_load_export_data` (the run's own split), :func:`_prepare_deployed`,
    :func:`_write_formats`, then :func:`_verify` and :func:`_write_report`.
    """
    from nin_keras.cli import SignalStop
    from nin_keras.errors import SignalInterrupt

    # A signal is acted on between steps: raised inside TensorFlow's converter or a garbage-collector
    # callback, Python drops it ("Exception ignored in ... __del__") and the export ran on to the end.
    with SignalStop(error=SignalInterrupt) as signals:
        job = _open_export(args)
        job.check_signals = signals.check
        _load_export_data(job)
        _prepare_deployed(job)
        signals.check()
        _write_formats(job, print_fn)
        result = _verify_and_report(job, print_fn)
        signals.check()  # a signal during the last check or the report: stop before the web step
        return result


def _verify_and_report(job, print_fn):
    """The report's header, then (unless --no-verify) :func:`_verify` and :func:`_write_report`."""
    args = job.args
    run = run_dir(job.model_path)
    # Relative to the run folder: reports are shared, and absolute paths carry user names.
    report = {"model": _relative(job.model_path, run), "output_dir": _relative(job.out_dir, run),
              **parameter_report(job.model), "rgb_input": bool(job.deployed.input_shape[-1] == 3),
              "metadata": bool(args.metadata)}
    if not job.verify:
        return report, 0
    rows, predictions = _verify(job, report)
    return _write_report(job, report, rows, predictions, print_fn)


def _open_export(args):
    """Check the flags, load the model, make the output folder, and settle the formats and int8 scales."""
    validate_numeric_args(args)  # before anything is loaded or written
    model_path = resolve_model_path(args.model)
    out_dir = export_dir(args, model_path)
    if not is_utf8(out_dir):  # TensorFlow's SavedModel writer and LiteRT's loader refuse such a name
        raise NinError(f"{shown_name(out_dir)}: the export folder's path is not UTF-8; pass --output-dir with a "
                       "UTF-8 path, or rename the run folder")
    model = load_keras_model(model_path)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        where = (f"--output-dir {out_dir}" if args.output_dir else
                 f"{out_dir} (the export folder inside the run; pass --output-dir to write elsewhere)")
        raise NinError(f"{where}: cannot create ({e.strerror})") from None
    # Before minutes of conversion: folders these formats replace must be an export's own.
    if "web" in (args.formats or ()):
        from export.web import check_web_folder

        check_web_folder(out_dir)
    if "saved_model" in (args.formats or ()):
        check_saved_model_folder(out_dir)
    per_channel = args.per_channel
    if per_channel is None:
        per_channel = preset_export_settings(model_path).get("per_channel", False)
    labels = load_labels(model_path, int(model.output.shape[-1]))
    return Export(args, model_path, model, out_dir, export_formats(args), labels, per_channel)


def _load_export_data(job):
    """The run's own split (calibration sees only its training images, the report only its test images)."""
    from nin_keras.data import load_data

    args, model = job.args, job.model
    num_classes = int(model.output.shape[-1])
    if "int8" in job.formats or job.verify:
        data = job.data = data_settings(args, job.model_path)
        splits = job.splits = load_data(
            data_dir=data["data_dir"], image_dir=data["image_dir"], tfds_name=data["tfds"],
            val_fraction=data["val_fraction"], seed=data["seed"], limit=data["limit"], test_limit=data["test_limit"],
            image_size=model.input_shape[1:3], num_classes=num_classes, channels=model.input_shape[3],
            split_file=data["split_file"], skip_bad_images=data["skip_bad_images"], resize=data["resize"],
            max_image_pixels=data["max_image_pixels"])
        if list(splits.input_shape) != list(model.input_shape[1:]):
            raise NinError(f"data images are {splits.input_shape} but the model expects {list(model.input_shape[1:])}")
        if len(splits.class_names) != num_classes:
            raise NinError(f"{data['split_file'] or splits.source}: {len(splits.class_names)} classes but the model "
                           f"has {num_classes} outputs. Received: classes={splits.class_names[:20]}")
    # The run's resize mode (the preprocessing contract the sidecar and metadata record).
    job.resize = (job.data["resize"] if job.splits is not None else
                  args.resize or run_config(job.model_path).get("resize", BY_NAME["resize"].before_it_existed))


def _prepare_deployed(job):
    """The graph that ships (RGB input in front of a grayscale model), checked before anything is converted."""
    from export.phone import with_rgb_input

    args, model = job.args, job.model
    rgb = args.rgb_input if args.rgb_input is not None else model.input_shape[-1] == 1
    job.deployed = with_rgb_input(model) if rgb else model
    if args.metadata and job.tflite_formats:
        from export.phone import import_metadata_writers

        import_metadata_writers()  # a missing mediapipe is one line now, not after the first conversion
    check_float_blocks(model, block_names(args.int8_float_blocks))  # a string from Python callers too


def _calibration_images(job):
    """int8 calibration images: the run's training images, drawn through the project's own pipeline."""
    from nin_keras.data import make_dataset

    ds = make_dataset(job.splits.x_train, job.splits.y_train, job.args.calibration_samples, shuffle=True,
                      seed=job.data["seed"])
    calibration = next(iter(ds))[0].numpy()
    if job.deployed.input_shape[-1] == 3 and calibration.shape[-1] == 1:
        calibration = np.repeat(calibration, 3, axis=-1)
    return calibration


def _discard_previous_report(out_dir, formats):
    """Remove an earlier export's report.json and report.md when this export replaces a file they describe:
    stopped midway (Ctrl-C) or run with --no-verify, it would otherwise leave sizes and accuracies of
    files that are no longer there. A report of other formats (a SavedModel-only export replaces no
    .tflite), or one an export did not write, is kept."""
    path = os.path.join(out_dir, "report.json")
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f).get("formats") or []
        reported = {str(row.get("format", "")).split(" ")[0] for row in rows if isinstance(row, dict)}
    except (OSError, ValueError, AttributeError):  # none, or not an export's report
        return
    if not reported & set(formats):
        return
    md_path = os.path.join(out_dir, "report.md")
    try:
        os.remove(path)
        with open(md_path, encoding="utf-8", errors="replace") as f:
            ours = f.read(64).startswith("# Export report")
        if ours:
            os.remove(md_path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise NinError(f"{out_dir}: cannot remove the previous export's report ({e.strerror or e})") from None


def _write_formats(job, print_fn):
    """Convert and write every format (a SavedModel, ONNX, or TFLite with metadata and a sidecar)."""
    from export.phone import add_metadata
    from nin_keras.data.folders import ORIENTATION_RULE

    args, labels, out_dir = job.args, job.labels, job.out_dir
    float_blocks = block_names(args.int8_float_blocks)
    run_name = os.path.basename(run_dir(job.model_path))
    _discard_previous_report(out_dir, job.formats)
    for fmt in job.formats:
        if fmt == "saved_model":
            job.written[fmt] = export_saved_model(job.model, out_dir)
            print_fn(f"wrote {job.written[fmt]}")
            job.check_signals()
            continue
        if fmt == "onnx":
            # The model's own input (desktop and server runtimes); phones get the TFLite files.
            onnx = convert_onnx(job.model)
            job.written[fmt] = write_tflite(out_dir, "onnx", onnx, onnx_sidecar(onnx, labels, job.model, job.resize),
                                            suffix=".onnx")
            print_fn(f"wrote {job.written[fmt]} ({len(onnx) / 1024:,.1f} KB)")
            job.check_signals()
            continue
        calibration = _calibration_images(job) if fmt == "int8" else None
        tflite = convert(job.deployed, fmt, calibration, int8_input=args.int8_input, int8_output=args.int8_output,
                         per_channel=job.per_channel, float_blocks=float_blocks)
        if args.metadata:
            tflite = add_metadata(tflite, labels, name=f"NiN {run_name} ({fmt})",
                                  description=f"Network-in-Network image classifier ({len(labels)} classes), "
                                              f"{fmt} TFLite exported by nin_keras. Input: "
                                              f"{image_rules(job.resize)['app']}; {ORIENTATION_RULE}.")
        job.written[fmt] = write_tflite(out_dir, fmt, tflite, sidecar(
            fmt, tflite, labels, job.deployed, per_channel=job.per_channel, metadata=args.metadata,
            float_blocks=float_blocks, resize=job.resize))
        print_fn(f"wrote {job.written[fmt]} ({len(tflite) / 1024:,.1f} KB)")
        job.check_signals()


def _verify(job, report):
    """Every written file run over the test set (LiteRT, MediaPipe, onnxruntime) against Keras; returns
    (report rows, top-1 predictions by format)."""
    from export.evaluator import evaluate_mediapipe, evaluate_tflite, litert_benchmark
    from nin_keras.data.folders import as_array

    args, written, run = job.args, job.written, run_dir(job.model_path)
    x_test, y_test = as_array(job.splits.x_test), job.splits.y_test
    keras_top1 = job.model.predict(x_test, batch_size=256, verbose=0).argmax(1)
    report["keras_accuracy"] = float(np.mean(keras_top1 == y_test))
    report["test_examples"] = int(len(y_test))
    float32_size = os.path.getsize(written["float32"]) if "float32" in written else None

    def row(name, path, param_bytes, result):
        size = os.path.getsize(path)
        return {"format": name, "path": _relative(path, run), "size_bytes": size,
                # null, not NaN, without a float32 file: report.json stays JSON that browsers and jq parse.
                "size_ratio_to_float32": size / float32_size if float32_size else None,
                "parameter_bytes": param_bytes, **result}

    rows, predictions = [], {"keras": keras_top1}
    for fmt in job.tflite_formats:
        result = evaluate_tflite(written[fmt], x_test, y_test, keras_top1, label=fmt)
        predictions[fmt] = result.pop("top1")
        if args.metadata and job.deployed.input_shape[-1] == 3:
            result.update(evaluate_mediapipe(written[fmt], x_test, y_test, predictions[fmt], keras_top1,
                                             scale=args.mediapipe_scale, label=f"{fmt} (MP)"))
        if args.litert_benchmark:
            result["litert_tool_ms_1_thread"] = litert_benchmark(written[fmt], threads=1)
            result["litert_tool_ms_2_threads"] = litert_benchmark(written[fmt], threads=2)
        rows.append(row(fmt, written[fmt], report["parameter_bytes"][fmt], result))
        job.check_signals()
    if "onnx" in written:
        from export.evaluator import evaluate_onnx

        result = evaluate_onnx(written["onnx"], x_test, y_test, keras_top1, label="onnx")
        predictions["onnx"] = result.pop("top1")
        rows.append(row("onnx (onnxruntime)", written["onnx"], report["parameter_bytes"]["float32"], result))
        job.check_signals()
    report["formats"] = rows
    return rows, predictions


def _write_report(job, report, rows, predictions, print_fn):
    """report.json and report.md (after the int8 gate, so report.json holds its verdict); returns (report, code)."""
    args, y_test = job.args, job.splits.y_test
    dense = (f"\nWith a dense head (4096-4096 ReLU layers) instead of global average pooling, the same network "
             f"would have {report['dense_head_parameters']:,} parameters ({report['dense_head_bytes_float32'] / 2**20:,.1f} MiB "
             f"in float32) instead of {report['parameters']:,} ({report['parameter_bytes']['float32'] / 2**20:,.2f} MiB).") \
        if "dense_head_parameters" in report else ""
    rgb_in_front = job.deployed is not job.model and job.model.input_shape[-1] == 1
    summary = (f"Keras accuracy on {len(y_test)} test images: {report['keras_accuracy']:.4f}. "
               "Latency: LiteRT from Python, batch 1, 1 thread, this CPU; and LiteRT's own benchmark tool "
               "(mean of 50 runs, as on a device)."
               + (" Input: RGB (a fixed luminance layer feeds the grayscale model)." if rgb_in_front else "")
               + (f" MediaPipe: Tasks ImageClassifier on {args.mediapipe_scale}x-size RGB frames, as an app feeds it."
                  if args.metadata and job.deployed.input_shape[-1] == 3 else ""))
    report["per_class_accuracy"], per_class_table = per_class_by_format(y_test, predictions, job.labels)
    code, gate_line = int8_gate(report, rows, args.max_accuracy_drop)
    markdown = (f"# Export report\n\n{summary}\n\n{format_table(rows)}\n{dense}\n\n## Accuracy per class\n\n"
                f"{per_class_table}\n")
    atomic_write_text(os.path.join(job.out_dir, "report.json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(os.path.join(job.out_dir, "report.md"), markdown)
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

    if isinstance(settings.get("formats"), str):  # formats="int8" means one format, not the letters i, n, t, 8
        settings["formats"] = [settings["formats"]]
    return run_export(namespace_from_kwargs(build_parser(), [str(model)], **settings), print_fn=print_fn)[0]


def main(argv=None):
    """CLI entry point; returns the process exit code (3: the int8 accuracy gate failed)."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run_export(args)[1])


if __name__ == "__main__":
    sys.exit(main())
