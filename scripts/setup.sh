#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine: the Fashion-MNIST package and a venv
# with nin_keras installed (editable, with test extras). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The versions the tests passed with (constraints.txt, pip's own included): no unpinned upgrade.
.venv/bin/python -m pip install -q -c constraints.txt pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
