#!/usr/bin/env bash
# One command for a CUDA machine: each GPU lever of issue 12 alone against one
# baseline (ResNet50 with random weights: the same compute as trained ones),
# under 8 minutes on an H200. Writes results.json, report.md and plots under
# benchmarks/results/gpu-<card>-<date>/ (the lever table comes first).
#
#   benchmarks/gpu_sweep.sh [OUT_DIR]                  # on the GPU machine
#   benchmarks/gpu_sweep.sh --cpu-structure [OUT_DIR]  # anywhere: every step on the CPU
#   GPU_SWEEP_CPU=1 benchmarks/gpu_sweep.sh            # the same
#
# Steps and their estimated budgets (benchmarks/gpu_levers.py runs them; its
# docstring says what each does; none has run on a GPU yet): export ResNet50
# ~20 s (this script, skipped when .cache/gpu-models has it), the uint8, fp16
# and uint8+fp16 variants 50 s, baseline (CUDA provider) 30 s, in-process
# ceiling 15 s, uint8 graph 30 s, IO binding 30 s, fp16 30 s, the three
# combined 30 s, two server replicas on the one GPU 40 s, host decode threads vs processes 20 s, GPU JPEG decode
# (nvImageCodec) 10 s, and last TensorRT with a cached engine: what is left,
# at most TRT_TIMEOUT (default 180) + 30 s. The driver gets what is left of
# BUDGET_S (470 s) and skips the steps past it, each with a line saying so.
#
# Installs nothing (the GPU machine may have no internet): a lever whose
# package is missing (TensorRT libraries, nvImageCodec) is reported as skipped
# with the reason. Needs onnxruntime-gpu for the machine's CUDA, torch (for the
# export; a random-weight export needs no download), onnx and
# onnxconverter-common (the variants), the server's Python deps, matplotlib.
# PYTHON picks the interpreter (default: .venv/bin/python, else python3); the
# repo's client/, server/ and export/ folders are put on PYTHONPATH.
#
# GPU_SWEEP_ARGS adds flags to benchmarks/gpu_levers.py, e.g. GPU_SWEEP_ARGS="--skip tensorrt,decode"
# to rerun some steps, or shorter windows (--duration 2).
#
# --cpu-structure (or GPU_SWEEP_CPU=1) runs every step on the CPU provider with
# a tiny random model and sub-second windows (~30 s on 2 cores) and writes the
# same report files to .cache/gpu-sweep-cpu-structure/ (not committed): it
# tests the script, it measures no lever.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$REPO/client:$REPO/server:$REPO/export${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
TRT_TIMEOUT=${TRT_TIMEOUT:-180}
BUDGET_S=${BUDGET_S:-470}
started=$(date +%s)

cpu=${GPU_SWEEP_CPU:-0}
if [[ "${1:-}" == "--cpu-structure" ]]; then cpu=1; shift; fi
if [[ "$cpu" == 1 ]]; then
  OUT=${1:-.cache/gpu-sweep-cpu-structure}
  mkdir -p "$OUT"
  "$PY" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' | tee "$OUT/versions.txt"
  exec "$PY" benchmarks/gpu_levers.py --cpu-structure --out "$OUT"
fi

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_sweep: no NVIDIA GPU here (nvidia-smi -L failed); --cpu-structure checks the script without one" >&2
  exit 2
fi
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-' | sed 's/-$//')
OUT=${1:-benchmarks/results/gpu-${card,,}-$(date +%Y-%m-%d)}
mkdir -p "$OUT"
nvidia-smi | tee "$OUT/nvidia-smi.txt"
"$PY" - <<'PYEOF' | tee "$OUT/versions.txt"
import importlib
import onnxruntime as o
print("onnxruntime", o.__version__, o.get_available_providers())
for name in ("torch", "torchvision", "onnx", "onnxconverter_common", "tensorrt", "nvidia.nvimgcodec", "nvidia.dali",
             "PIL", "grpc", "google.protobuf", "redis", "pymilvus", "matplotlib"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        print(name, "not installed:", type(exc).__name__)
PYEOF

# The server must import here (its gRPC, store and image dependencies), or every step would fail alike.
if ! "$PY" -c 'import lookalike_server.app, lookalike_export.uint8_input' 2>"$OUT/import-error.txt"; then
  echo "gpu_sweep: the server or exporter cannot be imported with $PY:" >&2
  tail -3 "$OUT/import-error.txt" >&2
  echo "install the server's dependencies (pip install '.[server]') for this interpreter, or set PYTHON" >&2
  exit 2
fi
rm -f "$OUT/import-error.txt"
providers=$("$PY" -c 'import onnxruntime as o; print(",".join(o.get_available_providers()))')
if [[ ",$providers," != *",CUDAExecutionProvider,"* ]]; then
  echo "gpu_sweep: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu built for this CUDA)" >&2
  exit 2
fi
# onnxruntime-gpu lists CUDA even where its libraries cannot load, and then runs on the CPU:
# every "GPU" figure would be a CPU one. Refuse instead.
cuda_problem=$("$PY" -c 'from lookalike_server.execution_providers import _provider_problem as p; print(p("CUDAExecutionProvider"))')
if [[ -n "$cuda_problem" ]]; then
  echo "gpu_sweep: the CUDA provider cannot load here: $cuda_problem (onnxruntime-gpu must match this CUDA)" >&2
  exit 2
fi

# ResNet50 with random weights, exported the way the project exports models
# (lookalike-export), falling back to a plain torch export if that path fails.
MODELS=.cache/gpu-models
mkdir -p "$MODELS"
if [[ ! -f "$MODELS/resnet50.onnx" ]]; then
  if ! "$PY" -m lookalike_export.cli torch resnet50 --random --no-parity \
      --out "$MODELS" --registry "$MODELS/models.toml"; then
    echo "lookalike-export failed; exporting with torch directly"
    "$PY" - "$MODELS" <<'EOF2'
import sys
from pathlib import Path

import torch
import torchvision

from lookalike_server.registry import ModelEntry

out = Path(sys.argv[1])
torch.manual_seed(0)
net = torchvision.models.resnet50(weights=None)
net.fc = torch.nn.Identity()  # the 2048-d pooled features are the embedding
net.eval()
torch.onnx.export(
    net, torch.zeros(1, 3, 224, 224), out / "resnet50.onnx", input_names=["input"], output_names=["embedding"],
    dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17, dynamo=False,
)
entry = ModelEntry.from_preset(
    "imagenet", name="resnet50", path="resnet50.onnx", dim=2048,
    description="ResNet50, RANDOM weights (benchmark only: same compute as trained)",
)
(out / "models.toml").write_text(entry.to_toml())
EOF2
  fi
fi

left=$(( BUDGET_S - ($(date +%s) - started) ))
"$PY" benchmarks/gpu_levers.py --registry "$MODELS/models.toml" --model resnet50 --out "$OUT" \
  --trt-timeout "$TRT_TIMEOUT" --budget-s "$left" ${GPU_SWEEP_ARGS:-}
echo "gpu_sweep: done in $(( $(date +%s) - started )) s; report: $OUT/report.md"
