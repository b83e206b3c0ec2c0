#!/usr/bin/env bash
# A short GPU check of batching with one ONNX Runtime session per bucket:
# ResNet50 (random weights: same compute), CUDA provider, Embed at c=1,16,64.
# Three series in ~2 minutes:
#   batching on, a session per bucket (the server's default on CUDA)
#   batching off
#   batching on, one shared session (--models-session-per-bucket off: the old behaviour)
# Writes benchmarks/results/gpu-<card>-buckets-<date>/. Same needs as gpu_sweep.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/client:$PWD/server:$PWD/export${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-' | sed 's/-$//')
OUT=${1:-benchmarks/results/gpu-${card,,}-buckets-$(date +%Y-%m-%d)}
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/nvidia-smi.txt"
"$PY" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' | tee -a "$OUT/nvidia-smi.txt"

MODELS=.cache/gpu-models
if [[ ! -f "$MODELS/resnet50.onnx" ]]; then
  "$PY" -m lookalike_export.cli torch resnet50 --random --no-parity --out "$MODELS" --registry "$MODELS/models.toml"
fi
common=(--registry "$MODELS/models.toml" --model resnet50 --concurrency 1,16,64 --at 64 --warmup 1 --duration 3
        --skip ceiling,original,peer,search --providers CUDAExecutionProvider,CPUExecutionProvider
        --server-arg=--batching-max-batch-size=64)
"$PY" benchmarks/compare.py "${common[@]}" --name "$(basename "$OUT")" --out "$OUT/per-bucket"
"$PY" benchmarks/compare.py "${common[@]}" --skip off,ceiling,original,peer,search \
  --server-arg=--models-session-per-bucket=off --name "$(basename "$OUT")-shared" --out "$OUT/shared-session"
