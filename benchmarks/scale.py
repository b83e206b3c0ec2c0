"""A million vectors: load paths, index builds, search latency and recall on a Milvus standalone server.

What it measures (issue 14), on ``--rows`` synthetic 1280-d unit vectors drawn
to match real MobileNetV2 embeddings (``benchmarks/scale_vectors.py``; the
fitted distribution is committed as ``benchmarks/data/scale-mobilenet_v2-fit.npz``
and every row is a pure function of it and ``--seed``):

1. **Resemblance check**: nearest-other-item distances of as many draws as real
   embeddings went into the fit, against the real ones (percentiles).
2. **Server write path** (``--server-path-rows``, a subset): what Insert does
   after embedding: Redis claim, :class:`MilvusStore` upsert in writes of up to
   512 rows, Redis complete (``scale_milvus.server_write_path``).
3. **Bulk path**: pymilvus ``insert`` in batches of ``--insert-batch`` rows into
   a collection with the server's schema and no index, then ``flush``; the index
   is built afterwards. Exact top-10 neighbours of every query are computed on
   the way (numpy, one batch at a time, so the million never sits in memory).
4. **Index variants** (``--variant``, repeatable), each built on the loaded rows:
   build time, load time, server RSS (``/proc/<pid>/status`` of the milvus
   process), and per search setting p50/p99 of single-query top-10 searches and
   recall@10 against the exact neighbours. Queries: ``--heldout`` held-out draws
   (another seed) and ``--perturbed`` stored vectors moved by the median
   distance between a real photo and an augmentation of it.

Results go to ``--out-json`` after every step (a run cut short keeps what it
measured) and to ``--out-md`` at the end.

Usage::

    # load once (exact neighbours computed on the way, cached), then index variants
    nice -n 19 python benchmarks/scale.py --rows 1000000 --milvus-dir /tmp/scale-milvus --keep-server \\
        --server-path-rows 20000 --truth-cache /tmp/truth.npz --variant 'IVF_FLAT:nlist=256:nprobe=16,64,128' \\
        --out-json benchmarks/results/scale-$(date +%F).json --out-md benchmarks/results/scale-$(date +%F).md
    nice -n 19 python benchmarks/scale.py --rows 1000000 --uri "$(cat /tmp/scale-milvus/milvus.uri)" \\
        --milvus-pid "$(cat /tmp/scale-milvus/milvus.pid)" --reuse --truth-cache /tmp/truth.npz \\
        --server-path-rows 0 --variant 'HNSW:M=16,efConstruction=64:ef=128,256,512' --out-json ...
    python benchmarks/scale.py --rows 2000 --lite /tmp/x.db --variant 'IVF_FLAT:nlist=32:nprobe=8'  # smoke

The committed results list the exact commands of their runs in ``meta.runs``.

``--fit PHOTO_DIR`` re-samples real embeddings (photos under PHOTO_DIR and nine
augmentations of each, through the server's model) and rewrites ``--model``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_milvus as sm
import scale_vectors as sv

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "benchmarks" / "data" / "scale-mobilenet_v2-fit.npz"
PERCENTILES = (5, 25, 50, 75, 95)


def parse_variant(text: str) -> tuple[str, dict[str, Any], str, list[int]]:
    """``TYPE:k=v,k=v:search_key=a,b,c`` -> (index type, build params, search key, values)."""
    index_type, build, sweep = text.split(":")
    params = {k: int(v) for k, v in (kv.split("=") for kv in build.split(",") if kv)}
    key, values = sweep.split("=")
    return index_type, params, key, [int(v) for v in values.split(",")]


class ExactTopK:
    """Running exact top-10 (largest dot product = smallest L2 for unit vectors) per query."""

    def __init__(self, queries: np.ndarray, k: int = sm.TOP_K) -> None:
        self.queries = queries
        self.k = k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def update(self, start: int, vectors: np.ndarray) -> None:
        """Merges one batch of stored rows (ids ``start..``)."""
        dots = self.queries @ vectors.T
        k = min(self.k, dots.shape[1])
        part = np.argpartition(-dots, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([self.scores, np.take_along_axis(dots, part, axis=1)], axis=1)
        cand_i = np.concatenate([self.ids, part + start], axis=1)
        best = np.argsort(-cand_s, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(cand_s, best, axis=1)
        self.ids = np.take_along_axis(cand_i, best, axis=1)


def make_queries(model: sv.EmbeddingModel, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Held-out draws (seed + 1) then perturbed copies of stored rows; and the stored rows' ids."""
    heldout = sv.draw(model, 0, args.heldout, args.seed + 1)
    rng = np.random.default_rng(args.seed + 2)
    picked = np.sort(rng.choice(args.rows, size=args.perturbed, replace=False))
    stored = heldout[:0]
    # One draw per chunk that holds a picked row (a chunk is CHUNK rows).
    for chunk in np.unique(picked // sv.CHUNK):
        rows = picked[picked // sv.CHUNK == chunk]
        start = int(chunk) * sv.CHUNK
        block = sv.draw(model, start, min(sv.CHUNK, args.rows - start), args.seed)
        stored = np.concatenate([stored, block[rows - start]])
    return np.concatenate([heldout, sv.perturb(model, stored, rng)]).astype(np.float32), picked


def exact_truth(model: sv.EmbeddingModel, args: argparse.Namespace, queries: np.ndarray) -> np.ndarray:
    """Exact top-10 ids of every query over all rows: from ``--truth-cache`` when it matches, else computed."""
    cache = Path(args.truth_cache) if args.truth_cache else None
    if cache and cache.exists():
        with np.load(cache) as z:
            if np.array_equal(z["queries"], queries):
                return np.asarray(z["ids"])
    truth = ExactTopK(queries)
    for start, vectors in sv.stream(model, args.rows, args.seed, args.insert_batch):
        truth.update(start, vectors)
    if cache:
        np.savez(cache, queries=queries, ids=truth.ids)
    return truth.ids


def resemblance(model: sv.EmbeddingModel, seed: int) -> dict[str, Any]:
    """Nearest-other-item distance percentiles: real embeddings against as many draws."""
    synthetic = sv.nn_distances(sv.draw(model, 0, model.real_count, seed + 3))
    return {
        "percentiles": list(PERCENTILES),
        "real_nearest_other_photo": np.percentile(model.real_nn, PERCENTILES).round(3).tolist(),
        "synthetic_nearest_other": np.percentile(synthetic, PERCENTILES).round(3).tolist(),
        "items": model.real_count,
        "rank": int(model.basis.shape[1]),
        "residual_std": round(model.residual_std, 5),
        "perturbation_distance": round(model.sibling_distance, 3),
    }


class Report:
    """The JSON result, rewritten after every step."""

    def __init__(self, path: str, meta: dict[str, Any]) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, Any] = {"meta": meta, "variants": []}

    def save(self) -> None:
        if self.path:
            self.path.write_text(json.dumps(self.data, indent=1) + "\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the result dict (also written to ``--out-json``)."""
    model = sv.EmbeddingModel.load(Path(args.model))
    milvus_pid: int | None = None
    server_dir: Path | None = None
    if args.lite:
        uri = args.lite
    elif args.milvus_dir:
        sys.path.insert(0, str(REPO / "scripts"))
        import milvus_server

        server_dir = Path(args.milvus_dir)
        started = milvus_server.start(server_dir, timeout_s=300)
        uri, milvus_pid = started.uri, started.pid
        print(f"milvus standalone {uri} pid {milvus_pid} up in {started.boot_s:.1f} s", flush=True)
    else:
        uri = args.uri
        milvus_pid = args.milvus_pid
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/scale.py " + " ".join(args.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other engineers' work at nice 19",
        "engine": "Milvus Lite " + version("milvus-lite") if args.lite else "Milvus standalone " + version("milvus"),
        "pymilvus": version("pymilvus"),
        "rows": args.rows,
        "dim": model.dim,
        "seed": args.seed,
        "queries": {"heldout": args.heldout, "perturbed": args.perturbed, "top_k": sm.TOP_K},
    }
    report = Report(args.out_json, meta)
    client = sm.MilvusClient(uri=uri)
    try:
        report.data["resemblance"] = resemblance(model, args.seed)
        print("resemblance", report.data["resemblance"], flush=True)
        queries, picked = make_queries(model, args)
        report.save()

        if args.server_path_rows:
            with tempfile.TemporaryDirectory(prefix="scale-redis-") as redis_dir:
                res = sm.server_write_path(
                    uri,
                    args.redis_url,
                    model.dim,
                    sv.stream(model, args.server_path_rows, args.seed, 512),
                    512,
                    Path(redis_dir),
                )
            report.data["server_write_path"] = {
                "rows": res.rows,
                "seconds": round(res.seconds, 1),
                "rows_per_s": round(res.rows_per_s, 1),
                "write_rows": res.batch,
            }
            print("server write path", report.data["server_write_path"], flush=True)
            report.save()

        name = args.collection
        if args.reuse:
            # The collection holds these rows already: only the exact neighbours are needed.
            started = time.perf_counter()
            truth_ids = exact_truth(model, args, queries)
            report.data["bulk_reused"] = {"rows": args.rows, "truth_s": round(time.perf_counter() - started, 1)}
        else:
            sm.create_bulk_collection(client, name, model.dim)
            truth = ExactTopK(queries)
            insert_s = 0.0
            started = time.perf_counter()
            for start, vectors in sv.stream(model, args.rows, args.seed, args.insert_batch):
                insert_s += sm.bulk_insert(client, name, start, vectors)
                truth.update(start, vectors)
                if (start // args.insert_batch) % 10 == 0:
                    print(f"  inserted {start + len(vectors)} rows, {insert_s:.0f} s in insert", flush=True)
            t = time.perf_counter()
            client.flush(name, timeout=1800)
            flush_s = time.perf_counter() - t
            wall_s = time.perf_counter() - started
            truth_ids = truth.ids
            if args.truth_cache:
                np.savez(args.truth_cache, queries=queries, ids=truth_ids)
            # Perturbed copies should find their own source row among the exact neighbours.
            own = float(np.mean([p in row for p, row in zip(picked, truth_ids[args.heldout :], strict=True)]))
            report.data["bulk"] = {
                "rows": args.rows,
                "batch": args.insert_batch,
                "insert_s": round(insert_s, 1),
                "flush_s": round(flush_s, 1),
                "rows_per_s": round(args.rows / (insert_s + flush_s), 1),
                "wall_s_with_generation_and_exact_search": round(wall_s, 1),
                "perturbed_source_in_exact_top10": round(own, 3),
                "server": sm.rss_mb(milvus_pid),
            }
        bulk_key = "bulk_reused" if args.reuse else "bulk"
        print(bulk_key, report.data[bulk_key], flush=True)
        report.save()

        for text in args.variant:
            index_type, build, key, values = parse_variant(text)
            entry: dict[str, Any] = {"index": index_type, "build_params": build, "points": []}
            report.data["variants"].append(entry)
            params = {"params": json.dumps(build)} if args.lite else build
            entry["build_s"] = round(sm.build_index(client, name, index_type, params, args.index_timeout), 1)
            entry["server_after_build"] = sm.rss_mb(milvus_pid)
            t = time.perf_counter()
            client.load_collection(name, timeout=1800)
            entry["load_s"] = round(time.perf_counter() - t, 1)
            entry["server_loaded"] = sm.rss_mb(milvus_pid)
            print(index_type, build, {k: v for k, v in entry.items() if k != "points"}, flush=True)
            report.save()
            for value in values:
                point = sm.timed_searches(client, name, queries, truth_ids, args.heldout, {key: value})
                entry["points"].append(asdict(point))
                entry["server_after_search"] = sm.rss_mb(milvus_pid)
                print(f"  {index_type} {key}={value}: {asdict(point)}", flush=True)
                report.save()
            sm.drop_index(client, name)
        if args.drop:
            client.drop_collection(name)
    finally:
        client.close()
        if server_dir is not None and not args.keep_server:
            import milvus_server

            milvus_server.stop(server_dir)
    report.save()
    return report.data


def markdown(data: dict[str, Any]) -> str:
    """The result as a Markdown page."""
    m = data["meta"]
    r = data["resemblance"]
    lines = [
        f"# Scale: {m['rows']:,} vectors on {m['engine']} ({m['date']})",
        "",
        f"Machine: {m['machine']}; latencies are upper bounds. pymilvus {m['pymilvus']}.",
        f"Command: `{m['command']}`",
        "",
        f"Vectors: {m['rows']:,} x {m['dim']}-d unit vectors, seed {m['seed']}, drawn from a Gaussian fitted to",
        f"{r['items']} real MobileNetV2 embeddings (photos + 9 augmentations each): mean + top-{r['rank']}",
        f"principal components + isotropic residual (std {r['residual_std']}), clipped at 0, L2-normalised.",
        "Resemblance, nearest-other-item L2 distance percentiles "
        f"{r['percentiles']}: real {r['real_nearest_other_photo']}, synthetic {r['synthetic_nearest_other']}.",
        f"Queries: {m['queries']['heldout']} held-out draws + {m['queries']['perturbed']} stored vectors moved by "
        f"{r['perturbation_distance']} (median real photo-to-augmentation distance); top-{m['queries']['top_k']},",
        "one query per call, Bounded consistency, id only; recall@10 against numpy exact search over all rows.",
        "",
    ]
    if "server_write_path" in data:
        w = data["server_write_path"]
        lines += [
            f"Server write path (Redis claim + MilvusStore upsert in {w['write_rows']}-row writes + Redis complete, "
            f"one thread): {w['rows']:,} rows in {w['seconds']} s = **{w['rows_per_s']:,} rows/s**.",
        ]
    if "bulk" in data:
        b = data["bulk"]
        lines += [
            f"Bulk path (pymilvus insert, {b['batch']:,}-row batches, no index, then flush): "
            f"{b['rows']:,} rows, insert {b['insert_s']} s + flush {b['flush_s']} s = "
            f"**{b['rows_per_s']:,} rows/s**; server RSS once the rows were in (not yet loaded for search) "
            f"{b['server'].get('rss_mb', '-')} MiB.",
            "",
        ]
    lines += [
        "| index | build params | build s | load s | server RSS loaded MiB | search | p50 ms | p99 ms "
        "| recall@10 | held-out | perturbed |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in data["variants"]:
        build = ", ".join(f"{k}={x}" for k, x in v["build_params"].items())
        build_s = v.get("build_s", "-")
        if "compaction_reindex_s" in v:
            build_s = f"{build_s} (+{v['compaction_reindex_s']} re-index after compaction)"
        rss = v.get("server_loaded", {}).get("rss_mb", "-")
        for p in v["points"]:
            search = ", ".join(f"{k}={x}" for k, x in p["params"].items())
            lines.append(
                f"| {v['index']} | {build} | {build_s} | {v.get('load_s', '-')} | {rss} | {search} "
                f"| {p['p50_ms']} | {p['p99_ms']} | {p['recall']:.4f} | {p['recall_heldout']:.4f} "
                f"| {p['recall_perturbed']:.4f} |"
            )
    if data.get("reading"):
        lines += ["", f"Reading: {data['reading']}"]
    if data.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in data["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="fitted distribution (.npz)")
    parser.add_argument("--fit", default="", help="photo directory: re-sample real embeddings and rewrite --model")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--milvus-dir", default="", help="start a standalone server with its data here")
    target.add_argument("--uri", default="", help="an already running server")
    target.add_argument("--lite", default="", help="a Milvus Lite database file (smoke runs)")
    parser.add_argument("--milvus-pid", type=int, default=None, help="with --uri: the server's pid, for RSS")
    parser.add_argument("--keep-server", action="store_true", help="leave the --milvus-dir server running")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--server-path-rows", type=int, default=20_000)
    parser.add_argument("--insert-batch", type=int, default=10_000)
    parser.add_argument("--collection", default="scale_mobilenet_v2_v1")
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--perturbed", type=int, default=100)
    parser.add_argument("--variant", action="append", default=[], help="TYPE:build=1,..:searchkey=v1,v2")
    parser.add_argument("--index-timeout", type=float, default=3600.0)
    parser.add_argument("--drop", action="store_true", help="drop the collection at the end")
    parser.add_argument(
        "--reuse", action="store_true", help="the collection already holds these rows (a rerun of variants)"
    )
    parser.add_argument("--md-from", default="", help="only rewrite --out-md from this JSON result")
    parser.add_argument("--truth-cache", default="", help="npz: exact neighbours, reused if it matches")
    parser.add_argument("--truth-only", action="store_true", help="only compute --truth-cache (no Milvus)")
    parser.add_argument("--out-json", default="")
    parser.add_argument("--out-md", default="")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.fit:
        photos = sorted(p for p in Path(args.fit).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        emb, owners, originals = sv.real_embeddings(photos, REPO / "models" / "models.toml", 9, seed=0)
        Path(args.model).parent.mkdir(parents=True, exist_ok=True)
        sv.fit(emb, owners, originals, rank=128).save(Path(args.model))
        print(f"fitted {len(emb)} real embeddings of {len(photos)} photos -> {args.model}", flush=True)
    if args.md_from:
        Path(args.out_md).write_text(markdown(json.loads(Path(args.md_from).read_text())))
        return 0
    if args.truth_only:
        model = sv.EmbeddingModel.load(Path(args.model))
        queries, _ = make_queries(model, args)
        exact_truth(model, args, queries)
        return 0
    if not (args.milvus_dir or args.uri or args.lite):
        return 0
    data = run(args)
    text = markdown(data)
    print(text)
    if args.out_md:
        Path(args.out_md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
