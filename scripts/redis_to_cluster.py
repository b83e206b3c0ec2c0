"""Copies lookalike's records from one Redis into a Redis Cluster, under the cluster's key names.

On a cluster the server hash-tags its record keys (``P item:7`` becomes
``P{T}:item:7``, see ``server/lookalike_server/store/redis_records.py``), so a
standalone Redis's data must be copied under the new names before servers
point at the cluster. Run it with every server stopped::

    python scripts/redis_to_cluster.py --from redis://old:6379/0 \\
        --to redis+cluster://n1:7000,n2:7000,n3:7000 [--prefix lookalike:] [--with-cache]

Copied: item records, the id counter, both dedupe indexes, the pending set
and the attribute names. Not copied: leases (they belong to running servers)
and, unless ``--with-cache``, cached embeddings (they refill). Values are
copied by type (HSCAN, SSCAN, ZSCAN in batches), so the two Redis versions
may differ; TTLs are kept. It refuses a cluster that already holds records
under the prefix. Milvus is untouched: the ids do not change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import redis

from lookalike_server.config import RedisConfig
from lookalike_server.store.redis_connection import RedisConnection
from lookalike_server.store.redis_records import KeyLayout, decode

BATCH = 1000


def _copy(source: redis.Redis, target: redis.RedisCluster, key: bytes, dest: str) -> None:
    """Copies one key's value and TTL under ``dest``."""
    kind = decode(source.type(key))
    if kind == "string":
        value = source.get(key)
        if value is not None:
            target.set(dest, value)
    elif kind == "hash":
        batch: dict[bytes, bytes] = {}
        for field, value in source.hscan_iter(key, count=BATCH):
            batch[field] = value
            if len(batch) >= BATCH:
                target.hset(dest, mapping=batch)  # type: ignore[arg-type]
                batch = {}
        if batch:
            target.hset(dest, mapping=batch)  # type: ignore[arg-type]
    elif kind == "set":
        members = list(source.sscan_iter(key, count=BATCH))
        for i in range(0, len(members), BATCH):
            target.sadd(dest, *members[i : i + BATCH])
    elif kind == "zset":
        scored = dict(source.zscan_iter(key, count=BATCH))
        items = list(scored.items())
        for i in range(0, len(items), BATCH):
            target.zadd(dest, dict(items[i : i + BATCH]))
    else:
        raise ValueError(f"unexpected {kind} at {decode(key)}")
    ttl_ms = int(source.pttl(key))  # type: ignore[arg-type]
    if ttl_ms > 0:
        target.pexpire(dest, ttl_ms)


def migrate(source: redis.Redis, target: redis.RedisCluster, prefix: str, with_cache: bool = False) -> dict[str, int]:
    """Copies the records under ``prefix`` from ``source`` into ``target`` with the cluster layout.

    Args:
        source: The standalone Redis the servers used.
        target: The cluster.
        prefix: ``RedisConfig.key_prefix`` (the same on both sides).
        with_cache: Also copy cached embeddings (same names: they are not tagged).

    Returns:
        Keys copied and skipped: ``{"copied": n, "skipped": m}``.

    Raises:
        SystemExit: The cluster already holds records under ``prefix``.
    """
    new = KeyLayout(prefix, cluster=True)
    if target.exists(new.next_id):
        raise SystemExit(f"the cluster already holds records under {prefix!r} ({new.next_id} exists); not copying")
    copied = skipped = 0
    for key in source.scan_iter(match=prefix + "*", count=BATCH):
        name = decode(key)[len(prefix) :]
        if name.startswith("emb:"):
            if not with_cache:
                skipped += 1
                continue
            dest = decode(key)  # cache keys carry no tag: the same name spreads over the cluster
        elif name.startswith("lease:") or name.startswith("{"):
            skipped += 1  # a lease, or already a cluster key
            continue
        else:
            dest = new.prefix + name
        _copy(source, target, key, dest)
        copied += 1
    return {"copied": copied, "skipped": skipped}


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="redis:// or rediss:// URL of the old Redis")
    parser.add_argument("--to", dest="target", required=True, help="redis+cluster:// URL of the cluster")
    parser.add_argument("--prefix", default=RedisConfig.key_prefix, help="the servers' redis.key_prefix")
    parser.add_argument("--with-cache", action="store_true", help="also copy cached embeddings")
    args = parser.parse_args(argv)
    config = RedisConfig(url=args.target, key_prefix=args.prefix, timeout_s=30.0)  # validates the URL and prefix
    cluster = RedisConnection(config, data_dir="")
    if not isinstance(cluster.client, redis.RedisCluster):
        parser.error("--to must be a redis+cluster:// or rediss+cluster:// URL")
    source = redis.Redis.from_url(args.source, socket_timeout=30.0)
    try:
        done = migrate(source, cluster.client, args.prefix, with_cache=args.with_cache)
    finally:
        source.close()
        cluster.close()
    print(f"copied {done['copied']} keys, skipped {done['skipped']} (leases, cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
