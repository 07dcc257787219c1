import gzip
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nin_keras import data
from nin_keras.errors import DataError


def write_idx(path, array, magic=None, compress=False, trailing=b"", cut=0):
    array = np.asarray(array, np.uint8)
    magic = magic if magic is not None else 0x0800 | array.ndim
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes() + trailing
    raw = raw[: len(raw) - cut] if cut else raw
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)
    return str(path)


def make_idx_dir(root, n_train=6, n_test=4, label_max=9, n_train_labels=None):
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(root / "train-labels-idx1-ubyte", rng.integers(0, label_max + 1, (n_train_labels or n_train,)))
    write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)), compress=True)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, (n_test,)), compress=True)
    return str(root)


def test_real_fashion_mnist_counts_dtypes_and_labels(fashion_dir):
    for split, count in (("train", 60000), ("test", 10000)):
        x, y = data.load_idx_split(fashion_dir, split)
        assert x.shape == (count, 28, 28, 1) and x.dtype == np.uint8
        assert y.shape == (count,) and y.dtype == np.int32
        assert sorted(np.unique(y).tolist()) == list(range(10))
        assert np.bincount(y).min() == count // 10  # Fashion-MNIST is balanced
        assert 0 < x.mean() < 255


def test_gzip_and_raw_files_read_the_same(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    a = data.read_idx(write_idx(tmp_path / "a", arr))
    b = data.read_idx(write_idx(tmp_path / "b.gz", arr, compress=True))
    np.testing.assert_array_equal(a, arr)
    np.testing.assert_array_equal(b, arr)


@pytest.mark.parametrize(
    "kwargs, expected_magic, message",
    [
        ({"magic": 0x0D03}, None, "bad IDX magic number"),
        ({"magic": 2049}, 2051, "magic number 2049, expected 2051"),
        ({"cut": 5}, None, "truncated"),
        ({"trailing": b"xx"}, None, "trailing bytes"),
    ],
)
def test_corrupt_idx_files_name_the_file_and_problem(tmp_path, kwargs, expected_magic, message):
    path = write_idx(tmp_path / "bad", np.zeros((3, 2, 2)), **kwargs)
    with pytest.raises(DataError, match=message) as info:
        data.read_idx(path, expected_magic)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_gzip_stream(tmp_path):
    path = tmp_path / "broken.gz"
    # A valid header, so the reader gets past it (it is checked first) into the cut-off stream.
    path.write_bytes(gzip.compress(struct.pack(">iiii", 0x0803, 3, 4, 5) + bytes(range(60)))[:30])
    with pytest.raises(DataError, match="cannot read or decompress"):
        data.read_idx(path)


def test_mismatched_image_and_label_counts(tmp_path):
    root = make_idx_dir(tmp_path / "d", n_train=6, n_train_labels=5)
    with pytest.raises(DataError, match="6 images but .* has 5 labels"):
        data.load_idx_split(root, "train")


def test_labels_out_of_range(tmp_path):
    root = make_idx_dir(tmp_path / "d", label_max=200)
    with pytest.raises(DataError, match=r"out of range for 10 classes"):
        data.load_idx_split(root, "train")


def test_missing_file_in_folder(tmp_path):
    root = make_idx_dir(tmp_path / "d")
    os.remove(os.path.join(root, "train-labels-idx1-ubyte"))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*not found"):
        data.load_idx_split(root, "train")


def test_data_dir_search_order(tmp_path, monkeypatch):
    env_dir = make_idx_dir(tmp_path / "env")
    monkeypatch.setenv(data.ENV_DATA_DIR, env_dir)
    assert data.find_fashion_mnist_dir(str(tmp_path)) == str(tmp_path)  # the flag wins
    assert data.find_fashion_mnist_dir() == env_dir  # then the environment


def test_nothing_found_lists_paths_and_apt_hint(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setattr(data.idx, "DEBIAN_DATA_DIR", str(tmp_path / "nope"))  # where find_fashion_mnist_dir reads it
    with pytest.raises(DataError) as info:
        data.find_fashion_mnist_dir()
    message = str(info.value)
    assert str(tmp_path / "nope") in message and "apt-get install -y dataset-fashion-mnist" in message
    with pytest.raises(DataError, match="--data-dir /does/not/exist: no such directory"):
        data.find_fashion_mnist_dir("/does/not/exist")


def test_load_data_splits_validation_and_limits(tmp_path):
    root = make_idx_dir(tmp_path / "d", n_train=24, n_test=4)
    splits = data.load_data(data_dir=root, val_fraction=0.25, limit=20, test_limit=3)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (15, 5, 3)
    assert splits.input_shape == [28, 28, 1] and len(splits.class_names) == 10
    # 1/120 of 20 images rounds to 0: one is still held out.
    splits = data.load_data(data_dir=root, val_fraction=1 / 120, limit=20)
    assert (len(splits.x_train), len(splits.x_val)) == (19, 1)


def test_pipeline_element_spec_and_global_batch():
    x = np.zeros((100, 28, 28, 1), np.uint8)
    y = np.arange(100, dtype=np.int32) % 10
    ds = data.make_dataset(x, y, batch_size=32, shuffle=True, seed=1)
    images, labels = ds.element_spec
    assert images.shape.as_list() == [None, 28, 28, 1] and images.dtype.name == "uint8"
    assert labels.shape.as_list() == [None] and labels.dtype.name == "int32"
    batches = list(ds)
    assert [int(b[0].shape[0]) for b in batches] == [32, 32, 32, 4]
    # Seeded shuffle: each epoch is a permutation, and the same seed gives the same first epoch.
    first = np.concatenate([b[1].numpy() for b in batches])
    again = np.concatenate([b[1].numpy() for b in data.make_dataset(x, y, 32, shuffle=True, seed=1)])
    assert sorted(first.tolist()) == sorted(y.tolist()) and not np.array_equal(first, y)
    np.testing.assert_array_equal(first, again)


def test_augmentation_keeps_spec_and_changes_pixels():
    x = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
    y = np.zeros(64, np.int32)
    ds, steps = data.make_train_dataset(x, y, 32, seed=3, augment=True)
    assert steps == 2 and ds.element_spec[0].shape.as_list() == [32, 28, 28, 1]
    assert ds.element_spec[0].dtype.name == "uint8"
    seen = np.concatenate([b[0].numpy() for b in ds])
    assert seen.shape == x.shape and not any(np.array_equal(seen[i], x[i]) for i in range(8))


def test_random_erasing_replaces_one_rectangle_of_the_right_size_and_is_seeded():
    import tensorflow as tf

    from nin_keras.data.pipeline import erase_rectangle

    image = tf.constant(np.full((28, 28, 1), 7, np.uint8))  # no noise pixel can be told apart from 7 by chance...
    shares = []
    for i in range(200):
        erased = erase_rectangle(image, tf.constant([i, 3], tf.int64), 1.0).numpy()[:, :, 0]
        changed = np.argwhere(erased != 7)  # ...except the 1/256 of noise pixels that happen to be 7
        rows, cols = np.flatnonzero((erased != 7).any(axis=1)), np.flatnonzero((erased != 7).any(axis=0))
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert len(changed) >= 0.9 * box  # one filled rectangle, not scattered pixels
        shares.append(box / 784)
        again = erase_rectangle(image, tf.constant([i, 3], tf.int64), 1.0).numpy()[:, :, 0]
        np.testing.assert_array_equal(erased, again)  # stateless: the seed decides
    # The paper's 2-40% of the image (written out, not read from the code under test), give or take the
    # rounding to whole pixels and the clipping to the frame.
    assert min(shares) >= 0.01 and max(shares) <= 0.5
    assert np.mean(shares) == pytest.approx(0.21, abs=0.04)
    never = [erase_rectangle(image, tf.constant([i, 3], tf.int64), 0.0).numpy() for i in range(20)]
    assert all((n == 7).all() for n in never)
    half = sum(bool((erase_rectangle(image, tf.constant([i, 9], tf.int64), 0.5).numpy() != 7).any())
               for i in range(400))
    assert 150 < half < 250


def test_random_erasing_in_the_training_pipeline_keeps_flips_and_shifts_as_they_were():
    """Erasing without --augment erases only; with it, the flips and shifts are those of a run without erasing."""
    x = np.full((64, 28, 28, 1), 7, np.uint8)
    x[:, :, :14] = 200  # left half bright: a flip shows
    y = np.zeros(64, np.int32)
    erased_only = np.concatenate([b[0].numpy() for b in data.make_train_dataset(x, y, 32, random_erasing=1.0)[0]])
    assert all(((erased_only[i] != 7) & (erased_only[i] != 200)).any() for i in range(64))
    assert ((erased_only == 7) | (erased_only == 200)).mean() > 0.5  # no flip or shift moved the halves
    assert (erased_only[:, :, 20:] == 7).mean() > 0.7 and (erased_only[:, :, :8] == 200).mean() > 0.7
    plain = np.concatenate([b[0].numpy() for b in data.make_train_dataset(x, y, 32, seed=5, augment=True)[0]])
    both = np.concatenate([b[0].numpy() for b in data.make_train_dataset(x, y, 32, seed=5, augment=True,
                                                                       random_erasing=1.0)[0]])
    same = (plain == both).reshape(64, -1).mean(axis=1)
    assert same.min() > 0.55 and same.max() < 1  # each differs by its rectangle only (at most 40%)
    for differs in (plain != both)[..., 0]:  # ...and what differs fills one rectangle (a moved half would not)
        rows, cols = np.nonzero(differs.any(axis=1))[0], np.nonzero(differs.any(axis=0))[0]
        box = differs[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.mean() > 0.9, box.astype(int)
    again = np.concatenate([b[0].numpy() for b in data.make_train_dataset(x, y, 32, seed=5, augment=True,
                                                                        random_erasing=1.0)[0]])
    np.testing.assert_array_equal(both, again)  # the run's seed decides every rectangle


def test_train_dataset_rejects_batch_larger_than_data():
    with pytest.raises(DataError, match="batch size 64 is larger than the 10 training examples"):
        data.make_train_dataset(np.zeros((10, 28, 28, 1), np.uint8), np.zeros(10, np.int32), 64)


# ------------------------------------------------------------------ image folder


def write_png(path, value=128, size=(28, 28)):
    from PIL import Image

    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def make_image_dir(root, classes=("cat", "dog"), per_class=5):
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            write_png(root / name / f"{i}.png", value=40 + 150 * c + i)
    return root


def test_image_folder_loads_with_class_names(tmp_path):
    root = make_image_dir(tmp_path / "imgs")
    splits = data.load_data(image_dir=str(root), image_size=(28, 28), val_fraction=0.25)
    x = np.concatenate([data.as_array(s) for s in (splits.x_train, splits.x_val, splits.x_test)])
    y = np.concatenate([splits.y_train, splits.y_val, splits.y_test])
    assert splits.class_names == ["cat", "dog"] and x.shape == (10, 28, 28, 1) and x.dtype == np.uint8
    assert sorted(y.tolist()) == [0] * 5 + [1] * 5
    assert x[y == 1].mean() > x[y == 0].mean()


# --------------------------------------------------------------- property-based


# A valid IDX file (3 images of 4x5) to mutate: magic, dims and body.
VALID_IDX = struct.pack(">iiii", 0x0803, 3, 4, 5) + bytes(range(60))


def _mutate(edits, cut):
    blob = bytearray(VALID_IDX)
    for position, value in edits:
        blob[position % len(blob)] = value
    return bytes(blob[: len(blob) - cut])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda dims, body: struct.pack(">i", 0x0800 | len(dims)) + struct.pack(f">{len(dims)}i", *dims) + body,
              st.lists(st.integers(-5, 6), min_size=1, max_size=3), st.binary(max_size=80)),
    # Headers whose dimensions are huge, negative or overflow when multiplied.
    st.builds(lambda dims: struct.pack(">i", 0x0800 | len(dims)) + struct.pack(f">{len(dims)}i", *dims),
              st.lists(st.integers(-2**31, 2**31 - 1), min_size=1, max_size=4)),
    # A valid file with a few bytes changed (magic, dtype code, dims or body) and/or cut short.
    st.builds(_mutate, st.lists(st.tuples(st.integers(0, len(VALID_IDX) - 1), st.integers(0, 255)), max_size=4),
              st.integers(0, 20)),
))
def test_idx_reader_only_raises_its_own_error(tmp_path, blob):
    path = tmp_path / "fuzz"
    for payload in (blob, gzip.compress(blob), gzip.compress(blob)[: max(2, len(blob) // 2)]):
        path.write_bytes(payload)
        try:
            arr = data.read_idx(path)
        except DataError:
            continue
        assert arr.dtype == np.uint8 and arr.size == len(gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload) - 4 - 4 * arr.ndim


def test_tfds_source_without_the_package_or_dataset_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import tensorflow_datasets -> ImportError
    with pytest.raises(DataError, match="--tfds needs tensorflow-datasets: pip install"):
        data.load_data(tfds_name="mnist")


def test_image_folder_follows_the_models_colour_mode(tmp_path):
    root = make_image_dir(tmp_path / "imgs")
    splits = data.load_data(image_dir=str(root), image_size=(16, 16), channels=3, val_fraction=0.25)
    assert splits.input_shape == [16, 16, 3]
    with pytest.raises(DataError, match="5 input channels"):
        data.load_data(image_dir=str(root), channels=5)


def test_a_preset_is_not_silently_rebuilt_for_other_data(capsys, monkeypatch, tmp_path):
    from nin_keras import fit

    monkeypatch.chdir(tmp_path)  # the default output folder is runs/ under the working directory
    code = fit.main(["--preset", "paper-cifar", "--epochs", "1", "--limit", "500"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "preset 'paper-cifar' takes 32x32x3 images but the data has 28x28x1" in err


def test_idx_header_whose_size_overflows_int64_is_reported_exactly(tmp_path):
    import struct

    path = tmp_path / "forged.idx"
    path.write_bytes(struct.pack(">iiii", 2051, 2**31 - 1, 2**31 - 1, 2**31 - 1))
    with pytest.raises(DataError, match=f"announces {(2**31 - 1) ** 3} bytes"):
        data.read_idx(str(path))


def test_in_memory_pipelines_run_without_the_autotuner_and_image_folders_keep_it(tmp_path):
    """tf.data's autotuning thread made every epoch end wait (13 s epochs took 20 s): off over arrays."""
    from PIL import Image

    from nin_keras.data import make_dataset, make_train_dataset
    from nin_keras.data.folders import ImageFiles

    x, y = np.zeros((64, 28, 28, 1), np.uint8), np.arange(64) % 10
    train, _ = make_train_dataset(x, y, 16, augment=True)
    for ds in (train, make_dataset(x, y, 16)):
        assert ds.options().autotune.enabled is False
    Image.new("RGB", (12, 12), (200, 10, 10)).save(tmp_path / "1.png")
    files = ImageFiles([str(tmp_path / "1.png")] * 4, (8, 8), 3)
    assert make_dataset(files, np.zeros(4, np.int32), 2).options().autotune.enabled is not False
