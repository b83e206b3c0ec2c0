#!/usr/bin/env python3
"""What a FindDuplicates walk costs on the embedded default (Milvus Lite + embedded Redis), at 20k and 100k items.

Embedding 100k photos on a 2-core box would take hours, so the index is filled
with **synthetic** data written straight through the server's own store layer
(:class:`MilvusStore` and :class:`RedisStore`, the same collection and record
layout the write path produces): random unit vectors of the model's dimension
(1280), of which a fraction get near copies (the base vector plus a little
noise, renormalised: squared L2 ≈ 0.02-0.08 from it) and a few exact copies (the
same vector and the same content hash). Then a real ``lookalike-server`` starts
on that data directory and one FindDuplicates call walks it; the script reports
the wall time, the server's own elapsed time, the peak RSS of the server
process, and whether every planted group was found (and nothing else).

Random vectors are farther apart than real photo embeddings (about 2 apart,
against ~0.5-1 for photos), so a range search returns fewer candidates per item
here than on a real library: read the figures as the walk's own overhead.

Usage::

    nice -n 19 python benchmarks/dupes_cost.py --sizes 20000 100000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODEL, VERSION, DIM = "mobilenet_v2", "1", 1280
NEAR_FRACTION = 0.02  # items that get one near copy
EXACT_FRACTION = 0.005  # items that get one exact copy
BATCH = 2000


def populate(data_dir: Path, n: int, seed: int = 7) -> dict[str, Any]:
    """Writes ``n`` items (originals plus planted copies) through the store layer.

    Returns:
        Planted groups (representative id -> copy ids) and timings.
    """
    from lookalike_server.config_loading import load_config
    from lookalike_server.domain import model_key
    from lookalike_server.store.milvus import MilvusStore
    from lookalike_server.store.redis import RedisStore

    # appendfsync no: the fill is a benchmark set-up, not data to keep (fsync per record
    # would make 100k items take most of an hour); the server then runs with its defaults.
    config = load_config(["--data-dir", str(data_dir), "--redis-url", "", "--redis-appendfsync", "no"])
    # Flushed every 2000 rows (Lite scans unflushed rows slowly); one Lite flush or
    # upsert may take longer than the server's 10 s call timeout on a busy box.
    milvus = MilvusStore(replace(config.milvus, flush_rows=BATCH, timeout_s=600.0), str(data_dir / "milvus.db"))
    redis = RedisStore(config.redis, str(data_dir))
    coll = milvus.ensure_collection(MODEL, VERSION, DIM)
    mkey = model_key(MODEL, VERSION)
    rng = np.random.default_rng(seed)
    n_near, n_exact = int(n * NEAR_FRACTION), int(n * EXACT_FRACTION)
    n_orig = n - n_near - n_exact
    t0 = time.perf_counter()
    pending: list[tuple[np.ndarray, str, str, int]] = []  # (vector, sha, kind, original's index)
    ids_of: dict[tuple[str, int], int] = {}
    written = 0

    def flush_batch() -> None:
        nonlocal written
        ids = []
        for _vec, sha, kind, i in pending:
            rec, created = redis.reserve(f"synthetic/{kind}/{i:07d}", sha, {}, "key")
            assert created
            ids.append(rec.id)
            ids_of[(kind, i)] = rec.id
        keys = [f"synthetic/{kind}/{i:07d}" for _v, _s, kind, i in pending]
        milvus.insert(coll, ids, np.stack([p[0] for p in pending]), keys, [{} for _ in ids])
        for item_id in ids:
            redis.mark_complete(item_id, [mkey])
        written += len(ids)
        pending.clear()

    originals = rng.standard_normal((n_orig, DIM)).astype(np.float32)
    originals /= np.linalg.norm(originals, axis=1, keepdims=True)
    copied = sorted(rng.choice(n_orig, n_near + n_exact, replace=False).tolist())
    exact_of = set(rng.choice(copied, n_exact, replace=False).tolist())
    for i in range(n_orig):
        pending.append((originals[i], hashlib.sha256(f"orig{i}".encode()).hexdigest(), "orig", i))
        if len(pending) == BATCH:
            flush_batch()
    flush_batch()
    for i in copied:
        if i in exact_of:  # the same bytes under another key: same vector, same hash
            vec, sha = originals[i], hashlib.sha256(f"orig{i}".encode()).hexdigest()
        else:
            noise = rng.standard_normal(DIM).astype(np.float32)
            vec = originals[i] + noise * rng.uniform(0.1, 0.2) / np.sqrt(DIM)
            vec /= np.linalg.norm(vec)
            sha = hashlib.sha256(f"near{i}".encode()).hexdigest()
        pending.append((vec, sha, "copy", i))
        if len(pending) == BATCH:
            flush_batch()
    flush_batch()
    planted = {ids_of[("orig", i)]: [ids_of[("copy", i)]] for i in copied}
    milvus.flush(coll)
    populate_s = time.perf_counter() - t0
    milvus.close()
    redis.close()
    return {"planted": planted, "exact_planted": len(exact_of), "populate_s": round(populate_s, 1)}


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a process (Linux), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def walk(data_dir: Path, threshold: float, timeout_s: float | None) -> dict[str, Any]:
    """Starts the server on ``data_dir`` and runs one FindDuplicates over everything.

    A walk that outlives ``timeout_s`` ends with DEADLINE_EXCEEDED (the server
    stops it) and is reported as not finished, with the time it was given.
    """
    from lookalike.client import DuplicatesSummary, LookalikeClient
    from lookalike.errors import DeadlineExceededError

    log_path = data_dir / "server.log"
    cmd = [sys.executable, "-m", "lookalike_server", "--port", "0", "--data-dir", str(data_dir)]
    # --milvus-timeout-s 120: loading a 20k-row Lite collection took longer than the default
    # 10 s per call on the shared 2-core box (the server then refuses to start).
    cmd += ["--redis-url", "", "--grace-s", "1", "--models-only", MODEL, "--milvus-timeout-s", "120"]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 600
        while not (m := re.search(r"lookalike-server ready on (\S+):(\d+)", log_path.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        rss_before = peak_rss_mb(proc.pid)
        with LookalikeClient(f"127.0.0.1:{m.group(2)}") as client:
            t0 = time.perf_counter()
            groups = []
            summary = None
            first_group_s = None
            try:
                for part in client.find_duplicates(MODEL, threshold=threshold, timeout=timeout_s):
                    if isinstance(part, DuplicatesSummary):
                        summary = part
                    else:
                        first_group_s = first_group_s or time.perf_counter() - t0
                        groups.append(part)
            except DeadlineExceededError:
                return {
                    "finished": False,
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "timeout_s": timeout_s,
                    "server_peak_rss_mb": peak_rss_mb(proc.pid),
                    "found": {},
                }
            wall = time.perf_counter() - t0
        assert summary is not None
        return {
            "finished": True,
            "wall_s": round(wall, 1),
            "server_elapsed_s": round(summary.elapsed_ms / 1e3, 1),
            "first_group_s": round(first_group_s or 0.0, 1),
            "items_scanned": summary.items_scanned,
            "groups": summary.groups,
            "pairs": summary.pairs,
            "search_mode": summary.search_mode,
            "capped_items": summary.capped_items,
            "exact_groups": sum(1 for g in groups if g.exact_count),
            "found": {g.representative_id: sorted(m.id for m in g.copies) for g in groups},
            "server_peak_rss_mb_before_walk": rss_before,
            "server_peak_rss_mb": peak_rss_mb(proc.pid),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def write_report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Writes ``dupes-cost-<date>.json`` with the rows so far; returns the report."""
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "backend": "Milvus Lite 3.2.2 (IVF_FLAT, the embedded default) + embedded Redis",
        "threshold": args.threshold,
        "dim": DIM,
        "server_flags": "--milvus-timeout-s 120 (default 10)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "shared": True, "nice": 19},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dupes-cost-{report['date']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--walk-timeout-s", type=float, default=None, help="deadline of each walk (default: none)")
    args = parser.parse_args(argv)
    rows = []
    for n in args.sizes:
        data_dir = Path(tempfile.mkdtemp(prefix=f"dupes-cost-{n}-"))
        try:
            print(f"[dupes_cost] populating {n} items in {data_dir}", file=sys.stderr, flush=True)
            # In a child process: Milvus Lite holds its file lock until the process
            # that opened it exits, and the server must open the same file next.
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                pop = pool.apply(populate, (data_dir, n))
            print(f"[dupes_cost] populated in {pop['populate_s']} s; walking", file=sys.stderr, flush=True)
            res = walk(data_dir, args.threshold, args.walk_timeout_s)
            planted = {int(k): v for k, v in pop["planted"].items()}
            found = res.pop("found")
            row = {
                "items": n,
                "planted_groups": len(planted),
                "planted_exact": pop["exact_planted"],
                "all_planted_found": found == planted if res["finished"] else None,
                "populate_s": pop["populate_s"],
                **res,
            }
            rows.append(row)
            print(f"[dupes_cost] {row}", file=sys.stderr, flush=True)
            write_report(args, rows)  # after each size: a long run keeps what it measured
        finally:
            if not args.keep:
                shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(write_report(args, rows), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
