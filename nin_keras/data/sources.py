"""Where a run's data comes from, split into train / validation / test: :func:`load_data`.

Sources: Fashion-MNIST IDX files (:mod:`nin_keras.data.idx`, the default),
image folders (:mod:`nin_keras.data.folders`, streamed from disk) and
prepared tensorflow-datasets. In-memory sources are uint8 arrays
(N, H, W, C); a folder's splits are :class:`~nin_keras.data.folders.ImageFiles`.
"""

import dataclasses

import numpy as np

from nin_keras.data.idx import FASHION_MNIST_CLASSES, find_fashion_mnist_dir, load_idx_split
from nin_keras.errors import DataError


@dataclasses.dataclass
class Splits:
    """Arrays of one dataset: uint8 images (N, H, W, C) and int32 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    source: str
    # Image folders: which file went to which split (written into the run as split.json).
    split_record: dict = None

    @property
    def input_shape(self):
        return list(self.x_train.shape[1:])


def load_tfds(name):
    """Load a prepared tensorflow-datasets dataset (train/test) as arrays."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError("--tfds needs tensorflow-datasets: pip install tensorflow-datasets importlib_resources") from None
    try:
        train, test = tfds.load(name, split=["train", "test"], batch_size=-1, as_supervised=True, download=False)
        info = tfds.builder(name).info
    except Exception as e:  # tfds raises many types; the user only needs the cause
        raise DataError(f"tfds dataset {name!r} is not available offline ({type(e).__name__}: {e})") from None
    (x_train, y_train), (x_test, y_test) = tfds.as_numpy(train), tfds.as_numpy(test)
    return x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32), list(info.features["label"].names)


# ---------------------------------------------------------------------- loading


def _split_validation(x, y, val_fraction, seed):
    """Hold out a seeded random ``val_fraction`` of (x, y) for validation."""
    order = np.random.default_rng(seed).permutation(len(x))
    # At least one: a small --limit (or fraction) would otherwise round to an
    # empty validation set, which model.fit cannot score.
    n_val = max(1, int(round(len(x) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def load_data(*, data_dir=None, image_dir=None, tfds_name=None, val_fraction=0.1, seed=0, limit=None,
              test_limit=None, image_size=(28, 28), num_classes=10, channels=1, split_file=None,
              skip_bad_images=False, resize="stretch", print_fn=print, max_image_pixels=None):
    """Load the chosen source and split it into train / validation / test sets.

    Sources: ``image_dir`` (class folders, streamed from disk: see
    :mod:`nin_keras.data.folders`; its split is read from ``split_file`` when that
    exists), ``tfds_name``, or Fashion-MNIST IDX files (default). ``limit``
    keeps the first N training examples (before the validation split),
    ``test_limit`` the first N test examples. Image folders are read at
    ``image_size`` in the model's colour mode (``channels`` 1: grayscale, 3: RGB); files over
    ``max_image_pixels`` pixels are refused from their header.
    """
    if image_dir is not None:
        from nin_keras.data.folders import load_folder_splits

        (x_train, y_train), (x_val, y_val), (x_test, y_test), class_names, record = load_folder_splits(
            image_dir, image_size, channels, val_fraction=val_fraction, seed=seed, limit=limit, test_limit=test_limit,
            split_file=split_file,
            skip_bad=skip_bad_images, resize=resize, print_fn=print_fn, max_pixels=max_image_pixels)
        return Splits(x_train, y_train, x_val, y_val, x_test, y_test, class_names, f"image folder {image_dir}",
                      split_record=record)
    if tfds_name is not None:
        x_train, y_train, x_test, y_test, class_names = load_tfds(tfds_name)
        source = f"tfds {tfds_name}"
        top = int(max(y_train.max(initial=0), y_test.max(initial=0)))
        if top >= len(class_names):
            raise DataError(f"{source}: label {top} out of range for {len(class_names)} classes")
    else:
        directory = find_fashion_mnist_dir(data_dir)
        x_train, y_train = load_idx_split(directory, "train", num_classes)
        x_test, y_test = load_idx_split(directory, "test", num_classes)
        class_names = list(FASHION_MNIST_CLASSES)
        source = f"Fashion-MNIST IDX files in {directory}"
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    if test_limit is not None:
        x_test, y_test = x_test[:test_limit], y_test[:test_limit]
    x_train, y_train, x_val, y_val = _split_validation(x_train, y_train, val_fraction, seed)
    if len(x_train) == 0:
        raise DataError(f"{source}: no training examples left after --limit {limit} and the validation split")
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test, class_names, source)
