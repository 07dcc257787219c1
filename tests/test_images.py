"""Image folders: streamed RGB/grayscale decoding, splits that stay put, bad folders, a photo run."""

import json
import os

import numpy as np
import pytest

from nin_keras import data, images
from nin_keras.data import folders
from nin_keras.errors import DataError


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Tinted Fashion-MNIST "photos": 4 classes x 25, JPEG and PNG, three sizes and aspect ratios."""
    root = tmp_path_factory.mktemp("photos")
    images.write_tinted_folder(str(root), per_class=25, classes=4)
    return root


def copy_folder(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_rgb_folder_streams_into_an_rgb_pipeline(photo_dir):
    splits = data.load_data(image_dir=str(photo_dir), image_size=(32, 32), channels=3, val_fraction=0.2)
    assert splits.class_names == ["dress", "pullover", "t-shirt-top", "trouser"]  # sorted folder names
    assert splits.input_shape == [32, 32, 3] and isinstance(splits.x_train, folders.ImageFiles)
    assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == 100
    ds = data.make_dataset(splits.x_train, splits.y_train, 8, drop_remainder=True)
    spec = ds.element_spec
    assert spec[0].shape.as_list() == [8, 32, 32, 3] and spec[0].dtype.name == "uint8"
    assert spec[1].shape.as_list() == [8] and spec[1].dtype.name == "int32"
    batch, labels = next(iter(ds))
    assert batch.shape == (8, 32, 32, 3) and labels.shape == (8,)
    # The tints survive: trouser images (green tint) are greener than red-tinted T-shirts. Over the
    # whole training split (the first batch may hold a single class), so the check always runs.
    pixels = folders.as_array(splits.x_train).astype(float)
    green = pixels[..., 1].mean((1, 2)) - pixels[..., 0].mean((1, 2))
    labels = np.asarray(splits.y_train)
    assert (labels == 3).sum() >= 5 and (labels == 2).sum() >= 5
    assert green[labels == 3].mean() > green[labels == 2].mean() + 20


def test_grayscale_model_reads_an_rgb_folder_as_grayscale(photo_dir):
    splits = data.load_data(image_dir=str(photo_dir), image_size=(28, 28), channels=1)
    array = folders.as_array(splits.x_test)
    assert array.shape == (len(splits.x_test), 28, 28, 1) and array.dtype == np.uint8 and array.max() > 0


@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
def test_resize_modes_give_the_model_size(photo_dir, mode):
    files = folders.ImageFiles([str(p) for p in sorted((photo_dir / "trouser").iterdir())[:3]], (20, 30), 3, mode)
    array = files.to_array()
    assert array.shape == (3, 20, 30, 3)
    if mode == "pad":  # a 40x40 image letterboxed into 20x30 has black side bars
        assert array[0, :, :3].max() == 0 and array[0, :, 12:18].max() > 0


def test_photo_augmentation_keeps_shape_and_changes_pixels(photo_dir):
    splits = data.load_data(image_dir=str(photo_dir), image_size=(32, 32), channels=3)
    plain = next(iter(data.make_dataset(splits.x_train, splits.y_train, 16)))[0].numpy()
    augmented = next(iter(data.make_dataset(splits.x_train, splits.y_train, 16, augment=True)))[0].numpy()
    assert augmented.shape == plain.shape and augmented.dtype == np.uint8
    assert np.abs(augmented.astype(int) - plain.astype(int)).mean() > 1


def test_stratified_split_is_seeded_and_keeps_every_class(photo_dir):
    a = data.load_data(image_dir=str(photo_dir), image_size=(16, 16), channels=3, seed=3)
    b = data.load_data(image_dir=str(photo_dir), image_size=(16, 16), channels=3, seed=3)
    assert a.split_record == b.split_record
    for y in (a.y_train, a.y_val, a.y_test):
        assert sorted(set(y.tolist())) == [0, 1, 2, 3]
    names = [set(p for p, _ in a.split_record[s]) for s in folders.SPLIT_NAMES]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_a_folder_with_train_and_test_subfolders_is_used_as_given(tmp_path, photo_dir):
    root = tmp_path / "given"
    for split, keep in (("train", slice(0, 8)), ("test", slice(8, 12))):
        for cls in ("trouser", "dress"):
            os.makedirs(root / split / cls)
            for f in sorted((photo_dir / cls).iterdir())[keep]:
                (root / split / cls / f.name).write_bytes(f.read_bytes())
    splits = data.load_data(image_dir=str(root), image_size=(16, 16), channels=3, val_fraction=0.25)
    assert splits.class_names == ["dress", "trouser"]
    assert len(splits.x_test) == 8 and all("/test/" in p for p in splits.x_test.paths)
    assert len(splits.x_train) + len(splits.x_val) == 16 and all("/train/" in p for p in splits.x_val.paths)


def test_split_file_is_read_back_instead_of_resplitting(tmp_path, photo_dir):
    first = data.load_data(image_dir=str(photo_dir), image_size=(16, 16), channels=3, seed=1)
    path = tmp_path / "split.json"
    folders.write_split(str(path), first.split_record)
    again = data.load_data(image_dir=str(photo_dir), image_size=(16, 16), channels=3, seed=99, split_file=str(path))
    assert list(again.x_test.paths) == list(first.x_test.paths)  # another seed, same split: the file wins
    record = json.loads(path.read_text())
    record["test"][0][0] = "dress/missing.jpg"
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match="lists dress/missing.jpg \\(test\\), which is no longer in"):
        data.load_data(image_dir=str(photo_dir), image_size=(16, 16), channels=3, split_file=str(path))


def _break(root, problem):
    if problem == "corrupt":
        (root / "dress" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif problem == "cut jpeg":
        jpeg = root / "dress" / "00000.jpg"
        jpeg.write_bytes(jpeg.read_bytes()[:-200])
    elif problem == "not an image":
        (root / "dress" / "notes.txt").write_text("hello")
    elif problem == "empty class":
        os.makedirs(root / "empty")
    elif problem == "one class":
        import shutil

        for cls in ("t-shirt-top", "trouser", "pullover"):  # leaves "dress"
            shutil.rmtree(root / cls)
    elif problem == "no class folders":
        import shutil

        for cls in os.listdir(root):
            shutil.rmtree(root / cls)
        (root / "a.png").write_bytes(b"")


@pytest.mark.parametrize("problem, message", [
    ("corrupt", "00001.png: corrupt or unreadable image"),
    ("cut jpeg", "00000.jpg: corrupt or unreadable image (JPEG cut short"),
    ("empty class", "empty: empty class folder"),
    ("one class", "only one class folder ('dress')"),
    ("no class folders", "no class folders"),
])
def test_bad_folders_are_one_line_and_the_run_writes_nothing(tmp_path, photo_dir, capsys, problem, message):
    from nin_keras.fit import main

    root = copy_folder(photo_dir, tmp_path / "photos")
    _break(root, problem)
    out = tmp_path / "run"
    assert main(["--preset", "tiny", "--image-dir", str(root), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists() or os.listdir(out) == []


def test_a_zip_unpacked_into_a_folder_of_its_own_is_pointed_at_its_real_root(tmp_path, photo_dir, capsys):
    """Kaggle's and Takeout's zips unpack to DATASET/DATASET/<classes>: the error names the folder to pass."""
    from nin_keras.fit import main

    outer = tmp_path / "fashion-photos"
    copy_folder(photo_dir, outer / "fashion-photos")
    assert main(["--preset", "tiny", "--image-dir", str(outer), "--output-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only one class folder ('fashion-photos')" in err
    assert f"did you mean --image-dir {outer / 'fashion-photos'}?" in err


def test_a_class_folder_name_with_a_line_break_is_refused_before_training(tmp_path, photo_dir, capsys):
    """labels.txt holds one name per line: such a run trained for an hour and then could not be exported."""
    from nin_keras.fit import main

    root = copy_folder(photo_dir, tmp_path / "photos")
    os.rename(root / "dress", root / "summer\ndress")
    assert main(["--preset", "tiny", "--image-dir", str(root), "--output-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the class folder name 'summer\\ndress' holds a line break" in err, err


def test_skip_bad_images_counts_and_skips(tmp_path, photo_dir, capsys):
    root = copy_folder(photo_dir, tmp_path / "photos")
    _break(root, "corrupt")
    _break(root, "not an image")
    splits = data.load_data(image_dir=str(root), image_size=(16, 16), channels=3, skip_bad_images=True)
    out = capsys.readouterr().out
    assert "skipped 1 bad file(s): " in out and "00001.png (the first: corrupt or unreadable image" in out
    assert f"left out 1 file(s) that are not images: {root / 'dress' / 'notes.txt'}" in out
    assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == 100 - 1


# What a phone, a Mac or a Takeout writes beside the photos: a Live Photo's video, a Photos edit, a Takeout
# sidecar, a note. Each was a "bad file" that stopped the run (or needed --skip-bad-images).
COMPANIONS = {
    "IMG_0001.MOV": b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  \x00\x00\x00\x08wide" + bytes(200),
    "IMG_0001.AAE": (b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" '
                     b'"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n<plist version="1.0"><dict>'
                     b'<key>adjustmentFormatIdentifier</key><string>com.apple.photo</string></dict></plist>\n'),
    "00000.jpg.json": b'{"title": "00000.jpg", "photoTakenTime": {"timestamp": "1700000000"}}',
    "notes.txt": b"the blue ones are from the shop",
}


def test_videos_sidecars_and_notes_beside_the_photos_are_left_out_and_named(tmp_path, photo_dir, capsys):
    root = copy_folder(photo_dir, tmp_path / "photos")
    for name, content in COMPANIONS.items():
        (root / "dress" / name).write_bytes(content)
    splits = data.load_data(image_dir=str(root), image_size=(16, 16), channels=3)
    assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == 100  # every photo, nothing else
    out = capsys.readouterr().out
    dress = root / "dress"
    assert (f"left out 4 file(s) that are not images: {dress / '00000.jpg.json'}, {dress / 'IMG_0001.AAE'}, "
            f"{dress / 'IMG_0001.MOV'} and 1 more") in out, out
    # Asked for by name, it is still an error: a model cannot classify a video.
    with pytest.raises(folders.BadImage, match="not an image file"):
        folders.check_image(str(root / "dress" / "IMG_0001.MOV"))


@pytest.mark.parametrize("name, content, named", [
    ("frame.ppm", b"P6\n4 4\n255\n" + bytes(48), "a PPM image, which nin_keras cannot read"),
    ("sign.tga", None, "a TGA image, which nin_keras cannot read"),
    ("IMG_0002", b"\x00\x00\x00\x18ftypcrx " + bytes(200), "not an image file"),  # a Canon CR3, no extension
], ids=["ppm", "tga", "cr3 without extension"])
def test_an_image_in_a_format_not_read_here_stops_the_run_named(tmp_path, photo_dir, name, content, named):
    """Only videos, sidecars and documents are left out: an image nin_keras cannot read must not vanish from the
    data (a first version dropped PPM, TGA and extensionless files as "not images")."""
    from PIL import Image

    root = copy_folder(photo_dir, tmp_path / "photos")
    if content is None:
        Image.new("RGB", (4, 4), (200, 10, 10)).save(root / "dress" / name, format="TGA")
    else:
        (root / "dress" / name).write_bytes(content)
    with pytest.raises(DataError, match=f"{name}: {named}"):
        data.load_data(image_dir=str(root), image_size=(16, 16), channels=3)


def test_every_bad_file_is_counted_and_the_first_few_named(tmp_path, photo_dir, capsys):
    root = copy_folder(photo_dir, tmp_path / "photos")
    for i in range(5):
        (root / "dress" / f"0000{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    with pytest.raises(DataError) as info:
        data.load_data(image_dir=str(root), image_size=(16, 16), channels=3)
    message = str(info.value)
    assert message.startswith(f"{root / 'dress' / '00000.jpg'}: corrupt or unreadable image")
    assert (f"; 4 more bad file(s): {root / 'dress' / '00001.jpg'}, {root / 'dress' / '00002.jpg'}, "
            f"{root / 'dress' / '00003.jpg'} and 1 more; fix or remove them, or pass --skip-bad-images") in message
    assert "\n" not in message


@pytest.mark.slow  # trains the photo preset
def test_photo_run_beats_chance_writes_its_split_and_resume_reuses_it(tmp_path, photo_dir):
    """The photo preset (at 48 px to stay quick) on the generated folder; the split file is written once."""
    from nin_keras.config import resolve_config
    from nin_keras.fit import train

    out = tmp_path / "run"
    settings = {"preset": "photo", "image_dir": str(photo_dir), "image_size": 48, "epochs": 6, "batch_size": 8, "strategy": "one-device",
                "output_dir": str(out), "verbose": 0}
    metrics = train(resolve_config(settings))
    split = json.loads((out / "split.json").read_text())
    assert split["classes"] == ["dress", "pullover", "t-shirt-top", "trouser"]
    assert metrics["test_examples"] == len(split["test"])
    assert metrics["test_accuracy"] >= 0.6  # chance is 0.25
    per_class = json.loads((out / "per_class.json").read_text())
    assert per_class["classes"] == split["classes"]

    # A resumed run reads the file back: with another seed (and --resume) the images are not re-split.
    # (fit's first two stages are what a resume runs before training.)
    from nin_keras.distribute import make_strategy
    from nin_keras.fit import load_run_data, open_run

    os.remove(out / "metrics.json")
    cfg = resolve_config({**settings, "seed": 5})
    run = open_run(cfg, make_strategy("one-device"), resume=True, overwrite=False)
    assert run.state == "resume"
    load_run_data(run)
    assert sorted(run.splits.x_test.paths) == sorted(str(photo_dir / p) for p, _ in split["test"])
    fresh = data.load_data(image_dir=str(photo_dir), image_size=(48, 48), channels=3, seed=5)
    assert sorted(fresh.x_test.paths) != sorted(run.splits.x_test.paths)  # what re-splitting would have given


def _rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_streaming_memory_stays_bounded_over_a_folder_bigger_than_its_buffers(tmp_path):
    """1,500 images decoded at 160x160 RGB are 110 MiB; an epoch through the pipeline grows RSS by far less."""
    root = tmp_path / "many"
    images.write_tinted_folder(str(root), per_class=375, classes=4, sizes=((40, 40),))
    splits = data.load_data(image_dir=str(root), image_size=(160, 160), channels=3, val_fraction=0.05)
    decoded_mib = len(splits.x_train) * 160 * 160 * 3 / 2**20
    ds = data.make_train_dataset(splits.x_train, splits.y_train, 32, augment=True)[0]
    iterator = iter(ds)
    next(iterator)  # the pipeline's threads and buffers exist from here on
    start = peak = _rss_mib()
    for _batch in iterator:
        peak = max(peak, _rss_mib())
    assert decoded_mib > 80
    print(f"decoded {decoded_mib:.0f} MiB, RSS growth {peak - start:.1f} MiB")
    assert peak - start < decoded_mib / 3, (start, peak, decoded_mib)


def test_limit_samples_every_class_not_the_first_folders(photo_dir):
    splits = data.load_data(image_dir=str(photo_dir), image_size=(16, 16), channels=3, limit=30, val_fraction=0.2)
    assert len(splits.x_train) + len(splits.x_val) == 30
    assert len(set(splits.y_train.tolist())) == 4
