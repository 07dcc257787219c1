"""Export trained NiN models to quantized TFLite and verify them with LiteRT.

Use it from Python::

    import export

    report = export.export("runs/fashion-...", formats=["int8"])   # what `python -m export RUN` does
    result = export.evaluate_tflite("runs/.../export/nin_int8.tflite", images, labels)

Names load on first use, so ``import export`` stays light.
"""

from nin_keras._lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "export": "export.exporter",
    "run_export": "export.exporter",
    "convert": "export.converter",
    "evaluate_tflite": "export.evaluator",
    "evaluate_mediapipe": "export.evaluator",
    "classify": "export.predict",
    "with_rgb_input": "export.phone",
    "add_metadata": "export.phone",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
