"""Keras -> TFLite conversion (float32, float16, dynamic-range, full int8) and SavedModel.

The Keras model rescales raw [0, 255] pixels itself, so a uint8 TFLite input
with scale 1 and zero point 0 takes camera/bitmap bytes directly.
"""

import json
import os
import shutil
import tempfile
import warnings
import zipfile

import numpy as np

from nin_keras.errors import NinError
from nin_keras.io import file_mode, foreign_entries
from nin_keras.tf_logs import quiet_native_logs

TFLITE_FORMATS = ("float32", "float16", "dynamic", "int8")
ALL_FORMATS = TFLITE_FORMATS + ("saved_model", "onnx")
IO_TYPES = ("uint8", "int8", "float32")
BYTES_PER_PARAM = {"float32": 4, "float16": 2, "dynamic": 1, "int8": 1}


class ExportError(NinError):
    """A model cannot be loaded or exported."""


def resolve_model_path(path):
    """A run directory (its ``model.keras``) or a ``.keras`` file -> the .keras path."""
    if os.path.isdir(path):
        candidate = os.path.join(path, "model.keras")
        if not os.path.isfile(candidate):
            raise ExportError(f"{path}: run directory holds no model.keras (did training finish?)")
        return candidate
    if not os.path.exists(path):
        raise ExportError(f"{path}: no such file or directory")
    if not path.endswith(".keras"):
        raise ExportError(f"{path}: expected a .keras file or a nin_keras run directory")
    return path


def load_keras_model(path):
    """Load a .keras model in Keras safe mode; ExportError for corrupt or unsafe files."""
    import keras

    import nin_keras.model  # noqa: F401  (registers the custom layers, e.g. test_time_flip's, for loading)
    from nin_keras.precision import float32_copy

    path = resolve_model_path(path)
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path}: not a valid .keras file (not a zip archive; corrupt or truncated?)")
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except ValueError as e:
        if "safe_mode" in str(e) or "lambda" in str(e).lower():
            raise ExportError(f"{path}: refused by Keras safe mode (it contains a Lambda layer or other "
                              "arbitrary code); re-save the model without it") from None
        raise ExportError(f"{path}: cannot load ({e})") from None
    except Exception as e:  # Keras raises many types for damaged archives
        raise ExportError(f"{path}: cannot load ({type(e).__name__}: {e})") from None
    _check_image_classifier(model, path)
    # Models trained in mixed bfloat16/float16 are converted and verified as
    # their float32 graph (same weights): TFLite has no bfloat16 kernels.
    return float32_copy(model)


def _check_image_classifier(model, path):
    """One image input (height, width, channels) and one output of class scores, or a one-line ExportError."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):  # a Sequential model saved before it was ever called
        inputs = outputs = None
    if not inputs or not outputs:
        raise ExportError(f"{path}: the model has no defined input (a Sequential model saved without an Input "
                          "layer?); export a model with a fixed input shape")
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"{path}: expected one image input and one output of class scores. Received: "
                          f"{len(inputs)} input(s), {len(outputs)} output(s)")
    if len(inputs[0].shape) != 4 or len(outputs[0].shape) != 2:
        raise ExportError(f"{path}: expected images (height, width, channels) in and class scores out. Received: "
                          f"input {tuple(inputs[0].shape[1:])}, output {tuple(outputs[0].shape[1:])}")


def load_labels(model_path, num_classes):
    """Class names from the run's ``labels.txt`` (one per line, as fit writes it), else "0".."N-1".

    A file that does not name each class once is a one-line ExportError: its names would go into every
    sidecar and the phone page, shifted or mislabelled.
    """
    labels_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "labels.txt")
    if not os.path.isfile(labels_path):
        return [str(i) for i in range(num_classes)]
    try:
        with open(labels_path, encoding="utf-8", newline="") as f:
            # fit writes "\n".join(class names): split on that alone (splitlines would also split a folder
            # name at \x0c or \u2028), and take a Windows editor's \r off.
            labels = [line.removesuffix("\r") for line in f.read().split("\n")]
    except UnicodeDecodeError as e:
        raise ExportError(f"{labels_path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ExportError(f"{labels_path}: cannot read ({e.strerror})") from None
    # Names as written, not stripped: a class folder's name may start or end with a space.
    while labels and not labels[-1].strip():  # trailing blank lines
        labels.pop()
    where = f"{labels_path}: "
    if len(labels) != num_classes:
        raise ExportError(f"{where}{len(labels)} labels for the model's {num_classes} classes; one per line, in "
                          "class order (or delete the file: the classes are then numbered)")
    empty = next((i for i, name in enumerate(labels) if not name.strip()), None)
    if empty is not None:
        raise ExportError(f"{where}line {empty + 1} is empty; every class needs a name")
    duplicate = next((name for i, name in enumerate(labels) if name in labels[:i]), None)
    if duplicate is not None:
        raise ExportError(f"{where}{duplicate!r} names two classes; every class needs its own name")
    return labels


def _saved_model_converter(model, workdir):
    """A TFLiteConverter over a SavedModel export of ``model``.

    Going through SavedModel freezes Keras 3 variables into constants;
    converting a traced ``tf.function`` directly leaves READ_VARIABLE ops that
    int8 calibration cannot run.
    """
    import tensorflow as tf

    path = os.path.join(workdir, "saved_model")
    model.export(path, format="tf_saved_model", verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(path)


def convert(model, fmt, representative_images=None, *, int8_input="uint8", int8_output="float32", per_channel=False,
            float_blocks=()):
    """Convert ``model`` to TFLite bytes in format ``fmt``.

    ``representative_images`` (uint8 NHWC) calibrate the int8 model; its
    input/output types are ``int8_input`` / ``int8_output``. The int8 model
    uses one scale per tensor unless ``per_channel``: on NiN-sized models the
    per-channel scales and zero points of weights *and* biases are ~10% of
    the file, and measured here they bought no accuracy (0.9050 vs 0.9051 on
    the default preset). ``float_blocks`` (block names such as "block1")
    keeps those blocks in float32 inside the int8 model: TFLite's selective
    quantization, which gives the model float32 input and output.
    """
    if fmt not in TFLITE_FORMATS:
        raise ExportError(f"unknown TFLite format. Received: {fmt!r}")
    with tempfile.TemporaryDirectory(prefix="nin_keras-export-") as workdir:
        converter = _saved_model_converter(model, workdir)
        float_blocks = block_names(float_blocks)
        if fmt == "int8" and float_blocks:
            return _selectively_quantize(model, converter, representative_images, per_channel, float_blocks)
        return _configure_and_convert(converter, fmt, representative_images, int8_input=int8_input,
                                      int8_output=int8_output, per_channel=per_channel)


def block_names(value):
    """Block names from ``"block1,block2"`` or an iterable of names -> ("block1", "block2")."""
    names = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(name.strip() for name in names if name.strip())


def check_float_blocks(model, float_blocks):
    """ExportError (one line, listing the model's blocks) unless every name is a block of ``model``."""

    def names(m):  # nested too: the RGB-input wrapper holds the trained model as one layer
        for layer in m.layers:
            yield layer.name
            if hasattr(layer, "layers"):
                yield from names(layer)

    layer_names = set(names(model))
    float_blocks = block_names(float_blocks)
    for block in float_blocks:
        if not any(name.startswith(f"{block}_") for name in layer_names):
            blocks = sorted({name.split("_")[0] for name in layer_names if name.startswith(("block", "head_"))})
            raise ExportError(f"--int8-float-blocks: the model has no block {block!r} (its blocks: "
                              f"{', '.join(blocks)}). Received: {','.join(float_blocks)}")


def _selectively_quantize(model, converter, representative_images, per_channel, float_blocks):
    """int8 except the ops of ``float_blocks``, through TFLite's quantization debugger deny-list.

    Why: on x86 CPUs without VNNI, LiteRT's int8 convolution at full
    resolution (the stem) costs several times its float32 version
    (``python -m export.profile``); the rest of the network is as fast in
    int8. The debugger's deny-list is the converter's documented way to keep
    named ops in float (``tf.lite.experimental.QuantizationDebugOptions``).
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    check_float_blocks(model, float_blocks)
    # Deny-list entries are the float graph's tensor names, which carry the Keras layer names.
    tensors = [d["name"] for d in Interpreter(model_content=_configure_and_convert(
        converter, "float32", None, int8_input=None, int8_output=None)).get_tensor_details()]
    denied = [t for t in tensors if any(f"/{block}_" in t for block in float_blocks)]
    # The same int8 settings as the plain int8 export; the debugger quantizes with float32 input and output.
    _configure_and_convert(converter, "int8", representative_images, int8_input="float32", int8_output="float32",
                           per_channel=per_channel, convert_now=False)
    try:
        with quiet_native_logs(), warnings.catch_warnings():
            # The debugger runs TensorFlow's own tf.lite.Interpreter, which warns it is deprecated (TF 2.21).
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated")
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=_representative_dataset(representative_images),
                debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denied))
            return debugger.get_nondebug_quantized_model()
    except Exception as e:
        raise ExportError(f"TFLite int8 conversion with {','.join(float_blocks)} in float failed: "
                          f"{_first_line(e)}") from None


def _representative_dataset(images):
    """The calibration generator the converter and its quantization debugger take: one image per step."""

    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]

    return generate


def _configure_and_convert(converter, fmt, representative_images, *, int8_input, int8_output, per_channel=False,
                           convert_now=True):
    """Set ``converter`` up for ``fmt`` and convert (or only set it up, ``convert_now=False``)."""
    import tensorflow as tf

    if fmt == "float32":
        converter.optimizations = []
    elif fmt == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ExportError("int8 export needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(representative_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, int8_input)
        converter.inference_output_type = getattr(tf, int8_output)
        # The converter's documented switch for per-tensor weight scales (no public name yet).
        converter._experimental_disable_per_channel = not per_channel
    if not convert_now:
        return None
    try:
        with quiet_native_logs():  # the int8 quantizer prints its settings
            return converter.convert()
    except Exception as e:
        raise ExportError(f"TFLite conversion to {fmt} failed: {_first_line(e)}") from None


def _first_line(error):
    """The converter's errors are long MLIR dumps: their first line, or the error's type when empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def io_details(tflite_bytes):
    """Input and output tensor details (shape, dtype, quantization) of a TFLite model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)

    def describe(d):
        scale, zero_point = d["quantization"]
        return {"shape": [int(s) for s in d["shape_signature"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": float(scale), "zero_point": int(zero_point)}

    return describe(interpreter.get_input_details()[0]), describe(interpreter.get_output_details()[0])


def image_rules(resize):
    """The preprocessing contract of :func:`nin_keras.data.folders.load_pixels` (resize mode, orientation, alpha,
    pad colour, filter) and what an app must do to follow it, as sidecar fields."""
    from nin_keras.data.folders import preprocessing_contract

    app = {"stretch": "hand the whole upright frame to the model (MediaPipe's own resize stretches it)",
           "crop": "crop the upright frame's centre to the input's aspect ratio first (MediaPipe: set that box "
                   "as the region of interest), then resize",
           "pad": "letterbox the upright frame on black to the input's aspect ratio first (MediaPipe cannot "
                  "pad: do it before classify), then resize"}[resize]
    return {**preprocessing_contract(resize), "app": app}


def sidecar(fmt, tflite_bytes, labels, model, *, per_channel=False, metadata=False, float_blocks=(), resize="stretch"):
    """The JSON an app needs beside the .tflite: labels, I/O and preprocessing.

    ``model`` is the exported graph (RGB-input when the luminance layer was
    added). ``model_sha256`` ties the sidecar to its model file. ``resize``
    is the run's resize mode: with the orientation rule it is the
    preprocessing contract ``export.predict`` applies (:func:`image_rules`).
    """
    import hashlib

    inp, out = io_details(tflite_bytes)
    height, width, channels = model.input_shape[1:]
    return {
        "format": fmt,
        "model_sha256": hashlib.sha256(tflite_bytes).hexdigest(),
        "mediapipe_metadata": bool(metadata),
        "quantization": {"float32": "none", "float16": "float16 weights", "dynamic": "int8 weights, float activations",
                         "int8": ("full integer, " if not float_blocks else
                                  f"integer except {', '.join(float_blocks)} (float32), ")
                         + ("per-channel" if per_channel else "per-tensor")}[fmt],
        "labels": labels,
        "input": inp,
        "output": {**out, "meaning": "class probabilities (softmax)" if out["dtype"] == "float32" else
                   "quantized class probabilities: p = scale * (q - zero_point)"},
        "preprocessing": {
            "color": "grayscale" if channels == 1 else "RGB",
            "rgb_to_gray_in_model": any(layer.name == "rgb_to_luminance" for layer in model.layers),
            "resize_to": [int(height), int(width)],
            "pixel_range": [0, 255],
            "note": ("feed raw pixel values 0..255 (no normalisation: the model rescales "
                     "and resizes internally); for int8 input, q = round(pixel / scale) + zero_point"),
            **image_rules(resize),
        },
    }


def write_tflite(out_dir, fmt, tflite_bytes, meta, suffix=".tflite"):
    """Write ``nin_<fmt><suffix>`` (``.tflite``, or ``.onnx``) and its ``.json`` sidecar as a unit; return the model path.

    Both files are staged completely first (a failure while writing leaves
    the previous pair untouched), then renamed into place. The sidecar
    carries the model's SHA-256, so the one window left (between the two
    renames) cannot go unnoticed: :func:`check_sidecar` refuses a pair that
    does not match.
    """
    if suffix == ".tflite":
        path = os.path.join(out_dir, f"nin_{fmt}.tflite")
        json_path = os.path.splitext(path)[0] + ".json"
    else:  # nin.onnx + nin.onnx.json: no clash with the TFLite sidecars
        path = os.path.join(out_dir, f"nin{suffix}")
        json_path = path + ".json"
    staged, renamed = [], 0
    try:
        for target, data in ((path, tflite_bytes), (json_path, (json.dumps(meta, indent=2) + "\n").encode())):
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=out_dir)
            staged.append((tmp, target))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, file_mode())  # the user's umask, not mkstemp's 0600: phones and web servers read these
        for tmp, target in staged:
            os.replace(tmp, target)
            renamed += 1
    except OSError as e:
        state = ("the previous files are unchanged" if not renamed else
                 "the model was replaced but not its sidecar; export again")
        raise ExportError(f"{path}: cannot write ({e.strerror or e}); {state}") from None
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


def check_sidecar(model_path, meta):
    """ExportError unless ``meta`` (a sidecar) describes the model file at ``model_path``."""
    import hashlib

    expected = meta.get("model_sha256")
    if not isinstance(expected, str):
        # Required: without it any file could be paired with any labels (exports since checksums all carry it).
        raise ExportError(f"{os.path.splitext(model_path)[0]}.json: field 'model_sha256' is missing or not a string; "
                          f"export again. Received: {expected!r}")
    with open(model_path, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    if actual != expected:
        raise ExportError(f"{os.path.splitext(model_path)[0]}.json does not describe {model_path} "
                          "(an export was interrupted?); export again")


#: What a TensorFlow SavedModel folder holds: ``saved_model/`` holding anything else was not written by an
#: export, and is not replaced.
SAVED_MODEL_ENTRIES = ("saved_model.pb", "fingerprint.pb", "variables", "assets")


def refuse_foreign_folder(folder, known, replacement, error=None):
    """Raise ``error`` (ExportError) in one line when ``folder`` holds anything but ``known`` entries: files an
    export did not write, which ``replacement`` (e.g. "the SavedModel") would delete."""
    foreign = foreign_entries(folder, known)
    if foreign:
        raise (error or ExportError)(f"{folder}: holds files an export did not write ({', '.join(foreign[:3])}), "
                                     f"which {replacement} would replace; move them or choose another --output-dir")


def check_saved_model_folder(out_dir):
    """Refuse (one line) to replace ``<out_dir>/saved_model`` when it holds files an export did not write."""
    refuse_foreign_folder(os.path.join(out_dir, "saved_model"), SAVED_MODEL_ENTRIES, "the SavedModel")


def export_saved_model(model, out_dir):
    """Export a TF SavedModel for serving into ``out_dir/saved_model`` (atomic rename; over a SavedModel
    only: :func:`check_saved_model_folder`)."""
    check_saved_model_folder(out_dir)
    target = os.path.join(out_dir, "saved_model")
    tmp = tempfile.mkdtemp(prefix=".saved_model.", dir=out_dir)
    try:
        model.export(os.path.join(tmp, "m"), format="tf_saved_model", verbose=False)
        # The old export is moved aside, not deleted, until the new one is in place.
        if os.path.exists(target):
            os.replace(target, os.path.join(tmp, "old"))
        try:
            os.replace(os.path.join(tmp, "m"), target)
        except OSError:
            if os.path.exists(os.path.join(tmp, "old")):
                os.replace(os.path.join(tmp, "old"), target)
            raise
    except Exception as e:
        raise ExportError(f"SavedModel export failed: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_onnx(model):
    """The model as ONNX bytes (Keras' own exporter, through tf2onnx), float32 input of raw 0..255 pixels.

    For desktop and server runtimes (onnxruntime); phones get TFLite. Raises
    :class:`ExportError` in one line when tf2onnx or onnxruntime is missing.
    """
    for package in ("tf2onnx", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            raise ExportError(f"--format onnx needs {package}: pip install -e '.[onnx]' "
                              "(tf2onnx and onnxruntime)") from None
    # Keras exports only a model that has been called once.
    model(np.zeros((1, *model.input_shape[1:]), np.float32))
    with tempfile.TemporaryDirectory(prefix="nin_keras-onnx-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:
            with warnings.catch_warnings():
                # Keras' tf2onnx shim asks NumPy for np.object, which answers with a FutureWarning (keras 3.15).
                warnings.filterwarnings("ignore", message=".*np\\.object", category=FutureWarning)
                model.export(path, format="onnx", verbose=False)
        except Exception as e:  # tf2onnx raises many types; the user needs the cause in one line
            raise ExportError(f"ONNX export failed ({type(e).__name__}: {e})") from None
        with open(path, "rb") as f:
            return f.read()


def onnx_sidecar(onnx_bytes, labels, model, resize="stretch"):
    """The JSON beside ``nin.onnx``: labels, input, preprocessing and the model's SHA-256."""
    import hashlib

    height, width, channels = model.input_shape[1:]
    return {
        "format": "onnx",
        "model_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "labels": labels,
        "input": {"shape": [None, int(height), int(width), int(channels)], "dtype": "float32", "layout": "NHWC"},
        "output": {"meaning": "class probabilities (softmax)"},
        "preprocessing": {"color": "grayscale" if channels == 1 else "RGB", "pixel_range": [0, 255],
                          "note": "feed raw pixel values 0..255 as float32 (the model rescales internally)",
                          **image_rules(resize)},
    }
