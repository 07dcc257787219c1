"""``python -m export.profile RUN``: where int8 TFLite time goes, by network prefix, against float32.

LiteRT's Python benchmark tool has no op-level profiler, so this profiles
by construction: the model cut after each block (stem, each mlpconv block,
the head) is converted to float32 and to int8 (as the exporter does, and as
variants: float32 input instead of uint8, per-channel weights) and timed
with LiteRT's own benchmark tool on one thread. The difference between
consecutive prefixes is the cost of that block; it shows which blocks make
int8 slower than float32 on this CPU (and whether the uint8 input's
quantize step or per-tensor weights matter), and what keeping block1 in
float32 (``--int8-float-blocks block1``) gives back.
"""

import argparse
import sys

from nin_keras.cli import OneLineParser, run_cli


def prefixes(model):
    """(name, Keras sub-model) for the model cut after each block, and the whole model."""
    import keras

    cuts = [layer.name for layer in model.layers if layer.name.endswith(("_relu0", "_pool")) or
            layer.name in ("head_gap",)]
    seen, out = set(), []
    for name in cuts:
        block = name.split("_")[0]
        label = f"{block} (first conv)" if name.endswith("_relu0") else name
        if label in seen:
            continue
        seen.add(label)
        out.append((label, keras.Model(model.input, model.get_layer(name).output)))
    out.append(("whole model", model))
    return out


def profile(model, calibration, runs=100, print_fn=print):
    """Rows of (prefix, float32 ms, int8 ms, int8 float-input ms, int8 per-channel ms, int8 with block1 in float ms)."""
    import os
    import tempfile

    from export.converter import convert
    from export.evaluator import litert_benchmark

    rows = []
    with tempfile.TemporaryDirectory(prefix="nin_keras-profile-") as tmp:
        for name, sub in prefixes(model):
            times = []
            for fmt, kwargs in (("float32", {}), ("int8", {}), ("int8", {"int8_input": "float32"}),
                                ("int8", {"per_channel": True}), ("int8", {"float_blocks": ("block1",)})):
                path = os.path.join(tmp, "m.tflite")
                with open(path, "wb") as f:
                    f.write(convert(sub, fmt, calibration if fmt == "int8" else None, **kwargs))
                times.append(litert_benchmark(path, threads=1, runs=runs))
            rows.append((name, *times))
            print_fn(f"  {name}: " + ", ".join("-" if t is None else f"{t:.3f}" for t in times), flush=True)
    return rows


def format_rows(rows):
    """Markdown table with per-block increments."""
    header = ("| cut after | float32 ms | int8 ms | int8 / float32 | int8, float32 input ms | int8 per-channel ms "
              "| int8, block1 in float32 ms |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name, f32, i8, i8_float_in, i8_pc, i8_stem_float in rows:
        def cell(v):
            return "-" if v is None else f"{v:.3f}"

        ratio = f"{i8 / f32:.2f}" if f32 and i8 else "-"
        lines.append(f"| {name} | {cell(f32)} | {cell(i8)} | {ratio} | {cell(i8_float_in)} | {cell(i8_pc)} "
                     f"| {cell(i8_stem_float)} |")
    return "\n".join(lines)


def main(argv=None):
    """CLI entry point; returns the process exit code."""
    parser = OneLineParser(prog="python -m export.profile", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model", help="a nin_keras run directory or a .keras file")
    parser.add_argument("--runs", type=int, default=100, help="benchmark-tool runs per measurement")
    parser.add_argument("--calibration-samples", type=int, default=300)
    args = parser.parse_args(argv)

    def body():
        from export.converter import load_keras_model, resolve_model_path
        from nin_keras.machine import cpu_class, onednn_isa
        from nin_keras.data import load_data

        from nin_keras.errors import require

        require(args.runs >= 1, "--runs must be >= 1.", args.runs)
        model = load_keras_model(resolve_model_path(args.model))
        splits = load_data(limit=max(args.calibration_samples, 2))
        cpu = cpu_class()
        print(f"CPU: {cpu['model'] or 'unknown'} ({', '.join(cpu['features']) or 'no AVX2'}); oneDNN ISA: "
              f"{onednn_isa() or 'unknown'}; LiteRT benchmark tool, 1 thread, {args.runs} runs, batch 1")
        rows = profile(model, splits.x_train[: args.calibration_samples], args.runs)
        print(format_rows(rows))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
