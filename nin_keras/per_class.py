"""Per-class results: accuracy per class, the confusion matrix and the most-confused pairs.

A single accuracy hides what a user needs to fix (on Fashion-MNIST, "Shirt"
is the hard class); fit writes ``per_class.json`` and ``confusion.png`` into
the run directory, and the exporter adds per-class accuracy per format.
"""

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes):
    """Counts ``m[t, p]`` of examples of class ``t`` predicted as ``p``."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def per_class_report(y_true, y_pred, class_names, top=5):
    """Per-class accuracy (recall), the confusion matrix and the ``top`` most-confused (true, predicted) pairs."""
    n = len(class_names)
    matrix = confusion_matrix(y_true, y_pred, n)
    support = matrix.sum(axis=1)
    correct = np.diag(matrix)
    per_class = {name: {"accuracy": float(correct[i] / support[i]) if support[i] else None,
                        "examples": int(support[i])} for i, name in enumerate(class_names)}
    off = [(int(matrix[t, p]), t, p) for t in range(n) for p in range(n) if t != p and matrix[t, p]]
    off.sort(key=lambda item: (-item[0], item[1], item[2]))
    pairs = [{"true": class_names[t], "predicted": class_names[p], "count": count} for count, t, p in off[:top]]
    return {"classes": list(class_names), "per_class": per_class, "confusion_matrix": matrix.tolist(),
            "most_confused": pairs, "accuracy": float(correct.sum() / max(1, support.sum()))}


def summary_line(report, worst=3):
    """One line: the hardest classes and the most-confused pair."""
    ranked = sorted(((v["accuracy"], k) for k, v in report["per_class"].items() if v["accuracy"] is not None))
    hardest = ", ".join(f"{name} {acc:.3f}" for acc, name in ranked[:worst])
    line = f"hardest classes: {hardest}"
    if report["most_confused"]:
        top = report["most_confused"][0]
        line += f"; most confused: {top['true']} -> {top['predicted']} ({top['count']})"
    return line


def plot_confusion(report, path, title=None):
    """Save the confusion matrix as a PNG (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nin_keras.plotting import save_figure

    matrix = np.asarray(report["confusion_matrix"])
    names = report["classes"]
    size = max(4.0, 0.55 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for t in range(len(names)):
            for p in range(len(names)):
                ax.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[t, p] > threshold else "black")
    ax.set_title(title or f"confusion matrix (accuracy {report['accuracy']:.3f})")
    save_figure(fig, path)
