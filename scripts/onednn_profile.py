"""Where a training step's time goes, oneDNN primitive by primitive, in nin_keras and in the peer.

``python scripts/onednn_profile.py --peer ".venv-torch/bin/python benchmarks/torch_peer.py" [--preset P]
[--precision float32|bfloat16] [--steps N] [--isa-cap AVX2]`` runs nin_keras' side and the peer's side
of ``python -m nin_keras.bench --peer`` (the same network and protocol, ``nin_keras/peer.py``), each in
a fresh process with ``ONEDNN_VERBOSE=1``, and prints one row per primitive (kind, pass, shape) with its
milliseconds per training step on each side and which implementation oneDNN chose, the largest
differences first. Both frameworks call the same library, so rows that match say the kernels are not
where the two differ; the peer's missing rows (BatchNorm, pooling) run in its own native kernels.

nin_keras runs with one inter-op thread here (``--inter-op-threads 1``): with TensorFlow's default two,
independent ops run at once and each primitive's time counts the other's share of the cores. A step is
the interval from one execution of the network's first forward convolution to the next. The first three
(warm-up) are left out, and both sides count the same N - 2 steps after them: for nin_keras these are
its model-only steps on a batch held in memory (the bench's end-to-end steps through tf.data that follow
are not counted). The bench's matmul ceiling (``matmul`` rows) is left out.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

WARM_UP_STEPS = 3


def parse_verbose(text, skip_steps=WARM_UP_STEPS, max_steps=None):
    """{(kind, pass, shape): [total ms, executions, implementation]} over the counted steps of an
    ONEDNN_VERBOSE log, and the number of steps counted.

    Step i runs from the i-th execution of the first forward convolution seen up to the next one; steps
    ``skip_steps + 1`` to ``skip_steps + max_steps`` are counted, each only once the next has begun (so
    a step is always whole). Everything but ``matmul`` is kept.
    """
    rows, first_forward, seen, pending, counted = {}, None, 0, [], 0
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 11 or fields[0] != "onednn_verbose" or fields[2:4] != ["primitive", "exec"]:
            continue
        kind, implementation, pass_, shape = fields[5], fields[6], fields[7], fields[-2]
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        if kind == "matmul":
            continue
        key = (kind, pass_, shape)
        if first_forward is None and kind == "convolution" and pass_ == "forward_training":
            first_forward = key
        if key == first_forward:
            if skip_steps < seen and (max_steps is None or counted < max_steps):  # step ``seen`` is whole
                for done_key, done_ms, done_impl in pending:
                    row = rows.setdefault(done_key, [0.0, 0, done_impl])
                    row[0] += done_ms
                    row[1] += 1
                counted += 1
            seen, pending = seen + 1, []
        pending.append((key, ms, implementation))
    return rows, counted


def run_verbose(command, env_extra=None):
    """The combined output of ``command`` run with ONEDNN_VERBOSE=1 (SystemExit with its last line if it fails)."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", **(env_extra or {})}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise SystemExit(f"onednn_profile.py: {shlex.join(command)} failed: {last}")
    return proc.stdout + proc.stderr


def commands(args, cfg, network_path, json_path):
    """(ours, peer) command lines: the two sides of one ``bench --peer`` round for the resolved config
    ``cfg``, nin_keras with one inter-op thread."""
    from nin_keras import bench, peer

    flags = ["--preset", args.preset, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
             "--inter-op-threads", "1"] + (["--isa-cap", args.isa_cap] if args.isa_cap else [])
    bench_args = bench.build_parser().parse_args(flags)
    ours = peer.ours_command(bench_args, args.precision, json_path)
    theirs = peer.peer_command(peer.split_peer(args.peer), network_path, cfg, bench_args, args.precision,
                               peer.peer_data_dir(None))
    return ours, theirs


def table(ours, peer):
    """The per-step rows of both sides, largest difference first, and the totals."""
    (ours_rows, ours_steps), (peer_rows, peer_steps) = ours, peer

    def per_step(rows, steps, key):
        return rows[key][0] / steps if key in rows and steps else 0.0

    keys = sorted(set(ours_rows) | set(peer_rows),
                  key=lambda k: -abs(per_step(ours_rows, ours_steps, k) - per_step(peer_rows, peer_steps, k)))
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
    from nin_keras.machine import ISA_CAPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", required=True, help="the peer's command, e.g. '.venv-torch/bin/python "
                                                      "benchmarks/torch_peer.py'")
    parser.add_argument("--preset", default="fashion")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side; N - 2 are counted (>= 3)")
    parser.add_argument("--isa-cap", choices=ISA_CAPS, help="ONEDNN_MAX_CPU_ISA for both sides (e.g. AVX2)")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error(f"--steps must be at least 3. Received: {args.steps}")

    import json

    from nin_keras.peer import network_spec

    network, cfg = network_spec(args.preset, None, args.batch_size)
    cap = {"ONEDNN_MAX_CPU_ISA": args.isa_cap} if args.isa_cap else {}
    with tempfile.TemporaryDirectory(prefix="onednn-profile-") as tmp:
        network_path = os.path.join(tmp, "network.json")
        with open(network_path, "w") as f:
            json.dump(network, f)
        sides = []
        for command in commands(args, cfg, network_path, os.path.join(tmp, "ours.json")):
            rows, steps = parse_verbose(run_verbose(command, cap), max_steps=args.steps - 2)
            if steps == 0:
                raise SystemExit(f"onednn_profile.py: no training step found in the oneDNN log of "
                                 f"{shlex.join(command)} (ONEDNN_VERBOSE output in another format?)")
            sides.append((rows, steps))
    print(f"preset {args.preset}, {args.precision}, batch {args.batch_size}, {args.steps - 2} steps counted per "
          f"side" + (f", ONEDNN_MAX_CPU_ISA={args.isa_cap}" if args.isa_cap else ""))
    print(table(*sides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
