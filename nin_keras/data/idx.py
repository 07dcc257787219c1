"""Fashion-MNIST's IDX files: find them offline, read them safely (header first, exact sizes).

Debian's ``dataset-fashion-mnist`` installs them under
``/usr/share/datasets/fashion-mnist``; ``$NIN_KERAS_DATA_DIR`` or ``--data-dir``
points elsewhere. Arrays come back as uint8 images (N, H, W, 1) and int32 labels.
"""

import gzip
import os
import struct
import zlib

import numpy as np

from nin_keras.errors import DataError

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
