"""Image folders, streamed: list and check the files, split them once, decode inside tf.data.

A folder holds one sub-folder per class, or ``train/``, ``test/`` (and
optionally ``val/``) sub-folders that each hold class folders; that split is
used as given. Otherwise a seeded split, stratified by class, is made once
and written into the run directory (``split.json``); resume, export and
tuning read it back instead of splitting again.

Nothing is decoded up front: :class:`ImageFiles` stands in for an image array
(``len``, ``shape``, indexing), and :func:`image_pipeline` reads, decodes,
resizes and (for training) augments in parallel tf.data map calls, so memory
stays bounded whatever the folder's size. Files are checked before training
by a header scan (Pillow's ``verify``, plus the JPEG end marker), which
names a bad file in one line, or skips bad files with ``--skip-bad-images``.
"""

import json
import os

import numpy as np

from nin_keras.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLIT_NAMES = ("train", "val", "test")
SPLIT_FILE = "split.json"
RESIZE_MODES = ("stretch", "pad", "crop")
TEST_FRACTION = 0.2


class ImageFiles:
    """Image files read lazily at ``image_size`` with ``channels`` (1 grayscale, 3 RGB).

    Behaves like the uint8 array it stands for where the code needs it:
    ``len``, ``shape`` (N, H, W, C), and indexing with a slice or an index
    array returns another :class:`ImageFiles`. :meth:`to_array` decodes.
    """

    def __init__(self, paths, image_size, channels, resize="stretch"):
        self.paths = np.asarray(paths, dtype=str)
        self.image_size = tuple(int(s) for s in image_size)
        self.channels = int(channels)
        self.resize = resize

    def __len__(self):
        return len(self.paths)

    @property
    def shape(self):
        return (len(self.paths), *self.image_size, self.channels)

    def __getitem__(self, index):
        if np.isscalar(index):
            index = [index]
        return ImageFiles(self.paths[index], self.image_size, self.channels, self.resize)

    def to_array(self, batch_size=256):
        """Decode every image (uint8 N×H×W×C); only for sets small enough to hold, such as a test set."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices(self.paths).map(
            lambda p: decode(p, self.image_size, self.channels, self.resize), num_parallel_calls=tf.data.AUTOTUNE)
        parts = [b.numpy() for b in ds.batch(batch_size)]
        return np.concatenate(parts) if parts else np.zeros(self.shape, np.uint8)


def as_array(images):
    """``images`` as a NumPy array (decodes :class:`ImageFiles`)."""
    return images.to_array() if isinstance(images, ImageFiles) else images


# ---------------------------------------------------------------- listing


def _class_folders(directory):
    return sorted(d for d in os.listdir(directory)
                  if os.path.isdir(os.path.join(directory, d)) and not d.startswith("."))


def _files(folder):
    """The files of a class folder; hidden files (``.DS_Store``) are ignored."""
    return sorted(f for f in os.listdir(folder) if not f.startswith(".") and os.path.isfile(os.path.join(folder, f)))


def list_folder(directory):
    """The folder's classes and files: ``(class_names, {split: (relative paths, labels)} or None, all files)``.

    The second item holds the given ``train``/``val``/``test`` split (None
    when the folder is one sub-folder per class); the third lists every
    file (relative path, label) of an unsplit folder.
    """
    if not os.path.isdir(directory):
        raise DataError(f"--image-dir {directory}: no such directory")
    top = _class_folders(directory)
    if not top:
        raise DataError(f"{directory}: no class folders (expected one sub-folder of images per class)")
    given = {"validation": "val"}
    if {"train", "test"} <= set(top) and set(top) <= {"train", "val", "validation", "test"}:
        class_names = sorted(set().union(*(_class_folders(os.path.join(directory, s)) for s in top)))
        splits = {}
        for name in top:
            split = given.get(name, name)
            paths, labels = _list_classes(directory, name, class_names)
            splits[split] = (paths, labels)
        _check_classes(directory, class_names)
        return class_names, splits, None
    paths, labels = _list_classes(directory, "", top)
    _check_classes(directory, top)
    return top, None, (paths, labels)


def _list_classes(directory, prefix, class_names):
    paths, labels = [], []
    base = os.path.join(directory, prefix)
    for label, name in enumerate(class_names):
        folder = os.path.join(base, name)
        if not os.path.isdir(folder):
            continue
        files = _files(folder)
        if not files:
            raise DataError(f"{folder}: empty class folder (remove it or add images)")
        paths += [os.path.join(prefix, name, f) if prefix else os.path.join(name, f) for f in files]
        labels += [label] * len(files)
    return paths, labels


def _check_classes(directory, class_names):
    if len(class_names) < 2:
        raise DataError(f"{directory}: only one class folder ({class_names[0]!r}); a classifier needs at least two")


def scan(directory, paths, labels, skip_bad=False, print_fn=print):
    """Check every file's header without decoding its pixels; returns the good (paths, labels).

    A file that is not an image, cannot be identified, fails Pillow's
    ``verify`` or is a JPEG without its end marker (cut short) is bad: the
    first is named in a one-line error, or all are skipped and counted when
    ``skip_bad``.
    """
    from PIL import Image, UnidentifiedImageError

    good_paths, good_labels, bad = [], [], []
    for rel, label in zip(paths, labels):
        path = os.path.join(directory, rel)
        problem = None
        if not rel.lower().endswith(IMAGE_EXTENSIONS):
            problem = f"not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})"
        else:
            try:
                with Image.open(path) as img:
                    kind = img.format
                    img.verify()
                if kind == "JPEG":
                    with open(path, "rb") as f:
                        f.seek(-2, os.SEEK_END)
                        if f.read(2) != b"\xff\xd9":
                            problem = "corrupt or unreadable image (JPEG cut short: no end marker)"
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                problem = f"corrupt or unreadable image ({e})"
        if problem:
            bad.append((path, problem))
        else:
            good_paths.append(rel)
            good_labels.append(label)
    if bad and not skip_bad:
        more = f"; {len(bad) - 1} more bad file(s)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0][0]}: {bad[0][1]}{more}; fix or remove them, or pass --skip-bad-images")
    if bad:
        print_fn(f"--skip-bad-images: skipped {len(bad)} bad file(s), e.g. {bad[0][0]} ({bad[0][1]})")
    return good_paths, good_labels


# ------------------------------------------------------------------ splits


def stratified_split(labels, fraction, seed):
    """Indices (rest, held_out): ``fraction`` of each class, at least one per class when it has two or more."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = int(round(len(members) * fraction))
        if len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        held += members[:n].tolist()
    held = np.sort(np.asarray(held, dtype=int))
    rest = np.setdiff1d(np.arange(len(labels)), held)
    return rest, held


def _sample(indices, limit, seed):
    """A seeded sample of ``limit`` of ``indices``, sorted: not the first N files (all the first classes')."""
    return np.sort(np.random.default_rng(seed + 2).permutation(indices)[:limit])


def make_split(paths, labels, val_fraction, seed, limit=None):
    """Seeded, stratified ``{split: (paths, labels)}``: 20% test, then ``val_fraction`` of the rest for validation.

    ``limit`` keeps a seeded sample of N training files (after the test split, before the validation split).
    """
    paths, labels = np.asarray(paths), np.asarray(labels, np.int32)
    rest, test = stratified_split(labels, TEST_FRACTION, seed + 1)
    if limit is not None:
        rest = _sample(rest, limit, seed)
    train_idx, val_idx = stratified_split(labels[rest], val_fraction, seed)
    train, val = rest[train_idx], rest[val_idx]
    return {"train": (paths[train].tolist(), labels[train].tolist()), "val": (paths[val].tolist(), labels[val].tolist()),
            "test": (paths[test].tolist(), labels[test].tolist())}


def split_record(directory, class_names, splits):
    """The split as JSON-able data: which image (relative to ``directory``) went to which split."""
    return {"image_dir": os.path.abspath(directory), "classes": list(class_names),
            **{name: [[p, int(y)] for p, y in zip(*splits[name])] for name in SPLIT_NAMES}}


def write_split(path, record):
    """Write a :func:`split_record` as the run's split file (atomically).

    ``image_dir`` is stored relative to the split file's folder: run folders
    are shared, and an absolute path carries the user's name and layout.
    """
    from nin_keras.io import atomic_write_text

    record = dict(record)
    try:
        record["image_dir"] = os.path.relpath(record["image_dir"], os.path.dirname(os.path.abspath(path)))
    except ValueError:  # another drive (Windows): the folder's name is all that is kept
        record["image_dir"] = os.path.basename(record["image_dir"])
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def _split_classes(path, doc):
    """The split file's class names: a list of at least two distinct strings."""
    classes = doc.get("classes")
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes)
            or len(set(classes)) != len(classes)):
        raise DataError(f"{path}: field 'classes' must list at least two distinct class names; move the file "
                        f"away to split again. Received: {str(classes)[:200]}")
    return classes


def _split_entry(path, field, entry, root, num_classes):
    """One ``[relative path, label]`` of a split file, checked as untrusted input; returns (path, label).

    The path must name an image file inside ``root`` (the real path of the
    image folder): no ``..``, no symlink leading out, and an absolute path
    only when it lies inside (split files from older versions). A run folder
    someone sends you must not make nin_keras read other files you can read.
    """
    def bad(problem):
        return DataError(f"{path}: {field}: {problem}; move the file away to split again. "
                         f"Received: {str(entry)[:200]}")

    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
        raise bad("expected [relative path, label]")
    rel, label = entry
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
        raise bad(f"label must be an integer 0..{num_classes - 1} ({num_classes} classes)")
    if not rel or "\0" in rel:
        raise bad("empty or invalid path")
    if os.path.isabs(rel):
        if os.path.commonpath([root, os.path.realpath(rel)]) != root:
            raise bad("absolute path outside the image folder")
        rel = os.path.relpath(os.path.realpath(rel), root)
    elif ".." in rel.replace("\\", "/").split("/"):
        raise bad("path leaves the image folder ('..')")
    if os.path.commonpath([root, os.path.realpath(os.path.join(root, rel))]) != root:
        raise bad("path leads out of the image folder through a symbolic link")
    if not rel.lower().endswith(IMAGE_EXTENSIONS):
        raise bad(f"not an image file name (expected one of {', '.join(IMAGE_EXTENSIONS)})")
    return rel, label


def read_split(path, directory, skip_bad=False, print_fn=print):
    """Read a split file as untrusted input; returns (class_names, splits).

    Every entry is checked (:func:`_split_entry`), every listed file must
    still be in ``directory``, and the files are header-scanned like a
    fresh folder's (:func:`scan`); problems are one line naming the file and
    the field.
    """
    from nin_keras.io import read_json_object

    doc = read_json_object(path, "split file", "; move it away to split again")
    class_names = _split_classes(path, doc)
    root = os.path.realpath(directory)
    splits = {}
    for name in SPLIT_NAMES:
        if not isinstance(doc.get(name), list):
            raise DataError(f"{path}: field {name!r} must be a list of [relative path, label]; move the file "
                            f"away to split again. Received: {str(doc.get(name))[:200]}")
        pairs = [_split_entry(path, f"{name}[{i}]", entry, root, len(class_names))
                 for i, entry in enumerate(doc[name])]
        for rel, _ in pairs:
            if not os.path.isfile(os.path.join(directory, rel)):
                raise DataError(f"{path}: lists {rel} ({name}), which is no longer in {directory}; restore it, "
                                "or start a new run to split again")
        splits[name] = scan(directory, [p for p, _ in pairs], [y for _, y in pairs], skip_bad, print_fn)
        if not splits[name][0]:
            raise DataError(f"{path}: the {name} split lists no usable image; move the file away to split again")
    return class_names, splits


def load_folder_splits(directory, image_size, channels, val_fraction, seed, limit=None, test_limit=None,
                       split_file=None, skip_bad=False, resize="stretch", print_fn=print):
    """Files of the train / val / test splits as :class:`ImageFiles` and int32 labels, plus the class names.

    With an existing ``split_file`` the split is read from it (nothing is
    re-split); otherwise the folder's own split or a new stratified one is
    made. The last item is the split as a record for :func:`write_split`
    (the caller writes it once the run is known good).
    """
    if channels not in (1, 3):
        raise DataError(f"--image-dir: models with {channels} input channels cannot read image files "
                        "(1 grayscale or 3 RGB)")
    if resize not in RESIZE_MODES:
        raise DataError(f"resize mode must be one of {', '.join(RESIZE_MODES)}. Received: {resize!r}")
    if split_file and os.path.isfile(split_file):
        if not os.path.isdir(directory):
            raise DataError(f"--image-dir {directory}: no such directory")
        class_names, splits = read_split(split_file, directory, skip_bad, print_fn)
    else:
        class_names, splits, files = list_folder(directory)
        if splits is None:
            splits = make_split(*scan(directory, *files, skip_bad, print_fn), val_fraction, seed, limit)
        else:
            splits = {name: scan(directory, *pair, skip_bad, print_fn) for name, pair in splits.items()}
            if "val" not in splits:
                rest, val = stratified_split(splits["train"][1], val_fraction, seed)
                train = (np.asarray(splits["train"][0]), np.asarray(splits["train"][1]))
                splits["val"] = (train[0][val].tolist(), train[1][val].tolist())
                if limit is not None:
                    rest = _sample(rest, limit, seed)
                splits["train"] = (train[0][rest].tolist(), train[1][rest].tolist())
        for name in SPLIT_NAMES:
            if not splits[name][0]:
                raise DataError(f"{directory}: the {name} split is empty; add images (at least 3 per class)")
    record = split_record(directory, class_names, splits)
    if test_limit is not None:
        splits["test"] = (splits["test"][0][:test_limit], splits["test"][1][:test_limit])

    def files(name):
        paths = [os.path.join(directory, p) for p in splits[name][0]]
        return ImageFiles(paths, image_size, channels, resize), np.asarray(splits[name][1], np.int32)

    return files("train"), files("val"), files("test"), class_names, record


# -------------------------------------------------------------- tf.data


def decode(path, image_size, channels, resize="stretch"):
    """Read and decode one image file to uint8 ``image_size`` × ``channels`` (graph-safe)."""
    return _resize(_colour(_read_rgb(path), channels), image_size, resize)


def _read_rgb(path):
    """Read and decode any supported file as uint8 RGB (GIFs: the first frame)."""
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _to_uint8(image):
    import tensorflow as tf

    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _colour(image, channels):
    import tensorflow as tf

    return tf.image.rgb_to_grayscale(image) if channels == 1 else image


def _resize(image, image_size, resize):
    import tensorflow as tf

    if resize == "crop":
        # Centre crop to the target's aspect ratio, then scale.
        shape = tf.shape(image)
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        aspect = image_size[1] / image_size[0]
        crop_h = tf.cast(tf.minimum(h, w / aspect), tf.int32)
        crop_w = tf.cast(tf.minimum(w, h * aspect), tf.int32)
        image = tf.image.resize_with_crop_or_pad(image, crop_h, crop_w)
    if resize == "pad":
        image = tf.image.resize_with_pad(image, *image_size, antialias=True)
    else:
        image = tf.image.resize(image, image_size, antialias=True)
    return _to_uint8(image)


def decode_augmented(path, image_size, channels, seed_pair):
    """Decode with photo augmentation: random resized crop (40–100% of the area), flip, brightness/contrast jitter."""
    import tensorflow as tf

    image = _read_rgb(path)
    seeds = tf.random.experimental.stateless_split(seed_pair, 4)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seeds[0], area_range=(0.4, 1.0),
        aspect_ratio_range=(0.75, 1.33), min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, size)
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    image = tf.cast(image, tf.float32)
    image = tf.image.stateless_random_brightness(image, 0.1 * 255, seeds[2])
    image = tf.image.stateless_random_contrast(image, 0.85, 1.15, seeds[3])
    image = tf.clip_by_value(image, 0, 255)
    return _to_uint8(tf.image.resize(_colour(image, channels), image_size, antialias=True))


def image_pipeline(files, labels, shuffle=False, seed=0, augment=False):
    """An unbatched tf.data pipeline of (uint8 image, label) decoded from ``files`` in parallel.

    Shuffling acts on file names (cheap, so the whole epoch is shuffled);
    decoded images never accumulate beyond tf.data's prefetch buffers.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((files.paths, np.asarray(labels, np.int32)))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    size, channels = files.image_size, files.channels
    if augment:
        # Stateless ops seeded per element by a seeded random stream: reproducible across runs.
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
        return ds.map(lambda pair, s: (decode_augmented(pair[0], size, channels, s), pair[1]),
                      num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(lambda p, y: (decode(p, size, channels, files.resize), y), num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------- a generated folder


# One tint per class, so colour carries part of the signal (RGB models must use it).
_TINTS = [(255, 80, 80), (80, 255, 80), (80, 80, 255), (255, 255, 80), (255, 80, 255),
          (80, 255, 255), (255, 160, 60), (160, 60, 255), (60, 160, 255), (200, 200, 200)]


def write_tinted_folder(root, per_class=20, classes=10, seed=0, data_dir=None, sizes=((40, 40), (64, 48), (36, 72)),
                        tint="class"):
    """Write Fashion-MNIST images as colour "photos" into ``root/<class>/``: a stand-in for a user's folder.

    Each image is tinted (``tint="class"``: its class's colour, so colour
    alone gives the class away, which makes a quick, easy task; ``"random"``:
    a colour drawn per image, so only the shapes tell classes apart),
    upscaled to one of ``sizes`` (mixed aspect ratios) and saved as JPEG or
    PNG in turn. No real colour photo dataset is available offline; the
    tests and the benchmark use this. Returns the class names.
    """
    from PIL import Image

    from nin_keras.data import FASHION_MNIST_CLASSES, find_fashion_mnist_dir, load_idx_split

    x, y = load_idx_split(find_fashion_mnist_dir(data_dir), "test")
    rng = np.random.default_rng(seed)
    names = [n.replace("/", "-").replace(" ", "-").lower() for n in FASHION_MNIST_CLASSES[:classes]]
    for label, name in enumerate(names):
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        picks = rng.choice(np.flatnonzero(y == label), per_class, replace=per_class > np.sum(y == label))
        for i, index in enumerate(picks):
            grey = x[index, :, :, 0].astype(np.float32) / 255
            colour = _TINTS[label] if tint == "class" else _TINTS[rng.integers(len(_TINTS))]
            rgb = (grey[..., None] * np.asarray(colour, np.float32)).astype(np.uint8)
            width, height = sizes[i % len(sizes)]
            image = Image.fromarray(rgb).resize((width, height), Image.BILINEAR)
            if i % 2:
                image.save(os.path.join(folder, f"{i:05d}.png"))
            else:
                image.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    return names


def main(argv=None):
    """``python -m nin_keras.images OUT [--per-class N] [--classes K]``: write a tinted "photo" folder."""
    import argparse

    from nin_keras.cli import OneLineParser, run_cli

    parser = OneLineParser(prog="python -m nin_keras.images",
                           description="Write Fashion-MNIST images as tinted colour JPEG/PNG files of mixed sizes "
                                       "into OUT/<class>/ (test data and benchmark input).",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tint", choices=("class", "random"), default="class",
                        help="class: one colour per class (colour gives the class away); random: per image")
    args = parser.parse_args(argv)

    def body():
        from nin_keras.errors import require

        require(args.per_class >= 3, "--per-class must be >= 3.", args.per_class)
        require(2 <= args.classes <= 10, "--classes must be 2..10.", args.classes)
        names = write_tinted_folder(args.out, args.per_class, args.classes, args.seed, tint=args.tint)
        print(f"wrote {args.per_class * len(names):,} images in {len(names)} class folders under {args.out}")

    return run_cli(body)


if __name__ == "__main__":
    import sys

    sys.exit(main())
