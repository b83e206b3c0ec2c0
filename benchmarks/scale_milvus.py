"""Milvus-side steps of the scale benchmark: load paths, index builds, timed searches.

Kept apart from ``benchmarks/scale.py`` (which owns the flow, the ground truth
and the report) so that each file holds one concern. Everything here talks to
a Milvus standalone server (or to Milvus Lite for the smoke test) through
pymilvus or through the server's own :class:`MilvusStore` / :class:`RedisStore`.
"""

from __future__ import annotations

import hashlib
import statistics
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import MilvusClient

from lookalike_server.store.milvus_schema import ID_FIELD, METRIC, VECTOR_FIELD, collection_schema

TOP_K = 10


def rss_mb(pid: int | None) -> dict[str, float]:
    """Resident and peak-resident memory of a process, MiB (empty when unknown, e.g. Lite)."""
    if pid is None:
        return {}
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return {}
    return {"rss_mb": out.get("VmRSS", 0.0), "peak_rss_mb": out.get("VmHWM", 0.0)}


# ------------------------------------------------------------------ bulk path --


def create_bulk_collection(client: MilvusClient, name: str, dim: int) -> None:
    """The server's schema (id, vector, key, attrs), without an index: rows first, index after."""
    if client.has_collection(name):
        client.drop_collection(name)
    client.create_collection(name, schema=collection_schema(dim), consistency_level="Bounded")


def bulk_insert(client: MilvusClient, name: str, start: int, vectors: np.ndarray) -> float:
    """One ``insert`` of a batch with keys ``k<id>`` and empty attributes; seconds it took.

    ``insert`` rather than ``upsert``: a bulk load writes new ids, and upsert
    would add a delete per row.
    """
    rows = [
        {ID_FIELD: start + i, VECTOR_FIELD: v, "key": f"k{start + i}", "attrs": {}}
        for i, v in enumerate(vectors.tolist())
    ]
    t = time.perf_counter()
    client.insert(name, rows, timeout=600)
    return time.perf_counter() - t


# ---------------------------------------------------------- server write path --


@dataclass
class ServerPathResult:
    """Throughput of the server's own write path (after embedding)."""

    rows: int
    seconds: float
    batch: int

    @property
    def rows_per_s(self) -> float:
        """Rows written per second."""
        return self.rows / self.seconds if self.seconds else 0.0


def server_write_path(
    uri: str, redis_url: str, dim: int, batches: Iterable[tuple[int, np.ndarray]], batch: int, data_dir: Path
) -> ServerPathResult:
    """What Insert does after embedding, with the server's own store classes.

    Per item: the Redis claim (record + indexes, one Lua script), then the
    vectors through :meth:`MilvusStore.insert` (an upsert; Insert's writer
    batcher merges concurrent items into writes of up to 512 rows, which is
    what ``batch`` stands for), then the Redis flip to complete. One client
    thread: no concurrency between batches. The collection is created by
    :meth:`MilvusStore.ensure_collection` (the server default index, HNSW,
    created before the data) under a unique prefix and dropped afterwards;
    the Redis keys (unique prefix) are deleted.
    """
    from lookalike_server.config import MilvusConfig, RedisConfig
    from lookalike_server.lease import Lease
    from lookalike_server.store import Stores
    from lookalike_server.store.milvus import MilvusStore
    from lookalike_server.store.redis import RedisStore

    tag = uuid.uuid4().hex[:8]
    milvus = MilvusStore(MilvusConfig(collection_prefix=f"scalewp{tag}", timeout_s=600), uri)
    redis = RedisStore(RedisConfig(url=redis_url, key_prefix=f"scale-bench-{tag}:"), str(data_dir))
    stores = Stores(milvus=milvus, redis=redis)
    lease = Lease(stores)
    collection = milvus.ensure_collection("mobilenet_v2", "1", dim)
    model_key = "mobilenet_v2:1"
    rows = 0
    elapsed = 0.0
    try:
        for start, vectors in batches:
            t = time.perf_counter()
            ids, keys, tokens = [], [], []
            for i in range(vectors.shape[0]):
                key = f"k{start + i}"
                sha = hashlib.sha256(key.encode()).hexdigest()
                token = lease.begin()
                _, rec = redis.claim(key, sha, {}, "content", owner=lease.owner, token=token)
                ids.append(rec.id)
                keys.append(key)
                tokens.append(token)
            milvus.insert(collection, ids, vectors, keys, [{} for _ in ids])
            for item_id, token in zip(ids, tokens, strict=True):
                redis.mark_complete(item_id, [model_key], token=token)
                lease.end(token)
            elapsed += time.perf_counter() - t
            rows += vectors.shape[0]
    finally:
        lease.close()
        milvus._client.drop_collection(collection)
        milvus.close()
        client = redis.client
        for key in client.scan_iter(match=f"scale-bench-{tag}:*", count=1000):
            client.delete(key)
        redis.close()
    return ServerPathResult(rows, elapsed, batch)


# ------------------------------------------------------------ index and search --


def build_index(client: MilvusClient, name: str, index_type: str, params: dict[str, Any], timeout_s: float) -> float:
    """Creates the vector index on a flushed collection and waits until every row is indexed; seconds."""
    index = client.prepare_index_params()
    index.add_index(field_name=VECTOR_FIELD, index_type=index_type, metric_type=METRIC, params=params)
    t = time.perf_counter()
    client.create_index(name, index, timeout=timeout_s)
    deadline = t + timeout_s
    while time.perf_counter() < deadline:
        info = client.describe_index(name, VECTOR_FIELD)
        state = str(info.get("state", ""))
        total, done = int(info.get("total_rows", 0)), int(info.get("indexed_rows", 0))
        if "Finished" in state and done >= total:
            return time.perf_counter() - t
        if "Failed" in state:
            raise RuntimeError(f"index build failed: {info}")
        time.sleep(2.0)
    raise TimeoutError(f"index {index_type} {params} not built in {timeout_s:.0f} s")


def drop_index(client: MilvusClient, name: str) -> None:
    """Releases the collection and drops its vector index (the next variant builds its own)."""
    client.release_collection(name)
    client.drop_index(name, VECTOR_FIELD)


@dataclass
class SearchPoint:
    """Latency and recall of one search-parameter setting."""

    params: dict[str, Any]
    p50_ms: float
    p99_ms: float
    recall_heldout: float
    recall_perturbed: float
    recall: float
    queries: int


def _percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(q * (len(sorted_ms) - 1)))]


def timed_searches(
    client: MilvusClient,
    name: str,
    queries: np.ndarray,
    truth: np.ndarray,
    heldout: int,
    params: dict[str, Any],
    warmup: int = 10,
    on_query: Callable[[], None] | None = None,
) -> SearchPoint:
    """One query per call, top-10, like a Search RPC (id only; Bounded consistency).

    Args:
        client: Connected client.
        name: Collection (loaded).
        queries: ``(q, dim)``; the first ``heldout`` are held-out draws, the rest perturbed copies.
        truth: ``(q, 10)`` exact neighbour ids.
        heldout: How many of the queries are held-out draws.
        params: Search parameters (``nprobe`` or ``ef``).
        warmup: Untimed searches first (caches, connection).
        on_query: Called after each timed query (progress hooks in tests).
    """
    search_params = {"metric_type": METRIC, "params": params}
    for q in queries[:warmup]:
        client.search(name, data=[q.tolist()], limit=TOP_K, search_params=search_params, output_fields=[ID_FIELD])
    ms: list[float] = []
    hits_per_query: list[float] = []
    for q, exact in zip(queries, truth, strict=True):
        t = time.perf_counter()
        res = client.search(
            name,
            data=[q.tolist()],
            limit=TOP_K,
            search_params=search_params,
            output_fields=[ID_FIELD],
            anns_field=VECTOR_FIELD,
            consistency_level="Bounded",
        )
        ms.append((time.perf_counter() - t) * 1e3)
        got = {int(h["id"]) for h in res[0]}
        hits_per_query.append(len(got & set(exact.tolist())) / TOP_K)
        if on_query:
            on_query()
    ms.sort()
    return SearchPoint(
        params=params,
        p50_ms=round(statistics.median(ms), 2),
        p99_ms=round(_percentile(ms, 0.99), 2),
        recall_heldout=round(float(np.mean(hits_per_query[:heldout])), 4) if heldout else 0.0,
        recall_perturbed=round(float(np.mean(hits_per_query[heldout:])), 4) if len(ms) > heldout else 0.0,
        recall=round(float(np.mean(hits_per_query)), 4),
        queries=len(ms),
    )
