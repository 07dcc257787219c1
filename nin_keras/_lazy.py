"""PEP 562 lazy attributes for a package: names load on first use, so ``import nin_keras`` stays light.

It imports nothing of nin_keras, so the package's ``__init__`` adds no edge to the import graph.
"""


def lazy_exports(package, exports):
    """PEP 562 ``__getattr__`` and ``__dir__`` for a package whose names load on first use.

    ``exports`` maps each public name to the module defining it; the package
    import stays light (TensorFlow loads only when a name is used).
    """
    import importlib

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
