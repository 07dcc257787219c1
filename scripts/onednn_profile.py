"""Where a training step's time goes, oneDNN primitive by primitive, in nin_keras and in the peer.

``python scripts/onednn_profile.py --peer ".venv-torch/bin/python benchmarks/torch_peer.py" [--preset P]
[--precision float32|bfloat16] [--steps N] [--isa-cap AVX2]`` runs nin_keras' bench (model-only
training, no inference) and then the peer (the same network, ``benchmarks/torch_peer.py``), each in a
fresh process with ``ONEDNN_VERBOSE=1``, and prints one row per primitive (kind, pass, shape) with its
milliseconds per training step on each side and which implementation oneDNN chose. Both frameworks call
the same library, so rows that match say the kernels are not where the two differ; the peer's missing
rows (BatchNorm, pooling) run in its own native kernels instead.

nin_keras runs with one inter-op thread here (``--inter-op-threads 1``): with TensorFlow's default two,
independent ops run at once and each primitive's time counts the other's share of the cores. Steps are
counted as executions of the network's first convolution's forward pass, the first three (warm-up) left
out; the matmul ceiling the bench also measures is dropped (``matmul`` rows).
"""

import argparse
import collections
import os
import shlex
import subprocess
import sys
import tempfile

PROFILED_KINDS = ("convolution", "batch_normalization", "pooling", "reorder", "eltwise", "inner_product")


def parse_verbose(text, skip_steps=3):
    """{(kind, pass, shape): [total ms, executions, implementation]} from ONEDNN_VERBOSE lines, and the
    number of training steps counted.

    A step starts at each execution of the first forward convolution seen; the first ``skip_steps``
    (both sides' warm-up: kernels generated, memory first touched) are left out.
    """
    rows, first_forward, seen = {}, None, 0
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 11 or fields[0] != "onednn_verbose" or fields[2:4] != ["primitive", "exec"]:
            continue
        kind, implementation, pass_, shape = fields[5], fields[6], fields[7], fields[-2]
        if kind not in PROFILED_KINDS:
            continue
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        key = (kind, pass_, shape)
        if first_forward is None and kind == "convolution" and pass_ == "forward_training":
            first_forward = key
        seen += key == first_forward
        if seen <= skip_steps:
            continue
        row = rows.setdefault(key, [0.0, 0, implementation])
        row[0] += ms
        row[1] += 1
    return rows, max(seen - skip_steps, 0)


def run_verbose(command, env_extra=None):
    """The combined output of ``command`` run with ONEDNN_VERBOSE=1 (SystemExit with its last line if it fails)."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", **(env_extra or {})}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise SystemExit(f"onednn_profile.py: {shlex.join(command)} failed: {last}")
    return proc.stdout + proc.stderr


def commands(args, network_path):
    """(ours, peer) command lines."""
    ours = [sys.executable, "-m", "nin_keras.bench", "--preset", args.preset, "--batch-size", str(args.batch_size),
            "--steps", str(args.steps),
            "--repeats", "1", "--no-inference", "--formats", "", "--precision", args.precision,
            "--inter-op-threads", "1"]
    peer = [*shlex.split(args.peer), "--network", network_path, "--batch-size", str(args.batch_size),
            "--steps", str(args.steps),
            "--precision", args.precision]
    return ours, peer


def table(ours, peer):
    """The per-step rows of both sides, largest difference first, and the totals."""
    (ours_rows, ours_steps), (peer_rows, peer_steps) = ours, peer

    def per_step(rows, steps, key):
        return rows[key][0] / steps if key in rows and steps else 0.0

    keys = sorted(set(ours_rows) | set(peer_rows),
                  key=lambda k: per_step(peer_rows, peer_steps, k) - per_step(ours_rows, ours_steps, k))
    lines = [f"{'nin_keras ms':>12} {'peer ms':>9}  primitive (per training step; implementation ours / peer)"]
    for key in keys:
        impl = "/".join(rows[key][2].split(":")[0] if key in rows else "-" for rows in (ours_rows, peer_rows))
        lines.append(f"{per_step(ours_rows, ours_steps, key):12.2f} {per_step(peer_rows, peer_steps, key):9.2f}  "
                     f"{key[0]} {key[1]} {key[2]} ({impl})")
    totals = [sum(r[0] for r in rows.values()) / steps if steps else 0.0
              for rows, steps in ((ours_rows, ours_steps), (peer_rows, peer_steps))]
    lines.append(f"{totals[0]:12.2f} {totals[1]:9.2f}  total ({ours_steps} and {peer_steps} steps counted)")
    return "\n".join(lines)


def main(argv=None):
    """Profile both sides and print the table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", required=True, help="the peer's command, e.g. '.venv-torch/bin/python "
                                                      "benchmarks/torch_peer.py'")
    parser.add_argument("--preset", default="fashion")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--isa-cap", help="ONEDNN_MAX_CPU_ISA for both sides (e.g. AVX2)")
    args = parser.parse_args(argv)

    import json

    from nin_keras.peer import network_spec

    network, _ = network_spec(args.preset, None, args.batch_size)
    cap = {"ONEDNN_MAX_CPU_ISA": args.isa_cap} if args.isa_cap else {}
    with tempfile.TemporaryDirectory(prefix="onednn-profile-") as tmp:
        network_path = os.path.join(tmp, "network.json")
        with open(network_path, "w") as f:
            json.dump(network, f)
        ours_command, peer_command = commands(args, network_path)
        ours = parse_verbose(run_verbose(ours_command, cap))
        peer = parse_verbose(run_verbose(peer_command, cap))
    print(f"preset {args.preset}, {args.precision}, batch {args.batch_size}, {args.steps} timed steps each"
          + (f", ONEDNN_MAX_CPU_ISA={args.isa_cap}" if args.isa_cap else ""))
    print(table(ours, peer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
