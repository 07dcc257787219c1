"""``python -m export.predict MODEL.tflite IMAGE...``: classify image files with an exported model.

Uses the sidecar JSON written beside the model (labels, colour, resize
mode; the size comes from the model); every image is read as the run's
training and evaluation read it (:func:`nin_keras.data.folders.load_pixels`: any
supported format, EXIF orientation applied, the resize mode), then fed as
raw 0..255 pixels. A bad file (unreadable, an unsupported format, over
``--max-image-pixels``) gets a one-line error and the rest still run.
"""

import json
import os
import sys

import numpy as np

from nin_keras.cli import OneLineParser, run_cli
from nin_keras.errors import NinError
from nin_keras.settings import BY_NAME, validate_numeric_args


def load_sidecar(model_path):
    """The ``.json`` written beside ``model_path`` by the exporter (its SHA-256 must match the model file)."""
    from export.converter import check_sidecar

    path = os.path.splitext(model_path)[0] + ".json"
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise NinError(f"{path}: sidecar not found (export the model with `python -m export`)") from None
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as e:
        raise NinError(f"{path}: unreadable sidecar ({type(e).__name__}: {str(e)[:200]})") from None
    pre = meta.get("preprocessing") if isinstance(meta, dict) else None
    missing = [key for key, ok in (
        ("labels", isinstance(meta, dict) and isinstance(meta.get("labels"), list)
         and all(isinstance(label, str) for label in meta["labels"])),
        ("preprocessing.resize_to", isinstance(pre, dict) and isinstance(pre.get("resize_to"), list)),
        ("preprocessing.color", isinstance(pre, dict) and pre.get("color") in ("grayscale", "RGB")),
    ) if not ok]
    if missing:
        raise NinError(f"{path}: not a nin_keras sidecar (missing or invalid: {', '.join(missing)}); export again")
    if os.path.exists(model_path):
        check_sidecar(model_path, meta)
    return meta


def check_against_model(path, meta, input_shape, num_outputs):
    """Refuse (one line naming the field) a sidecar that contradicts the interpreter's own shapes.

    The model decides: its input (1, H, W, C) gives the size (never the
    sidecar, whose number could be any allocation) and the colour mode;
    its output gives the number of labels.
    """
    pre = meta["preprocessing"]
    height, width, channels = (int(d) for d in input_shape[1:4])
    checks = (
        ("preprocessing.resize_to", pre["resize_to"], pre["resize_to"] == [height, width], f"[{height}, {width}]"),
        ("preprocessing.color", pre["color"], {"grayscale": 1, "RGB": 3}[pre["color"]] == channels,
         "grayscale" if channels == 1 else "RGB" if channels == 3 else f"{channels} channels"),
        ("labels", f"{len(meta['labels'])} labels", len(meta["labels"]) == num_outputs, f"{num_outputs} labels"),
    )
    for field, value, ok, wanted in checks:
        if not ok:
            raise NinError(f"{path}: field {field!r} does not match the model (it takes {wanted}); export again. "
                           f"Received: {str(value)[:200]}")


def _check_model_path(model_path):
    """A one-line NinError unless ``model_path`` is a ``.tflite`` file, saying what was given instead."""
    if os.path.isdir(model_path):
        found = sorted(n for n in os.listdir(model_path) if n.endswith(".tflite"))
        raise NinError(f"{model_path}: a folder; pass the exported model file"
                       + (f", e.g. {os.path.join(model_path, found[0])}" if found else " (nin_int8.tflite)"))
    if not os.path.exists(model_path):
        raise NinError(f"{model_path}: no such file (the first argument is the exported .tflite model)")
    if not model_path.endswith(".tflite"):
        raise NinError(f"{model_path}: predict runs the exported TFLite models (.tflite); this is not one")


def load_image(path, size, color, resize="stretch", max_pixels=None):
    """Read an image file as uint8 (H, W, C) in the model's colour mode and size.

    The training pipeline's own function (:func:`nin_keras.data.folders.load_pixels`):
    the same formats, EXIF orientation, resize mode and filter, so a photo
    gets the pixels it got in the run's evaluation.
    """
    from nin_keras.data.folders import load_pixels

    return load_pixels(path, size, 1 if color == "grayscale" else 3, resize, max_pixels=max_pixels)


def classify(model_path, image_paths, top_k=3, *, print_fn=print, err_fn=None, max_pixels=None):
    """Print the top-k labels of each image; return {path: [(label, prob), ...]} for the readable ones."""
    from export.evaluator import TFLiteClassifier
    from nin_keras.data.folders import RESIZE_MODES, BadImage, ImageTooLarge

    err_fn = err_fn or (lambda msg: print(msg, file=sys.stderr))
    _check_model_path(model_path)
    meta = load_sidecar(model_path)
    try:
        clf = TFLiteClassifier(model_path)
    except (ValueError, RuntimeError) as e:
        raise NinError(f"{model_path}: not a loadable TFLite model ({str(e).splitlines()[0]})") from None
    shape = clf.input["shape"]
    check_against_model(os.path.splitext(model_path)[0] + ".json", meta, shape, int(clf.output["shape"][-1]))
    labels = meta["labels"]
    size, color = [int(shape[1]), int(shape[2])], meta["preprocessing"]["color"]
    resize = meta["preprocessing"].get("resize_mode", "stretch")  # sidecars from before the contract: stretch
    if resize not in RESIZE_MODES:
        raise NinError(f"{os.path.splitext(model_path)[0]}.json: field 'preprocessing.resize_mode' must be one of "
                       f"{', '.join(RESIZE_MODES)}; export again. Received: {str(resize)[:200]}")
    results = {}
    for path in image_paths:
        if not os.path.isfile(path):
            err_fn(f"error: {path}: " + (f"a folder; pass the image files in it (e.g. {path}/*.jpg)"
                                         if os.path.isdir(path) else "no such file"))
            continue
        try:
            image = load_image(path, size, color, resize, max_pixels)
        except ImageTooLarge as e:
            err_fn(f"error: {path}: refused, too many pixels to decode safely ({e})")
            continue
        except (BadImage, OSError) as e:  # one line each: unsupported formats, corrupt files
            err_fn(f"error: {path}: not a readable image ({e})")
            continue
        probs = clf.predict(image[None])[0]
        order = top_classes(probs, top_k)
        results[path] = [(labels[i], float(probs[i])) for i in order]
        print_fn(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in results[path]))
    return results


def top_classes(scores, k):
    """The ``k`` best classes, ties to the lower class index: as the report's argmax and the phone page
    rank them (an int8 model's scores are multiples of 1/256, so ties are common)."""
    scores = np.asarray(scores)
    return np.lexsort((np.arange(len(scores)), -scores))[:k]


def main(argv=None):
    """CLI entry point; exit code 1 if any file could not be classified."""
    parser = OneLineParser(prog="python -m export.predict", description=__doc__)
    parser.add_argument("model", help="an exported .tflite file (its .json sidecar must be beside it)")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, HEIC, ...)")
    parser.add_argument("--top-k", type=int, default=3)
    max_pixels = BY_NAME["max_image_pixels"]
    parser.add_argument("--max-image-pixels", type=int, default=max_pixels.default, metavar="N",
                        help=max_pixels.help.removeprefix("--image-dir: "))
    args = parser.parse_args(argv)

    def body():
        if args.top_k < 1:
            raise NinError(f"--top-k must be >= 1. Received: {args.top_k}")
        validate_numeric_args(args)  # --max-image-pixels by the schema's rule
        results = classify(args.model, args.images, args.top_k, max_pixels=args.max_image_pixels)
        return 0 if len(results) == len(args.images) else 1

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
