#!/usr/bin/env bash
# The committed CPU comparison: every series and baseline in one run.
#
#   benchmarks/run_all.sh [extra compare.py flags]
#
# Creates the PyTriton peer's venv (.venv-triton) on first use when pip can
# reach a package index; without it the peer is recorded as skipped, with why.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if [[ ! -x .venv-triton/bin/python && -z "${NO_PEER_VENV:-}" ]]; then
  py_base=$("$PY" -c 'import sys; print(sys.base_prefix)')/bin/python3
  if "$py_base" -m venv .venv-triton &&
     .venv-triton/bin/pip install -q "nvidia-pytriton==0.7.0" "numpy<2" onnxruntime pillow "tritonclient[grpc]"; then
    echo "created .venv-triton"
  else
    echo "could not create .venv-triton; the peer will be skipped" >&2
    rm -rf .venv-triton
  fi
fi

exec "$PY" benchmarks/compare.py "$@"
