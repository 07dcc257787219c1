"""Training curves like the seeds' Animator: train loss, train acc, val/test acc."""

from nin_keras.io import atomic_path


def plot_history(rows, path, test_accuracy=None, title=None):
    """Save a PNG of train loss, train accuracy and validation accuracy per epoch.

    ``test_accuracy`` (final) is drawn as a marker at the last epoch.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label, fmt in (("loss", "train loss", "-"), ("accuracy", "train acc", "m--"),
                            ("val_accuracy", "val acc", "g-.")):
        if rows and key in rows[0]:
            ax.plot(epochs, [r[key] for r in rows], fmt, label=label)
    if test_accuracy is not None and epochs:
        ax.plot([epochs[-1]], [test_accuracy], "r*", markersize=10, label=f"test acc {test_accuracy:.3f}")
    ax.set_xlabel("epoch")
    ax.grid(True)
    ax.legend()
    if title:
        ax.set_title(title)
    save_figure(fig, path)


def save_figure(fig, path):
    """Lay out ``fig``, save it as a PNG atomically, and close it.

    Class names are the user's folder names: an emoji or a script the bundled font lacks is drawn as a
    box, and matplotlib's warning for every missing glyph would only repeat that in the training log.
    """
    import warnings

    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    plt.close(fig)
