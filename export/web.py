"""``python -m export RUN --format web``: a static page that runs the int8 model on a phone's camera.

The folder it writes (``<export dir>/web/``) is self-contained and needs no
build step: ``index.html``, ``app.js`` (the page's code, no bundler),
``model.tflite`` (the int8 export: MediaPipe metadata and RGB input),
``labels.txt``, ``page.json`` (name, size, test accuracy, resize mode) and
the runtime, MediaPipe Tasks for the Web (npm ``@mediapipe/tasks-vision``),
pinned to :data:`RUNTIME_VERSION`:

* with ``npm`` on the PATH, the package is fetched once with ``npm pack``,
  its tarball checked against npm's integrity hash (:data:`RUNTIME_INTEGRITY`),
  and the three files the page needs are cached per user
  (``~/.cache/nin_keras/npm``) and copied into ``mediapipe/``: the page then
  works offline once served;
* without ``npm``, the page loads that exact version from jsDelivr.

Either way the page checks every runtime file against its Subresource
Integrity hash (:data:`RUNTIME_FILES`) before running it.
"""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

from nin_keras.errors import NinError
from nin_keras.io import atomic_write_bytes, atomic_write_text

RUNTIME_PACKAGE = "@mediapipe/tasks-vision"
RUNTIME_VERSION = "1.1.0"
#: ``npm view @mediapipe/tasks-vision@1.1.0 dist.integrity``: the tarball's SHA-512.
RUNTIME_INTEGRITY = "sha512-ZJqh0wMKOINorfSffvDAxzyO1//c+FiG3IkzOdNDnLqvBB3DbMfj0bB/tys2SNf9S914sgoIbIpF4HTOi336cg=="
#: The files the page loads, with their SRI hashes (SHA-384 of each file in that tarball).
RUNTIME_FILES = {
    "vision_bundle.mjs": "sha384-K9SZSZsVUHJTcMp4orEz7jVOD7Ro/2+0a1VxJvrOorWMtdXCO/rYlF17bw+iomf4",
    "wasm/vision_wasm_internal.js": "sha384-jtdjdNIo/J/KCH4Cdzr0WgtLSeu00Z2fb8m+3ZtlUjdU0qa7b2BY2DH+xDyT5h+Z",
    "wasm/vision_wasm_internal.wasm": "sha384-/8GYMkLZzcgbPHE7bao2HMZy558ZB+mbLg8RZv/JcFMf6w+tTW6j0o6bigM78NVV",
}
CDN_BASE = f"https://cdn.jsdelivr.net/npm/{RUNTIME_PACKAGE}@{RUNTIME_VERSION}/"
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web_page")
RESIZE_DEFAULT = "stretch"


class WebExportError(NinError):
    """The web page cannot be written."""


def sri(data, algorithm="sha384"):
    """The Subresource Integrity string of ``data`` (``sha384-<base64>``)."""
    return f"{algorithm}-" + base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def cache_dir():
    """Per-user cache of the runtime files (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``nin_keras/npm``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "nin_keras", "npm", f"tasks-vision-{RUNTIME_VERSION}")


def _cached_files_ok(folder):
    for name, expected in RUNTIME_FILES.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            if sri(f.read()) != expected:
                return False
    return True


def npm_runtime(folder=None, npm="npm"):
    """The folder holding the pinned runtime's files, fetched with npm if needed; (folder, None) or (None, reason)."""
    folder = folder or cache_dir()
    if _cached_files_ok(folder):
        return folder, None
    if shutil.which(npm) is None:
        return None, "npm is not on the PATH"
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".npm-", dir=os.path.dirname(folder)) as tmp:
        spec = f"{RUNTIME_PACKAGE}@{RUNTIME_VERSION}"
        try:
            out = subprocess.run([npm, "pack", spec, "--json", "--pack-destination", tmp], capture_output=True,
                                 text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"npm pack {spec} failed ({e})"
        if out.returncode != 0:
            return None, f"npm pack {spec} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}"
        tarball = os.path.join(tmp, json.loads(out.stdout)[0]["filename"])
        with open(tarball, "rb") as f:
            got = sri(f.read(), "sha512")
        if got != RUNTIME_INTEGRITY:
            raise WebExportError(f"{spec}: the tarball's integrity {got[:24]}... is not the pinned {RUNTIME_INTEGRITY[:24]}...")
        staged = os.path.join(tmp, "files")
        with tarfile.open(tarball) as archive:
            for name in RUNTIME_FILES:
                member = archive.getmember(f"package/{name}")
                os.makedirs(os.path.dirname(os.path.join(staged, name)), exist_ok=True)
                with archive.extractfile(member) as src, open(os.path.join(staged, name), "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not _cached_files_ok(staged):  # the pinned tarball holds exactly these files
            raise WebExportError(f"{spec}: a runtime file does not match its pinned SRI hash")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staged, folder)
    return folder, None


def page_config(int8_path, report, resize, run_name, runtime_base):
    """What the page shows and needs (``page.json``): model name, size, test accuracy, input size, resize mode."""
    with open(os.path.splitext(int8_path)[0] + ".json") as f:
        meta = json.load(f)
    row = next((r for r in (report or {}).get("formats", []) if r.get("format") == "int8"), {})
    height, width = meta["preprocessing"]["resize_to"]
    return {
        "name": f"NiN {run_name} (int8)",
        "model": "model.tflite",
        "size_bytes": os.path.getsize(int8_path),
        "test_accuracy": row.get("accuracy"),
        "test_examples": report.get("test_examples") if report else None,
        "input_size": [int(height), int(width)],
        # The sidecar's preprocessing contract says how training turned photos into squares; then the run's
        # setting; sidecars from before the contract have neither: stretch.
        "resize": ((meta.get("preprocessing") or {}).get("resize_mode") or meta.get("resize") or resize
                   or RESIZE_DEFAULT),
        "labels": meta["labels"],
        "runtime": {"package": RUNTIME_PACKAGE, "version": RUNTIME_VERSION, "base": runtime_base,
                    "integrity": RUNTIME_FILES},
    }


def index_html(runtime_base):
    """``index.html`` with an import map that pins the runtime module to its SRI hash."""
    with open(os.path.join(ASSETS, "index.html")) as f:
        template = f.read()
    bundle = runtime_base + "vision_bundle.mjs"
    importmap = {"imports": {RUNTIME_PACKAGE: bundle}, "integrity": {bundle: RUNTIME_FILES["vision_bundle.mjs"]}}
    return template.replace("__IMPORTMAP__", json.dumps(importmap, indent=2))


#: Everything write_web puts in ``web/`` (``models/`` is the browser benchmark's): a folder holding anything
#: else was not written by an export, and is not replaced.
WEB_ENTRIES = ("model.tflite", "page.json", "labels.txt", "index.html", "app.js", "style.css", "mediapipe", "models")


def check_web_folder(out_dir):
    """Refuse (one line) to replace ``<out_dir>/web`` when it holds files an export did not write."""
    from export.converter import refuse_foreign_folder

    refuse_foreign_folder(os.path.join(out_dir, "web"), WEB_ENTRIES, "the page", WebExportError)


def write_web(out_dir, int8_path, report, *, resize=None, run_name="run", runtime="auto", print_fn=print):
    """Write the page folder ``<out_dir>/web`` beside the int8 model; returns its path.

    ``runtime``: "auto" (npm if available, else the CDN), "npm" (fail
    without it) or "cdn". The folder is staged and then renamed into place,
    over a previous export's page only (:func:`check_web_folder`).
    """
    check_web_folder(out_dir)
    if not os.path.isfile(int8_path):
        raise WebExportError(f"{int8_path}: the web page needs the int8 model (export it with --format int8)")
    local, reason = (None, "--web-runtime cdn") if runtime == "cdn" else npm_runtime()
    if local is None and runtime == "npm":
        raise WebExportError(f"--web-runtime npm: {reason}")
    base = "./mediapipe/" if local else CDN_BASE
    target = os.path.join(out_dir, "web")
    staged = tempfile.mkdtemp(prefix=".web-", dir=out_dir)
    try:
        shutil.copyfile(int8_path, os.path.join(staged, "model.tflite"))
        config = page_config(int8_path, report, resize, run_name, base)
        atomic_write_text(os.path.join(staged, "page.json"), json.dumps(config, indent=2) + "\n")
        atomic_write_text(os.path.join(staged, "labels.txt"), "\n".join(config["labels"]) + "\n")
        atomic_write_text(os.path.join(staged, "index.html"), index_html(base))
        for name in ("app.js", "style.css"):
            shutil.copyfile(os.path.join(ASSETS, name), os.path.join(staged, name))
        if local:
            for name in RUNTIME_FILES:
                os.makedirs(os.path.dirname(os.path.join(staged, "mediapipe", name)), exist_ok=True)
                shutil.copyfile(os.path.join(local, name), os.path.join(staged, "mediapipe", name))
        for name in ("page.json", "labels.txt", "index.html"):  # atomic writes are private (0600); these are served
            os.chmod(os.path.join(staged, name), 0o644)
        os.chmod(staged, 0o755)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(staged, target)
    except OSError as e:  # a full disk, a quota: one line; a failure while staging leaves the previous page
        shutil.rmtree(staged, ignore_errors=True)
        raise WebExportError(f"{target}: cannot write the page ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    source = (f"{RUNTIME_PACKAGE} {RUNTIME_VERSION} from npm (integrity checked), copied into the folder"
              if local else f"{RUNTIME_PACKAGE} {RUNTIME_VERSION} loaded by the page from {CDN_BASE} "
                            f"(SRI-checked; {reason})")
    print_fn(f"wrote {target}: runtime {source}. Serve it: python -m export.serve {target}")
    return target


def add_browser_models(web_dir, written):
    """Copy every TFLite format into ``web_dir/models/`` (for the in-browser benchmark); returns {format: url}."""
    os.makedirs(os.path.join(web_dir, "models"), exist_ok=True)
    urls = {}
    for fmt, path in written.items():
        if path.endswith(".tflite"):
            with open(path, "rb") as f:
                atomic_write_bytes(os.path.join(web_dir, "models", f"{fmt}.tflite"), f.read())
            urls[fmt] = f"./models/{fmt}.tflite"
    return urls


#: Chromium flags that let a headless browser run the page here: no sandbox as root, software WebGL
#: (MediaPipe's vision tasks use WebGL for images even with the CPU delegate).
CHROMIUM_ARGS = ("--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader")
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def find_chromium():
    """A system Chromium (``$NIN_KERAS_CHROMIUM`` first); (path, None) or (None, why not)."""
    for path in (os.environ.get("NIN_KERAS_CHROMIUM"), *CHROMIUM_PATHS):
        if path and os.access(path, os.X_OK):
            try:
                import playwright.sync_api  # noqa: F401
            except ImportError:
                return None, 'the playwright package is missing (pip install "nin_keras[web]")'
            return path, None
    return None, "no Chromium found (apt-get install chromium)"


def launch_chromium(playwright, extra_args=()):
    """Headless system Chromium through Playwright (its own browser download is not needed)."""
    path, reason = find_chromium()
    if path is None:
        raise WebExportError(f"in-browser checks need Chromium and Playwright: {reason}")
    return playwright.chromium.launch(executable_path=path, headless=True, args=[*CHROMIUM_ARGS, *extra_args])


def browser_benchmark(web_dir, written, runs=50, print_fn=print, browser=None):
    """In-browser latency of each TFLite file in ``written`` ({format: path}), measured by the page itself.

    Serves ``web_dir`` on a free local port, loads it in headless Chromium
    (``browser``, a Playwright browser, or a new one) and calls the page's
    ``nin.benchmark`` (MediaPipe Tasks, CPU delegate, one image at a time);
    returns {format: {median_ms, mean_ms, runs}}.
    """
    import threading

    from export.serve import make_server

    urls = add_browser_models(web_dir, written)
    server = make_server(web_dir, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        if browser is not None:
            results = _benchmark_page(browser, url, urls, runs)
        else:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                own = launch_chromium(p)
                results = _benchmark_page(own, url, urls, runs)
                own.close()
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(os.path.join(web_dir, "models"), ignore_errors=True)
    for fmt, r in results.items():
        print_fn(f"in-browser latency ({fmt}): median {r['median_ms']:.2f} ms, mean {r['mean_ms']:.2f} ms over {runs} runs")
    return results


def _benchmark_page(browser, url, model_urls, runs):
    page = browser.new_page()
    try:
        page.goto(url)
        page.wait_for_function("window.nin !== undefined", timeout=60000)
        page.evaluate("window.nin.ready")
        return {fmt: page.evaluate("([u, n]) => window.nin.benchmark(u, n)", [model_url, runs])
                for fmt, model_url in model_urls.items()}
    finally:
        page.close()
