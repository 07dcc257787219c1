"""``python -m nin_keras.bench --peer CMD``: nin_keras against another framework training the same network.

Each round runs nin_keras' own bench (training only, a fresh process) and
the peer command one after the other, alternating which goes first, so both
see the same host conditions (this project's VMs swing between full and half
speed from one minute to the next). It does so in float32 and, on CPUs with
native bfloat16 (AVX512-BF16 or AMX) and no ISA cap that hides it, in bfloat16, and prints
each side's median images/s, the ratio of the medians, and the median (and range) of each round's own
ratio, which a host whose speed drifts over the session moves less.

The peer protocol (``benchmarks/torch_peer.py`` is the PyTorch one): the
command gets ``--network FILE`` (a JSON object of ``build_nin`` arguments, the
network the preset or ``--config`` describes), ``--batch-size``,
``--learning-rate``, ``--steps``, ``--precision {float32,bfloat16}`` and
``--data-dir`` (Fashion-MNIST's IDX folder, when there is one), and prints, as
its last line of standard output, a JSON object with ``images_per_sec``.
The ratio compares like with like: nin_keras' training step on batches in
memory (the bench's "model-only" figure) against the peer's loop over random
batches of images in memory. nin_keras' end-to-end ``fit`` through tf.data
(the path ``python -m nin_keras.fit`` trains on) is reported beside it; over
a short measurement it also pays for refilling tf.data's shuffle buffer,
once per epoch in a real run.
"""

import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile


def peer_precisions(requested, isa_cap=None, flags=None):
    """The precisions to compare: ``requested`` unless it is ``auto``; else float32, and bfloat16 where it is native."""
    from nin_keras.errors import ConfigError
    from nin_keras.precision import bf16_capped_away, cpu_has_native_bf16

    if requested == "float16":
        raise ConfigError("--peer compares float32 and bfloat16 training. Received: --precision float16")
    if requested != "auto":
        return [requested]
    # A cap below AVX512_CORE_BF16 stands for a CPU without native bfloat16: float32 only (oneDNN's bfloat16
    # kernels abort under AVX2, and are emulated under AVX512_CORE while the peer's are not capped).
    return ["float32"] + (["bfloat16"] if cpu_has_native_bf16(flags) and not bf16_capped_away(isa_cap) else [])


def network_spec(preset, config_file, batch_size):
    """The network (``build_nin`` arguments) and training settings both sides train."""
    from nin_keras.config import model_kwargs, resolve_config

    cfg = resolve_config({"preset": preset, "batch_size": batch_size}, config_file, print_fn=lambda *a, **k: None)
    return model_kwargs(cfg), cfg


def ours_command(args, precision, json_path):
    """nin_keras' side of a round: the bench itself, one repeat, no inference, with the settings asked for
    (``--no-fused-batch-norm``, ``--xla``, threads...) in the round's precision."""
    import dataclasses

    from nin_keras.bench import BenchSettings

    flags = ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--repeats", "1",
             "--no-inference", "--formats", "", "--json", json_path]
    for name in ("preset", "data_dir", "config", "isa_cap"):
        if getattr(args, name) is not None:
            flags += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    flags += dataclasses.replace(BenchSettings.from_args(args), precision=precision).flags()
    return [sys.executable, "-m", "nin_keras.bench", *flags]


def split_peer(peer):
    """The ``--peer`` command line as a list; a one-line error for unbalanced quotes or an empty command."""
    from nin_keras.errors import ConfigError

    try:
        argv = shlex.split(peer)
    except ValueError as e:
        raise ConfigError(f"--peer {peer!r}: {e}") from None
    if not argv:
        raise ConfigError(f"--peer {peer!r}: the command is empty")
    return argv


def peer_data_dir(data_dir):
    """Fashion-MNIST's folder for the peer, or None (it then trains on random pixels, as the bench does for
    other presets); a ``--data-dir`` the user names must exist."""
    from nin_keras.data.idx import find_fashion_mnist_dir
    from nin_keras.errors import DataError

    try:
        return str(find_fashion_mnist_dir(data_dir))
    except DataError:
        if data_dir is not None:
            raise
        return None


def peer_command(peer_argv, network_path, cfg, args, precision, data_dir):
    """The peer's side of a round: ``peer_argv`` plus the protocol's arguments."""
    command = [*peer_argv, "--network", network_path, "--batch-size", str(args.batch_size),
               "--learning-rate", str(cfg.learning_rate), "--steps", str(args.steps), "--precision", precision]
    return command + (["--data-dir", data_dir] if data_dir else [])


def _run(command, timeout):
    """``subprocess.run`` in a process group of its own, all of which a timeout or Ctrl-C ends: a wrapper's
    children (a shell, ``uv run``) outliving the wrapper would share the cores with every later round."""
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except OSError as e:
        return {"error": f"cannot run {command[0]}: {e.strerror}"}
    with proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException as e:  # the timeout; or Ctrl-C, which a new session no longer gets from the terminal
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            if isinstance(e, subprocess.TimeoutExpired):
                return {"error": f"timed out after {timeout:.0f} s"}
            raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def run_child(command, timeout, json_path=None):
    """Run one side of a round; its images/s (and the rest of its JSON), or ``{"error": ...}``."""
    proc = _run(command, timeout)
    if isinstance(proc, dict):
        return proc
    lines = [line for line in (proc.stdout or "").splitlines() if line.strip()]
    if proc.returncode != 0:
        # A traceback's last line (on stderr) names the exception; stdout only when stderr is silent.
        errors = [line for line in proc.stderr.splitlines() if line.strip()] or lines
        return {"error": (errors or [f"exit {proc.returncode}"])[-1][:200]}
    try:
        if json_path:  # nin_keras' bench writes its results to a file
            with open(json_path) as f:
                result = json.load(f)
            return {**result, "images_per_sec": result["model_only_images_per_sec"]["median"],
                    "end_to_end": result["end_to_end_images_per_sec"]["median"]}
        result = json.loads(lines[-1])
        # A number as text is taken; zero, negative or NaN would divide by zero or print as a ratio.
        result["images_per_sec"] = float(result["images_per_sec"])
        if not (math.isfinite(result["images_per_sec"]) and result["images_per_sec"] > 0):
            raise ValueError(result["images_per_sec"])
        return result
    except (IndexError, KeyError, TypeError, ValueError, OSError):
        return {"error": "no JSON line with images_per_sec at the end of its output"}


def run_peer_comparison(args, *, print_fn=print, timeout=900):
    """Interleaved rounds of nin_keras and the peer per precision; returns the results dict."""
    # Before any round: a bad command or folder would otherwise fail every round, or only one side's.
    peer_argv, data_dir = split_peer(args.peer), peer_data_dir(args.data_dir)
    network, cfg = network_spec(args.preset, args.config, args.batch_size)
    results = {"peer": args.peer, "preset": cfg.preset, "batch_size": args.batch_size, "steps": args.steps,
               "rounds": args.rounds, "precisions": {}}
    with tempfile.TemporaryDirectory(prefix="nin_keras-peer-") as tmp:
        network_path = os.path.join(tmp, "network.json")
        with open(network_path, "w") as f:
            json.dump(network, f)
        for precision in peer_precisions(args.precision, args.isa_cap):
            ours, theirs = [], []
            for round_ in range(1, args.rounds + 1):
                json_path = os.path.join(tmp, f"ours-{precision}-{round_}.json")
                sides = [("nin_keras", ours, ours_command(args, precision, json_path), json_path),
                         ("peer", theirs, peer_command(peer_argv, network_path, cfg, args, precision, data_dir), None)]
                for name, out, command, path in sides if round_ % 2 else sides[::-1]:
                    print_fn(f"{precision} round {round_}/{args.rounds}: {name} ...", flush=True)
                    out.append(run_child(command, timeout, path))
                    print_fn("  " + (out[-1].get("error") or f"{out[-1]['images_per_sec']:,.0f} images/s"), flush=True)
            results["precisions"][precision] = summarize(ours, theirs)
    return results


def summarize(ours, theirs):
    """Medians, ranges and the ratio of medians of one precision's rounds (failed rounds left out)."""
    def stats(runs):
        rates = [r["images_per_sec"] for r in runs if "error" not in r]
        errors = [r["error"] for r in runs if "error" in r]
        if not rates:
            return {"error": errors[-1] if errors else "no runs"}
        return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": rates,
                "failed": len(errors)}

    out = {"nin_keras": stats(ours), "peer": stats(theirs),
           "nin_keras_end_to_end": stats([{"images_per_sec": r["end_to_end"]} for r in ours if "end_to_end" in r])}
    fractions = [r["achieved_fraction_of_matmul"] for r in ours if "achieved_fraction_of_matmul" in r]
    if fractions:
        out["nin_keras_fraction_of_float32_ceiling"] = statistics.median(fractions)
    if "error" not in out["nin_keras"] and "error" not in out["peer"]:
        out["ratio"] = out["nin_keras"]["median"] / out["peer"]["median"]
    # Round by round: the two runs of a round are minutes apart, the rounds of a session up to an hour, and a
    # shared host's speed drifts over that hour. A round where either side failed is left out.
    paired = [a["images_per_sec"] / b["images_per_sec"] for a, b in zip(ours, theirs)
              if "error" not in a and "error" not in b]
    if paired:
        out["paired_ratio"] = {"median": statistics.median(paired), "min": min(paired), "max": max(paired),
                               "runs": paired}
    return out


def format_peer(results):
    """The comparison table."""
    def cell(s):
        return s.get("error", "")[:60] or f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"

    lines = [f"nin_keras vs peer `{results['peer']}`: preset {results['preset']}, batch {results['batch_size']}, "
             f"{results['steps']} steps, {results['rounds']} interleaved rounds (images/s, median (min-max))",
             f"{'precision':<11}{'nin_keras step':>24}{'peer':>24}{'ratio':>8}{'round by round':>22}"
             f"{'nin_keras fit via tf.data':>30}{'of fp32 ceiling':>17}"]
    for precision, s in results["precisions"].items():
        ratio = f"{s['ratio']:.2f}x" if "ratio" in s else "-"
        paired = s.get("paired_ratio")
        paired = f"{paired['median']:.2f}x ({paired['min']:.2f}-{paired['max']:.2f})" if paired else "-"
        fraction = s.get("nin_keras_fraction_of_float32_ceiling")
        lines.append(f"{precision:<11}{cell(s['nin_keras']):>24}{cell(s['peer']):>24}{ratio:>8}{paired:>22}"
                     f"{cell(s['nin_keras_end_to_end']):>30}{f'{fraction:.2f}' if fraction else '-':>17}")
    lines.append("ratio: nin_keras' training step over the peer's, medians; both on batches held in memory; "
                 "round by round: the median of each round's own ratio")
    return "\n".join(lines)


def comparison_error(results):
    """Why no precision got a ratio (each side's last error), or None when at least one did."""
    rows = results["precisions"].values()
    if any("ratio" in row for row in rows):
        return None
    reasons = [f"{side}: {row[side]['error']}" for row in rows for side in ("nin_keras", "peer")
               if "error" in row[side]]
    return "the peer comparison measured nothing to compare (" + "; ".join(reasons[-2:] or ["no rounds"]) + ")"
