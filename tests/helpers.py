"""Helpers shared by the tests: build a preset, save/reload, sample images, launch a CLI in a subprocess."""

import os
import random
import socket
import subprocess
import sys

import numpy as np
import pytest

from nin_keras.precision import bf16_aborts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: For tests that train in bfloat16: they cannot run where oneDNN is capped below AVX-512 on an AVX-512 CPU
#: (``ONEDNN_MAX_CPU_ISA=AVX2``, how the docs measure a user's machine); fit refuses that in one line.
needs_bf16_kernels = pytest.mark.skipif(bool(bf16_aborts()),
                                        reason="bfloat16 has no oneDNN kernel under this ONEDNN_MAX_CPU_ISA cap")


def build_preset(name="tiny", **overrides):
    """Build a preset's model with build_nin overrides; unlike ``create_model`` a None override is kept
    (``classifier_activation=None`` asks for logits)."""
    from nin_keras.model import build_nin
    from nin_keras.presets import get_preset

    return build_nin(**{**get_preset(name)["model"], **overrides})


def save_and_reload(model, tmp_path, name="model.keras"):
    """Save a model as .keras and load it back (safe mode)."""
    import keras

    path = os.path.join(tmp_path, name)
    model.save(path)
    return keras.saving.load_model(path)


def free_ports(n):
    """``n`` distinct ports on 127.0.0.1 that bind now, from below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, which it also hands to
    outgoing connections (the other test worker's gRPC clients), so it can be taken between our check
    and a child's bind; ports below the range are only ever taken by a deliberate bind.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default; macOS's starts at 49152
    candidates = list(range(max(1024, low - 12000), low))
    random.SystemRandom().shuffle(candidates)
    ports = []
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError("no free port below the ephemeral range")


def random_images(n=8, shape=(28, 28, 1), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)



def launch(module, *args, env=None, merge_stderr=True):
    """Start ``python -m <module> <args>`` from the repository root; stdout (and stderr) piped as text.

    The child gets Python's own Ctrl-C handler whatever it inherited: a test suite started in the
    background of a non-interactive shell (``cmd &``) inherits SIGINT *ignored*, Python then installs no
    handler, and the Ctrl-C tests' SIGINT would do nothing (the serve test then timed out).
    """
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    bootstrap = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")
    return subprocess.Popen([sys.executable, "-c", bootstrap, module, *args], cwd=REPO, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE)
