"""Offline data: Fashion-MNIST IDX files, image folders, tfds; tf.data pipelines.

IDX files and tfds are loaded into uint8 NumPy arrays (N, H, W, C) and int32
labels; image folders are listed and streamed from disk (:mod:`nin_keras.images`).
Both are served by :func:`make_dataset`. Rescaling and resizing happen inside the
model, so the pipeline only shuffles, batches and prefetches raw pixels.
"""

import dataclasses
import gzip
import os
import struct
import zlib

import numpy as np

from nin_keras.errors import DataError
from nin_keras.images import as_array  # noqa: F401  (public: decode ImageFiles where an array is needed)

ENV_DATA_DIR = "NIN_KERAS_DATA_DIR"
DEBIAN_DATA_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


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


# --------------------------------------------------------------------------- IDX


# Deflate cannot expand data by more than about 1032:1: a gzip'd IDX file whose
# header announces more than that is lying, and is refused before decompressing.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


def _idx_header(path, stream, expected_magic):
    """Read and check an IDX header (magic number, dimensions) from ``stream``; returns (dims, header bytes)."""
    head = stream.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated IDX header ({len(head)} bytes)")
    (magic,) = struct.unpack(">i", head)
    ndim = magic & 0xFF
    if (magic >> 8) != 0x08 or not 1 <= ndim <= 3:
        raise DataError(f"{path}: bad IDX magic number {magic} (expected an unsigned-byte array such as 2049 or 2051)")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{path}: IDX magic number {magic}, expected {expected_magic}")
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(raw_dims)} bytes)")
    dims = struct.unpack(f">{ndim}i", raw_dims)
    if any(d <= 0 for d in dims):
        raise DataError(f"{path}: invalid IDX dimensions {dims}")
    return dims, 4 + 4 * ndim


def _read_payload(path, stream, dims, limit):
    """Read exactly the bytes ``dims`` announce (at most ``limit``), in chunks; nothing more is decompressed."""
    expected = 1
    for d in dims:  # Python ints: a forged header must not overflow int64 into a plausible size
        expected *= d
    if expected > limit:
        raise DataError(f"{path}: truncated: header announces {expected} bytes of data for shape {dims}, "
                        f"more than the file can hold ({limit})")
    array = np.empty(expected, np.uint8)
    view, filled = memoryview(array), 0
    while filled < expected:
        n = stream.readinto(view[filled:filled + _CHUNK])
        if not n:
            raise DataError(f"{path}: truncated: header announces {expected} bytes of data for shape {dims}, "
                            f"found {filled}")
        filled += n
    if stream.read(1):
        raise DataError(f"{path}: has trailing bytes: header announces {expected} bytes of data for shape {dims}, "
                        "found more")
    return array.reshape(dims)


def read_idx(path, expected_magic=None):
    """Read one IDX file (raw or gzip) into a uint8 array.

    Validates the magic number (unsigned-byte type, 1-3 dimensions, and
    ``expected_magic`` when given) before reading any data, then reads
    exactly the bytes the header announces, streaming through gzip: a
    decompression bomb or a forged header is refused without expanding it.
    Any problem raises :class:`DataError` naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            compressed = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            stream = gzip.GzipFile(fileobj=f, mode="rb") if compressed else f
            dims, header = _idx_header(path, stream, expected_magic)
            limit = size * _MAX_DEFLATE_RATIO if compressed else size - header
            return _read_payload(path, stream, dims, limit)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read or decompress ({e})") from None


def _find_file(directory, stem):
    for name in (stem, stem + ".gz"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    raise DataError(f"{os.path.join(directory, stem)}[.gz]: file not found in the Fashion-MNIST folder {directory}")


def find_fashion_mnist_dir(data_dir=None):
    """Locate the IDX folder: ``data_dir``, then $NIN_KERAS_DATA_DIR, then Debian's.

    A folder the user names explicitly must exist; when nothing is found the
    error lists every path tried and how to install the Debian package.
    """
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise DataError(f"--data-dir {data_dir}: no such directory")
        return data_dir
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        if not os.path.isdir(env):
            raise DataError(f"${ENV_DATA_DIR}={env}: no such directory")
        return env
    if os.path.isdir(DEBIAN_DATA_DIR):
        return DEBIAN_DATA_DIR
    raise DataError(
        f"Fashion-MNIST not found; tried --data-dir (not given), ${ENV_DATA_DIR} (not set), {DEBIAN_DATA_DIR}. "
        "Install it with `sudo apt-get install -y dataset-fashion-mnist` or pass --data-dir DIR holding the IDX files."
    )


def load_idx_split(directory, split, num_classes=10):
    """Load one split ("train" or "test") of an IDX dataset as (images NHWC, labels)."""
    image_stem, label_stem, _ = IDX_FILES[split]
    image_path, label_path = _find_file(directory, image_stem), _find_file(directory, label_stem)
    images = read_idx(image_path, IMAGE_MAGIC)
    labels = read_idx(label_path, LABEL_MAGIC)
    if images.ndim != 3:
        raise DataError(f"{image_path}: expected 3 dimensions (count, rows, cols), found {images.ndim}")
    if len(images) != len(labels):
        raise DataError(f"{image_path}: {len(images)} images but {label_path} has {len(labels)} labels")
    if labels.size and labels.max() >= num_classes:
        raise DataError(f"{label_path}: label {int(labels.max())} out of range for {num_classes} classes")
    return images[..., None], labels.astype(np.int32)


# ------------------------------------------------------------------ image folder


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


def load_data(data_dir=None, image_dir=None, tfds_name=None, val_fraction=0.1, seed=0, limit=None,
              test_limit=None, image_size=(28, 28), num_classes=10, channels=1, split_file=None,
              skip_bad_images=False, resize="stretch", print_fn=print, max_image_pixels=None):
    """Load the chosen source and split it into train / validation / test sets.

    Sources: ``image_dir`` (class folders, streamed from disk: see
    :mod:`nin_keras.images`; its split is read from ``split_file`` when that
    exists), ``tfds_name``, or Fashion-MNIST IDX files (default). ``limit``
    keeps the first N training examples (before the validation split),
    ``test_limit`` the first N test examples. Image folders are read at
    ``image_size`` in the model's colour mode (``channels`` 1: grayscale, 3: RGB); files over
    ``max_image_pixels`` pixels are refused from their header.
    """
    if image_dir is not None:
        from nin_keras import images

        (x_train, y_train), (x_val, y_val), (x_test, y_test), class_names, record = images.load_folder_splits(
            image_dir, image_size, channels, val_fraction, seed, limit, test_limit, split_file=split_file,
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


def _augment(image, label, seed_pair, pad=3):
    """Light augmentation: random horizontal flip and a shift of up to ``pad`` pixels.

    Stateless ops seeded per element (``seed_pair``, from a seeded random
    stream), so a run's augmentation is the same whatever order tf.data's
    parallel map calls run in: the seed reproduces it.
    """
    import tensorflow as tf

    height, width = image.shape[0], image.shape[1]
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed_pair, 2))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if not pad:
        return image, label
    image = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad, width + 2 * pad)
    image = tf.image.stateless_random_crop(image, [height, width, image.shape[-1]], crop_seed)
    return image, label


def make_dataset(x, y, batch_size, shuffle=False, seed=0, drop_remainder=False, shard_policy=None, augment=False,
                 cache=True, one_hot_classes=None, augment_shift=3):
    """A tf.data pipeline: cache, seeded shuffle, augment, batch, prefetch.

    ``x`` is an in-memory uint8 array, or :class:`~nin_keras.images.ImageFiles`
    decoded on the fly (photo augmentation: random resized crop, flip, colour
    jitter).

    ``batch_size`` is the **global** batch (per-replica batch x replicas):
    under a distribution strategy ``model.fit`` splits each batch across
    replicas. ``shard_policy`` (a ``tf.data.experimental.AutoShardPolicy``)
    decides how multi-worker training shards the data. ``augment_shift``
    is the largest random shift, in pixels, of in-memory augmentation.
    ``one_hot_classes`` turns the integer labels into one-hot vectors of
    that length (what label smoothing's loss takes). ``cache=False`` is for
    the benchmark's comparison only.
    """
    import tensorflow as tf

    from nin_keras.images import ImageFiles, image_pipeline

    if isinstance(x, ImageFiles):
        # Streamed from disk and never cached: memory stays bounded whatever the folder's size.
        ds = image_pipeline(x, y, shuffle=shuffle, seed=seed, augment=augment)
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if cache:
            ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        if augment:
            # In the pipeline, not the model: keeps random ops out of exported
            # models and runs on the CPU threads tf.data already uses.
            ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
            ds = ds.map(lambda pair, seed_pair: _augment(pair[0], pair[1], seed_pair, augment_shift),
                        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if one_hot_classes:
        ds = ds.map(lambda images, labels: (images, tf.one_hot(labels, one_hot_classes)))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if shard_policy is not None:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = shard_policy
        ds = ds.with_options(options)
    return ds


def make_train_dataset(x, y, batch_size, seed=0, shard_policy=None, augment=False, cache=True, one_hot_classes=None,
                       augment_shift=3):
    """The training pipeline: seeded reshuffle every epoch and only full batches.

    Dropping the last partial batch keeps every replica's share the same
    shape (in-model augmentation layers fail on uneven splits under
    MirroredStrategy); reshuffling means a different remainder is skipped
    each epoch. Returns (dataset, steps per epoch).
    """
    steps = len(x) // batch_size
    if steps == 0:
        raise DataError(f"batch size {batch_size} is larger than the {len(x)} training examples; "
                        f"lower --batch-size or raise --limit")
    return make_dataset(x, y, batch_size, shuffle=True, seed=seed, drop_remainder=True,
                        shard_policy=shard_policy, augment=augment, cache=cache,
                        one_hot_classes=one_hot_classes, augment_shift=augment_shift), steps
