#!/usr/bin/env bash
# The ResNet50 exports the CPU comparison runs on, made again from nothing:
# random weights (seed 0: the same graph and compute as trained ones, and the
# same file each time), never committed.
#
#   benchmarks/export_resnet50.sh [OUT_DIR]     # default .cache/models/resnet50
#
# Writes OUT_DIR/models.toml with two entries:
#   resnet50        PyTorch (torchvision's module tree, avg pool), preset imagenet
#   resnet50_keras  keras.applications.ResNet50(include_top=False, pooling="max"),
#                   caffe preprocessing, NHWC: the original system's model
# The Keras half needs a Python with TensorFlow and tf2onnx: $LOOKALIKE_KERAS_PYTHON,
# else .venv-keras/bin/python here or in the main checkout; without one it is
# skipped with a note (the torch half still runs). About 10 s + 60 s on 2 cores.
#
# Then, for example:
#   python benchmarks/compare.py --model resnet50_keras --original-models resnet50_keras,resnet50 \
#     --registry .cache/models/resnet50/models.toml --skip search
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${1:-.cache/models/resnet50}
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$REPO/client:$REPO/server:$REPO/export${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
REG="$OUT/models.toml"

"$PY" -m lookalike_export.cli torch resnet50 --random --seed 0 --out "$OUT" --registry "$REG"

KERAS_PY=${LOOKALIKE_KERAS_PYTHON:-}
if [[ -z "$KERAS_PY" ]]; then
  for cand in "$REPO/.venv-keras/bin/python" "$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null | sed 's#/.git$##')/.venv-keras/bin/python"; do
    if [[ -x "$cand" ]]; then KERAS_PY=$cand; break; fi
  done
fi
if [[ -n "$KERAS_PY" ]]; then
  LOOKALIKE_KERAS_PYTHON="$KERAS_PY" "$PY" -m lookalike_export.cli keras resnet50 --weights random --seed 0 \
    --name resnet50_keras --out "$OUT" --registry "$REG"
else
  echo "export_resnet50: no Python with TensorFlow (set LOOKALIKE_KERAS_PYTHON or create .venv-keras);" \
    "resnet50_keras skipped" >&2
fi
echo "registry: $REG"
