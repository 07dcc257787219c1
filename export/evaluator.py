"""Run exported TFLite models with the LiteRT interpreter and measure them."""

import sys
import time

import numpy as np

from nin_keras.tf_logs import quiet_native_logs


class TFLiteClassifier:
    """A LiteRT interpreter wrapped to take raw uint8 images and return probabilities.

    Handles the quantization of int8/uint8 inputs and outputs from the model's
    own scale and zero point, so every format is called the same way.
    """

    def __init__(self, model_path=None, model_content=None, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        if model_path is not None and model_content is None:
            # Read here: LiteRT's own loader takes a path only as UTF-8 (a TypeError for any other name).
            with open(model_path, "rb") as f:
                model_content = f.read()
        self.interpreter = Interpreter(model_content=model_content, num_threads=num_threads)
        with quiet_native_logs():  # the first allocation in a process logs that it created the XNNPACK delegate
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = int(self.input["shape"][0])  # what is allocated: a batch of that size needs no second allocation

    def _resize(self, batch):
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._batch = batch

    def quantize_input(self, images):
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return images.astype(np.float32)
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        q = np.round(images.astype(np.float32) / scale) + zero_point
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize_output(self, raw):
        if self.output["dtype"] == np.float32:
            return raw
        scale, zero_point = self.output["quantization"]
        return (raw.astype(np.float32) - zero_point) * scale

    def predict(self, images):
        """Probabilities for a batch of raw images (N, H, W, C) in [0, 255].

        Gray images (C = 1) given to an RGB-input model are repeated to
        R = G = B, which its luminance layer turns back into the same gray.
        """
        if images.shape[-1] == 1 and self.input["shape"][-1] == 3:
            images = np.repeat(images, 3, axis=-1)
        self._resize(len(images))
        self.interpreter.set_tensor(self.input["index"], self.quantize_input(images))
        self.interpreter.invoke()
        return self.dequantize_output(self.interpreter.get_tensor(self.output["index"]))


def progress(iterable, total, label, every=0.5, stream=None, done_after=None):
    """Yield from ``iterable`` while drawing a one-line progress bar on ``stream`` (default: the current stderr).

    ``total`` counts images; ``done_after(item)`` is how many are done once ``item`` is (default: one each),
    so a loop over chunks of images still shows images and images per second.
    """
    # Looked up per call, not bound at import: a replaced sys.stderr (pytest's capture) may since have closed.
    stream = stream or sys.stderr
    start = last = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        yield item
        now, count = time.perf_counter(), done_after(item) if done_after else i
        if now - last >= every or count == total:
            last = now
            done = int(30 * count / total)
            rate = count / max(now - start, 1e-9)
            stream.write(f"\r{label:<10} [{'=' * done}{'.' * (30 - done)}] {count}/{total} {rate:,.0f}/s")
            stream.flush()
    stream.write("\n")


def _classify_each(predict, images, labels, reference_top1, label):
    """Run ``predict`` on every image at batch 1, timing each call; the result dict of the evaluators."""
    preds = np.empty(len(images), np.int64)
    times = np.empty(len(images))
    predict(images[:1])  # warm-up: allocation and first-run caches
    for i in progress(range(len(images)), len(images), label):
        t0 = time.perf_counter()
        probs = predict(images[i : i + 1])
        times[i] = time.perf_counter() - t0
        preds[i] = int(np.argmax(probs[0]))
    result = {
        "accuracy": float(np.mean(preds == labels)),
        "latency_ms_mean": float(times.mean() * 1e3),
        "latency_ms_p95": float(np.percentile(times, 95) * 1e3),
        "examples": int(len(images)),
        "top1": preds,
    }
    if reference_top1 is not None:
        result["agreement_with_keras"] = float(np.mean(preds == reference_top1))
    return result


def evaluate_tflite(model_path, images, labels, reference_top1=None, label="tflite"):
    """Classify every image at batch 1, timing each call.

    Returns accuracy, agreement with ``reference_top1`` (Keras' predictions),
    the mean / p95 latency per image in milliseconds, and ``top1`` (the
    predictions, a NumPy array: not for the JSON report).
    """
    return _classify_each(TFLiteClassifier(model_path, num_threads=1).predict, images, labels, reference_top1, label)


def evaluate_onnx(model_path, images, labels, reference_top1=None, label="onnx"):
    """Like :func:`evaluate_tflite`, with onnxruntime's CPU provider (1 thread) at batch 1."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(batch):
        return session.run(None, {name: batch.astype(np.float32)})[0]

    return _classify_each(predict, images, labels, reference_top1, label)


def evaluate_mediapipe(model_path, images, labels, litert_top1, keras_top1, *, scale=2, label="mediapipe"):
    """Classify every image with MediaPipe Tasks' ImageClassifier, fed as an app would feed it.

    Images become RGB frames ``scale`` times the model's size (MediaPipe
    resizes them). Returns accuracy and top-1 agreement with LiteRT and with
    Keras, or ``{"mediapipe_error": reason}`` when MediaPipe refuses the model.
    """
    from export.phone import MediaPipeClassifier, as_camera_frames
    from nin_keras.errors import NinError

    try:
        clf = MediaPipeClassifier(model_path)
    except NinError as e:
        return {"mediapipe_error": str(e).split(": ", 2)[-1]}
    chunk = 100
    try:
        preds = np.empty(len(images), np.int64)
        for start in progress(range(0, len(images), chunk), len(images), label,
                              done_after=lambda start: min(start + chunk, len(images))):
            preds[start : start + chunk] = clf.top1(as_camera_frames(images[start : start + chunk], scale))
    finally:
        clf.close()
    return {
        "mediapipe_accuracy": float(np.mean(preds == labels)),
        "mediapipe_agreement_with_litert": float(np.mean(preds == litert_top1)),
        "mediapipe_agreement_with_keras": float(np.mean(preds == keras_top1)),
        "mediapipe_frame_size": [int(d * scale) for d in images.shape[1:3]],
    }


def litert_benchmark(model_path, threads=1, runs=50, timeout=180):
    """Mean latency in ms from LiteRT's own benchmark tool (as on a device), or None if it fails.

    Runs ``python -m ai_edge_litert.tools.benchmark_litert_model`` (shipped
    with ai-edge-litert) and reads its ``Inference (avg)`` line.
    """
    import re
    import subprocess

    cmd = [sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model", "--model", str(model_path),
           "--num_threads", str(threads), "--num_runs", str(runs)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"Inference \(avg\):\s*([0-9.]+)\s*ms", proc.stdout + proc.stderr)
    return float(match.group(1)) if match else None
