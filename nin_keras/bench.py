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
from nin_keras.machine import (ISA_CAPS, configure_threads, cpu_class, matmul_gflops, onednn_isa,  # noqa: F401
                               read_onednn_isa, start_onednn_isa_probe, stop_probe)


def _stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def _timed_fit(model, dataset, steps, cores_used=None):
    """Seconds for ``steps`` training steps (after one warm-up call that traces the graph).

    Appends the cores the process kept busy on average (CPU time / wall time)
    to ``cores_used``: on a CPU-quota-throttled VM a run that got only one
    core's worth shows up there, not as noise.
    """
    # shuffle=False: the dataset is tf.data's (Keras would warn that it ignores shuffle=True).
    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    if cores_used is not None:
        cores_used.append((time.process_time() - cpu_start) / seconds)
    return seconds


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
    fused_batch_norm: bool = True  # nin_keras.fused_bn (False: Keras 3's unfused BatchNorm ops)
    # TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD: the thread that runs an op also computes a share of its oneDNN
    # kernel instead of waiting for the intra-op pool (Intel's TensorFlow benchmark scripts set it).
    onednn_caller_thread: bool = False

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


@dataclasses.dataclass
class Bench:
    """One benchmark as it moves through :func:`run_bench`'s stages: what to build, the data, the results."""

    cfg: object
    settings: BenchSettings
    steps: int
    repeats: int
    precision: str
    kwargs: dict
    raw_shape: list
    resize_to: object = None
    folder: object = None
    images: object = None
    labels: object = None
    model: object = None
    model_only: list = None
    results: dict = dataclasses.field(default_factory=dict)


#: Read by TensorFlow once, at its first oneDNN op ("1" or "true" turns it on).
CALLER_THREAD_VARIABLE = "TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD"


def set_onednn_environment(settings):
    """The settings TensorFlow's oneDNN reads from the environment once, at its first op (none has run yet)."""
    if settings.onednn_caller_thread:
        os.environ[CALLER_THREAD_VARIABLE] = "1"


def onednn_caller_thread_on():
    """Whether TensorFlow's oneDNN runs on the caller thread in this process: the flag's, or the user's own
    environment's (TensorFlow reads "1" or "true"; it acts only with one intra-op thread per CPU)."""
    return os.environ.get(CALLER_THREAD_VARIABLE, "").lower() in ("1", "true")


def run_bench(preset="fashion", batch_size=128, steps=30, repeats=3, *, formats=("float32", "float16", "dynamic", "int8"),
              data_dir=None, settings=None, inference=True, print_fn=print, image_dir=None, image_size=None,
              config_file=None):
    """Run every measurement; return the results dict.

    ``settings`` (a :class:`BenchSettings`, default the project's) are what
    the benchmark compares (``--sweep`` runs each in a fresh process): XLA,
    compute precision, TensorFlow thread pools, tensor layout, where the
    28->224 resize of resizing presets runs, and tf.data caching. The network
    is the one fit would build (the preset's, or a ``config_file``'s model
    section, e.g. a run's ``config.json``). With ``image_dir`` the pipeline
    streams that folder's images (decoded and resized in tf.data, at
    ``image_size`` if given).
    """
    settings = settings or BenchSettings()
    # The ISA probe is a TensorFlow process of its own: started first, its import overlaps this process's
    # (about 4 s less per bench), and it has finished before anything is timed.
    probe = start_onednn_isa_probe()
    set_onednn_environment(settings)
    try:
        threads = configure_threads(settings.intra_op_threads, settings.inter_op_threads)
        bench = _plan(preset, batch_size, steps, repeats, settings=settings, image_dir=image_dir,
                      image_size=image_size, config_file=config_file, print_fn=print_fn)
        bench.results.update(_describe(bench, threads, image_dir, read_onednn_isa(probe)))
    finally:
        stop_probe(probe)  # an error or Ctrl-C came first: do not wait for it
    print_fn("1/5 matmul ceiling ...")
    _matmul_ceiling(bench)
    _build(bench)
    print_fn("2-3/5 model-only and end-to-end training, interleaved ...")
    _load_images(bench, data_dir)
    _training_throughput(bench)
    print_fn("4/5 tf.data pipeline alone ...")
    _pipeline_throughput(bench)
    if inference:
        print_fn("5/5 inference ...")
        _inference(bench, formats)
    import resource

    # Peak resident memory of the whole benchmark (ru_maxrss is in KiB on Linux).
    bench.results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return bench.results


def _plan(preset, batch_size, steps, repeats, *, settings, image_dir, image_size, config_file, print_fn):
    """Resolve the config and the network's arguments (the path fit takes); load an image folder's list."""
    from nin_keras.config import model_kwargs, resolve_config
    from nin_keras.data import load_data
    from nin_keras.precision import resolve_precision

    overrides = {"preset": preset, "batch_size": batch_size, "xla": settings.xla, "image_size": image_size,
                 "fused_batch_norm": settings.fused_batch_norm}
    cfg = resolve_config(overrides, config_file, print_fn=print_fn)
    kwargs = {**model_kwargs(cfg), "data_format": settings.data_format}
    folder = None
    if image_dir is not None:
        folder = load_data(image_dir=image_dir, image_size=kwargs["input_shape"][:2],
                           channels=kwargs["input_shape"][2], print_fn=print_fn)
        kwargs["num_classes"] = len(folder.class_names)
    bench = Bench(cfg, settings, steps, repeats, resolve_precision(settings.precision), kwargs,
                  list(kwargs["input_shape"]), folder=folder)
    resize_to = kwargs.get("image_size")
    if settings.resize_in == "pipeline" and resize_to and list(resize_to) != bench.raw_shape[:2]:
        # The model takes already-resized images; tf.data resizes each batch.
        kwargs.update(input_shape=[*resize_to, bench.raw_shape[2]], image_size=None)
        bench.resize_to = resize_to
    return bench


def _describe(bench, threads, image_dir, isa):
    """The results' header: what was measured, on what software and machine."""
    import keras
    import tensorflow as tf

    from nin_keras.precision import onednn_cap, onednn_cap_variable

    cfg, settings = bench.cfg, bench.settings
    return {"preset": cfg.preset, "batch_size": cfg.batch_size, "steps": bench.steps, "repeats": bench.repeats,
            "xla": settings.xla, "precision": bench.precision, "intra_op_threads": threads[0],
            "inter_op_threads": threads[1], "data_format": settings.data_format,
            "resize_in": "pipeline" if bench.resize_to else "model", "cache": settings.cache,
            "fused_batch_norm": settings.fused_batch_norm, "onednn_caller_thread": onednn_caller_thread_on(),
            "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "cpu": cpu_class(), "onednn_isa": isa, "isa_cap": onednn_cap() or None,
            "isa_cap_variable": onednn_cap_variable(),
            "image_dir": image_dir, "images": len(bench.folder.x_train) if bench.folder else None}


def _matmul_ceiling(bench):
    """(1) the float32 matmul ceiling, and the compute precision's when it is not float32."""
    results = bench.results
    results["matmul_gflops"] = _stats([matmul_gflops() for _ in range(bench.repeats)])
    if bench.precision != "float32":
        results["matmul_gflops_compute_dtype"] = _stats([matmul_gflops(dtype=bench.precision)
                                                         for _ in range(bench.repeats)])


def _build(bench):
    """The model under the strategy fit's ``--strategy auto`` picks, so the bench measures the path fit runs."""
    from nin_keras.distribute import describe, make_strategy
    from nin_keras.fit import compile_model
    from nin_keras.fused_bn import forward_in_use
    from nin_keras.model import build_nin
    from nin_keras.precision import precision_scope
    from nin_keras.report import resource_report

    strategy = make_strategy("auto")
    bench.results["strategy"] = describe(strategy)
    with precision_scope(bench.precision), strategy.scope():
        bench.model = build_nin(**bench.kwargs)
        compile_model(bench.model, bench.cfg, bench.steps)
    bench.results["batch_norm_forward"] = forward_in_use(bench.model)
    macs = resource_report(bench.model)["macs"]
    bench.results["model"] = {"parameters": int(bench.model.count_params()), "macs_per_image": int(macs),
                              # forward 2*MACs; backward about twice the forward
                              "train_gflop_per_image": 6 * macs / 1e9}


def _load_images(bench, data_dir):
    """The training images the pipeline reads: the folder's, Fashion-MNIST's, or synthetic of the right shape."""
    from nin_keras.data import load_data

    if bench.folder is not None:  # streamed from disk: decode, resize (and augment) in tf.data
        bench.images, bench.labels = bench.folder.x_train, bench.folder.y_train
    elif bench.raw_shape[:2] == [28, 28] and bench.raw_shape[2] == 1:
        splits = load_data(data_dir=data_dir)
        bench.images, bench.labels = splits.x_train, splits.y_train
    else:  # presets for other inputs: synthetic data of the right shape through the same pipeline
        rng = np.random.default_rng(1)
        bench.images = rng.integers(0, 256, (bench.steps * bench.cfg.batch_size * 2, *bench.raw_shape), dtype=np.uint8)
        bench.labels = rng.integers(0, 10, (len(bench.images),), dtype=np.int32)


def _pipeline(bench):
    """The training tf.data pipeline fit would use (plus the batch resize when measured in tf.data)."""
    import tensorflow as tf

    from nin_keras.data import make_train_dataset

    ds, n_steps = make_train_dataset(bench.images, bench.labels, bench.cfg.batch_size, seed=0,
                                     cache=bench.settings.cache, augment=bench.folder is not None and bench.cfg.augment)
    if bench.resize_to:
        ds = ds.map(lambda x, y: (tf.image.resize(x, bench.resize_to), y),
                    num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return ds, n_steps


def _training_throughput(bench):
    """(2) model-only training from one batch held in memory, and (3) end-to-end through tf.data, interleaved."""
    import tensorflow as tf

    from nin_keras.data.pipeline import in_memory_options

    batch_size, steps, results = bench.cfg.batch_size, bench.steps, bench.results
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size, *bench.raw_shape), dtype=np.uint8)
    y = rng.integers(0, bench.model.output_shape[-1], (batch_size,), dtype=np.int32)  # a folder's classes too
    in_memory = tf.data.Dataset.from_tensors((x, y)).with_options(in_memory_options())
    if bench.resize_to:  # resized once: "data already in memory"
        in_memory = in_memory.map(lambda a, b: (tf.image.resize(a, bench.resize_to), b)).cache()
    in_memory = in_memory.repeat()
    # Interleaved (A, B, A, B ...) so both measures see the same host
    # conditions; on a throttled VM back-to-back blocks would not.
    model_only, end_to_end, model_only_cores, end_to_end_cores = [], [], [], []
    for _ in range(bench.repeats):
        model_only.append(steps * batch_size / _timed_fit(bench.model, in_memory, steps, model_only_cores))
        end_to_end.append(steps * batch_size / _timed_fit(bench.model, _pipeline(bench)[0].repeat(), steps,
                                                          end_to_end_cores))
    bench.model_only = model_only
    results["model_only_images_per_sec"] = _stats(model_only)
    results["model_only_cores_used"] = _stats(model_only_cores)
    achieved = max(model_only) * results["model"]["train_gflop_per_image"]
    results["achieved_gflops"] = achieved
    results["achieved_fraction_of_matmul"] = achieved / results["matmul_gflops"]["max"]
    # Median against median: what a run typically gets on a host whose speed swings.
    results["achieved_fraction_of_matmul_median"] = (statistics.median(model_only) * results["model"][
        "train_gflop_per_image"] / results["matmul_gflops"]["median"])
    if "matmul_gflops_compute_dtype" in results:
        results["achieved_fraction_of_compute_dtype_matmul"] = achieved / results["matmul_gflops_compute_dtype"]["max"]
    results["end_to_end_images_per_sec"] = _stats(end_to_end)
    results["end_to_end_cores_used"] = _stats(end_to_end_cores)
    results["end_to_end_fraction_of_model_only"] = max(end_to_end) / max(model_only)


def _pipeline_throughput(bench):
    """(4) the tf.data pipeline alone."""
    rates = []
    for _ in range(bench.repeats):
        ds, n_steps = _pipeline(bench)
        # Up to an epoch, at most 10x the training steps (d2l's 224x224 resize
        # in tf.data would otherwise take minutes per repeat).
        n_steps = min(n_steps, 10 * bench.steps)
        start = time.perf_counter()
        for _batch in ds.take(n_steps):
            pass
        rates.append(n_steps * bench.cfg.batch_size / (time.perf_counter() - start))
    bench.results["pipeline_images_per_sec"] = _stats(rates)
    bench.results["pipeline_fraction_of_model_only"] = max(rates) / max(bench.model_only)


def _inference(bench, formats):
    """(5) Keras and every TFLite format, on 200 of the training images."""
    import tensorflow as tf

    from nin_keras.data.folders import as_array
    from nin_keras.precision import float32_copy

    sample = as_array(bench.images[:200])
    if bench.resize_to:
        sample = tf.image.resize(sample, bench.resize_to).numpy()
    # Deployed models compute in float32 (TFLite has no bfloat16 kernels).
    bench.results["inference"] = _bench_inference(float32_copy(bench.model), sample, formats, bench.repeats)


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


def cap_text(r):
    """`` (capped: DNNL_MAX_CPU_ISA=AVX2)``: the variable the run was capped with, "" if none (results written
    before the variable was recorded name ``ONEDNN_MAX_CPU_ISA``, the only one read then)."""
    if not r.get("isa_cap"):
        return ""
    return f" (capped: {r.get('isa_cap_variable') or 'ONEDNN_MAX_CPU_ISA'}={r['isa_cap']})"


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
        f"{r['onednn_isa'] or 'unknown'}{cap_text(r)}",
        f"settings: {r['precision']}, XLA {'on' if r['xla'] else 'off'}, intra/inter-op threads {threads}, "
        f"{r['data_format']}, resize in {r['resize_in']}, cache {'on' if r['cache'] else 'off'}, "
        f"BatchNorm {'fused' if r.get('fused_batch_norm', True) else 'unfused'}"
        + (" (forward in TensorFlow's ops)" if r.get("batch_norm_forward") == "split" else "") + ", "
        + ("oneDNN on the caller thread, " if r.get("onednn_caller_thread") else "") +
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
        row("  fraction of the ceiling, median runs", f"{r['achieved_fraction_of_matmul_median']:.2f}"),
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
    ("unfused BatchNorm", {"fused_batch_norm": False}),
    ("oneDNN on the caller thread", {"onednn_caller_thread": True}),
]


def sweep_variants(preset, default_precision, settings=None, config_file=None):
    """(name, flags) of every sweep run for ``preset``: ``settings`` (default: the project's) first, then
    each variant, ``settings`` with one change, as the flags that give it."""
    from nin_keras.config import model_kwargs, resolve_config
    from nin_keras.precision import PRECISIONS

    defaults = settings or BenchSettings()
    changes = [(p, {"precision": p}) for p in PRECISIONS[1:] if p != default_precision] + SWEEP_CHANGES
    if model_kwargs(resolve_config({"preset": preset}, config_file, print_fn=lambda *a: None)).get("image_size"):
        changes.append(("resize in tf.data", {"resize_in": "pipeline"}))
    return [("defaults", defaults.flags())] + [(name, dataclasses.replace(defaults, **change).flags())
                                                for name, change in changes]


def base_flags(args):
    """The command line of a sweep's child: what to measure (preset, sizes, data, ISA cap), no settings."""
    flags = ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--repeats", str(args.repeats),
             "--formats", args.formats]
    for name in ("preset", "data_dir", "image_dir", "image_size", "isa_cap", "config"):
        if getattr(args, name) is not None:
            flags += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return flags


def run_sweep(base_argv, preset, timeout=900, *, print_fn=print, settings=None, config_file=None):
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
    variants = sweep_variants(preset, default_precision, settings, config_file)
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
                     f"resize in {base['resize_in']}, cache on, fused BatchNorm; 'vs defaults' compares "
                     "end-to-end training")
    return "\n".join(lines)


def build_parser():
    """The ``nin_keras.bench`` command-line parser."""
    from nin_keras.cli import OneLineParser
    from nin_keras.precision import PRECISIONS
    from nin_keras.presets import PRESETS

    parser = OneLineParser(prog="python -m nin_keras.bench", description=__doc__.split("\n\n")[0],
                           allow_abbrev=False)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="the preset (default: fashion, or --config's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="training steps per measurement (default 30)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--formats", default="float32,float16,dynamic,int8",
                        help="TFLite formats to time, comma-separated ('' for none)")
    parser.add_argument("--data-dir")
    parser.add_argument("--image-dir", help="measure the streaming pipeline over this image folder (one sub-folder "
                                            "per class; e.g. made by python -m nin_keras.images)")
    parser.add_argument("--image-size", type=int, help="with --image-dir: the model's input size (default: the preset's)")
    parser.add_argument("--config", help="measure the network of this config file (e.g. a run's config.json) "
                                         "instead of the preset's")
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
    settings.add_argument("--no-fused-batch-norm", dest="fused_batch_norm", action="store_false",
                          help="Keras 3's unfused BatchNorm ops instead of TensorFlow's fused kernel")
    settings.add_argument("--onednn-caller-thread", action="store_true",
                          help="TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD=1: an op's own thread computes a share of its "
                               "oneDNN kernels")
    settings.add_argument("--no-inference", dest="inference", action="store_false", help="skip step 5")
    parser.add_argument("--sweep", action="store_true",
                        help="run once per setting above (fresh process each) and print a comparison table")
    parser.add_argument("--sweep-timeout", type=float, default=900,
                        help="seconds before a sweep setting or a --peer run is given up as too slow (default 900)")
    peer = parser.add_argument_group("against another framework (nin_keras.peer)")
    peer.add_argument("--peer", metavar="COMMAND",
                      help="train the same network with this command too (e.g. \".venv-torch/bin/python "
                           "benchmarks/torch_peer.py\"), interleaved with nin_keras in fresh processes, in float32 "
                           "and, where the CPU has it, bfloat16 (--precision picks one); prints medians and ratios")
    peer.add_argument("--rounds", type=int, default=3, help="--peer: interleaved rounds per precision (default 3)")
    return parser


def main(argv=None):
    """CLI entry point."""
    from nin_keras.cli import run_cli

    args = build_parser().parse_args(argv)

    if args.isa_cap:
        # Before TensorFlow loads (read once, at oneDNN's start); sweep children inherit it.
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.isa_cap

    def body():
        from nin_keras.settings import validate_numeric_args

        validate_numeric_args(args)
        from nin_keras.io import atomic_write_text

        if args.peer:
            from nin_keras.peer import comparison_error, format_peer, run_peer_comparison

            results = run_peer_comparison(args, timeout=args.sweep_timeout)
            print(format_peer(results))
            if args.json:
                atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
            failure = comparison_error(results)
            if failure:
                raise NinError(failure)
            return 0
        if args.sweep:
            rows = run_sweep(base_flags(args), args.preset, args.sweep_timeout,
                             settings=BenchSettings.from_args(args), config_file=args.config)
            print(format_sweep(rows))
            if args.json:
                atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
            # A failed alternative is a finding (shown in the table); failed defaults are an error.
            if "error" in rows[0]["result"]:
                raise NinError(f"the benchmark with default settings failed: {rows[0]['result']['error']}")
            return 0
        formats = tuple(f for f in args.formats.split(",") if f)
        results = run_bench(args.preset, args.batch_size, args.steps, args.repeats, formats=formats,
                            data_dir=args.data_dir, settings=BenchSettings.from_args(args), inference=args.inference,
                            image_dir=args.image_dir, image_size=args.image_size, config_file=args.config)
        print(format_results(results))
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
