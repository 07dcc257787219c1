#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine: the Fashion-MNIST package and a venv
# with nin_keras installed (editable, with test extras). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: the dataset; Chromium and npm for the phone page's browser tests (tests/test_web.py
# drives the system Chromium through Playwright; `--format web` fetches MediaPipe Tasks Web with npm).
APT=()
[ -d /usr/share/datasets/fashion-mnist ] || APT+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || APT+=(chromium)
command -v npm >/dev/null || APT+=(npm)
if [ ${#APT[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq || true
    for pkg in "${APT[@]}"; do
        # The dataset is required; the browser and npm are not (without them the web tests skip with the reason).
        if [ "$pkg" = dataset-fashion-mnist ]; then $SUDO apt-get install -y -qq "$pkg"
        else $SUDO apt-get install -y -qq "$pkg" || echo "setup: $pkg not installed"; fi
    done
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The versions the tests passed with (constraints.txt, pip's own included): no unpinned upgrade.
.venv/bin/python -m pip install -q -c constraints.txt pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
