"""Files and networks nin_keras does not control (issue 29): run folders, sidecars, IDX bombs, odd inputs."""

import json
import os

import pytest

from nin_keras import data, images
from nin_keras.data import folders
from nin_keras.errors import DataError, NinError


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Tinted Fashion-MNIST "photos": 2 classes x 10, JPEG and PNG of mixed sizes."""
    root = tmp_path_factory.mktemp("photos")
    images.write_tinted_folder(str(root), per_class=10, classes=2)
    return root


def _split_file(tmp_path, photo_dir):
    """A genuine split file of ``photo_dir`` written the way a run writes it; returns (path, record)."""
    first = data.load_data(image_dir=str(photo_dir), image_size=(16, 16), channels=3, seed=1)
    path = tmp_path / "run" / "split.json"
    folders.write_split(str(path), first.split_record)
    return path, json.loads(path.read_text())


def _load(photo_dir, path):
    return data.load_data(image_dir=str(photo_dir), image_size=(16, 16), channels=3, split_file=str(path))


@pytest.mark.parametrize("entry, message", [
    (["../../../etc/passwd", 0], r"test\[0\]: path leaves the image folder \('..'\).*Received: \['../../../etc/passwd'"),
    (["/etc/hostname", 0], r"test\[0\]: absolute path outside the image folder.*Received: \['/etc/hostname'"),
    (["trouser/../../secret.png", 0], r"test\[0\]: path leaves the image folder"),
    (["trouser/00000.jpg", 7], r"test\[0\]: label must be an integer 0..1 \(2 classes\).*Received: \['trouser/00000.jpg', 7\]"),
    (["trouser/00000.jpg", -3], r"test\[0\]: label must be an integer 0..1"),
    (["trouser/00000.jpg", True], r"test\[0\]: label must be an integer"),
    (["trouser/notes.txt", 0], r"test\[0\]: not an image file name"),
    ("trouser/00000.jpg", r"test\[0\]: expected \[relative path, label\]"),
])
def test_a_crafted_split_file_is_refused_in_one_line(tmp_path, photo_dir, entry, message):
    path, record = _split_file(tmp_path, photo_dir)
    record["test"][0] = entry
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=message) as info:
        _load(photo_dir, path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_symlink_out_of_the_image_folder_is_refused(tmp_path, photo_dir):
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(photo_dir, folder)
    outside = tmp_path / "private.png"
    shutil.copy(next((folder / "trouser").glob("*.png")), outside)
    path, record = _split_file(tmp_path, folder)
    # Planted after the split was made (a fresh scan refuses such a link too: see the linked-out class test).
    os.symlink(outside, folder / "trouser" / "zz-link.png")
    record["train"][0] = ["trouser/zz-link.png", 1]
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=r"train\[0\]: path leads out of the image folder through a symbolic link"):
        _load(folder, path)


def test_split_file_classes_and_listed_files_are_checked(tmp_path, photo_dir):
    path, record = _split_file(tmp_path, photo_dir)
    path.write_text(json.dumps({**record, "classes": ["trouser"]}))
    with pytest.raises(DataError, match="field 'classes' must list at least two distinct class names"):
        _load(photo_dir, path)
    # A listed file that is no image any more is header-scanned like a fresh folder's (not a crash mid-run).
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(photo_dir, folder)
    path, record = _split_file(tmp_path / "second", folder)
    rel = record["val"][0][0]
    (folder / rel).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="corrupt or unreadable image"):
        _load(folder, path)


def test_split_file_stores_no_absolute_path_and_old_absolute_entries_still_load(tmp_path, photo_dir):
    path, record = _split_file(tmp_path, photo_dir)
    text = path.read_text()
    assert str(photo_dir) not in text and not os.path.isabs(record["image_dir"])
    assert os.path.realpath(path.parent / record["image_dir"]) == os.path.realpath(photo_dir)
    first = _load(photo_dir, path)
    # Split files of older versions may name files by absolute path: accepted when inside the folder.
    record["test"] = [[str(photo_dir / p), y] for p, y in record["test"]]
    path.write_text(json.dumps(record))
    again = _load(photo_dir, path)
    assert list(again.x_test.paths) == list(first.x_test.paths)


def _image_run(tmp_path, classes_in_model):
    """An image-folder run folder (3-class split.json) holding an untrained tiny model with ``classes_in_model`` outputs."""
    from helpers import build_preset

    folder = tmp_path / "photos"
    images.write_tinted_folder(str(folder), per_class=6, classes=3)
    run = tmp_path / "run"
    trained = data.load_data(image_dir=str(folder), image_size=(16, 16), channels=3, seed=4)
    folders.write_split(str(run / "split.json"), trained.split_record)
    (run / "config.json").write_text(json.dumps({"format": "nin_keras.run", "format_version": 1, "seed": 4,
                                                 "val_fraction": 0.1, "limit": None, "data_dir": None,
                                                 "image_dir": str(folder), "tfds": None}))
    build_preset("tiny", input_shape=[16, 16, 3], num_classes=classes_in_model).save(run / "model.keras")
    return run


def test_export_refuses_a_split_whose_classes_do_not_match_the_model(tmp_path, capsys):
    from export import exporter

    run = _image_run(tmp_path, classes_in_model=2)
    assert exporter.main([str(run / "model.keras"), "--format", "float32"]) == 1
    err = capsys.readouterr().err
    assert "split.json: 3 classes but the model has 2 outputs" in err and err.count("\n") == 1


def test_export_report_stores_paths_relative_to_the_run(tmp_path):
    from export import exporter

    run = _image_run(tmp_path, classes_in_model=3)
    args = exporter.build_parser().parse_args([str(run / "model.keras"), "--format", "float32",
                                               "--max-accuracy-drop", "100", "--no-metadata"])
    exporter.run_export(args, print_fn=lambda *a: None)
    text = (run / "export" / "report.json").read_text()
    report = json.loads(text)
    assert str(tmp_path) not in text
    assert (report["model"], report["output_dir"], report["formats"][0]["path"]) == (
        "model.keras", "export", os.path.join("export", "nin_float32.tflite"))


# ----------------------------------------------------------------- IDX bombs


def _gzip_bomb(path, header, gib=1):
    """A .gz of ``header`` then ``gib`` GiB of zeros, about 1 MB on disk: 128 identical 8 MiB gzip members."""
    import gzip

    member = gzip.compress(bytes(8 << 20), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(128 * gib):
            f.write(member)
    return path


@pytest.mark.parametrize("header, message", [
    # A genuine Fashion-MNIST-style header for 10 images, then a gigabyte nobody announced.
    (b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2, "has trailing bytes"),
    # A header announcing 10^13 bytes: more than deflate can expand this file to.
    (b"\x00\x00\x08\x03" + (100_000).to_bytes(4, "big") + (10_000).to_bytes(4, "big") * 2, "more than the file can hold"),
    # No IDX header at all: refused after 4 bytes.
    (b"", "bad IDX magic number 0"),
])
def test_a_gzip_bomb_idx_is_refused_fast_without_growing_memory(tmp_path, header, message):
    import time
    import tracemalloc

    path = _gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", header)
    assert os.path.getsize(path) < 4 << 20
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError, match=message):
            data.read_idx(path, data.IMAGE_MAGIC)
        seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < 1.0 and peak < 16 << 20, (seconds, peak)


# ------------------------------------------------------- tuning --overwrite


def _tuning_args(out, *extra):
    return ["--tuner", "random", "--max-trials", "1", "--epochs", "1", "--preset", "tiny", "--limit", "600",
            "--test-limit", "100", "--output-dir", str(out), "--verbose", "0", *extra]


def _victim(tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    return victim


def test_a_symlinked_search_folder_survives_tuning_overwrite(tmp_path, capsys):
    from tuning import search

    out, victim = tmp_path / "tune", _victim(tmp_path)
    out.mkdir()
    (out / "search.json").write_text("{}")
    os.symlink(victim, out / "search")
    assert search.main(_tuning_args(out, "--overwrite")) == 1
    err = capsys.readouterr().err
    assert "search is a symbolic link; tuning neither follows nor deletes one" in err and err.count("\n") == 1
    assert (victim / "thesis.txt").read_text() == "years of work"


def test_tuning_overwrite_needs_the_searchs_marker_and_never_follows_links(tmp_path):
    from nin_keras.errors import ConfigError
    from tuning import search

    out, victim = tmp_path / "tune", _victim(tmp_path)
    (out / "search" / "trial_0").mkdir(parents=True)
    os.symlink(victim, out / "search" / "trial_0" / "data")
    args = search.build_parser().parse_args(_tuning_args(out, "--overwrite"))
    with pytest.raises(ConfigError, match="has no search.json beside it, so it is not known to be a nin_keras search"):
        search.check_search_dir(args)
    assert os.path.islink(out / "search" / "trial_0" / "data")
    (out / "search.json").write_text("{}")
    search.check_search_dir(args)  # a search of ours: discarded, links inside removed, not followed
    assert not os.path.lexists(out / "search") and (victim / "thesis.txt").exists()
    assert json.loads((out / "search.json").read_text())["preset"] == "tiny"


def test_a_tuning_worker_started_with_another_preset_is_refused(tmp_path):
    """The chief's search.json decides; a worker with other settings exits in one line instead of joining."""
    from helpers import free_ports, launch
    from tuning import search

    out = tmp_path / "tune"
    out.mkdir()
    chief = search.build_parser().parse_args(_tuning_args(out))
    (out / "search.json").write_text(json.dumps({k: getattr(chief, k) for k in search.SEARCH_SETTINGS}))
    port = free_ports(1)[0]  # a port nothing listens on: a worker that joined would wait for the oracle
    args = _tuning_args(out)
    args[args.index("tiny")] = "fashion"
    proc = launch("tuning", *args, env={"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port),
                                        "KERASTUNER_TUNER_ID": "tuner0"}, merge_stderr=False)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "worker tuner0: the chief's search in" in err and "preset='tiny'" in err and "preset='fashion'" in err
    assert err.count("note: keras-tuner's oracle port") == 1  # the cluster notice, once
    assert json.loads((out / "search.json").read_text())["preset"] == "tiny"


def test_a_poisoned_trial_never_reaches_best_config(tmp_path, capsys):
    """A trial value outside the search space (a peer on the oracle's port, a tampered trial file) is refused."""
    from tuning import search

    out = tmp_path / "tune"
    assert search.main(_tuning_args(out)) == 0
    best = (out / "best_config.json").read_text()
    [trial_file] = (out / "search").glob("trial_*/trial.json")
    trial = json.loads(trial_file.read_text())
    trial["hyperparameters"]["values"]["learning_rate"] = 10.0
    trial_file.write_text(json.dumps(trial))
    capsys.readouterr()
    assert search.main(_tuning_args(out)) == 1  # resumes: nothing to train, straight to the results
    err = capsys.readouterr().err
    assert "hyperparameter 'learning_rate' outside its range Float(0.0003..0.01)" in err and "Received: 10.0" in err
    assert err.count("\n") == 1 and (out / "best_config.json").read_text() == best


# ------------------------------------------------------------------ clusters


def test_the_cluster_notice_is_printed_once_by_each_multi_worker_fit(tmp_path):
    from test_reliability import MULTI, error_lines, finish, start_workers

    out, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # the chief refuses the folder: the cluster stops at once
    procs = start_workers([*MULTI, "--epochs", "1", "--limit", "2000", "--output-dir", str(out)], scratch)
    outputs = finish(procs, timeout=300)
    assert [p.returncode for p in procs] == [1, 1], outputs
    for output in outputs:
        assert output.count("note: MultiWorkerMirroredStrategy's gRPC port (from $TF_CONFIG) is unauthenticated") == 1
        assert len(error_lines(output)) == 1


def test_an_oversized_agreement_message_is_one_line_on_every_worker_not_a_hang(monkeypatch):
    """Each worker's message must fit the exchange: one raising before the collective leaves the others waiting."""
    from nin_keras import distribute

    sent = []

    def exchange(strategy, message, timeout=None):
        data = json.dumps(message).encode()
        if len(data) > distribute._MESSAGE_BYTES:  # what the real exchange does, before any collective
            raise ValueError(f"agreement message of {len(data)} bytes exceeds {distribute._MESSAGE_BYTES}")
        sent.append(message)
        return [message, {"worker": "worker 1", "error": None, "shared": {"ok": True}}]

    monkeypatch.setattr(distribute, "is_multi_worker", lambda strategy: True)
    monkeypatch.setattr(distribute, "is_chief", lambda strategy: True)
    monkeypatch.setattr(distribute, "worker_name", lambda strategy: "worker 0")
    monkeypatch.setattr(distribute, "exchange", exchange)
    with pytest.raises(NinError, match="its summary for the other workers is .* bytes, more than the 4096") as info:
        distribute.agree(None, lambda: "x" * 5000, share=lambda result: {"listing": result})
    assert "\n" not in str(info.value) and sent

    def fail():  # an error text of 6 KiB (non-ASCII: longer still once JSON-escaped)
        raise DataError("é" * 6000)

    with pytest.raises(DataError, match=r"^é+ \[\.\.\.\]$"):
        distribute.agree(None, fail)
    assert all(len(json.dumps(m).encode()) <= distribute._MESSAGE_BYTES for m in sent)


# ------------------------------------------------------- export.predict sidecar


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    """An untrained tiny model (28x28x1, 10 classes) converted to float32 TFLite, with its exporter sidecar."""
    from export.converter import convert, sidecar
    from helpers import build_preset

    model = build_preset("tiny")
    blob = convert(model, "float32")
    folder = tmp_path_factory.mktemp("tflite")
    (folder / "m.tflite").write_bytes(blob)
    return folder / "m.tflite", sidecar("float32", blob, [f"class {i}" for i in range(10)], model)


def _png_claiming(path, width, height):
    """A PNG whose header claims ``width`` x ``height`` (a few bytes of real data): a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("lie, message", [
    ({"preprocessing": {"resize_to": [32, 32]}}, "field 'preprocessing.resize_to' does not match the model (it takes [28, 28])"),
    ({"preprocessing": {"color": "RGB"}}, "field 'preprocessing.color' does not match the model (it takes grayscale)"),
    ({"labels": ["only one"]}, "field 'labels' does not match the model (it takes 10 labels); export again. Received: 1 labels"),
    ({"model_sha256": None}, "field 'model_sha256' is missing or not a string"),
])
def test_predict_refuses_a_lying_sidecar_in_one_line(tiny_tflite, tmp_path, fashion_test, capsys, lie, message):
    from PIL import Image

    from export import predict

    model_path, meta = tiny_tflite
    target = tmp_path / "m.tflite"
    target.write_bytes(model_path.read_bytes())
    meta = {**meta, **lie, "preprocessing": {**meta["preprocessing"], **lie.get("preprocessing", {})}}
    if meta["model_sha256"] is None:
        del meta["model_sha256"]
    (tmp_path / "m.json").write_text(json.dumps(meta))
    Image.fromarray(fashion_test[0][0, :, :, 0]).save(tmp_path / "shirt.png")
    assert predict.main([str(target), str(tmp_path / "shirt.png")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_predict_runs_a_model_and_a_photo_whose_names_are_not_utf8(tiny_tflite, tmp_path, fashion_test, capsys):
    """LiteRT's loader took the model's path only as UTF-8: a TypeError traceback."""
    from PIL import Image

    from export import predict

    model_path, meta = tiny_tflite
    folder = os.path.join(os.fsencode(tmp_path), b"mod\xe8les")
    os.makedirs(folder)
    with open(os.path.join(folder, b"m.tflite"), "wb") as f:
        f.write(model_path.read_bytes())
    with open(os.path.join(folder, b"m.json"), "w") as f:
        json.dump(meta, f)
    photo = os.path.join(folder, b"chemis\xe9.png")
    Image.fromarray(fashion_test[0][0, :, :, 0]).save(photo)
    assert predict.main([os.fsdecode(os.path.join(folder, b"m.tflite")), os.fsdecode(photo)]) == 0
    out = capsys.readouterr().out
    assert "mod\\xe8les/chemis\\xe9.png: " in out and out.count("\n") == 1, out


def test_predict_refuses_a_decompression_bomb_in_one_line_and_goes_on(tiny_tflite, tmp_path, fashion_test, capsys):
    from PIL import Image

    from export import predict

    model_path, meta = tiny_tflite
    (model_path.parent / "m.json").write_text(json.dumps(meta))
    bomb = _png_claiming(tmp_path / "bomb.png", 20000, 20000)
    Image.fromarray(fashion_test[0][1, :, :, 0]).save(tmp_path / "good.png")
    assert predict.main([str(model_path), str(bomb), str(tmp_path / "good.png")]) == 1
    captured = capsys.readouterr()
    assert "bomb.png: refused, too many pixels to decode safely" in captured.err and captured.err.count("\n") == 1
    assert "good.png: class" in captured.out


# ------------------------------------------------------------ odd inputs


def _nested(depth=100_000):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("content, message", [
    (_nested(), "JSON nested too deeply"),
    ('{"epochs": 3, "preset": "caf\xe9"}'.encode("latin-1"), "not UTF-8 text (byte 28: invalid continuation byte)"),
    ('{"epochs": 3, "preset": "tiny"}'.encode("utf-16"), "not UTF-8 text (byte 0: invalid start byte)"),
])
def test_odd_config_files_are_one_line(tmp_path, content, message):
    from nin_keras.config import resolve_config
    from nin_keras.errors import ConfigError

    path = tmp_path / "c.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        resolve_config({}, str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [_nested(), b'{"classes": "caf\xe9"}'])
def test_odd_run_folder_json_is_one_line(tmp_path, content):
    from nin_keras.errors import ConfigError
    from nin_keras.io import read_json_object

    path = tmp_path / "split.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ConfigError, match="split.json: unreadable split file") as info:
        read_json_object(str(path), "split file")
    assert "\n" not in str(info.value)


def test_braces_in_the_output_dir_are_a_folder_name_not_a_format(tmp_path, capsys):
    """Keras' ModelCheckpoint runs str.format on its path: '{lr}' was a KeyError after epoch 1, '{epoch}' another folder."""
    from nin_keras.fit import main

    out = tmp_path / "exp {epoch} {lr} }{"
    assert main(["--preset", "tiny", "--limit", "600", "--test-limit", "200", "--epochs", "1", "--batch-size", "64",
                 "--precision", "float32", "--verbose", "0", "--output-dir", str(out)]) == 0
    assert (out / "best.keras").is_file() and (out / "model.keras").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize("module", ["nin_keras.fit", "tuning.search", "export.exporter"])
def test_an_output_dir_that_is_not_utf8_is_refused_before_anything_runs(tmp_path, capsys, module):
    """TensorFlow's writers refuse such a name with a traceback once training has started (TensorBoard)."""
    import importlib

    out = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9"))
    argv = [str(tmp_path)] if module == "export.exporter" else []
    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).main([*argv, "--output-dir", out])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--output-dir must be a UTF-8 path" in err and "caf\\xe9" in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_a_name_that_is_not_utf8_is_printed_escaped_not_raised_on(capsys):
    from nin_keras.cli import run_cli

    assert run_cli(lambda: print(os.fsdecode(b"/photos/caf\xe9")) or 0) == 0
    assert capsys.readouterr().out == "/photos/caf\\xe9\n"


def test_on_an_ascii_stream_a_letter_and_a_byte_are_told_apart():
    from nin_keras.cli import ESCAPE_NAMES

    name = "café " + os.fsdecode(b"caf\xe9")
    assert name.encode("ascii", ESCAPE_NAMES) == b"caf\\u00e9 caf\\xe9"


# ------------------------------------------------------------ dependencies


def test_constraints_pin_a_set_that_meets_every_floor_and_setup_uses_it():
    """constraints.txt (the tested set) satisfies pyproject's ranges, which exclude known-vulnerable releases."""
    import re
    try:
        import tomllib
    except ImportError:  # Python 3.10, which pyproject allows: pip carries the same parser
        from pip._vendor import tomli as tomllib

    from helpers import REPO
    from packaging.requirements import Requirement
    from packaging.version import Version

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    pins = {}
    with open(os.path.join(REPO, "constraints.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, version = line.strip().split("==")
                pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(line)
        assert pins[re.sub(r"[-_.]+", "-", req.name).lower()] in req.specifier, line
    floors = {Requirement(line).name: Requirement(line).specifier for line in project["dependencies"]}
    assert Version("10.2.0") not in floors["pillow"] and Version("12.1.1") not in floors["pillow"]
    setup = open(os.path.join(REPO, "scripts", "setup.sh")).read()
    assert '-c constraints.txt -e ".[dev]"' in setup and "--upgrade pip" not in setup


def test_a_built_wheel_holds_every_module_and_the_phone_page(tmp_path):
    """``pip install .`` (not editable) gets the whole project: a list of three package names once built a
    wheel without ``nin_keras.data``, which the editable install of setup.sh hid."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from helpers import REPO

    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and *.egg-info in it
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    wanted = []
    for package in ("nin_keras", "tuning", "export"):
        shutil.copytree(os.path.join(REPO, package), src / package, ignore=shutil.ignore_patterns("__pycache__"))
        wanted += [os.path.relpath(os.path.join(d, f), src).replace(os.sep, "/")
                   for d, _, files in os.walk(src / package) for f in files]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    missing = sorted(set(wanted) - set(zipfile.ZipFile(wheel).namelist()))
    assert not missing and any(name.startswith("export/web_page/") for name in wanted), missing


def test_a_class_folder_linked_out_of_the_image_folder_is_refused_before_training(tmp_path):
    """split.json refuses paths that leave the folder through a link; a fresh run must not train on them
    either, or it could never be resumed or exported."""
    from nin_keras.errors import DataError

    elsewhere = tmp_path / "elsewhere"
    images.write_tinted_folder(str(elsewhere), per_class=4, classes=2)
    root = tmp_path / "photos"
    root.mkdir()
    os.symlink(elsewhere / "t-shirt-top", root / "t-shirt-top")
    (root / "trouser").mkdir()
    for name in os.listdir(elsewhere / "trouser"):
        os.link(elsewhere / "trouser" / name, root / "trouser" / name)
    with pytest.raises(DataError, match="symbolic link that leads out"):
        data.load_data(image_dir=str(root), image_size=(16, 16), channels=3)


def test_serve_refuses_a_bad_port_and_certifies_host_names(tmp_path, capsys):
    from export import serve

    (tmp_path / "index.html").write_text("<html></html>")
    assert serve.main([str(tmp_path), "--port", "70000"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--port must be 0..65535" in err
    cert, key = serve.self_signed_certificate(str(tmp_path / "cert"), ["localhost", "mylaptop.local", "127.0.0.1"])
    assert os.path.getsize(cert) > 0 and os.stat(key).st_mode & 0o777 == 0o600


def test_the_page_resizes_as_the_sidecar_says(tmp_path):
    from export.web import page_config

    int8 = tmp_path / "nin_int8.tflite"
    int8.write_bytes(b"model")
    sidecar = {"labels": ["a", "b"], "preprocessing": {"resize_to": [28, 28], "resize_mode": "pad"}}
    (tmp_path / "nin_int8.json").write_text(json.dumps(sidecar))
    assert page_config(str(int8), {}, "stretch", "run", "./")["resize"] == "pad"


def test_https_serves_others_while_a_client_sits_silent(tmp_path):
    """A connection that never starts its TLS handshake (a pre-connect, a port scanner) blocked every
    other visitor: the handshake ran inside accept(), on the one accepting thread."""
    import socket
    import ssl
    import threading
    import urllib.request

    from export import serve

    (tmp_path / "index.html").write_text("<html>page</html>")
    cert, key = serve.self_signed_certificate(str(tmp_path / "cert"), ["127.0.0.1"])
    server = serve.make_server(str(tmp_path), port=0, certificate=(cert, key))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=context, timeout=10) as r:
            assert r.read() == b"<html>page</html>"
    finally:
        silent.close()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("given, message", [
    ("folder", "a folder; pass the exported model file, e.g. "),
    ("onnx", "predict runs the exported TFLite models (.tflite); this is not one"),
    ("missing", "no such file (the first argument is the exported .tflite model)"),
])
def test_predict_says_what_its_first_argument_should_be(tiny_tflite, tmp_path, capsys, given, message):
    """`predict runs/x/export shirt.jpg` or `predict nin.onnx shirt.jpg`: said as such, not "sidecar not found"."""
    from export import predict

    model_path, _ = tiny_tflite
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "nin_int8.tflite").write_bytes(model_path.read_bytes())
    (tmp_path / "nin.onnx").write_bytes(b"onnx")
    path = {"folder": tmp_path / "export", "onnx": tmp_path / "nin.onnx", "missing": tmp_path / "gone.tflite"}[given]
    assert predict.main([str(path), str(tmp_path / "shirt.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: {message}" in err, err


def test_a_full_disk_while_writing_the_page_is_one_line_and_keeps_the_previous_page(tmp_path, monkeypatch):
    import errno
    import shutil

    from export import web

    int8 = tmp_path / "nin_int8.tflite"
    int8.write_bytes(b"model")
    (tmp_path / "nin_int8.json").write_text(json.dumps({"labels": ["a", "b"], "preprocessing": {"resize_to": [28, 28]}}))
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("the previous page")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(web.WebExportError, match="web: cannot write the page \\(No space left on device\\)"):
        web.write_web(str(tmp_path), str(int8), {}, runtime="cdn", print_fn=lambda *a: None)
    assert (tmp_path / "web" / "index.html").read_text() == "the previous page"
    assert sorted(os.listdir(tmp_path)) == ["nin_int8.json", "nin_int8.tflite", "web"]  # no staging folder left


def test_a_photo_over_pillows_warning_size_is_refused_without_its_warning(tmp_path):
    """144 megapixels: over Pillow's 89 M warning threshold, under its 179 M error, over our 40 M cap."""
    import warnings

    from nin_keras.data.folders import ImageTooLarge, open_image

    from PIL import Image

    big = _png_claiming(tmp_path / "panorama.png", 12000, 12000)
    with warnings.catch_warnings(record=True) as caught:  # records what the process's filters let through
        with pytest.raises(ImageTooLarge, match="144,000,000 pixels"):
            open_image(str(big))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
