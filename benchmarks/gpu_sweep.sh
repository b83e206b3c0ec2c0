#!/usr/bin/env bash
# One command for a CUDA machine: a short ResNet50 sweep (random weights: the
# same compute as trained ones) with ONNX Runtime's CUDA provider and, where
# this onnxruntime build offers it, TensorRT; writes the same report as
# benchmarks/compare.py under benchmarks/results/gpu-<card>-<date>/.
#
#   benchmarks/gpu_sweep.sh [OUT_DIR]
#
# Needs: onnxruntime-gpu (CUDA 12/13 build matching the driver), torch (for the
# export), the server's Python deps (grpcio, protobuf, numpy, pillow), matplotlib.
# PYTHON picks the interpreter (default: .venv/bin/python, else python3); the
# repo's client/ and server/ folders are put on PYTHONPATH, so no install is
# needed. Budget: well under 8 minutes — export ~20 s, each server sweep
# ~35 s, the TensorRT engine builds are capped at TRT_TIMEOUT seconds.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$REPO/client:$REPO/server:$REPO/export${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
TRT_TIMEOUT=${TRT_TIMEOUT:-240}
CONCURRENCY=${CONCURRENCY:-1,4,16,64}
started=$(date +%s)

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_sweep: no NVIDIA GPU here (nvidia-smi -L failed)" >&2
  exit 2
fi
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-' | sed 's/-$//')
OUT=${1:-benchmarks/results/gpu-${card,,}-$(date +%Y-%m-%d)}
mkdir -p "$OUT"
nvidia-smi | tee "$OUT/nvidia-smi.txt"

providers=$("$PY" -c 'import onnxruntime as o; print(",".join(o.get_available_providers()))')
echo "onnxruntime providers available: $providers"
if [[ ",$providers," != *",CUDAExecutionProvider,"* ]]; then
  echo "gpu_sweep: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)" >&2
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
    "$PY" - "$MODELS" <<'EOF'
import sys
from pathlib import Path

import torch
import torchvision

out = Path(sys.argv[1])
torch.manual_seed(0)
net = torchvision.models.resnet50(weights=None)
net.fc = torch.nn.Identity()  # the 2048-d pooled features are the embedding
net.eval()
torch.onnx.export(
    net, torch.zeros(1, 3, 224, 224), out / "resnet50.onnx", input_names=["input"], output_names=["embedding"],
    dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17, dynamo=False,
)
(out / "models.toml").write_text('''[[models]]
name = "resnet50"
version = "1"
path = "resnet50.onnx"
description = "ResNet50, RANDOM weights (benchmark only: same compute as trained)"
dim = 2048
input = "input"
output = "embedding"
preset = "imagenet"
''')
EOF
  fi
fi

common=(--registry "$MODELS/models.toml" --model resnet50 --concurrency "$CONCURRENCY" --at 64
        --warmup 1 --duration 4 --skip peer,search --ceiling-batches 1,8,32,64 --ceiling-seconds 2
        --server-arg=--batching-max-batch-size=64)

echo "=== CUDA provider ==="
"$PY" benchmarks/compare.py "${common[@]}" --providers CUDAExecutionProvider,CPUExecutionProvider \
  --name "$(basename "$OUT")" --out "$OUT/cuda"

if [[ ",$providers," == *",TensorrtExecutionProvider,"* ]]; then
  echo "=== TensorRT provider (engine builds capped at ${TRT_TIMEOUT}s) ==="
  # The original pipeline would build an engine per image: skip it for TRT.
  if ! timeout "$TRT_TIMEOUT" "$PY" benchmarks/compare.py "${common[@]}" --skip peer,search,original,off \
      --providers TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider \
      --name "$(basename "$OUT")-tensorrt" --out "$OUT/tensorrt"; then
    echo "TensorRT run failed or exceeded ${TRT_TIMEOUT}s" | tee "$OUT/tensorrt-skipped.txt"
  fi
else
  echo "TensorrtExecutionProvider not in this onnxruntime build ($providers)" | tee "$OUT/tensorrt-skipped.txt"
fi
echo "gpu_sweep: done in $(( $(date +%s) - started )) s; reports under $OUT"
