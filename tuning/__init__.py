"""keras-tuner hyperparameter searches over NiN.

Use it from Python::

    import tuning

    best_config = tuning.tune("tiny", max_trials=4, limit=2000, output_dir="tuning_runs/nb")

Names load on first use, so ``import tuning`` stays light.
"""

from nin_keras._lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "tune": "tuning.search",
    "run_search": "tuning.search",
    "NinHyperModel": "tuning.hypermodel",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
