"""Resource usage of a NiN preset (the seeds' exercise): ``python -m nin_keras.report``.

Per layer: output shape, parameters and multiply-adds; totals; activation
memory for training at a batch size and for inference at batch 1; parameter
bytes in float32 / float16 / int8; and the same network with a dense head in
place of global average pooling, side by side.
"""

import argparse
import json
import math
import sys



def layer_macs(layer):
    """Multiply-adds of one layer for one image (bias additions not counted)."""
    import keras

    if isinstance(layer, keras.layers.Conv2D):
        out_elements = math.prod(layer.output.shape[1:])  # H x W x C_out in either layout
        kh, kw = layer.kernel_size
        in_c = layer.input.shape[-1 if layer.data_format == "channels_last" else 1]
        return out_elements * kh * kw * in_c
    if isinstance(layer, keras.layers.Dense):
        return layer.input.shape[-1] * layer.units
    return 0


def dense_head_twin(model, dense_units=(4096, 4096)):
    """The same feature layers with an AlexNet/VGG-style dense head instead of GAP.

    Built from the model itself (the tensor feeding ``head_conv0``), so it
    works for any preset or loaded model. Returns None if there is no GAP head.
    """
    import keras
    from keras import layers

    try:
        features = model.get_layer("head_conv0").input
    except ValueError:
        return None
    x = layers.Flatten(name="head_flatten")(features)
    for j, units in enumerate(dense_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"head_dense{j}")(x)
    x = layers.Dense(int(model.output.shape[-1]), activation="softmax", name="head_logits")(x)
    return keras.Model(model.input, x, name=f"{model.name}_dense_head")


def resource_rows(model):
    """One dict per layer: name, output shape, parameters, multiply-adds, output elements."""
    import keras

    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        shape = tuple(int(d) for d in layer.output.shape[1:])
        rows.append({"layer": layer.name, "output_shape": list(shape), "parameters": int(layer.count_params()),
                     "macs": int(layer_macs(layer)), "output_elements": int(math.prod(shape))})
    return rows


def resource_report(model, batch_size=128):
    """Totals for ``model``: parameters, MACs, memory (bytes)."""
    from nin_keras.model import MirrorBatch

    rows = resource_rows(model)
    params = sum(r["parameters"] for r in rows)
    input_elements = math.prod(model.input_shape[1:])
    elements = [input_elements] + [r["output_elements"] for r in rows]
    # Training keeps every layer's output for the backward pass (float32);
    # inference needs at most one layer's input and output alive at a time.
    train_activation = sum(elements) * 4 * batch_size
    # A test_time_flip model scores every image twice (it and its mirror) at inference only.
    passes = 2 if any(isinstance(layer, MirrorBatch) for layer in model.layers) else 1
    infer_activation = passes * max(a + b for a, b in zip(elements, elements[1:])) * 4
    macs = sum(r["macs"] for r in rows)
    return {
        "model": model.name,
        "layers": rows,
        "parameters": params,
        "macs": macs,
        "inference_macs": passes * macs,
        "parameter_bytes": {"float32": params * 4, "float16": params * 2, "int8": params},
        "training_activation_bytes": train_activation,
        "training_batch_size": batch_size,
        # weights + gradients + 2 Adam moments, plus activations
        "training_total_bytes_adam": params * 4 * 4 + train_activation,
        "inference_activation_bytes_batch1": infer_activation,
    }


def _mb(n):
    return f"{n / 2**20:,.2f} MiB"


def format_report(gap, dense):
    """Human-readable text of a GAP report beside its dense-head twin."""
    lines = [f"{'layer':<22}{'output shape':<16}{'params':>12}{'MACs':>16}"]
    for r in gap["layers"]:
        lines.append(f"{r['layer']:<22}{'x'.join(map(str, r['output_shape'])):<16}{r['parameters']:>12,}{r['macs']:>16,}")
    lines.append(f"{'total':<22}{'':<16}{gap['parameters']:>12,}{gap['macs']:>16,}")
    lines.append(f"  = {gap['macs'] / 1e6:,.1f} M multiply-adds per image ({2 * gap['macs'] / 1e9:.2f} GFLOP forward)")
    if gap["inference_macs"] != gap["macs"]:
        lines.append(f"  x 2 at inference (test_time_flip: the image and its mirror): "
                     f"{gap['inference_macs'] / 1e6:,.1f} M multiply-adds per prediction")
    lines.append("")
    lines.append(f"{'':<38}{'GAP head (NiN)':>18}{'dense head':>18}")
    pairs = [
        ("parameters", lambda r: f"{r['parameters']:,}"),
        ("multiply-adds", lambda r: f"{r['macs']:,}"),
        ("params float32", lambda r: _mb(r["parameter_bytes"]["float32"])),
        ("params float16", lambda r: _mb(r["parameter_bytes"]["float16"])),
        ("params int8", lambda r: _mb(r["parameter_bytes"]["int8"])),
        (f"train activations (batch {gap['training_batch_size']})", lambda r: _mb(r["training_activation_bytes"])),
        ("train total with Adam", lambda r: _mb(r["training_total_bytes_adam"])),
        ("inference activations (batch 1)", lambda r: _mb(r["inference_activation_bytes_batch1"])),
    ]
    for label, fn in pairs:
        lines.append(f"{label:<38}{fn(gap):>18}{fn(dense) if dense else '-':>18}")
    return "\n".join(lines)


def main(argv=None):
    """CLI: print (and optionally save as JSON) the resource report of a preset."""
    from nin_keras.cli import OneLineParser, run_cli
    from nin_keras.presets import PRESETS

    parser = OneLineParser(prog="python -m nin_keras.report", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="the preset (default: fashion, or --config's)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size for training memory")
    parser.add_argument("--config", help="report the network of this config file (e.g. a run's config.json) "
                                         "instead of the preset's")
    parser.add_argument("--json", help="also write the report to this JSON file")
    args = parser.parse_args(argv)

    def body():
        from nin_keras.config import model_kwargs, resolve_config
        from nin_keras.model import build_nin
        from nin_keras.settings import validate_numeric_args

        validate_numeric_args(args)
        # The path fit takes: the preset's network, or the one a config file records.
        cfg = resolve_config({"preset": args.preset}, args.config)
        args.preset = cfg.preset
        model = build_nin(**model_kwargs(cfg))
        gap = resource_report(model, args.batch_size)
        twin = dense_head_twin(model)
        dense = resource_report(twin, args.batch_size) if twin is not None else None
        print(f"NiN preset {args.preset!r}")
        print(format_report(gap, dense))
        if args.json:
            from nin_keras.io import atomic_write_text

            atomic_write_text(args.json, json.dumps({"gap": gap, "dense_head": dense}, indent=2) + "\n")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
