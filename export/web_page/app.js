// The page's whole code: no bundler. MediaPipe Tasks for the Web (pinned in index.html's import map)
// runs the int8 model on this device; nothing leaves the browser.
import {ImageClassifier} from "@mediapipe/tasks-vision";

const $ = (id) => document.getElementById(id);
const state = {liveFrames: 0, lastResult: null, classifier: null, config: null};

// Fetch a runtime file with its SRI hash (the browser refuses a mismatch) and hand MediaPipe a
// blob URL of the checked bytes, so the WebAssembly it runs is exactly the pinned version's.
async function verifiedUrl(config, name) {
  const response = await fetch(config.runtime.base + name, {integrity: config.runtime.integrity[name]});
  if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

async function wasmFileset(config) {
  const [loader, binary] = await Promise.all([
    verifiedUrl(config, "wasm/vision_wasm_internal.js"), verifiedUrl(config, "wasm/vision_wasm_internal.wasm")]);
  return {wasmLoaderPath: loader, wasmBinaryPath: binary};
}

let filesetPromise = null;
async function createClassifier(modelUrl) {
  filesetPromise ??= wasmFileset(state.config);
  // Every class's score (maxResults -1): the page ranks them itself (topCategories).
  return ImageClassifier.createFromOptions(await filesetPromise, {
    baseOptions: {modelAssetPath: modelUrl, delegate: "CPU"}, runningMode: "IMAGE", maxResults: -1});
}

// The int8 model's scores are multiples of 1/256, so equal top scores are common on a weak model, and
// MediaPipe's top-k leaves their order unspecified (it even changes with maxResults). Rank by score, then
// by class index, like the exporter's argmax: the page's top-1 is then the one its test accuracy counts.
function topCategories(categories, k = 3) {
  return [...categories].sort((a, b) => b.score - a.score || a.index - b.index).slice(0, k);
}

// Draw `source` the way training turned images into the model's square input (page.json "resize"):
// stretch to the size, centre-crop to its aspect ratio, or fit and pad with black (zeros). Transparent
// pixels are composited on white first, as the training pipeline does (nin_keras.images.ALPHA_BACKGROUND).
function prepare(source, canvas) {
  const [h, w] = state.config.input_size;
  const sw = source.videoWidth || source.naturalWidth || source.width;
  const sh = source.videoHeight || source.naturalHeight || source.height;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = "high";
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
  const mode = state.config.resize;
  let from = [0, 0, sw, sh], to = [0, 0, w, h];
  if (mode === "crop") {
    const scale = Math.min(sw / w, sh / h), cw = w * scale, ch = h * scale;
    from = [(sw - cw) / 2, (sh - ch) / 2, cw, ch];
  } else if (mode === "pad") {
    const scale = Math.min(w / sw, h / sh), dw = sw * scale, dh = sh * scale;
    to = [(w - dw) / 2, (h - dh) / 2, dw, dh];
  }
  ctx.fillStyle = "#fff"; ctx.fillRect(...to);
  ctx.drawImage(source, ...from, ...to);
  return canvas;
}

function classifySource(source, classifier = state.classifier) {
  const t0 = performance.now();
  const canvas = prepare(source, $("input"));
  const t1 = performance.now();
  const result = classifier.classify(canvas);
  const t2 = performance.now();
  const top = topCategories(result.classifications[0].categories).map(
    (c) => ({index: c.index, label: c.categoryName || state.config.labels[c.index], score: c.score}));
  return {top, model_ms: t2 - t1, frame_ms: t2 - t0};
}

function show(result, what) {
  $("top3").replaceChildren(...result.top.map((c) => {
    const li = document.createElement("li");
    li.innerHTML = `<span class="label"></span> <span class="score">${c.score.toFixed(3)}</span>`;
    li.querySelector(".label").textContent = c.label;
    return li;
  }));
  $("latency").textContent = `${what}: ${result.frame_ms.toFixed(1)} ms per frame (model ${result.model_ms.toFixed(1)} ms)`;
  state.lastResult = result;
}

// Photos go through createImageBitmap with EXIF orientation applied, as training saw them: upright.
// colorSpaceConversion "none": the stored pixel values, as training's decoder (tf.io.decode_image) reads
// them; by default the browser converts files with a colour profile or gamma (iCCP, gAMA) to sRGB first.
async function classifyBlob(blob) {
  const bitmap = await createImageBitmap(blob, {
    imageOrientation: "from-image", colorSpaceConversion: "none"});
  try {
    const result = classifySource(bitmap);
    show(result, "photo");
    return result;
  } finally {
    bitmap.close();
  }
}

async function classifyImageUrl(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return classifyBlob(await response.blob());
}

async function startCamera() {
  const video = $("video");
  video.srcObject = await navigator.mediaDevices.getUserMedia(
    {video: {facingMode: {ideal: "environment"}}, audio: false});
  await video.play();
  video.classList.add("on");
  $("start-camera").disabled = true;
  let lastTime = -1;
  const loop = () => {
    if (video.readyState >= 2 && video.currentTime !== lastTime) {
      lastTime = video.currentTime;
      show(classifySource(video), "live");
      state.liveFrames += 1;
    }
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
}

// In-browser latency of any model file (the export's --browser-benchmark): median of `runs` calls on a
// noise image of the model's input size (latency does not depend on the picture).
async function benchmark(modelUrl, runs = 50) {
  const classifier = await createClassifier(modelUrl);
  const [h, w] = state.config.input_size;
  const canvas = Object.assign(document.createElement("canvas"), {width: w, height: h});
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(w, h);
  for (let i = 0; i < pixels.data.length; i++) pixels.data[i] = i % 4 === 3 ? 255 : (i * 2654435761) % 251;
  ctx.putImageData(pixels, 0, 0);
  const times = [];
  for (let i = 0; i < runs + 5; i++) {
    const t0 = performance.now();
    classifier.classify(canvas);
    if (i >= 5) times.push(performance.now() - t0);  // the first calls warm caches up
  }
  classifier.close();
  times.sort((a, b) => a - b);
  return {median_ms: times[Math.floor(times.length / 2)], mean_ms: times.reduce((a, b) => a + b) / times.length,
          runs};
}

function describe(config) {
  const kb = (config.size_bytes / 1024).toFixed(0);
  const acc = config.test_accuracy == null ? "test accuracy not measured"
    : `test accuracy ${(100 * config.test_accuracy).toFixed(1)}% on ${config.test_examples} images`;
  $("name").textContent = config.name;
  $("facts").textContent = `${kb} KB, ${acc}, ${config.labels.length} classes, input ${config.input_size.join("×")} (${config.resize})`;
  $("runtime").textContent = `Runtime: ${config.runtime.package} ${config.runtime.version}` +
    (config.runtime.base.startsWith("./") ? ", served with this page." : ` from ${config.runtime.base}`);
}

async function main() {
  state.config = await (await fetch("./page.json")).json();
  describe(state.config);
  state.classifier = await createClassifier(state.config.model);
  $("photo").addEventListener("change", (e) => {
    if (e.target.files[0]) classifyBlob(e.target.files[0]).catch(fail);
  });
  if (window.isSecureContext && navigator.mediaDevices?.getUserMedia) {
    $("start-camera").disabled = false;
    $("start-camera").addEventListener("click", () => startCamera().catch(fail));
  } else {
    $("camera-note").textContent = "The live camera needs https (or localhost): restart the server with --https. " +
      "The photo button works everywhere.";
  }
}

function fail(error) {
  $("latency").textContent = `error: ${error.message || error}`;
  $("latency").className = "error";
  console.error(error);
}

window.nin = {
  ready: main().then(() => true, (error) => { fail(error); throw error; }),
  classifyImageUrl, benchmark,
  get liveFrames() { return state.liveFrames; },
  get lastResult() { return state.lastResult; },
};
