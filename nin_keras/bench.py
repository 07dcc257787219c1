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

Each figure is the median of ``--repeats`` runs, with min and max. Nothing is
asserted: the numbers are for people and README, not for tests.
"""

import json
import os
import statistics
import sys
import time

import numpy as np

from nin_keras.errors import NinError


def _stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def matmul_gflops(size=2048, iterations=10):
    """float32 matmul GFLOP/s on the default device."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    fn = tf.function(lambda a, b: tf.matmul(a, b))
    fn(a, b).numpy()
    start = time.perf_counter()
    for _ in range(iterations):
        c = fn(a, b)
    c.numpy()
    return 2 * size**3 * iterations / (time.perf_counter() - start) / 1e9


def _timed_fit(model, dataset, steps):
    """images/s of ``steps`` training steps (after one warm-up call that traces the graph)."""
    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return time.perf_counter() - start


def run_bench(preset="fashion", batch_size=128, steps=30, repeats=3, formats=("float32", "float16", "dynamic", "int8"),
              data_dir=None, xla=False, print_fn=print):
    """Run every measurement; return the results dict."""
    import keras
    import tensorflow as tf

    from nin_keras.config import resolve_config
    from nin_keras.data import load_data, make_train_dataset
    from nin_keras.fit import compile_model
    from nin_keras.model import build_nin
    from nin_keras.presets import get_preset
    from nin_keras.report import resource_report

    cfg = resolve_config({"preset": preset, "batch_size": batch_size, "xla": xla})
    kwargs = get_preset(preset)["model"]
    results = {"preset": preset, "batch_size": batch_size, "steps": steps, "repeats": repeats, "xla": xla,
               "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__}

    print_fn("1/5 matmul ceiling ...")
    results["matmul_gflops"] = _stats([matmul_gflops() for _ in range(repeats)])

    model = build_nin(**kwargs)
    compile_model(model, cfg, steps)
    macs = resource_report(model)["macs"]
    train_flops_per_image = 6 * macs  # forward 2*MACs; backward about twice the forward
    results["model"] = {"parameters": int(model.count_params()), "macs_per_image": int(macs),
                        "train_gflop_per_image": train_flops_per_image / 1e9}

    print_fn("2/5 model-only training ...")
    shape = kwargs["input_shape"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size, *shape), dtype=np.uint8)
    y = rng.integers(0, 10, (batch_size,), dtype=np.int32)
    in_memory = tf.data.Dataset.from_tensors((x, y)).repeat()
    model_only = [steps * batch_size / _timed_fit(model, in_memory, steps) for _ in range(repeats)]
    results["model_only_images_per_sec"] = _stats(model_only)
    achieved = statistics.median(model_only) * train_flops_per_image / 1e9
    results["achieved_gflops"] = achieved
    results["achieved_fraction_of_matmul"] = achieved / results["matmul_gflops"]["median"]

    print_fn("3/5 end-to-end fit through tf.data ...")
    if shape[:2] == [28, 28] and shape[2] == 1:
        splits = load_data(data_dir=data_dir)
        images, labels = splits.x_train, splits.y_train
    else:  # presets for other inputs: synthetic data of the right shape through the same pipeline
        images = rng.integers(0, 256, (steps * batch_size * 2, *shape), dtype=np.uint8)
        labels = rng.integers(0, 10, (len(images),), dtype=np.int32)
    pipeline, _ = make_train_dataset(images, labels, batch_size, seed=0)
    pipeline = pipeline.repeat()
    end_to_end = [steps * batch_size / _timed_fit(model, pipeline, steps) for _ in range(repeats)]
    results["end_to_end_images_per_sec"] = _stats(end_to_end)
    results["end_to_end_fraction_of_model_only"] = statistics.median(end_to_end) / statistics.median(model_only)

    print_fn("4/5 tf.data pipeline alone ...")
    pipeline_rates = []
    for _ in range(repeats):
        ds, n_steps = make_train_dataset(images, labels, batch_size, seed=0)
        start = time.perf_counter()
        for _batch in ds:
            pass
        pipeline_rates.append(n_steps * batch_size / (time.perf_counter() - start))
    results["pipeline_images_per_sec"] = _stats(pipeline_rates)
    results["pipeline_fraction_of_model_only"] = statistics.median(pipeline_rates) / statistics.median(model_only)

    print_fn("5/5 inference ...")
    results["inference"] = _bench_inference(model, images, formats, repeats)
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
        blob = convert(model, fmt, images[:200])
        clf = TFLiteClassifier(model_content=blob)
        out[f"tflite_{fmt}"] = {**measure(clf.predict, clf.predict), "size_bytes": len(blob)}
    return out


def format_results(r):
    """The table printed at the end of a run."""
    def s(stat, fmt="{:,.0f}"):
        return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}-{fmt.format(stat['max'])})"

    lines = [
        f"nin_keras bench: preset {r['preset']}, batch {r['batch_size']}, {r['steps']} steps x {r['repeats']} repeats, "
        f"{r['cpu_count']} CPUs, TF {r['tensorflow']}, Keras {r['keras']}, XLA {'on' if r['xla'] else 'off'}",
        f"model: {r['model']['parameters']:,} params, {r['model']['macs_per_image'] / 1e6:,.1f} M MACs/image, "
        f"{r['model']['train_gflop_per_image']:.3f} GFLOP per training image",
        "",
        f"{'measure':<44}{'median (min-max)':>30}",
        f"{'1 matmul ceiling, GFLOP/s':<44}{s(r['matmul_gflops'], '{:,.1f}'):>30}",
        f"{'2 model-only training, images/s':<44}{s(r['model_only_images_per_sec']):>30}",
        f"{'  achieved GFLOP/s (fraction of ceiling)':<44}{r['achieved_gflops']:>20,.1f} ({r['achieved_fraction_of_matmul']:.2f})",
        f"{'3 end-to-end fit via tf.data, images/s':<44}{s(r['end_to_end_images_per_sec']):>30}",
        f"{'  fraction of model-only':<44}{r['end_to_end_fraction_of_model_only']:>30.2f}",
        f"{'4 tf.data pipeline alone, images/s':<44}{s(r['pipeline_images_per_sec']):>30}",
        f"{'  multiple of model-only training':<44}{r['pipeline_fraction_of_model_only']:>30.1f}",
        "",
        f"{'5 inference':<22}{'images/s @64':>26}{'latency ms @1':>26}{'size KB':>10}",
    ]
    for name, v in r["inference"].items():
        size = f"{v['size_bytes'] / 1024:,.0f}" if "size_bytes" in v else "-"
        lines.append(f"  {name:<20}{s(v['images_per_sec_batch64']):>26}"
                     f"{s(v['latency_ms_batch1'], '{:.3f}'):>26}{size:>10}")
    return "\n".join(lines)


def main(argv=None):
    """CLI entry point."""
    from nin_keras.cli import OneLineParser, run_cli
    from nin_keras.presets import PRESETS

    parser = OneLineParser(prog="python -m nin_keras.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fashion")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="training steps per measurement (default 30)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", default="float32,float16,dynamic,int8",
                        help="TFLite formats to time, comma-separated ('' for none)")
    parser.add_argument("--xla", action="store_true", help="compile training with XLA (jit_compile)")
    parser.add_argument("--data-dir")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    def body():
        for name in ("batch_size", "steps", "repeats"):
            if getattr(args, name) < 1:
                raise NinError(f"--{name.replace('_', '-')} must be >= 1. Received: {getattr(args, name)}")
        formats = tuple(f for f in args.formats.split(",") if f)
        results = run_bench(args.preset, args.batch_size, args.steps, args.repeats, formats, args.data_dir, args.xla)
        print(format_results(results))
        if args.json:
            from nin_keras.io import atomic_write_text

            atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
