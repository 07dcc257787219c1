"""Image folders, streamed: list and check the files, split them once, decode inside tf.data.

A folder holds one sub-folder per class, or ``train/``, ``test/`` (and
optionally ``val/``) sub-folders that each hold class folders; that split is
used as given. Otherwise a seeded split, stratified by class, is made once
and written into the run directory (``split.json``); resume, export and
tuning read it back instead of splitting again.

Class folders are walked with their sub-folders (hidden files and folders
skipped, symlink loops entered once). Nothing is kept decoded:
:class:`ImageFiles` stands in for an image array (``len``, ``shape``,
indexing), and :func:`image_pipeline` reads, decodes, resizes and (for
training) augments in parallel tf.data map calls, so memory stays bounded
whatever the folder's size. Files are checked before training by a header
scan (format by content, pixel cap, Pillow's ``verify``, the JPEG's end
marker, HEIC's box sizes; the rare GIF, TIFF and BMP decoded once), which
names a bad file in one line, or skips bad files with
``--skip-bad-images``.

Every path that turns a file into pixels (training, evaluation, int8
calibration, ``export.predict``) goes through one function,
:func:`load_pixels`: Pillow decodes (JPEGs at a DCT-reduced scale), applies
the EXIF orientation, composites transparency on white and applies the
resize mode; tf.data runs it in parallel map calls (Pillow releases the GIL
while it decodes and resizes).
"""

import functools
import json
import mmap
import os
import re
import struct
import warnings

import numpy as np

from nin_keras.errors import DataError
from nin_keras.io import SYSTEM_FILES, is_utf8, shown_name

#: Formats read (Pillow's names), recognised by content whatever a file is called. MPO: multi-picture
#: JPEGs (many phones' photos); HEIF (HEIC, the iPhone's default) needs pillow-heif (optional); AVIF
#: when Pillow is built with libavif. AVIF is tried before HEIF: both claim files whose ftyp leads with
#: the generic brand mif1, and pillow-heif's libheif decodes only HEVC; Pillow's AVIF plugin passes on a
#: file whose brands are not AVIF's (:func:`_open_by_content` one that names avif but holds HEVC).
FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF", "AVIF", "HEIF")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif",
                    ".avif", ".mpo")
HEIF_INSTALL = 'pip install "nin_keras[heif]" (or: pip install pillow-heif)'
#: Image formats that are not read, named in the error instead of "not an image file".
_OTHER_IMAGES = ((b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"), (b"8BPS", "Photoshop (PSD)"),
                 (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
                 (b"\x00\x00\x01\x00", "ICO"), (b"FUJIFILMCCD-RAW", "Fujifilm RAW"), (b"IIRO", "Olympus RAW"))
_OTHER_EXTENSIONS = {".jxl": "JPEG XL", ".psd": "Photoshop (PSD)", ".svg": "SVG", ".jp2": "JPEG 2000",
                     ".ico": "ICO", ".dng": "DNG (RAW)", ".cr2": "Canon RAW", ".cr3": "Canon RAW",
                     ".nef": "Nikon RAW", ".arw": "Sony RAW", ".orf": "Olympus RAW", ".raf": "Fujifilm RAW",
                     ".rw2": "Panasonic RAW", ".heic": "HEIC/HEIF", ".heif": "HEIC/HEIF", ".avif": "AVIF"}
#: The pixel cap's default (``--max-image-pixels``): about 40 megapixels, above today's 12-50 MP phone
#: photos' common sizes; checked from the header before anything is decoded.
DEFAULT_MAX_PIXELS = 40_000_000
#: Transparent pixels are shown on white, as browsers and photo viewers show them.
ALPHA_BACKGROUND = (255, 255, 255)
#: The letterbox colour of ``--resize pad``.
PAD_COLOUR = (0, 0, 0)
ORIENTATION_RULE = "EXIF Orientation applied: pixels as a phone or browser shows the picture (upright)"
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

    def __init__(self, paths, image_size, channels, resize="stretch", max_pixels=None):
        self.paths = np.asarray(paths, dtype=str)
        self.image_size = tuple(int(s) for s in image_size)
        self.channels = int(channels)
        self.resize = resize
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS

    def __len__(self):
        return len(self.paths)

    @property
    def shape(self):
        return (len(self.paths), *self.image_size, self.channels)

    def __getitem__(self, index):
        if np.isscalar(index):
            index = [index]
        return ImageFiles(self.paths[index], self.image_size, self.channels, self.resize, self.max_pixels)

    def path_bytes(self):
        """The paths as the file system's bytes, for tf.data: a name that is not UTF-8 (lone surrogates in
        Python) is no tf.string otherwise; the decoder turns them back with os.fsdecode."""
        return np.array([os.fsencode(p) for p in self.paths], dtype=object)

    def to_array(self, batch_size=256):
        """Decode every image (uint8 N×H×W×C); only for sets small enough to hold, such as a test set."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices(self.path_bytes()).map(
            lambda p: decode(p, self.image_size, self.channels, self.resize, self.max_pixels),
            num_parallel_calls=tf.data.AUTOTUNE)
        parts = [b.numpy() for b in ds.batch(batch_size)]
        return np.concatenate(parts) if parts else np.zeros(self.shape, np.uint8)


def as_array(images):
    """``images`` as a NumPy array (decodes :class:`ImageFiles`)."""
    return images.to_array() if isinstance(images, ImageFiles) else images


# ---------------------------------------------------------------- listing


def _class_folders(directory):
    return sorted(d for d in os.listdir(directory)
                  if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".") and d != "__MACOSX")


def _files(folder):
    """Every file under a class folder, sub-folders included, as paths relative to it, sorted.

    Hidden files and folders (``.DS_Store``, ``.thumbnails``) and Windows' ``Thumbs.db`` and
    ``desktop.ini`` are skipped;
    symlinked folders are followed once (a folder already visited, such as a
    link back up to a parent, is not entered again).
    """
    found, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop, or a second link to a folder already listed
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")  # macOS zips' forks
        rel = os.path.relpath(root, folder)
        found += [n if rel == "." else os.path.join(rel, n) for n in names
                  if not n.startswith(".") and n.lower() not in SYSTEM_FILES and os.path.isfile(os.path.join(root, n))]
    return sorted(found)


def check_image_dir(directory):
    """A one-line DataError unless ``directory`` is a folder (the commands check before TensorFlow loads)."""
    if not os.path.isdir(directory):
        reason = ("a file, not a folder (pass the folder that holds the class folders)" if os.path.exists(directory)
                  else "no such directory")
        raise DataError(f"--image-dir {directory}: {reason}")


def list_folder(directory):
    """The folder's classes and files: ``(class_names, {split: (relative paths, labels)} or None, all files)``.

    The second item holds the given ``train``/``val``/``test`` split (None
    when the folder is one sub-folder per class); the third lists every
    file (relative path, label) of an unsplit folder.
    """
    check_image_dir(directory)
    top = _class_folders(directory)
    if not top:
        raise DataError(f"{directory}: no class folders (expected one sub-folder of images per class)")
    given = _given_splits(directory, top)
    if given:
        class_names = sorted(set().union(*(_class_folders(os.path.join(directory, s)) for s in given.values())))
        splits = {split: _list_classes(directory, folder, class_names) for split, folder in given.items()}
        _check_classes(directory, class_names)
        for paths, _ in splits.values():
            _check_inside(directory, paths)
        return class_names, splits, None
    paths, labels = _list_classes(directory, "", top)
    _check_classes(directory, top)
    _check_inside(directory, paths)
    return top, None, (paths, labels)


#: Folder names of a given split, read case-insensitively (Roboflow writes ``valid``, Kaggle ``training_set``).
SPLIT_FOLDERS = {"train": "train", "training": "train", "training_set": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test", "test_set": "test"}


def _given_splits(directory, top):
    """``{split: folder}`` when the top folders are a given split (train and test at least), else None."""
    splits = [SPLIT_FOLDERS.get(name.lower()) for name in top]
    if not {"train", "test"} <= set(splits):
        return None
    others = [name for name, split in zip(top, splits) if split is None]
    if others:
        raise DataError(f"{directory}: holds split folders ({', '.join(n for n in top if n not in others)}) and "
                        f"other folders ({', '.join(others)}); keep one layout: one folder per class, or "
                        "train/ and test/ (and val/) folders that each hold the class folders")
    given = {}
    for name, split in zip(top, splits):
        if split in given:
            raise DataError(f"{directory}: {given[split]}/ and {name}/ are both the {split} split; merge or "
                            "remove one")
        given[split] = name
    return given


def _check_inside(directory, paths):
    """Refuse files reached through a symbolic link that leads out of the folder: the run's ``split.json``
    could not name them (it is read as untrusted input, :func:`read_split`), so the run could never be
    resumed or exported."""
    root = os.path.realpath(directory)
    for rel in paths:
        if os.path.commonpath([root, os.path.realpath(os.path.join(directory, rel))]) != root:
            raise DataError(f"{os.path.join(directory, rel)}: reached through a symbolic link that leads out of "
                            f"{directory}; point --image-dir at the real folder (or copy the files in), so the "
                            "run's split.json can name every file")


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
    if not class_names:
        raise DataError(f"{directory}: no class folders (expected one sub-folder of images per class)")
    # labels.txt, the sidecars and the phone page hold one class name per line: found now, not at export.
    broken = next((name for name in class_names if "\n" in name or "\r" in name), None)
    if broken is not None:
        raise DataError(f"{directory}: the class folder name {broken!r} holds a line break; rename the folder")
    # ...and are UTF-8 text, which a name in another encoding (lone surrogates here) is not.
    foreign = next((name for name in class_names if not is_utf8(name)), None)
    if foreign is not None:
        raise DataError(f"{directory}: the class folder name '{shown_name(foreign)}' is not UTF-8 (it becomes a "
                        "label on the phone); rename the folder")
    if len(class_names) < 2:
        inner = os.path.join(directory, class_names[0])
        nested = _class_folders(inner) if os.path.isdir(inner) else []
        # A zip that unpacks into a folder of its own name (Kaggle, Google Takeout): point at the real root.
        hint = (f" (it holds {len(nested)} folders: {', '.join(nested[:3])}{', ...' if len(nested) > 3 else ''}; "
                f"did you mean --image-dir {inner}?)" if len(nested) >= 2 else "")
        raise DataError(f"{directory}: only one class folder ({class_names[0]!r}){hint}; a classifier needs at least "
                        "two")


def scan(directory, paths, labels, *, skip_bad=False, print_fn=print, max_pixels=None):
    """Check every file by its header (GIF, TIFF and BMP by a decode); returns the good (paths, labels).

    A file is bad when its content is not one of :data:`FORMATS` (whatever
    its name: a TIFF named ``.png`` is read as the TIFF it is), when it is
    larger than ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`) or a
    decompression bomb, fails Pillow's ``verify``, or is cut short (a JPEG
    without its end marker after its image data, where a motion photo's video
    after the marker is fine; a HEIC whose boxes run past its end; a GIF,
    TIFF or BMP that does not decode). The first bad file is named in a one-line error with the next few,
    or all are skipped and counted when ``skip_bad``. A file that is no image by content nor by name
    (:class:`NotAnImage`: videos, sidecars, notes) is left out, and named in one line.
    """
    good_paths, good_labels, bad, others = [], [], [], []
    for rel, label in zip(paths, labels):
        path = os.path.join(directory, rel)
        try:
            check_image(path, max_pixels)
        except NotAnImage:
            others.append(path)
            continue
        except BadImage as e:
            bad.append((path, str(e)))
            continue
        good_paths.append(rel)
        good_labels.append(label)
    if others:
        print_fn(f"left out {len(others)} file(s) that are not images: {_some(others)}")
    if bad and not skip_bad:
        more = f"; {len(bad) - 1} more bad file(s): {_some([p for p, _ in bad[1:]])}" if len(bad) > 1 else ""
        raise DataError(f"{bad[0][0]}: {bad[0][1]}{more}; fix or remove {'them' if more else 'it'}, "
                        "or pass --skip-bad-images")
    if bad:
        print_fn(f"--skip-bad-images: skipped {len(bad)} bad file(s): {_some([p for p, _ in bad])} "
                 f"(the first: {bad[0][1]})")
    return good_paths, good_labels


def _some(names, shown=3):
    """The first ``shown`` of ``names``, and how many more: one line, however many."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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


def _sample(indices, labels, limit, seed):
    """A seeded sample of ``limit`` of ``indices``, sorted: not the first N files (all the first classes'), and
    one file of every class of ``labels[indices]`` first, so a small ``--limit`` leaves no class out."""
    shuffled = np.random.default_rng(seed + 2).permutation(indices)
    _, first = np.unique(np.asarray(labels)[shuffled], return_index=True)
    return np.sort(np.concatenate([shuffled[np.sort(first)], np.delete(shuffled, first)])[:limit])


def make_split(paths, labels, val_fraction, seed, limit=None):
    """Seeded, stratified ``{split: (paths, labels)}``: 20% test, then ``val_fraction`` of the rest for validation.

    ``limit`` keeps a seeded sample of N training files (after the test split, before the validation split).
    """
    paths, labels = np.asarray(paths), np.asarray(labels, np.int32)
    rest, test = stratified_split(labels, TEST_FRACTION, seed + 1)
    if limit is not None:
        rest = _sample(rest, labels, limit, seed)
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


def read_split(path, directory, skip_bad=False, print_fn=print, max_pixels=None):
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
        splits[name] = scan(directory, [p for p, _ in pairs], [y for _, y in pairs], skip_bad=skip_bad,
                            print_fn=print_fn, max_pixels=max_pixels)
        if not splits[name][0]:
            raise DataError(f"{path}: the {name} split lists no usable image; move the file away to split again")
    return class_names, splits


def _check_every_class_trains(directory, class_names, train_labels):
    """Refuse a class without a training image (all its files skipped as bad, or it has none in train/): the
    model would get an output it can never learn. (A --limit sample keeps one file of every class.)"""
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts) if n == 0]
    if empty:
        raise DataError(f"{directory}: class {empty[0]!r} has no usable training image (its files were skipped "
                        f"as bad or left out as not images, or it has none in the training split); add images or "
                        f"remove its folder"
                        + (f"; {len(empty) - 1} more such class(es)" if len(empty) > 1 else ""))


def load_folder_splits(directory, image_size, channels, *, val_fraction, seed, limit=None, test_limit=None,
                       split_file=None, skip_bad=False, resize="stretch", print_fn=print,
                       max_pixels=None):
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
        check_image_dir(directory)
        class_names, splits = read_split(split_file, directory, skip_bad, print_fn, max_pixels)
    else:
        class_names, splits, files = list_folder(directory)
        if splits is None:
            splits = make_split(*scan(directory, *files, skip_bad=skip_bad, print_fn=print_fn, max_pixels=max_pixels),
                                val_fraction, seed, limit)
        else:
            splits = {name: scan(directory, *pair, skip_bad=skip_bad, print_fn=print_fn, max_pixels=max_pixels)
                      for name, pair in splits.items()}
            if "val" not in splits:
                rest, val = stratified_split(splits["train"][1], val_fraction, seed)
                train = (np.asarray(splits["train"][0]), np.asarray(splits["train"][1]))
                splits["val"] = (train[0][val].tolist(), train[1][val].tolist())
                if limit is not None:
                    rest = _sample(rest, train[1], limit, seed)
                splits["train"] = (train[0][rest].tolist(), train[1][rest].tolist())
        for name in SPLIT_NAMES:
            if not splits[name][0]:
                raise DataError(f"{directory}: the {name} split is empty; add images (at least 3 per class)")
        # A fresh split only: a recorded one (resume, export) is what that run trained on.
        _check_every_class_trains(directory, class_names, splits["train"][1])
    record = split_record(directory, class_names, splits)
    if test_limit is not None:
        splits["test"] = (splits["test"][0][:test_limit], splits["test"][1][:test_limit])

    def files(name):
        paths = [os.path.join(directory, p) for p in splits[name][0]]
        return ImageFiles(paths, image_size, channels, resize, max_pixels), np.asarray(splits[name][1], np.int32)

    return files("train"), files("val"), files("test"), class_names, record


# ------------------------------------------------------------- decoding


class BadImage(Exception):
    """A file the pipeline cannot read; the message is the one-line reason (without the path)."""

    def __init__(self, reason):
        # One line whatever a decoder wrote into its error (pillow-heif's end with a line break and "))").
        super().__init__(" ".join(str(reason).split()))


class NotAnImage(BadImage):
    """A file beside the photos that is none by its content nor by its name (:data:`COMPANION_EXTENSIONS`: a
    Live Photo's video, an edit sidecar, a Takeout ``.json``, notes). A folder scan leaves it out; asked for by
    name, an error. Any other unreadable file stays a bad file: an image in a format not read here must not
    vanish from the data unnoticed."""


#: What phones, cameras, photo apps and people put beside photos: videos, sidecars, documents.
COMPANION_EXTENSIONS = (".mov", ".mp4", ".m4v", ".3gp", ".avi", ".mkv", ".webm", ".aae", ".xmp", ".json", ".thm",
                        ".lrv", ".xml", ".txt", ".md", ".csv", ".pdf", ".html", ".htm", ".rtf", ".doc", ".docx")


class ImageTooLarge(BadImage):
    """An image over the pixel cap, or a decompression bomb (Pillow's own limit)."""


@functools.cache
def _heif_opener():
    """Register pillow-heif's HEIC/HEIF opener once; False when it is not installed.

    A HEIF file's rotation is its container's ``irot``/``imir`` (the EXIF
    Orientation is informative there, per the HEIF spec): libheif applies
    them and pillow-heif resets the EXIF tag to 1, so the picture is upright
    and ``exif_transpose`` does not turn it twice.
    """
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _formats():
    """The Pillow plugins tried on a file: only :data:`FORMATS`, and only those this install has."""
    from PIL import Image

    heif = _heif_opener()
    Image.init()
    return [f for f in FORMATS if f in Image.OPEN and (f != "HEIF" or heif)]


def _sniff(head):
    """The name of an image format Pillow does not read here, from a file's first bytes, or None."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC/HEIF"
    for magic, name in _OTHER_IMAGES:
        if head.startswith(magic):
            return name
    if head.lstrip().startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return "SVG"
    return None


def _article(name):
    """"a" or "an" before a format's name as it is read aloud ("an ICO", "an SVG", "a JPEG")."""
    return "an" if name.split()[0] in ("ICO", "SVG", "AVIF", "MPO", "Olympus") else "a"


def _unidentified(path):
    """Why Pillow found no supported format in ``path`` (a :class:`BadImage` to raise): an image format
    named as such, a damaged file of a format read here, or :class:`NotAnImage`."""
    with open(path, "rb") as f:
        head = f.read(64)
    ext = os.path.splitext(path)[1].lower()
    name = _sniff(head) or _OTHER_EXTENSIONS.get(ext)
    if name == "HEIC/HEIF" and not _heif_opener():
        return BadImage(f"a HEIC/HEIF image, which needs pillow-heif to read: {HEIF_INSTALL}")
    if name in ("HEIC/HEIF", "AVIF"):  # a decoder is installed, or may be: it refused this file
        return BadImage(f"{_article(name)} {name} image its decoder could not read (damaged, or a variant or "
                        "codec this install lacks): convert it to JPEG or PNG")
    name = name or _pillow_format(path)
    if name:
        return BadImage(f"{_article(name)} {name} image, which nin_keras cannot read (convert it to JPEG or PNG)")
    if ext in IMAGE_EXTENSIONS:
        return BadImage(f"corrupt or unreadable image (its content is none of {', '.join(_formats())})")
    reason = f"not an image file (read by content: {', '.join(_formats())})"
    return NotAnImage(reason) if ext in COMPANION_EXTENSIONS else BadImage(reason)


def _pillow_format(path):
    """The name of an image format Pillow reads but nin_keras does not (PPM, TGA, ...) for ``path``, or None."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.format
    except Exception:  # noqa: BLE001 - any plugin's refusal means: not one of Pillow's formats either
        return None


def _too_large(pixels, max_pixels):
    return (f"too large ({pixels:,} pixels; the limit is {max_pixels:,}, a guard against decompression bombs: "
            "raise it with --max-image-pixels)")


def _quiet_bomb_warning():
    """Pillow warns between its pixel limit and twice it; :func:`open_image`'s own cap decides, in one line.

    A process-wide filter, added when missing (``warnings.catch_warnings`` is not safe in tf.data's
    parallel decoding threads, and a caller's own ``catch_warnings`` may have dropped the filter since)."""
    from PIL import Image

    if not any(f[0] == "ignore" and f[2] is Image.DecompressionBombWarning for f in warnings.filters):
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_image(path, max_pixels=None):
    """``path`` opened by Pillow (header only) as one of :data:`FORMATS`; :class:`BadImage` otherwise.

    The pixel count is checked against ``max_pixels`` (default
    :data:`DEFAULT_MAX_PIXELS`) from the header, before anything is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    if Image.MAX_IMAGE_PIXELS and max_pixels > Image.MAX_IMAGE_PIXELS:
        # Pillow's own guard is a process-wide setting: follow a cap the user raised.
        Image.MAX_IMAGE_PIXELS = max_pixels
    _quiet_bomb_warning()
    try:
        img = _open_by_content(path)
    except Image.DecompressionBombError as e:
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageTooLarge(_too_large(int(claimed.group(1)) if claimed else 0, max_pixels)) from None
    except UnidentifiedImageError:
        raise _unidentified(path) from None
    except OSError as e:
        # The file's own name comes first in every message; here only the reason, not the repr'd name again.
        raise BadImage(f"corrupt or unreadable image ({e.strerror or e})") from None
    except (SyntaxError, ValueError, struct.error, RuntimeError) as e:
        raise BadImage(f"corrupt or unreadable image ({e})") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageTooLarge(_too_large(width * height, max_pixels))
    return img


def _open_by_content(path):
    """``Image.open`` over :func:`_formats`. A file whose ftyp names both mif1 and avif but holds HEVC passes
    Pillow's AVIF check and fails inside libavif with a RuntimeError, after which Pillow tries no other
    plugin: then it is HEIF's turn."""
    from PIL import Image

    formats = _formats()
    try:
        return Image.open(path, formats=formats)
    except RuntimeError:
        if "AVIF" not in formats:
            raise
        return Image.open(path, formats=[f for f in formats if f != "AVIF"])


_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_complete(path):
    """Whether the JPEG's image data reaches its end marker (FF D9); what follows it (a motion photo's video) is ignored.

    Walks the markers: header segments are skipped by their length, the
    entropy-coded data (where FF is always followed by 00 or a restart
    marker) is searched for the next marker, until the end marker or the
    end of the file.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF or data[pos + 1] == 0x00:
                found = _JPEG_MARKER.search(data, pos)  # inside scan data (FF 00 is a stuffed byte): the next marker
                if not found:
                    return False
                pos = found.start()
                continue
            marker = data[pos + 1]
            if marker == 0xD9:
                return True
            if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:
                pos += 1 if marker == 0xFF else 2
                continue
            pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        return data[len(data) - 2 :] == b"\xff\xd9"


#: Formats whose cut-short files the header checks catch: Pillow's verify (PNG's chunk CRCs), WebP's
#: decoder at open, JPEG's end marker, HEIF/AVIF's box sizes. A cut GIF, TIFF or BMP passes them and failed
#: only when training decoded it, so those (rare from phones) are decoded once at the scan.
_VERIFIED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "HEIF", "AVIF")


def _boxes_complete(path):
    """Whether an ISO-BMFF file (HEIC, AVIF) holds every byte its top-level boxes declare: a cut one does not.

    Decoding a 12 MP HEIC to check it took about a second; walking its few top-level boxes takes microseconds.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            length, = struct.unpack(">I", f.read(4))
            f.read(4)  # the box type
            if length == 1:  # a 64-bit size follows the type
                length, = struct.unpack(">Q", f.read(8))
            elif length == 0:  # the last box runs to the end of the file
                return True
            if length < 8:
                return False
            pos += length
        return pos == size


def check_image(path, max_pixels=None):
    """:class:`BadImage` unless ``path`` is a complete image the pipeline reads.

    Header checks, plus a full decode for the formats they cannot prove complete (GIF, TIFF, BMP).
    """
    with open_image(path, max_pixels) as img:
        kind = img.format
        try:
            # verify() where the checks below can prove the file whole; a decode where only that can.
            img.verify() if kind in _VERIFIED_FORMATS else img.load()
        except Exception as e:  # the plugins' errors differ (SyntaxError, OSError, struct.error...)
            raise BadImage(f"corrupt or unreadable image ({e})") from None
    if kind in ("JPEG", "MPO") and not _jpeg_complete(path):
        raise BadImage("corrupt or unreadable image (JPEG cut short: no end marker)")
    if kind in ("HEIF", "AVIF") and not _boxes_complete(path):
        raise BadImage(f"corrupt or unreadable image ({kind} cut short: its boxes run past the end of the file)")
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        # The content decides how a file is read, but split.json (read as untrusted input) only lists
        # image file names: a run must not write a split its own resume would refuse.
        raise BadImage(f"{_article(kind)} {kind} image without an image file name extension (rename it, e.g. to "
                       ".jpg or .png)")


def _rgb(img):
    """Any mode as RGB: 16-bit grey scaled (not clipped), transparency composited on :data:`ALPHA_BACKGROUND`."""
    from PIL import Image

    if img.mode.startswith("I"):
        # 16-bit grey (PNG, TIFF): Pillow's convert would clip at 255; keep the top 8 of 16 bits.
        img = Image.fromarray((np.clip(np.asarray(img).astype(np.int64), 0, 65535) >> 8).astype(np.uint8), "L")
    elif img.mode == "F":
        # 32-bit float (TIFF): Pillow's convert clips, which turns a [0, 1] image (the usual float scale) black.
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", img.size, ALPHA_BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def _upright(img):
    """``img`` turned as its EXIF Orientation says (the picture as a phone shows it).

    Pillow's ``exif_transpose`` also rewrites the EXIF of the turned copy, and that raises (TypeError,
    struct.error) on a malformed tag elsewhere in it, as photo editors and old phones write; the
    orientation is then applied without the rewrite.
    """
    from PIL import Image, ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        try:
            orientation = img.getexif().get(0x0112)
        except Exception:  # EXIF not even parseable: no orientation to apply
            return img
    turn = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}.get(orientation)
    return img.transpose(turn) if turn is not None else img


def _canvas(image, image_size, resize):
    """``(image, region)``: what the resize mode maps onto the model's input (a box on the returned image).

    stretch: the whole picture; crop: its centre at the input's aspect
    ratio; pad: the picture letterboxed on :data:`PAD_COLOUR` to that ratio.
    """
    from PIL import Image

    width, height = image.size
    aspect = image_size[1] / image_size[0]
    if resize == "stretch":
        return image, (0, 0, width, height)
    if resize == "crop":
        crop_w, crop_h = min(width, height * aspect), min(height, width / aspect)
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        return image, (left, top, left + crop_w, top + crop_h)
    pad_w, pad_h = max(width, round(height * aspect)), max(height, round(width / aspect))
    # A 1080x20000 scrolling screenshot would need a 20000x20000 canvas (1.2 GB): where padding would more than
    # quadruple the pixels, shrink by a whole factor first (Pillow's box reduce), keeping twice the input size.
    # Ordinary photos (padding adds at most 3x) keep exactly the pixels they had.
    factor = max(pad_w, pad_h) // (2 * max(image_size))
    if factor >= 2 and pad_w * pad_h > 4 * width * height:
        image = image.reduce(factor)
        width, height = image.size
        pad_w, pad_h = max(width, round(height * aspect)), max(height, round(width / aspect))
    canvas = Image.new("RGB", (pad_w, pad_h), PAD_COLOUR)
    canvas.paste(image, ((pad_w - width) // 2, (pad_h - height) // 2))
    return canvas, (0, 0, pad_w, pad_h)


def load_pixels(path, image_size, channels, resize="stretch", *, box=(0.0, 0.0, 1.0, 1.0), max_pixels=None):
    """The preprocessing contract, in one function: an image file as uint8 (H, W, C) of the model's input.

    Every path that turns a file into pixels calls this (the training
    pipeline, evaluation, int8 calibration, ``export.predict``), so they
    agree exactly. In order: open by content (:func:`open_image`, pixel
    cap); JPEGs decoded at 1/2..1/8 scale by libjpeg's DCT scaling while
    still at least twice the input size (Pillow's ``draft``); the EXIF
    orientation applied (the picture as a phone shows it); RGB with
    transparency on white; the resize mode's region (:func:`_canvas`);
    ``box`` (fractions ``y0, x0, y1, x1`` of that region: a random crop in
    training, the whole region otherwise) resized to ``image_size`` with
    Pillow's antialiased bilinear filter; grey by ITU-R 601 luma when
    ``channels`` is 1. Raises :class:`BadImage`.
    """
    from PIL import Image

    side = 2 * max(image_size)
    try:
        with open_image(path, max_pixels) as img:
            img.draft("RGB", (side, side))  # a no-op for formats other than JPEG
            upright = _rgb(_upright(img))
    except (OSError, SyntaxError, ValueError, RuntimeError) as e:  # RuntimeError: pillow-heif's missing codec
        raise BadImage(f"corrupt or unreadable image ({e})") from None
    canvas, (left, top, right, bottom) = _canvas(upright, image_size, resize)
    y0, x0, y1, x1 = (float(v) for v in box)
    region = (left + x0 * (right - left), top + y0 * (bottom - top), left + x1 * (right - left),
              top + y1 * (bottom - top))
    out = canvas.resize((int(image_size[1]), int(image_size[0])), Image.BILINEAR, box=region)
    if channels == 1:
        out = out.convert("L")
    pixels = np.asarray(out, np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def preprocessing_contract(resize):
    """The preprocessing rules as JSON-able data, for the sidecar, the TFLite metadata and ``config.json``."""
    return {"resize_mode": resize, "orientation": ORIENTATION_RULE,
            "alpha_background": list(ALPHA_BACKGROUND), "pad_colour": list(PAD_COLOUR),
            "resize_filter": "bilinear, antialiased (Pillow)"}


# -------------------------------------------------------------- tf.data


#: Marks a file that failed to decode inside tf.data (it changed after the scan), so that :func:`decode_failure`
#: finds it in the TensorFlow error that carries it.
DECODE_FAILED = "nin_keras could not decode"


def decode_failure(error):
    """The one-line reason in ``error`` (a TensorFlow error from a pipeline) if an image failed to decode, else None."""
    # TensorFlow's assertion message: "assertion failed: [<problem>]", with quotes escaped.
    found = re.search(rf"{DECODE_FAILED}: ([^\n]*?)\]?$", str(error), re.MULTILINE)
    return re.sub(r"\\(['\"\\])", r"\1", found.group(1)).strip() if found else None


def _pixels_op(path, box, image_size, channels, *, resize, max_pixels):
    """:func:`load_pixels` as a graph op (Pillow releases the GIL while it decodes and resizes, so parallel
    map calls decode in parallel)."""
    import tensorflow as tf

    def run(p, b):
        try:
            return load_pixels(os.fsdecode(p), image_size, channels, resize, box=b, max_pixels=max_pixels), b""
        except BadImage as e:  # a file changed after the scan (moved, deleted, rewritten)
            message = f"{DECODE_FAILED}: {shown_name(os.fsdecode(p))}: {e}"
            return np.zeros((*image_size, channels), np.uint8), message.encode("utf-8", "backslashreplace")

    # The failure is raised by a graph assertion, not inside the Python function: from there TensorFlow logged
    # a Python traceback per parallel call, and the error's message carried one more (decode_failure reads it).
    image, problem = tf.numpy_function(run, [path, box], (tf.uint8, tf.string), stateful=False)
    with tf.control_dependencies([tf.debugging.Assert(tf.equal(problem, b""), [problem])]):
        image = tf.identity(image)
    image.set_shape([*image_size, channels])
    return image


def decode(path, image_size, channels, resize="stretch", max_pixels=None):
    """Read and decode one image file to uint8 ``image_size`` × ``channels`` (a graph op; see :func:`load_pixels`)."""
    import tensorflow as tf

    return _pixels_op(path, tf.constant([0.0, 0.0, 1.0, 1.0]), image_size, channels, resize=resize,
                      max_pixels=max_pixels)


def _to_uint8(image):
    import tensorflow as tf

    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def decode_augmented(path, image_size, channels, seed_pair, *, resize="stretch", max_pixels=None):
    """Decode with photo augmentation: random resized crop, flip, brightness/contrast jitter.

    The crop (40–100% of the resize mode's region, aspect 3:4 to 4:3 of the
    model's input) is drawn here, seeded, and cut and resized by
    :func:`load_pixels` like every other path, so pixels are at the input
    size before any float conversion; at full size it is exactly the
    evaluation image.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed_pair, 4)
    grid = tf.constant([10 * image_size[0], 10 * image_size[1], 1], tf.int32)  # box fractions in steps of 1/10 px
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        grid, tf.zeros([0, 0, 4], tf.float32), seed=seeds[0], area_range=(0.4, 1.0),
        aspect_ratio_range=(0.75, 1.33), min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    scale = tf.cast(tf.concat([grid[:2], grid[:2]], 0), tf.float32)
    box = tf.cast(tf.concat([begin[:2], begin[:2] + size[:2]], 0), tf.float32) / scale
    image = _pixels_op(path, box, image_size, channels, resize=resize, max_pixels=max_pixels)
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    image = tf.cast(image, tf.float32)
    image = tf.image.stateless_random_brightness(image, 0.1 * 255, seeds[2])
    image = tf.image.stateless_random_contrast(image, 0.85, 1.15, seeds[3])
    return _to_uint8(image)


def image_pipeline(files, labels, shuffle=False, seed=0, augment=False):
    """An unbatched tf.data pipeline of (uint8 image, label) decoded from ``files`` in parallel.

    Shuffling acts on file names (cheap, so the whole epoch is shuffled);
    decoded images never accumulate beyond tf.data's prefetch buffers.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((files.path_bytes(), np.asarray(labels, np.int32)))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    size, channels, resize, cap = files.image_size, files.channels, files.resize, files.max_pixels
    if augment:
        # Stateless ops seeded per element by a seeded random stream: reproducible across runs.
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
        return ds.map(lambda pair, s: (decode_augmented(pair[0], size, channels, s, resize=resize, max_pixels=cap), pair[1]),
                      num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(lambda p, y: (decode(p, size, channels, resize, cap), y), num_parallel_calls=tf.data.AUTOTUNE)
