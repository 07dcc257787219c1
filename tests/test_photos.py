"""Phone photos as they really are: EXIF orientation, motion photos, every format, sub-folders, bombs.

Every file is written the way a phone or browser writes it (Pillow's Exif
API for the Orientation tag, bytes after a JPEG's end marker, CMYK, 16-bit
and palette PNGs, WebP, TIFF, HEIC when pillow-heif is installed) and the
assertions are on what the model's pipeline actually decodes.
"""

import io
import json
import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, features

from nin_keras import data
from nin_keras.data import folders
from nin_keras.errors import DataError

SIZE = (32, 32)
# What exif_transpose applies for each Orientation value; a phone stores the inverse.
_STORE = {1: None, 2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
          6: Image.ROTATE_90, 7: Image.TRANSVERSE, 8: Image.ROTATE_270}


def scene(label=0, size=(96, 128)):
    """An upright portrait picture: grey, a bright bar on the left (label 0) or right (1), a red top-left mark."""
    h, w = size
    arr = np.full((h, w, 3), 110, np.uint8)
    x0 = w // 8 if label == 0 else w - w // 8 - w // 5
    arr[h // 6 : h - h // 6, x0 : x0 + w // 5] = 245
    arr[: h // 5, : w // 4] = (230, 30, 30)
    return Image.fromarray(arr)


def expected(image, size=SIZE):
    return np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)).astype(float)


def save_turned(upright, path, orientation, **kwargs):
    """Save ``upright`` as a phone does: pixels stored turned, plus the EXIF Orientation tag that undoes it."""
    stored = upright if _STORE[orientation] is None else upright.transpose(_STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Google"  # Make
    stored.save(path, exif=exif, **kwargs)


def decoded(path, size=SIZE, channels=3, resize="stretch"):
    return folders.ImageFiles([str(path)], size, channels, resize).to_array()[0].astype(float)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_turned_jpeg_decodes_upright(tmp_path, orientation):
    path = tmp_path / f"IMG_{orientation}.jpg"
    save_turned(scene(), path, orientation, quality=95)
    assert np.abs(decoded(path) - expected(scene())).mean() < 4


def _png_16bit(path, upright):
    grey = np.asarray(upright.convert("L")).astype(np.uint16) * 257  # full 16-bit range
    Image.fromarray(grey).save(path)  # mode I;16


def _png_alpha(path, upright):
    """The scene drawn on a transparent canvas whose hidden RGB is black: composited, it must show white."""
    arr = np.asarray(upright)
    rgba = np.zeros((*arr.shape[:2], 4), np.uint8)
    rgba[8:-8, 8:-8, :3] = arr[8:-8, 8:-8]
    rgba[8:-8, 8:-8, 3] = 255
    Image.fromarray(rgba, "RGBA").save(path)
    shown = np.full_like(arr, 255)
    shown[8:-8, 8:-8] = arr[8:-8, 8:-8]
    return Image.fromarray(shown)


def _float_tiff(path, upright):
    """A 32-bit float TIFF on the [0, 1] scale, as scientific and HDR tools write (Pillow mode F)."""
    grey = np.asarray(upright.convert("L")).astype(np.float32) / 255.0
    Image.fromarray(grey, "F").save(path)
    return upright.convert("L")


def _motion_photo(path, upright):
    """A Pixel-style motion photo: a complete JPEG, then an MP4 (whose bytes include FF D9) after its end."""
    save_turned(upright, path, 6, quality=92)
    mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 40 + b"\xff\xd9\x00\x01"
    with open(path, "ab") as f:
        f.write(mp4)


def _heic(path, upright):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    upright.save(path, format="HEIF", quality=95)


def _rebrand(path, major, third_compatible=None):
    """Rewrite a file's ftyp brands in place: the major one, and the third compatible one (miaf in both
    encoders' files), as other writers fill them."""
    data = bytearray(path.read_bytes())
    assert data[4:8] == b"ftyp" and data[24:28] == b"miaf", bytes(data[:32])
    data[8:12] = major
    if third_compatible:
        data[24:28] = third_compatible
    path.write_bytes(bytes(data))


def _heic_mif1_brand(path, upright):
    """A HEIC whose ftyp leads with mif1 (heic among the compatible brands): Pillow's AVIF plugin passes it on."""
    _heic(path, upright)
    _rebrand(path, b"mif1")


def _heic_naming_avif(path, upright):
    """mif1 first and avif among the compatible brands, but HEVC inside: libavif fails with a RuntimeError,
    after which Pillow tries no other plugin; the scan tries HEIF itself."""
    _heic(path, upright)
    _rebrand(path, b"mif1", b"avif")


def _avif(path, upright):
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    save_turned(upright, path, 6, quality=95)  # Pillow writes the EXIF orientation as the container's irot/imir


def _avif_mif1_brand(path, upright):
    """A still AVIF whose ftyp leads with HEIF's generic brand mif1 (the spec allows it; avif is among the
    compatible brands): pillow-heif took it for HEIF, which its HEVC-only libheif could not decode."""
    _avif(path, upright)
    _rebrand(path, b"mif1")


KINDS = {
    "baseline.jpg": lambda p, im: save_turned(im, p, 6, quality=95),
    "progressive.jpg": lambda p, im: save_turned(im, p, 8, quality=95, progressive=True),
    "cmyk.jpg": lambda p, im: im.convert("CMYK").save(p, quality=95),
    "motion.jpg": _motion_photo,
    "sixteen.png": _png_16bit,
    "palette.png": lambda p, im: im.quantize(16).save(p),
    "alpha.png": _png_alpha,
    "first-frame.gif": lambda p, im: im.save(p, save_all=True, append_images=[Image.new("RGB", im.size, "blue")]),
    "plain.bmp": lambda p, im: im.save(p),
    "browser.webp": lambda p, im: save_turned(im, p, 6, lossless=True),
    "scan.tiff": lambda p, im: save_turned(im, p, 3),
    "float.tiff": _float_tiff,
    "iphone.heic": _heic,
    "android.avif": _avif,
    "mif1-brand.avif": _avif_mif1_brand,
    "mif1-brand.heic": _heic_mif1_brand,
    "names-avif.heic": _heic_naming_avif,
    "tiff-named.png": lambda p, im: im.save(p, format="TIFF"),  # the content decides, not the name
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_phone_and_browser_format_decodes_as_shown(tmp_path, name):
    upright = scene()
    shown = KINDS[name](tmp_path / name, upright) or upright
    if name == "sixteen.png":
        shown = shown.convert("L")
    good, _ = folders.scan(str(tmp_path), [name], [0])
    assert good == [name]  # the header scan accepts it ...
    tolerance = 12 if name in ("palette.png", "cmyk.jpg") else 5  # 16 colours; CMYK round trip
    assert np.abs(decoded(tmp_path / name) - expected(shown)).mean() < tolerance  # ... and it decodes as shown


def test_truncated_jpeg_is_still_caught_and_motion_photo_is_not(tmp_path):
    _motion_photo(tmp_path / "motion.jpg", scene())
    whole = (tmp_path / "motion.jpg").read_bytes()
    end = whole.index(b"\x00\x00\x00\x18ftypmp42")
    (tmp_path / "cut.jpg").write_bytes(whole[: end - 300])  # headers whole, image data cut
    good, _ = folders.scan(str(tmp_path), ["motion.jpg", "cut.jpg"], [0, 0], skip_bad=True, print_fn=lambda m: None)
    assert good == ["motion.jpg"]
    with pytest.raises(DataError, match=r"cut\.jpg: corrupt or unreadable image \(JPEG cut short"):
        folders.scan(str(tmp_path), ["cut.jpg"], [0])


@pytest.mark.parametrize("cut", ["half", "after its header"])
def test_a_damaged_heic_is_not_called_unsupported(tmp_path, cut):
    """With pillow-heif installed, a HEIC it could not parse was "a HEIC/HEIF image, which nin_keras cannot read
    (convert it to JPEG or PNG)", and pillow-heif's own error broke export.predict's line in two."""
    whole = tmp_path / "whole.heic"
    _heic(whole, scene())
    data_bytes = whole.read_bytes()
    path = tmp_path / "IMG_0002.HEIC"
    path.write_bytes(data_bytes[: len(data_bytes) // 2] if cut == "half" else data_bytes[:32] + bytes(64))
    for read in (folders.check_image, lambda p: folders.load_pixels(p, (32, 32), 3)):  # the scan's, predict's
        with pytest.raises(folders.BadImage) as info:
            read(str(path))
        message = str(info.value)
        assert ("corrupt or unreadable" in message or "a HEIC/HEIF image its decoder could not read (damaged"
                in message), message
        assert "cannot read (convert" not in message and "\n" not in message, message


def test_unsupported_images_are_named_as_images_not_as_other_files(tmp_path, monkeypatch):
    (tmp_path / "photo.jxl").write_bytes(b"\xff\x0a" + bytes(200))  # a JPEG XL codestream
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"photo\.jxl: a JPEG XL image, which nin_keras cannot read"):
        folders.scan(str(tmp_path), ["photo.jxl"], [0])
    notes = []
    assert folders.scan(str(tmp_path), ["notes.txt"], [0], print_fn=notes.append) == ([], [])  # left out, named
    assert notes == [f"left out 1 file(s) that are not images: {tmp_path / 'notes.txt'}"]
    # HEIC without pillow-heif: the file, the format and the install command in one line.
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    monkeypatch.setattr(folders, "_heif_opener", lambda: False)
    with pytest.raises(DataError) as info:
        folders.scan(str(tmp_path), ["IMG_0001.HEIC"], [0])
    message = str(info.value)
    assert "IMG_0001.HEIC: a HEIC/HEIF image" in message and "pip install pillow-heif" in message
    assert "\n" not in message


def _bomb_png(path, width, height):
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    raw = io.BytesIO()
    Image.new("L", (1, 1)).save(raw, "PNG")
    png = bytearray(raw.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(png[24:29])
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(png))


def test_decompression_bombs_and_the_pixel_cap_are_one_line_or_skipped(tmp_path, capsys):
    _bomb_png(tmp_path / "bomb.png", 20000, 20000)  # beyond Pillow's own limit: DecompressionBombError
    scene(size=(3000, 2000)).save(tmp_path / "big.jpg", quality=80)  # 6 MP
    with pytest.raises(DataError, match=r"bomb\.png: too large \(400,000,000 pixels; the limit is 40,000,000"):
        folders.scan(str(tmp_path), ["bomb.png"], [0])
    with pytest.raises(DataError, match=r"big\.jpg: too large \(6,000,000 pixels.*--max-image-pixels"):
        folders.scan(str(tmp_path), ["big.jpg"], [0], max_pixels=5_000_000)
    good, _ = folders.scan(str(tmp_path), ["bomb.png", "big.jpg"], [0, 1], skip_bad=True)
    assert good == ["big.jpg"] and "skipped 1 bad file(s)" in capsys.readouterr().out
    files = folders.ImageFiles([str(tmp_path / "big.jpg")], SIZE, 3, max_pixels=5_000_000)
    with pytest.raises(Exception, match="too large"):
        files.to_array()  # the pipeline keeps the cap too (a file replaced after the scan)


def test_class_folders_are_walked_with_hidden_files_and_symlink_loops_handled(tmp_path):
    for label, cls in enumerate(("left", "right")):
        for sub in ("", "2024/03", "café été"):
            os.makedirs(tmp_path / cls / sub, exist_ok=True)
            scene(label).save(tmp_path / cls / sub / "photo 1 ü.jpg")
        (tmp_path / cls / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        os.makedirs(tmp_path / cls / ".thumbnails")
        scene(label).save(tmp_path / cls / ".thumbnails" / "t.jpg")
        os.symlink("..", tmp_path / cls / "2024" / "loop")  # a symlink loop: back up to the class folder
    names, given, (paths, labels) = folders.list_folder(str(tmp_path))
    assert names == ["left", "right"] and given is None
    assert sorted(paths) == sorted(os.path.join(c, s, "photo 1 ü.jpg") if s else os.path.join(c, "photo 1 ü.jpg")
                                   for c in ("left", "right") for s in ("", "2024/03", "café été"))
    assert labels == [0] * 3 + [1] * 3
    splits = data.load_data(image_dir=str(tmp_path), image_size=SIZE, channels=3, val_fraction=0.3)
    assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == 6
    assert folders.as_array(splits.x_test).shape[1:] == (*SIZE, 3)


def test_export_predict_reads_the_photo_upright(tmp_path):
    from export.predict import load_image

    for o in (1, 6, 8):
        save_turned(scene(), tmp_path / f"o{o}.jpg", o, quality=95)
    up = load_image(str(tmp_path / "o1.jpg"), list(SIZE), "RGB").astype(float)
    for o in (6, 8):
        turned = load_image(str(tmp_path / f"o{o}.jpg"), list(SIZE), "RGB").astype(float)
        assert np.abs(turned - up).mean() < 3


def _wide_photo(path, sides=(128, 128, 128)):
    """A 240x60 landscape photo, stored turned (EXIF 6): textured, with flat-coloured side thirds unless ``sides`` is None."""
    rng = np.random.default_rng(5)
    arr = rng.integers(40, 220, (60, 240, 3)).astype(np.uint8)
    if sides is not None:
        arr[:, :90] = arr[:, 150:] = sides
    save_turned(Image.fromarray(arr), path, 6, quality=95)


def _augmented(path, mode, n=12):
    files = folders.ImageFiles([str(path)] * n, SIZE, 3, mode)
    ds = folders.image_pipeline(files, np.zeros(n, np.int32), seed=1, augment=True)
    return np.stack([x.numpy() for x, _ in ds]).astype(float)


def test_training_crops_follow_the_resize_mode(tmp_path):
    """pad: random crops of the letterboxed picture (flat bars in view); crop: never outside the centre."""
    _wide_photo(tmp_path / "textured.jpg", sides=None)
    padded = _augmented(tmp_path / "textured.jpg", "pad")
    flat_rows = (padded.std(axis=2) < 1.0).all(axis=-1).any(axis=1)  # a row of one colour: the letterbox bar
    assert flat_rows.all()
    _wide_photo(tmp_path / "wide.jpg", sides=(250, 20, 20))
    cropped = _augmented(tmp_path / "wide.jpg", "crop")
    red = (cropped[..., 0] > 200) & (cropped[..., 1] < 80) & (cropped[..., 2] < 80)
    assert red.sum() == 0  # the red side thirds are outside the centre crop the model is evaluated on


def _classifier(num_classes=3):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 5, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_one_preprocessing_contract_in_evaluation_calibration_and_export_predict(tmp_path, mode):
    from export import predict
    from export.converter import convert, sidecar, write_tflite

    _wide_photo(tmp_path / "photo.jpg")
    files = folders.ImageFiles([str(tmp_path / "photo.jpg")], SIZE, 3, mode)
    evaluation = files.to_array()  # what fit's evaluation and export's report decode
    calibration = next(iter(data.make_dataset(files, np.zeros(1, np.int32), 1)))[0].numpy()  # int8 calibration
    app = predict.load_image(str(tmp_path / "photo.jpg"), list(SIZE), "RGB", mode)[None]
    np.testing.assert_array_equal(calibration, evaluation)
    np.testing.assert_array_equal(app, evaluation)

    model = _classifier()
    keras_scores = model.predict(evaluation, verbose=0)[0]
    stretched = folders.ImageFiles(files.paths, SIZE, 3, "stretch").to_array()
    assert np.abs(model.predict(stretched, verbose=0)[0] - keras_scores).max() > 1e-3  # the mode matters

    tflite = convert(model, "float32")
    meta = sidecar("float32", tflite, ["a", "b", "c"], model, resize=mode)
    assert meta["preprocessing"]["resize_mode"] == mode and "EXIF" in meta["preprocessing"]["orientation"]
    path = write_tflite(str(tmp_path), "float32", tflite, meta)
    got = dict(predict.classify(path, [str(tmp_path / "photo.jpg")], top_k=3, print_fn=lambda m: None)
               [str(tmp_path / "photo.jpg")])
    np.testing.assert_allclose([got[c] for c in "abc"], keras_scores, atol=1e-5)


@pytest.mark.slow  # trains the photo preset (about 20 s)
def test_a_small_phone_folder_trains_a_model_that_predicts_as_well_as_it_trains(tmp_path):
    """2 x 40 phone photos (EXIF-turned, motion photos, WebP, HEIC, sub-folders): nothing skipped, and the saved
    model's test accuracy (precise BatchNorm statistics) is as good as its training accuracy."""
    from nin_keras.config import resolve_config
    from nin_keras.fit import train
    from nin_keras.phone_folder import write_phone_folder

    write_phone_folder(str(tmp_path / "photos"), per_class=40, size=(72, 96))
    settings = {"preset": "photo", "image_dir": str(tmp_path / "photos"), "image_size": 48, "epochs": 8,
                "batch_size": 16, "strategy": "one-device", "output_dir": str(tmp_path / "run"), "verbose": 0}
    metrics = train(resolve_config(settings))
    assert metrics["test_examples"] == 16  # 20% of all 80: none skipped, sub-folders included
    assert metrics["precise_bn"]["layers"] > 0
    assert metrics["test_accuracy"] >= min(0.9, metrics["train_accuracy"] - 0.1), metrics


def test_a_bomb_in_a_folder_is_one_line_from_the_cli(tmp_path, capsys):
    from nin_keras.fit import main

    for label, cls in enumerate(("bottom", "top")):
        os.makedirs(tmp_path / "photos" / cls)
        for i in range(4):
            scene(label).save(tmp_path / "photos" / cls / f"{i}.jpg")
    _bomb_png(tmp_path / "photos" / "top" / "huge.png", 30000, 30000)
    out = tmp_path / "run"
    assert main(["--preset", "tiny", "--image-dir", str(tmp_path / "photos"), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "huge.png: too large (900,000,000 pixels" in err and err.count("\n") == 1
    assert not out.exists() or os.listdir(out) == []


def test_an_image_without_an_image_file_name_is_named_so(tmp_path):
    """split.json only lists image file names, so the scan refuses what a resume would refuse, and says why."""
    scene().save(tmp_path / "IMG_0001", format="JPEG")
    with pytest.raises(DataError, match=r"IMG_0001: a JPEG image without an image file name extension"):
        folders.scan(str(tmp_path), ["IMG_0001"], [0])


# ------------------------------------------------------- folders as users really arrange them (QA round)


@pytest.mark.parametrize("name", ["still.gif", "plain.bmp", "scan.tiff", "iphone.heic"])
def test_a_cut_short_file_of_any_format_is_caught_by_the_scan_not_by_training(tmp_path, name):
    """Pillow's verify proves only PNGs complete, and the end marker JPEGs: a cut GIF, BMP, TIFF or HEIC passed
    the scan and then stopped training with a TensorFlow traceback (and a hung process). (An animated GIF cut
    in a later frame is fine: the pipeline reads the first.)"""
    {"still.gif": lambda p, im: im.save(p), **KINDS}[name](tmp_path / name, scene())
    whole = (tmp_path / name).read_bytes()
    (tmp_path / ("cut-" + name)).write_bytes(whole[: int(len(whole) * 0.9)])
    with pytest.raises(DataError, match=rf"cut-{name}: corrupt or unreadable image"):
        folders.scan(str(tmp_path), ["cut-" + name], [0])
    assert folders.scan(str(tmp_path), [name], [0])[0] == [name]  # the whole file still passes


def _gps_version_as_text(path, upright):
    """A turned JPEG (Orientation 6) whose GPS IFD writes GPSVersionID, a BYTE tag, as ASCII "2.2", as some
    editors and old phones do: Pillow's exif_transpose raises while it rewrites such EXIF."""
    stored = io.BytesIO()
    upright.transpose(Image.ROTATE_90).save(stored, "JPEG", quality=95)
    jpeg = stored.getvalue()
    gps_ifd = 8 + 2 + 12 * 2 + 4
    tiff = (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
            + struct.pack("<HHII", 0x8825, 4, 1, gps_ifd) + struct.pack("<I", 0)
            + struct.pack("<H", 1) + struct.pack("<HHI4s", 0x0000, 2, 4, b"2.2\x00") + struct.pack("<I", 0))
    app1 = b"Exif\x00\x00" + tiff
    path.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:])


def test_a_photo_with_malformed_exif_still_decodes_upright(tmp_path):
    from PIL import ImageOps

    _gps_version_as_text(tmp_path / "gps.jpg", scene())
    with Image.open(tmp_path / "gps.jpg") as img, pytest.raises(Exception):
        ImageOps.exif_transpose(img)  # the upstream failure this works around (drop the workaround once fixed)
    assert folders.scan(str(tmp_path), ["gps.jpg"], [0])[0] == ["gps.jpg"]
    assert np.abs(decoded(tmp_path / "gps.jpg") - expected(scene())).mean() < 5


def _photo_tree(root, layout):
    """``layout``: {relative folder: number of photos}; labels alternate the scene by folder name."""
    for rel, n in layout.items():
        os.makedirs(root / rel, exist_ok=True)
        for i in range(n):
            scene(int(rel.endswith("right"))).save(root / rel / f"IMG_{i:04d}.jpg")


@pytest.mark.parametrize("train, val, test", [("Train", None, "Test"), ("train", "valid", "test"),
                                              ("training_set", None, "test_set"), ("TRAIN", "Validation", "TEST")])
def test_split_folders_are_recognised_whatever_their_case_and_usual_names(tmp_path, train, val, test):
    """Capitalised "Train/Test" became two classes named Train and Test, silently."""
    layout = {f"{split}/{cls}": 3 for split in (train, val, test) if split for cls in ("left", "right")}
    _photo_tree(tmp_path, layout)
    names, given, _ = folders.list_folder(str(tmp_path))
    assert names == ["left", "right"]
    assert sorted(given) == sorted(["train", "test"] + (["val"] if val else []))
    assert all(len(paths) == 6 for paths, _ in given.values())


@pytest.mark.parametrize("layout, message", [
    ({"val/left": 2, "validation/left": 2, "train/left": 3, "train/right": 3, "test/left": 2, "test/right": 2},
     r"val/ and validation/ are both the val split"),
    ({"train/left": 3, "train/right": 3, "test/left": 2, "test/right": 2, "notes/left": 1},
     r"holds split folders \(test, train\) and other folders \(notes\)"),
    ({"train": 4, "test": 2}, r"no class folders"),
])
def test_ambiguous_split_folders_are_one_line(tmp_path, layout, message):
    """Both val/ and validation/: one was dropped without a word; images straight in train/: an IndexError."""
    _photo_tree(tmp_path, layout)
    with pytest.raises(DataError, match=message):
        folders.list_folder(str(tmp_path))


def test_image_dir_given_a_photo_says_it_wants_the_folder(tmp_path):
    scene().save(tmp_path / "photo.jpg")
    with pytest.raises(DataError, match=r"photo\.jpg: a file, not a folder \(pass the folder that holds"):
        folders.list_folder(str(tmp_path / "photo.jpg"))


@pytest.mark.parametrize("case", ["all bad", "test only"])
def test_a_class_without_a_usable_training_image_is_refused(tmp_path, case):
    """A class whose files were all skipped as bad, or that only test/ holds, got an output it never learns."""
    if case == "all bad":
        _photo_tree(tmp_path, {"a": 4, "b": 4, "c": 0})
        (tmp_path / "c" / "IMG_0001.jpg").write_bytes(b"")  # a zero-byte file, as a failed copy leaves
    else:
        _photo_tree(tmp_path, {"train/a": 4, "train/b": 4, "test/a": 2, "test/b": 2, "test/c": 2})
    with pytest.raises(DataError, match=r"class 'c' has no usable training image"):
        data.load_data(image_dir=str(tmp_path), image_size=SIZE, channels=3, val_fraction=0.25, skip_bad_images=True,
                       print_fn=lambda m: None)


def test_a_small_limit_keeps_every_class_in_training(tmp_path):
    """A --limit sample drawn without regard to class left small classes out (then refused, or never learnt)."""
    _photo_tree(tmp_path, {f"class{c}": 4 for c in range(8)})
    for seed in range(5):
        splits = data.load_data(image_dir=str(tmp_path), image_size=SIZE, channels=3, val_fraction=0.2, seed=seed,
                                limit=10)
        assert sorted(set(splits.y_train.tolist())) == list(range(8))


def test_decode_failure_reads_the_line_out_of_tensorflows_message():
    # TensorFlow escapes quotes and backslashes in an assertion's message.
    message = (r"assertion failed: [nin_keras could not decode: /photos/Sam\'s \"best\".jpg: corrupt or unreadable "
               "image ([Errno 2] No such file)]\n\t [[{{node Assert/Assert}}]]")
    assert folders.decode_failure(Exception(message)) == (
        "/photos/Sam's \"best\".jpg: corrupt or unreadable image ([Errno 2] No such file)")
    assert folders.decode_failure(Exception("some other error")) is None


def test_windows_folder_files_are_not_photos(tmp_path):
    _photo_tree(tmp_path, {"left": 2, "right": 2})
    for cls in ("left", "right"):
        (tmp_path / cls / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
        (tmp_path / cls / "desktop.ini").write_text("[.ShellClassInfo]\n")
    _photo_tree(tmp_path / "__MACOSX", {"left": 1})  # a macOS zip's resource forks: not a class
    _, _, (paths, _) = folders.list_folder(str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == ["IMG_0000.jpg"] * 2 + ["IMG_0001.jpg"] * 2


@pytest.mark.parametrize("inside", ["run", "left/run", None])
def test_a_run_folder_inside_the_image_folder_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys,
                                                                                     inside):
    """Its models and plots would be photos of a class next time (the default runs/ too, from inside the
    folder)."""
    from nin_keras.fit import main

    photos = tmp_path / "photos"
    _photo_tree(photos, {"left": 4, "right": 4})
    before = sorted(str(p.relative_to(photos)) for p in photos.rglob("*"))
    monkeypatch.chdir(photos)
    flags = ["--preset", "tiny", "--image-dir", "."] + (["--output-dir", str(photos / inside)] if inside else [])
    assert main(flags) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is inside --image-dir" in err
    assert sorted(str(p.relative_to(photos)) for p in photos.rglob("*")) == before


def test_a_letterboxed_panorama_is_shrunk_before_its_canvas_is_made(tmp_path, monkeypatch):
    """--resize pad made a canvas of the photo's long side squared: a 1080x20000 scrolling screenshot took 1.8 GB."""
    tall = Image.fromarray(np.tile(np.asarray(scene().resize((100, 75)))[:, :, :], (40, 1, 1)))  # 100 x 3000
    tall.save(tmp_path / "scroll.png")
    canvases = []
    new = Image.new
    monkeypatch.setattr(Image, "new", lambda mode, size, *a, **k: canvases.append(size) or new(mode, size, *a, **k))
    got = folders.load_pixels(str(tmp_path / "scroll.png"), SIZE, 3, "pad").astype(float)
    assert canvases and max(max(size) for size in canvases) <= 4 * max(SIZE)
    shown = Image.new("RGB", (3000, 3000), folders.PAD_COLOUR)
    shown.paste(tall, (1450, 0))
    assert np.abs(got - expected(shown)).mean() < 4  # the same letterbox as at full size


@pytest.mark.slow  # trains
def test_a_photo_deleted_during_training_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """Tidying the folder while a run trains: TensorFlow's error carried Python tracebacks (and logged one per
    parallel decode); now one line names the file and says how to go on."""
    import keras

    from nin_keras import fit

    _photo_tree(tmp_path / "photos", {"left": 12, "right": 12})

    class TidyUp(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for photo in (tmp_path / "photos" / "left").iterdir():
                photo.unlink()

    make_callbacks = fit.make_callbacks
    monkeypatch.setattr(fit, "make_callbacks", lambda *a, **k: [TidyUp(), *make_callbacks(*a, **k)])
    code = fit.main(["--preset", "photo", "--image-size", "32", "--image-dir", str(tmp_path / "photos"),
                     "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--verbose", "0",
                     "--precision", "float32"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {tmp_path / 'photos' / 'left'}") and "image (No such file or directory);" in err
    assert "the file changed after the scan" in err


@pytest.mark.slow  # trains
def test_a_folder_smaller_than_a_batch_trains_with_a_smaller_batch(tmp_path, capsys):
    """30 photos left 22 for training, fewer than the photo preset's batch of 64: the run stopped with "batch
    size 64 is larger than the 22 training examples; ... raise --limit" (no --limit had been given)."""
    from nin_keras import fit

    _photo_tree(tmp_path / "photos", {"left": 15, "right": 15})
    argv = ["--preset", "photo", "--image-size", "32", "--image-dir", str(tmp_path / "photos"),
            "--output-dir", str(tmp_path / "run"), "--epochs", "2", "--verbose", "0", "--precision", "float32"]
    assert fit.main(argv) == 0
    out = capsys.readouterr().out
    train_examples = int(re.search(r"(\d+) train, ", out).group(1))
    assert train_examples < 64
    fitting = 1 << (train_examples.bit_length() - 1)  # 16 for 22
    assert (f"global batch {fitting} (a batch of 64 is more than the {train_examples} training examples; "
            "--batch-size sets another)") in out, out
    with open(tmp_path / "run" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["batch_size"] == fitting
    assert metrics["precise_bn"]["images"] == fitting  # its batches are training's (one of 22 images before)
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["batch_size"] == 64  # the recipe asked for; the same command finds the run done
    assert fit.main(argv) == 0
    assert "already holds this finished run" in capsys.readouterr().out


def test_a_batch_larger_than_the_data_becomes_the_largest_that_fits():
    assert data.fitting_batch_size(64, 44) == 32
    assert data.fitting_batch_size(64, 64) == 64 and data.fitting_batch_size(64, 1000) == 64
    assert data.fitting_batch_size(128, 100, replicas=2) == 64
    assert data.fitting_batch_size(64, 44, replicas=3) == 24  # 3 x 8: every replica's share the same
    assert data.fitting_batch_size(64, 1) == 1
    assert data.fitting_batch_size(64, 1, replicas=2) == 64  # not one per replica: the pipeline's error says so


def test_file_names_that_are_not_utf8_decode_and_train(tmp_path):
    """A camera or an old Windows zip writes Latin-1 names: Python reads them as lone surrogates, which
    TensorFlow could not hold as a tf.string (a traceback at the first epoch, and at export's check)."""
    root = os.fsencode(tmp_path)
    for label, cls in enumerate((b"left", b"right")):
        os.makedirs(os.path.join(root, cls))
        for i in range(3):
            scene(label).save(os.path.join(root, cls, b"caf\xe9 %d.jpg" % i))
    splits = data.load_data(image_dir=str(tmp_path), image_size=SIZE, channels=3, val_fraction=0.3)
    x = folders.as_array(splits.x_train)
    assert x.shape[1:] == (*SIZE, 3) and x.std() > 0
    ds = folders.image_pipeline(splits.x_train, splits.y_train, shuffle=True, augment=True)
    assert len([image for image, _ in ds]) == len(splits.x_train)


def test_a_class_folder_name_that_is_not_utf8_is_one_line(tmp_path):
    root = os.fsencode(tmp_path)
    for label, cls in enumerate((b"caf\xe9", b"tea")):
        os.makedirs(os.path.join(root, cls))
        scene(label).save(os.path.join(root, cls, b"1.jpg"))
    with pytest.raises(DataError, match=r"class folder name 'caf\\xe9' is not UTF-8 .*rename the folder"):
        folders.list_folder(str(tmp_path))


def test_a_file_that_is_not_utf8_and_changed_after_the_scan_is_named_in_one_line(tmp_path):
    """The decode failure's message is built from the name: strict UTF-8 made it a UnicodeEncodeError."""
    gone = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg"))
    with pytest.raises(Exception) as info:
        folders.ImageFiles([gone], SIZE, 3).to_array()
    reason = folders.decode_failure(info.value)
    assert reason is not None and "caf\\xe9.jpg" in reason and "No such file" in reason, str(info.value)[-300:]
    assert "udce9" not in reason  # the name once, as ls -b shows it
