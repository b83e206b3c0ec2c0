#!/usr/bin/env bash
# Sets up the environment and runs the tests.
#   bash scripts/test.sh [pytest args...]           # the whole suite (what CI runs)
#   bash scripts/test.sh --quick [pytest args...]   # the quick tier: no torch, TensorFlow or store services
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ "${1:-}" = "--quick" ]; then
  shift
  bash scripts/setup.sh --quick
  exec .venv/bin/python -m pytest -q -p no:cacheprovider -m "not export and not integration and not slow" "$@"
fi
bash scripts/setup.sh --dev
bash scripts/ensure_redis.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
