"""The phone page (``--format web``) in a real browser, its runtime's integrity checks, and ``export.serve``.

Browser tests drive Debian's Chromium through Playwright; without either
they skip with the reason. ``NIN_KERAS_SCREENSHOT=path`` keeps the page's
screenshot (README's figure) there too.
"""

import json
import os
import shutil
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from export import exporter, web
from export.serve import make_server
from tests.helpers import launch

CHECKED_IMAGES = 200
CLIP_SIZE = 224
SCORE_STEP = 1 / 256  # the int8 softmax output's scale (TFLite's quantisation spec fixes it)


def _skip_without_browser():
    path, reason = web.find_chromium()
    if path is None:
        pytest.skip(f"browser tests need Chromium and Playwright: {reason}")


@pytest.fixture(scope="module")
def web_export(trained_tiny_run, tmp_path_factory):
    """The tiny run's int8 model and its web page (runtime from npm when it is available)."""
    out = str(tmp_path_factory.mktemp("web_export"))
    args = exporter.build_parser().parse_args([trained_tiny_run[0], "--output-dir", out, "--format", "web",
                                               "--test-limit", "300", "--calibration-samples", "200",
                                               "--no-litert-benchmark", "--max-accuracy-drop", "100"])
    printed = []
    report, code = exporter.run_export(args, print_fn=printed.append)
    assert code == 0
    return out, report, "\n".join(map(str, printed))


@pytest.fixture(scope="module")
def served(web_export):
    """The page folder served on a free port of 127.0.0.1 (a secure context: the camera is allowed)."""
    folder = os.path.join(web_export[0], "web")
    if not os.path.isdir(os.path.join(folder, "mediapipe")):
        pytest.skip("the runtime was not installed with npm, and the page cannot reach the CDN from a test")
    server = make_server(folder, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _upscaled_rgb(gray, size=CLIP_SIZE):
    return np.asarray(Image.fromarray(gray[..., 0]).convert("RGB").resize((size, size), Image.NEAREST))


def write_y4m(path, rgb_frames, fps=10):
    """A Y4M clip (4:2:0) of ``rgb_frames``: what Chromium's fake camera plays in a loop."""
    height, width = rgb_frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in rgb_frames:
            ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
            f.write(b"FRAME\n" + ycbcr[..., 0].tobytes())
            for c in (1, 2):
                f.write(ycbcr[::2, ::2, c].tobytes())


@pytest.fixture(scope="module")
def browser(fashion_test, tmp_path_factory):
    """Headless Chromium with a fake camera that films one confidently classified test image."""
    _skip_without_browser()
    from playwright.sync_api import sync_playwright

    clip = str(tmp_path_factory.mktemp("camera") / "clip.y4m")
    images, labels = fashion_test
    trouser = int(np.flatnonzero(labels == 1)[0])
    write_y4m(clip, [_upscaled_rgb(images[trouser])] * 10)
    with sync_playwright() as p:
        chromium = web.launch_chromium(p, ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                           f"--use-file-for-fake-video-capture={clip}"])
        yield chromium, trouser
        chromium.close()


def open_page(browser, url, route=None):
    page = browser.new_page(viewport={"width": 420, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    if route:
        page.route(*route)
    page.goto(url)
    page.wait_for_function("window.nin !== undefined", timeout=30000)
    return page, errors


def test_web_folder_is_self_contained_with_a_pinned_runtime(web_export):
    out, report, printed = web_export
    folder = os.path.join(out, "web")
    names = sorted(os.listdir(folder))
    assert {"index.html", "app.js", "model.tflite", "labels.txt", "page.json"} <= set(names)
    with open(os.path.join(out, "nin_int8.tflite"), "rb") as a, open(os.path.join(folder, "model.tflite"), "rb") as b:
        assert a.read() == b.read()
    config = json.load(open(os.path.join(folder, "page.json")))
    int8 = next(r for r in report["formats"] if r["format"] == "int8")
    assert config["test_accuracy"] == int8["accuracy"] and config["resize"] == "stretch"
    html = open(os.path.join(folder, "index.html")).read()
    importmap = json.loads(html.split('<script type="importmap">')[1].split("</script>")[0])
    bundle = importmap["imports"]["@mediapipe/tasks-vision"]
    assert importmap["integrity"][bundle] == web.RUNTIME_FILES["vision_bundle.mjs"]
    if "mediapipe" in names:  # npm was available: the runtime is in the folder and matches its SRI hashes
        assert "from npm (integrity checked)" in printed and bundle == "./mediapipe/vision_bundle.mjs"
        for name, expected in web.RUNTIME_FILES.items():
            assert web.sri(open(os.path.join(folder, "mediapipe", name), "rb").read()) == expected
    else:
        assert web.CDN_BASE in printed and bundle.startswith(web.CDN_BASE)


def test_page_classifies_test_images_like_litert(browser, served, web_export, fashion_test, tmp_path):
    from export.evaluator import TFLiteClassifier

    folder, url = served
    images, labels = fashion_test[0][:CHECKED_IMAGES], fashion_test[1][:CHECKED_IMAGES]
    os.makedirs(os.path.join(folder, "checked"), exist_ok=True)
    for i, image in enumerate(images):  # PNGs the page fetches and decodes itself, as a chosen photo
        Image.fromarray(image[..., 0]).save(os.path.join(folder, "checked", f"{i}.png"))
    page, errors = open_page(browser[0], url)
    assert page.evaluate("window.nin.ready") is True
    top3 = np.array(page.evaluate("""async (n) => { const out = [];
        for (let i = 0; i < n; i++) out.push((await window.nin.classifyImageUrl(`./checked/${i}.png`)).top.map(
            (c) => [c.index, c.score]));
        return out; }""", len(images)))
    in_browser, page_scores = top3[:, 0, 0].astype(int), top3[..., 1]
    rgb = np.repeat(images, 3, axis=-1)
    probs = TFLiteClassifier(os.path.join(web_export[0], "nin_int8.tflite")).predict(rgb)
    litert = probs.argmax(1)  # the lowest class index among equal top scores, as the page ranks them
    # The scores are the int8 softmax's (TFLite fixes its scale at 1/256): a weak model (this tiny run)
    # often has two classes on exactly the same score (7 of these 200), and MediaPipe's own order among
    # them (3 of the 7 differed from argmax) is why the page ranks ties itself. Same pixels in, same
    # scores out: the page's top-3 scores must be LiteRT's for those classes, to within one step (seen:
    # identical), and where LiteRT's top-1 leads by more than a step the top-1 must agree.
    assert np.allclose(probs / SCORE_STEP, np.round(probs / SCORE_STEP), atol=1e-3)
    score_error = np.abs(page_scores - np.take_along_axis(probs, top3[..., 0].astype(int), 1)).max()
    ranked = np.sort(probs, 1)
    decisive = ranked[:, -1] - ranked[:, -2] > SCORE_STEP * 1.5  # top-1 ahead by more than one step
    agreement = float(np.mean(in_browser == litert))
    print(f"page vs LiteRT on {len(images)} test images: agreement {agreement:.3f} "
          f"({np.mean(in_browser[decisive] == litert[decisive]):.3f} on the {decisive.sum()} without a near-tie), "
          f"largest score difference {score_error:.4f}, page accuracy {np.mean(in_browser == labels):.3f}, "
          f"LiteRT accuracy {np.mean(litert == labels):.3f}")
    assert score_error <= SCORE_STEP + 1e-6
    assert np.mean(in_browser[decisive] == litert[decisive]) >= 0.99 and agreement >= 0.99
    text = page.inner_text("body")
    assert "no photo or camera frame is uploaded" in text and "NiN " in text and "test accuracy" in text
    assert len(page.query_selector_all("#top3 li")) == 3 and "ms per frame" in text
    assert not errors


def test_fake_camera_gives_live_predictions_and_a_screenshot(browser, served, web_export, fashion_test, tmp_path):
    from export.evaluator import TFLiteClassifier

    chromium, trouser = browser
    page, errors = open_page(chromium, served[1])
    page.evaluate("window.nin.ready")
    page.click("#start-camera")
    page.wait_for_function("window.nin.liveFrames >= 10", timeout=30000)
    live = page.evaluate("window.nin.lastResult")
    image = np.repeat(fashion_test[0][trouser:trouser + 1], 3, axis=-1)
    expected = int(TFLiteClassifier(os.path.join(web_export[0], "nin_int8.tflite")).predict(image).argmax(1)[0])
    assert live["top"][0]["index"] == expected and live["frame_ms"] > 0
    assert "live:" in page.inner_text("#latency")
    shot = str(tmp_path / "phone-page.png")
    page.screenshot(path=shot)
    assert os.path.getsize(shot) > 5000
    if os.environ.get("NIN_KERAS_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["NIN_KERAS_SCREENSHOT"])
    assert not errors


def _png_with_gamma(gray, gamma):
    """``gray`` as a PNG with a gAMA chunk (file gamma ``gamma``): pixel values a browser colour-converts by default."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "PNG")
    png, body = buffer.getvalue(), b"gAMA" + struct.pack(">I", round(gamma * 100000))
    chunk = struct.pack(">I", 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]  # right after the signature (8 bytes) and IHDR (25)


def test_photos_are_drawn_upright_and_resized_as_in_training(browser, served, fashion_test):
    """A JPEG stored sideways with EXIF orientation 6 reaches the model upright; page.json's resize mode is used.

    A PNG with a gamma chunk reaches it with its stored values, as training's decoder reads it (the
    browser's default colour conversion moved this one's mid-greys by up to 73 levels).
    """
    folder, url = served
    upright = _upscaled_rgb(fashion_test[0][1])
    Image.fromarray(upright).save(os.path.join(folder, "upright.jpg"), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the pixels are stored turned left
    Image.fromarray(upright).rotate(90, expand=True).save(os.path.join(folder, "sideways.jpg"), quality=95, exif=exif)
    wide = np.full((28, 56, 3), 255, np.uint8)
    Image.fromarray(wide).save(os.path.join(folder, "wide.png"))
    read_input = "() => Array.from(document.getElementById('input').getContext('2d').getImageData(0, 0, 28, 28).data)"

    page, _ = open_page(browser[0], url)
    page.evaluate("window.nin.ready")
    canvases = {}
    for name in ("upright.jpg", "sideways.jpg"):
        page.evaluate("(u) => window.nin.classifyImageUrl(u)", f"./{name}")
        canvases[name] = np.array(page.evaluate(read_input), np.int32).reshape(28, 28, 4)[..., 0]
    assert np.abs(canvases["upright.jpg"] - canvases["sideways.jpg"]).mean() < 4
    ramp = np.tile(np.arange(0, 252, 9, dtype=np.uint8), (28, 1))
    with open(os.path.join(folder, "gamma.png"), "wb") as f:
        f.write(_png_with_gamma(ramp, 1.0))
    page.evaluate("window.nin.classifyImageUrl('./gamma.png')")
    assert np.array_equal(np.array(page.evaluate(read_input)).reshape(28, 28, 4)[..., 0], ramp)

    def padded(route):
        config = json.load(open(os.path.join(folder, "page.json")))
        route.fulfill(json={**config, "resize": "pad"})

    page, _ = open_page(browser[0], url, route=("**/page.json", padded))
    page.evaluate("window.nin.ready")
    page.evaluate("window.nin.classifyImageUrl('./wide.png')")
    pixels = np.array(page.evaluate(read_input)).reshape(28, 28, 4)[..., 0]
    # Fit 56x28 into 28x28 and pad with zeros, as tf.image.resize_with_pad: rows 7..20 white, the rest black.
    assert pixels[:6].max() == 0 and pixels[22:].max() == 0 and pixels[8:20].min() == 255


def test_cdn_runtime_is_checked_against_its_sri_hashes(browser, web_export, tmp_path):
    """The CDN variant loads the pinned files (served here from the npm cache); one changed byte stops it."""
    cached, reason = web.npm_runtime()
    if cached is None:
        pytest.skip(f"the runtime's files are needed to stand in for the CDN: {reason}")
    out = str(tmp_path / "cdn")
    shutil.copytree(web_export[0], out, ignore=shutil.ignore_patterns("web"))
    printed = []
    folder = web.write_web(out, os.path.join(out, "nin_int8.tflite"), web_export[1], runtime="cdn",
                           print_fn=printed.append)
    assert not os.path.exists(os.path.join(folder, "mediapipe")) and web.CDN_BASE in printed[0]
    server = make_server(folder, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"

    def cdn(tamper=None):
        def handle(route):
            name = route.request.url[len(web.CDN_BASE):]
            body = open(os.path.join(cached, name), "rb").read()
            if name == tamper:
                body = body.replace(b"var ", b"var  ", 1)
            types = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}
            route.fulfill(body=body, headers={"Content-Type": types[os.path.splitext(name)[1]],
                                              "Access-Control-Allow-Origin": "*"})
        return handle

    try:
        page, errors = open_page(browser[0], url, route=(web.CDN_BASE + "**", cdn()))
        assert page.evaluate("window.nin.ready") is True
        page, errors = open_page(browser[0], url, route=(web.CDN_BASE + "**", cdn("wasm/vision_wasm_internal.js")))
        with pytest.raises(Exception, match="(?i)integrity|Failed to fetch"):
            page.evaluate("window.nin.ready")
        # The module itself (import map integrity): the page's code never runs.
        page = browser[0].new_page()
        console = []
        page.on("console", lambda m: console.append(m.text))
        page.route(web.CDN_BASE + "**", cdn("vision_bundle.mjs"))
        page.goto(url)
        page.wait_for_timeout(1500)
        assert page.evaluate("window.nin === undefined")
        assert any("integrity" in line for line in console), console
    finally:
        server.shutdown()
        server.server_close()


def test_npm_tarball_with_another_integrity_is_refused(tmp_path, monkeypatch):
    if shutil.which("npm") is None:
        pytest.skip("npm is not on the PATH")
    monkeypatch.setattr(web, "RUNTIME_INTEGRITY", "sha512-" + "A" * 86 + "==")
    with pytest.raises(web.WebExportError, match="integrity"):
        web.npm_runtime(str(tmp_path / "cache"))
    assert not os.path.exists(tmp_path / "cache")


def test_without_npm_the_page_uses_the_cdn(web_export, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    out = str(tmp_path / "out")
    shutil.copytree(web_export[0], out, ignore=shutil.ignore_patterns("web"))
    printed = []
    folder = web.write_web(out, os.path.join(out, "nin_int8.tflite"), web_export[1], print_fn=printed.append)
    assert "npm is not on the PATH" in printed[0] and web.CDN_BASE in printed[0]
    assert web.CDN_BASE + "vision_bundle.mjs" in open(os.path.join(folder, "index.html")).read()
    with pytest.raises(web.WebExportError, match="npm is not on the PATH"):
        web.write_web(out, os.path.join(out, "nin_int8.tflite"), web_export[1], runtime="npm")


def test_server_serves_only_its_folder_with_browser_mime_types(tmp_path):
    site, outside = tmp_path / "site", tmp_path / "secret.txt"
    (site / "sub").mkdir(parents=True)
    (site / "index.html").write_text("<p>page</p>")
    (site / "sub" / "a.wasm").write_bytes(b"\0asm")
    (site / "b.mjs").write_text("export {}")
    (site / "m.tflite").write_bytes(b"x")
    outside.write_text("private")
    (site / "link.txt").symlink_to(outside)
    server = make_server(str(site), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def get(path):
        try:
            with urllib.request.urlopen(base + path) as r:
                return r.status, r.headers["Content-Type"], r.read()
        except urllib.error.HTTPError as e:
            return e.code, None, b""

    try:
        assert get("/")[2] == b"<p>page</p>"
        assert get("/sub/a.wasm")[:2] == (200, "application/wasm")
        assert get("/b.mjs")[1] == "text/javascript" and get("/m.tflite")[1] == "application/octet-stream"
        for path in ("/sub/", "/link.txt", "/../secret.txt", "/%2e%2e/secret.txt", "/sub/..%2f..%2fsecret.txt"):
            status, _, body = get(path)
            assert status == 404 and b"private" not in body, path
    finally:
        server.shutdown()
        server.server_close()


def test_serve_cli_https_qr_code_and_ctrl_c(web_export):
    pytest.importorskip("cryptography")
    pytest.importorskip("segno")
    process = launch("export.serve", os.path.join(web_export[0], "web"), "--host", "0.0.0.0", "--port", "0", "--https")
    try:
        first = process.stdout.readline()
        assert first.startswith("serving ") and "https://" in first
        url = first.split(" at ")[1].split()[0]
        lines = [process.stdout.readline() for _ in range(4)]
        assert "scan" in lines[0] and any("\u2588" in line or "\u2580" in line for line in lines[1:])
        port = url.rsplit(":", 1)[1].strip("/")
        context = ssl._create_unverified_context()  # self-signed, as the phone's browser warns
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/page.json", context=context) as r:
            assert json.load(r)["model"] == "model.tflite"
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in rest and rest.rstrip().endswith("stopped")


def test_serve_stops_on_sigterm_as_on_ctrl_c(tmp_path):
    """A service manager or `kill` sends SIGTERM: the same "stopped" line, exit code 143 (128 + 15)."""
    (tmp_path / "index.html").write_text("<html></html>")
    process = launch("export.serve", str(tmp_path), "--port", "0")
    try:
        assert process.stdout.readline().startswith("serving ")
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    assert process.returncode == 143
    assert "Traceback" not in rest and rest.rstrip().endswith("stopped")


def test_serve_refuses_a_folder_without_a_page(tmp_path, capsys):
    from export import serve

    assert serve.main([str(tmp_path), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no index.html" in err


def test_browser_benchmark_times_each_model_in_the_page(browser, web_export):
    started = time.time()
    folder = os.path.join(web_export[0], "web")
    timings = web.browser_benchmark(folder, {"int8": os.path.join(web_export[0], "nin_int8.tflite")}, runs=10,
                                    print_fn=lambda *a: None, browser=browser[0])
    assert 0 < timings["int8"]["median_ms"] < 1000 and timings["int8"]["runs"] == 10
    assert not os.path.exists(os.path.join(folder, "models")) and time.time() - started < 60


def test_browser_benchmark_without_the_page_is_one_line(tmp_path, capsys):
    assert exporter.main([str(tmp_path / "run"), "--browser-benchmark"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add --format web" in err
