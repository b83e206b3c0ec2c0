"""Which vector index should the embedded Milvus Lite use? Latency and self-recall by index and size.

For each index (FLAT, IVF_FLAT, HNSW) it fills a fresh Milvus Lite database
through :class:`~lookalike_server.store.milvus.MilvusStore` (the server's own
schema, index parameters and search parameters) and, at each size, measures:

* **search p50/p95**: one query vector per call, top-10, like a Search RPC;
* **self-recall**: the share of sampled stored items that a search with their
  own stored vector returns first (the invariant the server promises: 1.0);
* **recall@10**: for queries near stored items (a stored vector plus noise),
  the share of the exact 10 nearest neighbours (numpy brute force) returned.

Vectors are synthetic, drawn to resemble image embeddings: non-negative
(post-ReLU pooled features), clustered around 64 centres, L2-normalised,
1280-d like MobileNetV2's. Real embeddings are more clustered than this, which
makes graph indexes' misses more, not less, likely.

Usage::

    nice -n 10 python benchmarks/lite_index.py --sizes 20000,100000 \
        --out benchmarks/results/lite-index-$(date +%F).md

Each (index, size) point prints a line as it completes, so a run cut short
still reports what it measured.

``--data fitted`` draws the vectors from the distribution fitted to real
MobileNetV2 embeddings that ``benchmarks/scale.py`` uses (``scale_vectors.py``),
so the Lite figures and the standalone scale figures share their data; the
row count at which Lite's p50 passes 20 ms came from::

    nice -n 19 python benchmarks/lite_index.py --data fitted --indexes IVF_FLAT \
        --sizes 20000,50000,100000,200000 --out benchmarks/results/lite-rows-$(date +%F).md
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lookalike_server.config import MilvusConfig
from lookalike_server.store.milvus import MilvusStore

DIM = 1280
SCALE_MODEL = "scale-mobilenet_v2-fit.npz"


@dataclass
class Point:
    """One measured (index, size) point."""

    index: str
    rows: int
    insert_s: float
    p50_ms: float
    p95_ms: float
    self_recall: float
    self_sample: int
    recall10: float


def synthetic_embeddings(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Non-negative, clustered, unit-norm vectors."""
    which = rng.integers(0, centres.shape[0], size=n)
    v = np.abs(centres[which] + 0.6 * rng.standard_normal((n, DIM), dtype=np.float32))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32)


def measure(
    store: MilvusStore,
    collection: str,
    data: np.ndarray,
    rng: np.random.Generator,
    self_sample: int,
    latency_queries: int,
) -> tuple[float, float, float, int, float]:
    n = data.shape[0]
    # Self-recall over a sample of stored items (every item is too slow at 100k on HNSW).
    ids = rng.choice(n, size=min(self_sample, n), replace=False)
    latencies: list[float] = []
    found = 0
    for i in ids:
        t = time.perf_counter()
        hits = store.search(collection, data[i], 10, consistency_level="Strong")[0]
        latencies.append(time.perf_counter() - t)
        found += bool(hits) and hits[0].id == int(i)
    # Near-duplicate queries: recall@10 against the exact neighbours.
    q_ids = rng.choice(n, size=min(latency_queries, n), replace=False)
    queries = data[q_ids] + 0.02 * rng.standard_normal((len(q_ids), DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    recall = []
    for q in queries:
        exact = set(np.argsort(((data - q) ** 2).sum(axis=1))[:10].tolist())
        t = time.perf_counter()
        hits = store.search(collection, q, 10, consistency_level="Strong")[0]
        latencies.append(time.perf_counter() - t)
        recall.append(len(exact & {h.id for h in hits}) / 10)
    ms = sorted(x * 1000 for x in latencies)
    p95 = ms[int(0.95 * (len(ms) - 1))]
    return statistics.median(ms), p95, found / len(ids), len(ids), float(np.mean(recall))


def run_index(
    index: str, sizes: list[int], base: MilvusConfig, data: np.ndarray, args: argparse.Namespace
) -> list[Point]:
    tmp = Path(tempfile.mkdtemp(prefix=f"lite-{index.lower()}-"))
    points = []
    try:
        # No flush per write: insert in big batches and flush once per size,
        # so the table compares indexes, not flush policies.
        store = MilvusStore(replace(base, index_type=index, flush_rows=0), str(tmp / "milvus.db"))
        coll = store.ensure_collection("bench", "1", DIM)
        done = 0
        insert_s = 0.0
        rng = np.random.default_rng(7)
        for size in sizes:
            t = time.perf_counter()
            for start in range(done, size, args.batch):
                stop = min(size, start + args.batch)
                store.insert(
                    coll,
                    list(range(start, stop)),
                    data[start:stop],
                    [f"k{i}" for i in range(start, stop)],
                    [{} for _ in range(start, stop)],
                )
            store.flush(coll)
            insert_s += time.perf_counter() - t
            done = size
            p50, p95, self_recall, sample, recall10 = measure(
                store, coll, data[:size], rng, args.self_sample, args.queries
            )
            point = Point(index, size, insert_s, p50, p95, self_recall, sample, recall10)
            print(
                f"{index:9s} rows={size:7d} insert={insert_s:7.1f}s p50={p50:7.2f}ms p95={p95:7.2f}ms "
                f"self_recall={self_recall:.4f} (n={sample}) recall@10={recall10:.3f}",
                flush=True,
            )
            points.append(point)
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return points


def table(points: list[Point], args: argparse.Namespace, versions: str) -> str:
    lines = [
        f"# Milvus Lite: index choice ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'CPU'}, 2-core shared box; other helpers'",
        "work (tests, benchmarks) ran concurrently, so latencies are noisy upper bounds.",
        f"Engine: {versions}. Vectors: synthetic, {DIM}-d, unit norm, "
        + (
            "drawn from a Gaussian fitted to real MobileNetV2 embeddings (benchmarks/scale_vectors.py, seed 14)."
            if args.data == "fitted"
            else "non-negative, 64 clusters\n(resembling pooled CNN embeddings; not real photos)."
        ),
        f"Search: top-10, one vector per call, Strong consistency; p50/p95 over {args.self_sample} self",
        f"queries + {args.queries} near-duplicate queries. Self-recall: share of {args.self_sample} sampled",
        "stored items found first by their own vector. recall@10: against numpy exact neighbours.",
        f"Build params: HNSW M={args.hnsw_m} efConstruction={args.hnsw_ef_construction} ef={args.ef};"
        f" IVF_FLAT nlist={args.nlist} nprobe={args.nprobe}.",
        "",
        f"Command: `nice -n 10 python benchmarks/lite_index.py {' '.join(sys.argv[1:])}`",
        "",
        "| index | rows | insert+flush s (cumulative) | p50 ms | p95 ms | self-recall | recall@10 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        lines.append(
            f"| {p.index} | {p.rows} | {p.insert_s:.1f} | {p.p50_ms:.2f} | {p.p95_ms:.2f} | "
            f"{p.self_recall:.4f} (n={p.self_sample}) | {p.recall10:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--indexes", default="IVF_FLAT,FLAT,HNSW")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--self-sample", type=int, default=300)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--nlist", type=int, default=MilvusConfig().ivf_nlist)
    parser.add_argument("--nprobe", type=int, default=MilvusConfig().ivf_nprobe)
    parser.add_argument("--hnsw-m", type=int, default=MilvusConfig().hnsw_m)
    parser.add_argument("--hnsw-ef-construction", type=int, default=MilvusConfig().hnsw_ef_construction)
    parser.add_argument("--ef", type=int, default=MilvusConfig().search_ef)
    parser.add_argument("--out", default="")
    parser.add_argument(
        "--data",
        choices=("clusters", "fitted"),
        default="clusters",
        help="clusters: 64 synthetic clusters; fitted: the scale benchmark's fit to real MobileNetV2 embeddings",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    base = MilvusConfig(
        ivf_nlist=args.nlist,
        ivf_nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.hnsw_ef_construction,
        search_ef=args.ef,
        timeout_s=600,
    )
    if args.data == "fitted":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import scale_vectors

        fitted = scale_vectors.EmbeddingModel.load(Path(__file__).resolve().parent / "data" / SCALE_MODEL)
        data = scale_vectors.draw(fitted, 0, sizes[-1], seed=14)
    else:
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((64, DIM), dtype=np.float32)
        data = synthetic_embeddings(sizes[-1], rng, centres)
    from importlib.metadata import version

    versions = f"milvus-lite {version('milvus-lite')}, pymilvus {version('pymilvus')}"
    points: list[Point] = []
    for index in args.indexes.split(","):
        points += run_index(index, sizes, base, data, args)
    text = table(points, args, versions)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
