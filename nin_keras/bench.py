"""``python -m nin_keras.bench``: training, input-pipeline and inference throughput against this machine.

Measures, for one preset and batch size, in one run:

1. the machine's float32 matmul ceiling (GFLOP/s, TensorFlow);
2. model-only training throughput (one batch held in memory), and the
   achieved GFLOP/s from the model's own FLOP count, as a ratio to (1);
3. end-to-end ``fit`` throughput through the real tf.data pipeline from the
   IDX files, as a ratio to (2) (the input pipeline's overhead);
4. the tf.data pipeline alone (images/s);
5. inference: Keras ``predict`` and each TFLite format, images/s at batch 64
   and latency at batch 1.

Settings flags (``--precision``, ``--xla``, thread pools, ``--data-format``,
``--resize-in``, ``--no-cache``) change one default at a time; ``--sweep``
runs every alternative in a fresh process and prints how each compares with
the defaults, which is how the project's defaults were chosen (README).

Each figure is reported as the median of ``--repeats`` runs with min and max.
Ratios (achieved/ceiling, end-to-end/model-only, sweep comparisons) use each
measure's **best** run: on a shared VM some runs get only part of the CPU
(this project's host alternates between full and about half speed), and the
best run is the one closest to what the hardware does, as ``timeit`` advises.
Nothing is asserted: the numbers are for people and README, not for tests.
"""

import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np

from nin_keras.errors import NinError


def _stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def matmul_gflops(size=2048, iterations=10, dtype="float32"):
    """Matrix-multiply GFLOP/s in ``dtype`` on the default device."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size)), dtype)
    b = tf.cast(tf.random.normal((size, size)), dtype)
    fn = tf.function(tf.linalg.matmul, autograph=False)
    fn(a, b).numpy()
    start = time.perf_counter()
    for _ in range(iterations):
        c = fn(a, b)
    c.numpy()
    return 2 * size**3 * iterations / (time.perf_counter() - start) / 1e9


ISA_CAPS = ("AVX2", "AVX512_CORE", "AVX512_CORE_BF16", "AVX512_CORE_AMX", "SSE41")


def cpu_class():
    """This CPU's model name and the vector/matrix features that decide its speed class."""
    from nin_keras.precision import cpu_flags

    flags = cpu_flags()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    keys = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
    return {"model": model, "features": [k for k in keys if k in flags]}


def onednn_isa(env=None):
    """The instruction set oneDNN picks for a convolution in a fresh TensorFlow process (None if unknown).

    Runs a tiny convolution with ``ONEDNN_VERBOSE=1`` and reads its ``isa:``
    line, so ``ONEDNN_MAX_CPU_ISA`` caps can be checked, not assumed.
    """
    import subprocess

    code = ("import tensorflow as tf; x = tf.random.normal((1, 8, 8, 1)); "
            "tf.nn.conv2d(x, tf.random.normal((3, 3, 1, 4)), 1, 'SAME').numpy()")
    full_env = {**os.environ, **(env or {}), "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                             timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    line = next((line for line in out.splitlines() if ",info,cpu,isa:" in line), None)
    return line.split("isa:", 1)[1].strip() if line else None


def _timed_fit(model, dataset, steps, cores_used=None):
    """Seconds for ``steps`` training steps (after one warm-up call that traces the graph).

    Appends the cores the process kept busy on average (CPU time / wall time)
    to ``cores_used``: on a CPU-quota-throttled VM a run that got only one
    core's worth shows up there, not as noise.
    """
    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    if cores_used is not None:
        cores_used.append((time.process_time() - cpu_start) / seconds)
    return seconds


def _configure_threads(intra_op_threads, inter_op_threads):
    """Set TensorFlow's thread pools (before any op runs); return the values in effect (0 = TF's default)."""
    import tensorflow as tf

    if intra_op_threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    if inter_op_threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """The settings the benchmark compares; the defaults are the project's.

    A sweep variant is "the defaults with one field replaced"
    (``dataclasses.replace``), and :meth:`flags` turns any variant into the
    command-line flags of its child process.
    """

    precision: str = "auto"
    xla: bool = False  # XLA jit_compile
    intra_op_threads: int = None  # None: TensorFlow's default
    inter_op_threads: int = None
    data_format: str = "channels_last"
    resize_in: str = "model"  # where resizing presets (d2l) resize: the model's graph or tf.data
    cache: bool = True  # tf.data cache()

    def flags(self):
        """The flags that give these settings: only those that differ from the defaults."""
        out = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value == field.default:
                continue
            option = "--" + field.name.replace("_", "-")
            if isinstance(value, bool):
                out.append(option if value else f"--no-{option[2:]}")
            else:
                out += [option, str(value)]
        return out

    @classmethod
    def from_args(cls, args):
        """The settings an argparse namespace holds."""
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def run_bench(preset="fashion", batch_size=128, steps=30, repeats=3, formats=("float32", "float16", "dynamic", "int8"),
              data_dir=None, settings=None, inference=True, print_fn=print, image_dir=None, image_size=None):
    """Run every measurement; return the results dict.

    ``settings`` (a :class:`BenchSettings`, default the project's) are what
    the benchmark compares (``--sweep`` runs each in a fresh process): XLA,
    compute precision, TensorFlow thread pools, tensor layout, where the
    28->224 resize of resizing presets runs, and tf.data caching. With
    ``image_dir`` the pipeline streams that folder's images (decoded and
    resized in tf.data, at ``image_size`` if given) and the model is the
    preset's at that size.
    """
    import keras
    import tensorflow as tf

    settings = settings or BenchSettings()
    precision, xla, data_format, resize_in, cache = (settings.precision, settings.xla, settings.data_format,
                                                     settings.resize_in, settings.cache)
    intra_op_threads, inter_op_threads = settings.intra_op_threads, settings.inter_op_threads

    threads = _configure_threads(intra_op_threads, inter_op_threads)
    from nin_keras.config import resolve_config
    from nin_keras.data import load_data, make_train_dataset
    from nin_keras.fit import compile_model
    from nin_keras.model import build_nin
    from nin_keras.precision import float32_copy, precision_scope, resolve_precision
    from nin_keras.presets import get_preset
    from nin_keras.report import resource_report

    precision = resolve_precision(precision)
    cfg = resolve_config({"preset": preset, "batch_size": batch_size, "xla": xla, "image_size": image_size})
    kwargs = {**get_preset(preset)["model"], "data_format": data_format}
    folder = None
    if image_dir is not None:
        from nin_keras.config import model_kwargs

        kwargs = {**model_kwargs(cfg), "data_format": data_format}
        folder = load_data(image_dir=image_dir, image_size=kwargs["input_shape"][:2], channels=kwargs["input_shape"][2],
                           print_fn=print_fn)
        kwargs["num_classes"] = len(folder.class_names)
    raw_shape = list(kwargs["input_shape"])
    resize_to = kwargs.get("image_size")
    if resize_in == "pipeline" and resize_to and list(resize_to) != raw_shape[:2]:
        # The model takes already-resized images; tf.data resizes each batch.
        kwargs.update(input_shape=[*resize_to, raw_shape[2]], image_size=None)
    else:
        resize_in, resize_to = "model", None

    def resize_batch(images, labels):
        return tf.image.resize(images, resize_to), labels

    results = {"preset": preset, "batch_size": batch_size, "steps": steps, "repeats": repeats, "xla": xla,
               "precision": precision, "intra_op_threads": threads[0], "inter_op_threads": threads[1],
               "data_format": data_format, "resize_in": resize_in, "cache": cache,
               "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
               "cpu": cpu_class(), "onednn_isa": onednn_isa(), "isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA"),
               "image_dir": image_dir, "images": len(folder.x_train) if folder else None}

    print_fn("1/5 matmul ceiling ...")
    results["matmul_gflops"] = _stats([matmul_gflops() for _ in range(repeats)])
    if precision != "float32":
        results["matmul_gflops_compute_dtype"] = _stats([matmul_gflops(dtype=precision) for _ in range(repeats)])

    from nin_keras.distribute import describe, make_strategy

    # The strategy fit's `--strategy auto` picks, so the bench measures the path fit runs.
    strategy = make_strategy("auto")
    results["strategy"] = describe(strategy)
    with precision_scope(precision), strategy.scope():
        model = build_nin(**kwargs)
        compile_model(model, cfg, steps)
    macs = resource_report(model)["macs"]
    train_flops_per_image = 6 * macs  # forward 2*MACs; backward about twice the forward
    results["model"] = {"parameters": int(model.count_params()), "macs_per_image": int(macs),
                        "train_gflop_per_image": train_flops_per_image / 1e9}

    print_fn("2-3/5 model-only and end-to-end training, interleaved ...")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size, *raw_shape), dtype=np.uint8)
    y = rng.integers(0, 10, (batch_size,), dtype=np.int32)
    in_memory = tf.data.Dataset.from_tensors((x, y))
    if resize_in == "pipeline":
        in_memory = in_memory.map(resize_batch).cache()  # resized once: "data already in memory"
    in_memory = in_memory.repeat()

    if folder is not None:  # streamed from disk: decode, resize (and augment) in tf.data
        images, labels = folder.x_train, folder.y_train
    elif raw_shape[:2] == [28, 28] and raw_shape[2] == 1:
        splits = load_data(data_dir=data_dir)
        images, labels = splits.x_train, splits.y_train
    else:  # presets for other inputs: synthetic data of the right shape through the same pipeline
        images = rng.integers(0, 256, (steps * batch_size * 2, *raw_shape), dtype=np.uint8)
        labels = rng.integers(0, 10, (len(images),), dtype=np.int32)

    def pipeline():
        ds, n_steps = make_train_dataset(images, labels, batch_size, seed=0, cache=cache,
                                         augment=folder is not None and cfg.augment)
        if resize_in == "pipeline":
            ds = ds.map(resize_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        return ds, n_steps

    # Interleaved (A, B, A, B ...) so both measures see the same host
    # conditions; on a throttled VM back-to-back blocks would not.
    model_only, end_to_end, model_only_cores, end_to_end_cores = [], [], [], []
    for _ in range(repeats):
        model_only.append(steps * batch_size / _timed_fit(model, in_memory, steps, model_only_cores))
        end_to_end.append(steps * batch_size / _timed_fit(model, pipeline()[0].repeat(), steps, end_to_end_cores))
    results["model_only_images_per_sec"] = _stats(model_only)
    results["model_only_cores_used"] = _stats(model_only_cores)
    achieved = max(model_only) * train_flops_per_image / 1e9
    results["achieved_gflops"] = achieved
    results["achieved_fraction_of_matmul"] = achieved / results["matmul_gflops"]["max"]
    if precision != "float32":
        results["achieved_fraction_of_compute_dtype_matmul"] = (
            achieved / results["matmul_gflops_compute_dtype"]["max"])
    results["end_to_end_images_per_sec"] = _stats(end_to_end)
    results["end_to_end_cores_used"] = _stats(end_to_end_cores)
    results["end_to_end_fraction_of_model_only"] = max(end_to_end) / max(model_only)

    print_fn("4/5 tf.data pipeline alone ...")
    pipeline_rates = []
    for _ in range(repeats):
        ds, n_steps = pipeline()
        # Up to an epoch, at most 10x the training steps (d2l's 224x224 resize
        # in tf.data would otherwise take minutes per repeat).
        n_steps = min(n_steps, 10 * steps)
        start = time.perf_counter()
        for _batch in ds.take(n_steps):
            pass
        pipeline_rates.append(n_steps * batch_size / (time.perf_counter() - start))
    results["pipeline_images_per_sec"] = _stats(pipeline_rates)
    results["pipeline_fraction_of_model_only"] = max(pipeline_rates) / max(model_only)

    if inference:
        print_fn("5/5 inference ...")
        from nin_keras.images import as_array

        sample = as_array(images[:200])
        if resize_in == "pipeline":
            sample = tf.image.resize(sample, resize_to).numpy()
        # Deployed models compute in float32 (TFLite has no bfloat16 kernels).
        results["inference"] = _bench_inference(float32_copy(model), sample, formats, repeats)
    import resource

    # Peak resident memory of the whole benchmark (ru_maxrss is in KiB on Linux).
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def _bench_inference(model, images, formats, repeats, n_latency=200):
    from export.converter import convert
    from export.evaluator import TFLiteClassifier

    batch = images[:64]
    singles = images[:n_latency]
    out = {}

    def measure(predict_batch, predict_one):
        predict_batch(batch)
        predict_one(singles[:1])
        rates, latencies = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(5):
                predict_batch(batch)
            rates.append(5 * len(batch) / (time.perf_counter() - start))
            times = []
            for i in range(len(singles)):
                t0 = time.perf_counter()
                predict_one(singles[i : i + 1])
                times.append(time.perf_counter() - t0)
            latencies.append(statistics.median(times) * 1e3)
        return {"images_per_sec_batch64": _stats(rates), "latency_ms_batch1": _stats(latencies)}

    out["keras"] = measure(lambda b: model.predict_on_batch(b), lambda b: model.predict_on_batch(b))
    for fmt in formats:
        try:
            blob = convert(model, fmt, images[:200])
            clf = TFLiteClassifier(model_content=blob)
            out[f"tflite_{fmt}"] = {**measure(clf.predict, clf.predict), "size_bytes": len(blob)}
        except Exception as e:  # noqa: BLE001 - e.g. "failed to create XNNPACK runtime" under memory pressure
            # One failed measure is a row saying so; the rest of the table still prints.
            out[f"tflite_{fmt}"] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"}
    return out


def _stat_text(stat, fmt="{:,.0f}"):
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}-{fmt.format(stat['max'])})"


def format_results(r):
    """The table printed at the end of a run."""
    s = _stat_text
    threads = "/".join(str(t or "default") for t in (r["intra_op_threads"], r["inter_op_threads"]))

    def row(label, value):
        return f"{label:<44}{value:>30}"

    lines = [
        f"nin_keras bench: preset {r['preset']}, batch {r['batch_size']}, {r['steps']} steps x {r['repeats']} repeats, "
        f"{r['cpu_count']} CPUs, TF {r['tensorflow']}, Keras {r['keras']}",
        f"CPU: {r['cpu']['model'] or 'unknown'} ({', '.join(r['cpu']['features']) or 'no AVX2'}); oneDNN ISA in use: "
        f"{r['onednn_isa'] or 'unknown'}" + (f" (capped: ONEDNN_MAX_CPU_ISA={r['isa_cap']})" if r["isa_cap"] else ""),
        f"settings: {r['precision']}, XLA {'on' if r['xla'] else 'off'}, intra/inter-op threads {threads}, "
        f"{r['data_format']}, resize in {r['resize_in']}, cache {'on' if r['cache'] else 'off'}, "
        f"strategy: {r.get('strategy', 'default')}"
        + (f"; data: {r['images']:,} images streamed from {r['image_dir']}" if r.get("image_dir") else ""),
        f"model: {r['model']['parameters']:,} params, {r['model']['macs_per_image'] / 1e6:,.1f} M MACs/image, "
        f"{r['model']['train_gflop_per_image']:.3f} GFLOP per training image",
        "",
        row("measure (ratios from best runs)", "median (min-max)"),
        row("1 matmul ceiling float32, GFLOP/s", s(r["matmul_gflops"], "{:,.1f}")),
    ]
    if "matmul_gflops_compute_dtype" in r:
        lines.append(row(f"  matmul ceiling {r['precision']}, GFLOP/s", s(r["matmul_gflops_compute_dtype"], "{:,.1f}")))
    lines += [
        row("2 model-only training, images/s", s(r["model_only_images_per_sec"])),
        row("  CPU cores kept busy", s(r["model_only_cores_used"], "{:.2f}")),
        row("  achieved GFLOP/s (fraction of float32 ceiling)",
            f"{r['achieved_gflops']:,.1f} ({r['achieved_fraction_of_matmul']:.2f})"),
    ]
    if "achieved_fraction_of_compute_dtype_matmul" in r:
        lines.append(row(f"  fraction of the {r['precision']} ceiling",
                         f"{r['achieved_fraction_of_compute_dtype_matmul']:.2f}"))
    lines += [
        row("3 end-to-end fit via tf.data, images/s", s(r["end_to_end_images_per_sec"])),
        row("  CPU cores kept busy", s(r["end_to_end_cores_used"], "{:.2f}")),
        row("  fraction of model-only", f"{r['end_to_end_fraction_of_model_only']:.2f}"),
        row("4 tf.data pipeline alone, images/s", s(r["pipeline_images_per_sec"])),
        row("  multiple of model-only training", f"{r['pipeline_fraction_of_model_only']:.1f}"),
    ]
    if r.get("peak_rss_mib"):
        lines.append(row("peak resident memory, MiB", f"{r['peak_rss_mib']:,.0f}"))
    if r["cpu_count"] > 1:
        for key, label in (("model_only_cores_used", "model-only"), ("end_to_end_cores_used", "end-to-end")):
            if r[key]["max"] < 1.3:
                lines.append(f"warning: every {label} run kept only {r[key]['max']:.2f} of {r['cpu_count']} cores busy "
                             "(host CPU quota?); ratios that use it are unreliable: rerun with more --repeats")
    if "inference" in r:
        lines += ["", format_inference(r["inference"])]
    return "\n".join(lines)


def format_inference(inference):
    """The inference part of the table: one row per runtime, or why it failed."""
    s = _stat_text
    lines = [f"{'5 inference':<22}{'images/s @64':>26}{'latency ms @1':>26}{'size KB':>10}"]
    for name, v in inference.items():
        if "error" in v:
            lines.append(f"  {name:<20}failed: {v['error']}")
            continue
        size = f"{v['size_bytes'] / 1024:,.0f}" if "size_bytes" in v else "-"
        lines.append(f"  {name:<20}{s(v['images_per_sec_batch64']):>26}{s(v['latency_ms_batch1'], '{:.3f}'):>26}{size:>10}")
    return "\n".join(lines)


# ----------------------------------------------------------------------- sweep

#: Settings ``--sweep`` compares against the defaults, one fresh process each
#: (thread pools can only be set before TensorFlow starts).
# The sweep's variants: each is the defaults with these fields replaced.
SWEEP_CHANGES = [
    ("xla", {"xla": True}),
    ("intra-op 1 thread", {"intra_op_threads": 1}),
    ("inter-op 1 thread", {"inter_op_threads": 1}),
    ("intra 1 / inter 2", {"intra_op_threads": 1, "inter_op_threads": 2}),
    ("channels_first", {"data_format": "channels_first"}),
    ("no tf.data cache", {"cache": False}),
]


def sweep_variants(preset, default_precision):
    """(name, extra flags) of every sweep run for ``preset``: defaults first."""
    from nin_keras.precision import PRECISIONS
    from nin_keras.presets import get_preset

    defaults = BenchSettings()
    changes = [(p, {"precision": p}) for p in PRECISIONS[1:] if p != default_precision] + SWEEP_CHANGES
    if get_preset(preset)["model"].get("image_size"):
        changes.append(("resize in tf.data", {"resize_in": "pipeline"}))
    return [("defaults", [])] + [(name, dataclasses.replace(defaults, **change).flags()) for name, change in changes]


def run_sweep(base_argv, preset, timeout=900, print_fn=print):
    """Run the benchmark once per setting, each in a fresh process.

    Returns [{"name", "flags", "result"}]; a setting that fails or runs past
    ``timeout`` seconds gets ``{"error": ...}`` as its result (a finding, not
    a crash: mixed float16 on a CPU, for one, hits TensorFlow's very slow
    float16 convolution-gradient kernels).
    """
    import subprocess
    import tempfile

    from nin_keras.precision import resolve_precision

    default_precision = resolve_precision("auto")
    variants = sweep_variants(preset, default_precision)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nin_keras-sweep-") as tmp:
        for i, (name, flags) in enumerate(variants, start=1):
            out = os.path.join(tmp, f"{i}.json")
            cmd = [sys.executable, "-m", "nin_keras.bench", *base_argv, "--no-inference", "--json", out, *flags]
            print_fn(f"sweep {i}/{len(variants)}: {name} {' '.join(flags)}".rstrip() + " ...", flush=True)
            start = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                result = {"error": f"timed out after {timeout:.0f} s"}
            else:
                if proc.returncode == 0:
                    with open(out) as f:
                        result = json.load(f)
                else:
                    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
                    errors = [line for line in lines if line.startswith("error:")]
                    result = {"error": (errors or lines or [f"exit {proc.returncode}"])[-1]}
            result["wall_seconds"] = time.perf_counter() - start
            summary = result.get("error") or (f"training {result['model_only_images_per_sec']['max']:,.0f} images/s "
                                              f"model-only, {result['end_to_end_images_per_sec']['max']:,.0f} end-to-end")
            print_fn(f"  {summary} ({result['wall_seconds']:.0f} s)", flush=True)
            rows.append({"name": name, "flags": flags, "result": result})
    return rows


def format_sweep(rows):
    """Comparison table: each setting's throughput as a multiple of the defaults'."""
    base = rows[0]["result"]
    head = (f"{'setting (best runs)':<22}{'model-only img/s':>18}{'end-to-end img/s':>18}{'pipeline img/s':>16}"
            f"{'of fp32 ceil':>13}{'vs defaults':>13}")
    lines = [head, "-" * len(head)]
    for row in rows:
        r = row["result"]
        if "error" in r:
            lines.append(f"{row['name']:<22}  failed: {r['error'][:90]}")
            continue
        ratio = (r["end_to_end_images_per_sec"]["max"] / base["end_to_end_images_per_sec"]["max"]
                 if "error" not in base else float("nan"))
        lines.append(f"{row['name']:<22}{r['model_only_images_per_sec']['max']:>18,.0f}"
                     f"{r['end_to_end_images_per_sec']['max']:>18,.0f}"
                     f"{r['pipeline_images_per_sec']['max']:>16,.0f}"
                     f"{r['achieved_fraction_of_matmul']:>13.2f}{ratio:>12.2f}x")
    if "error" not in base:
        lines.append(f"defaults: {base['precision']}, XLA off, TF thread pools, {base['data_format']}, "
                     f"resize in {base['resize_in']}, cache on; 'vs defaults' compares end-to-end training")
    return "\n".join(lines)


def build_parser():
    """The ``nin_keras.bench`` command-line parser."""
    from nin_keras.cli import OneLineParser
    from nin_keras.precision import PRECISIONS
    from nin_keras.presets import PRESETS

    # No abbreviations: --sweep re-runs this command line minus --sweep/--json.
    parser = OneLineParser(prog="python -m nin_keras.bench", description=__doc__.split("\n\n")[0],
                           allow_abbrev=False)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fashion")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="training steps per measurement (default 30)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--formats", default="float32,float16,dynamic,int8",
                        help="TFLite formats to time, comma-separated ('' for none)")
    parser.add_argument("--data-dir")
    parser.add_argument("--image-dir", help="measure the streaming pipeline over this image folder (one sub-folder "
                                            "per class; e.g. made by python -m nin_keras.images)")
    parser.add_argument("--image-size", type=int, help="with --image-dir: the model's input size (default: the preset's)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--isa-cap", choices=ISA_CAPS,
                        help="cap oneDNN's instruction set (sets ONEDNN_MAX_CPU_ISA before TensorFlow starts): "
                             "AVX2 measures an AMX/AVX-512 machine like an ordinary laptop or VM; add "
                             "NIN_KERAS_PRECISION=float32 (or --precision float32) for its float32 path")
    settings = parser.add_argument_group("settings compared (defaults are the project's)")
    settings.add_argument("--precision", choices=PRECISIONS, default="auto")
    settings.add_argument("--xla", action="store_true", help="compile training with XLA (jit_compile)")
    settings.add_argument("--intra-op-threads", type=int, help="TensorFlow intra-op threads (default: TF's)")
    settings.add_argument("--inter-op-threads", type=int, help="TensorFlow inter-op threads (default: TF's)")
    # nin_keras.model.DATA_FORMATS, spelled out: importing the model module
    # loads TensorFlow, and a usage error should not wait for (or print) that.
    settings.add_argument("--data-format", choices=("channels_last", "channels_first"), default="channels_last")
    settings.add_argument("--resize-in", choices=("model", "pipeline"), default="model",
                          help="where resizing presets (d2l) resize: in the model's graph or in tf.data")
    settings.add_argument("--no-cache", dest="cache", action="store_false", help="tf.data without cache()")
    settings.add_argument("--no-inference", dest="inference", action="store_false", help="skip step 5")
    parser.add_argument("--sweep", action="store_true",
                        help="run once per setting above (fresh process each) and print a comparison table")
    parser.add_argument("--sweep-timeout", type=float, default=900,
                        help="seconds before a sweep setting is given up as too slow (default 900)")
    return parser


def main(argv=None):
    """CLI entry point."""
    from nin_keras.cli import run_cli

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)

    if args.isa_cap:
        # Before TensorFlow loads (read once, at oneDNN's start); sweep children inherit it.
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.isa_cap

    def body():
        from nin_keras.settings import validate_numeric_args

        validate_numeric_args(args)
        from nin_keras.io import atomic_write_text

        if args.sweep:
            base_argv = [a for a in argv if a != "--sweep" and not a.startswith(("--json=", "--sweep-timeout="))]
            for flag in ("--json", "--sweep-timeout"):
                if flag in base_argv:
                    at = base_argv.index(flag)
                    del base_argv[at:at + 2]
            rows = run_sweep(base_argv, args.preset, args.sweep_timeout)
            print(format_sweep(rows))
            if args.json:
                atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
            # A failed alternative is a finding (shown in the table); failed defaults are an error.
            if "error" in rows[0]["result"]:
                raise NinError(f"the benchmark with default settings failed: {rows[0]['result']['error']}")
            return 0
        formats = tuple(f for f in args.formats.split(",") if f)
        results = run_bench(args.preset, args.batch_size, args.steps, args.repeats, formats, args.data_dir,
                            BenchSettings.from_args(args), args.inference, image_dir=args.image_dir,
                            image_size=args.image_size)
        print(format_results(results))
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
