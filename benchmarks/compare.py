"""The whole comparison in one run: server sweeps and every baseline, side by side.

Runs, one after the other so that no two compete for the CPUs (ratios taken
minutes apart on the same machine hold far better than figures from
different days):

1. ``lookalike-server`` (embed-only, the model alone) with its default
   micro-batching, an Embed concurrency sweep with ``lookalike bench``;
2. the same server with ``--batching-max-batch-size 1`` (*no batching*);
3. the *ceiling*: the server's preprocessing and ONNX session in this process
   (:mod:`benchmarks.baselines`), every batch size;
4. the notebook's *original pipeline* (new session per image, the photo files
   as they are on disk, Keras' ``load_img`` + ``preprocess_input``, sequential);
5. the *peer*: the same model behind Triton's dynamic batcher (PyTriton,
   ``benchmarks/triton_peer.py`` in ``.venv-triton``), the same closed loop;
6. *search*: a server with Milvus Lite + embedded Redis prefilled with
   ``--search-items`` items (vectors written straight through the server's own
   store classes, see :func:`prefill`), Embed and Search at concurrency 1 with
   unique payloads so the embedding cache never answers.

Writes ``results.json``, ``report.md`` (the machine profile, headline ratios
against the targets of issues 12 and 5, then every point) and the PNGs under
``--out``. ``--server-cpus`` makes a smaller machine profile: the servers and
the in-process baselines run on those CPUs only, the load generator on the
others, and the report says which.

Usage::

    python benchmarks/compare.py                       # CPU, MobileNetV2, ~6 min
    python benchmarks/compare.py --quick               # a 1-minute smoke run
    python benchmarks/compare.py --server-cpus 0       # the one-core profile
    benchmarks/export_resnet50.sh && python benchmarks/compare.py --model resnet50_keras \
        --original-models resnet50 --registry .cache/models/resnet50/models.toml --skip peer,search
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_report  # noqa: E402
from bench_report import parse_cpus  # noqa: E402

from lookalike import bench  # noqa: E402
from lookalike_server.thread_budget import cpu_limits  # noqa: E402

TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"

# Targets from issue 12 (MobileNetV2, on each machine profile), and issue 5's
# for the original pipeline and search.
TARGET_CEILING_FRACTION = 1.0
TARGET_C1_P50_OVER_CEILING_MS = 2.0
TARGET_BATCHING_GAIN = 1.3
TARGET_BATCHING_NEVER_LOSES = 0.97
TARGET_OVER_ORIGINAL = 50.0
TARGET_SEARCH_OVER_EMBED_MS = 10.0


def log(msg: str) -> None:
    """Progress on stderr, timestamped."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A port nothing listens on right now (the server binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    args: Sequence[str],
    log_path: Path,
    ready_timeout: float = 300.0,
    pid_out: list[int] | None = None,
    cpus: set[int] | None = None,
    code: str | None = None,
) -> Iterator[str]:
    """Starts ``lookalike-server`` with ``args`` and yields its target.

    Waits for the "ready on" line (printed once models are warm and stores
    open), and stops the process with SIGTERM (graceful) on exit. The
    process id is appended to ``pid_out`` when given; ``cpus`` pins it
    (its thread budget then sees only those); ``code``, a checkout's
    ``server/`` folder, is imported instead of this one's (A/B runs).
    """
    port = free_port()
    cmd = [sys.executable, "-m", "lookalike_server", "--port", str(port), "--grace-s", "1", *args]
    log(f"server: {' '.join(cmd[2:])}" + (f" (code: {code})" if code else ""))
    env = {**os.environ, "PYTHONPATH": str(Path(code).resolve())} if code else None
    with open(log_path, "w") as out:
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=pin, env=env)
        if pid_out is not None:
            pid_out.append(proc.pid)
        try:
            deadline = time.monotonic() + ready_timeout
            while "ready on" not in log_path.read_text():
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {ready_timeout}s; see {log_path}")
                time.sleep(0.2)
            yield f"127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Runs the block with this thread (and the threads it starts) on ``cpus``; None = as it is.

    Linux affinity is per thread: ONNX Runtime's pool threads, created by the
    session inside the block, keep the pinning after it.
    """
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def sweep(target: str, label: str, images: list[bytes], args: argparse.Namespace, **kw: Any) -> tuple[dict, list]:
    """One ``lookalike bench`` series against ``target``; ``progress`` (default: log) hears each point's line."""
    progress = kw.pop("progress", log)
    spec = bench.BenchSpec(
        target=target,
        method=kw.pop("method", "embed"),
        models=kw.pop("models", [args.model]),
        points=[bench.LoadPoint(concurrency=c) for c in kw.pop("concurrency", args.concurrency)],
        images=images,
        warmup_s=args.warmup,
        duration_s=kw.pop("duration", args.duration),
        label=label,
        **kw,
    )
    return asyncio.run(bench.run_series(spec, progress=progress))


def prefill(data_dir: Path, model: str, n: int, server_args: Sequence[str]) -> dict[str, Any]:
    """Writes ``n`` items for ``model`` with the server's own store classes.

    Inserting 20k photos through the server would cost 20k embeddings (minutes
    on 2 cores) and measure nothing the search benchmark needs; what search
    time depends on is the number of vectors in the collection and records in
    Redis. So each item gets a Redis record via ``RedisStore.reserve`` and
    ``mark_complete`` (exactly as ``Service.insert`` writes it) and a random
    unit vector via ``MilvusStore.insert`` into the collection
    ``ensure_collection`` names, then a flush. The server is then started on
    the same data directory. Skipped when a previous run left ``n`` items.
    """
    import hashlib

    import numpy as np

    from lookalike_server.config_loading import load_config
    from lookalike_server.registry_reader import load_registry
    from lookalike_server.store.milvus import MilvusStore
    from lookalike_server.store.redis import RedisStore

    marker = data_dir / "prefilled.json"
    if marker.exists() and json.loads(marker.read_text()).get("items") == n:
        log(f"prefill: reusing {n} items in {data_dir}")
        return json.loads(marker.read_text())
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    config = load_config(["--data-dir", str(data_dir), *server_args])
    (spec,) = load_registry(config.models.registry, config.batching, only=[model])
    started = time.perf_counter()
    redis = RedisStore(config.redis, config.data_dir)
    milvus = MilvusStore(config.milvus, config.milvus_uri)
    collection = milvus.ensure_collection(spec.name, spec.version, spec.dim)
    rng = np.random.default_rng(0)
    chunk = 2000
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        records = []
        for i in range(start, start + count):
            key = f"prefill/{i:06d}.jpg"
            rec, _ = redis.reserve(key, hashlib.sha256(key.encode()).hexdigest(), {}, "content")
            records.append(rec)
        vecs = rng.standard_normal((count, spec.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        milvus.insert(collection, [r.id for r in records], vecs, [r.key for r in records], [{}] * count)
        for r in records:
            redis.mark_complete(r.id, [spec.name])
    milvus.flush(collection)
    stored = milvus.count(collection)
    milvus.close()
    redis.close()
    info = {"items": n, "stored": stored, "collection": collection, "seconds": round(time.perf_counter() - started, 1)}
    marker.write_text(json.dumps(info))
    log(f"prefill: {info}")
    return info


def peer(args: argparse.Namespace, out_dir: Path, providers: Sequence[str]) -> dict[str, Any]:
    """The PyTriton peer as a series, or a series that says why it did not run."""
    series: dict[str, Any] = {"name": "peer: Triton dynamic batcher (PyTriton)", "kind": "peer", "points": []}
    if list(providers) != ["CPUExecutionProvider"]:
        series["skipped"] = "the peer runs the CPU provider only (its venv has the CPU onnxruntime)"
        return series
    if not TRITON_PYTHON.exists():
        series["skipped"] = f"{TRITON_PYTHON} does not exist (see benchmarks/README.md to create it)"
        return series
    raw_path = out_dir / "peer_raw.json"
    cmd = [
        str(TRITON_PYTHON), str(REPO / "benchmarks" / "triton_peer.py"), "run", "--model", args.model,
        "--images", str(args.images_dir), "--image-size", str(args.image_size),
        "--concurrency", ",".join(map(str, args.concurrency)), "--warmup", str(args.warmup),
        "--duration", str(args.duration), "--out", str(raw_path),
    ]  # fmt: skip
    log("peer: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        log(line)
    if proc.returncode != 0:
        series["skipped"] = f"triton_peer.py exited {proc.returncode}: {proc.stderr.strip()[-1500:]}"
        return series
    raw = json.loads(raw_path.read_text())
    raw_path.unlink()
    with contextlib.suppress(OSError):
        # The Triton log is long and machine-specific; keep it out of the commit.
        raw_path.with_suffix(".server.log").unlink()
    for p in raw["points"]:
        lat = p["latencies"]
        ok = p["status"].get("OK", 0)
        hist = {int(k): v for k, v in p["server"]["batch_size_histogram"].items()}
        series["points"].append(
            {
                "label": f"c={p['concurrency']}",
                "mode": "closed",
                "concurrency": p["concurrency"],
                "rate": None,
                "window_s": p["window_s"],
                "requests": len(lat),
                "completed": len(lat),
                "ok": ok,
                "errors": len(lat) - ok,
                "throughput_rps": p["ok_in_window"] / p["window_s"],
                "images_per_s": p["ok_in_window"] / p["window_s"],
                "latency_ms": bench.latency_summary(lat),
                "status": p["status"],
                "error_samples": p["error_samples"],
                "server_timing_ms": p["server"]["server_timing_ms"],
                "server": {
                    "batch_size_histogram": hist,
                    "mean_batch_size": bench.histogram_mean(hist),
                    "item_mean_batch_size": bench.items_weighted_mean(hist),
                    "requests_by_status": {"infer:OK": p["server"]["requests"]},
                },
            }
        )
    return series


# -------------------------------------------------------------------- report --


def _point(series: dict[str, Any] | None, label: str) -> dict[str, Any] | None:
    if not series:
        return None
    return next((p for p in series.get("points", []) if p.get("label") == label), None)


def _best(series: dict[str, Any] | None) -> dict[str, Any] | None:
    if not series or not series.get("points"):
        return None
    return max(series["points"], key=lambda p: p.get("images_per_s") or 0)


def _p50(p: dict[str, Any] | None) -> float | None:
    return None if p is None else (p.get("latency_ms") or {}).get("p50")


def headline(found: dict[str, dict[str, Any]], at: int) -> list[dict[str, Any]]:
    """The targets of issues 12 and 5 (plus the peer), as rows with pass/fail."""
    on, off = found.get("on"), found.get("off")
    ceil, orig, peer_s = found.get("ceiling"), found.get("original"), found.get("peer")
    on_at, off_at = _point(on, f"c={at}"), _point(off, f"c={at}")
    ceil_best, ceil_b1 = _best(ceil), _point(ceil, "b=1")
    rows: list[dict[str, Any]] = []

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def diff(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    on_ips = on_at and on_at["images_per_s"]
    r = ratio(on_ips, ceil_best and ceil_best["images_per_s"])
    rows.append({
        "what": f"Embed c={at} throughput / in-process ceiling (best batch {ceil_best and ceil_best['label']})",
        "value": r, "unit": "×", "target": f"≥ {TARGET_CEILING_FRACTION}",
        "met": None if r is None else r >= TARGET_CEILING_FRACTION,
        "detail": f"{_f(on_ips)} vs {_f(ceil_best and ceil_best['images_per_s'])} img/s",
    })  # fmt: skip
    d = diff(_p50(_point(on, "c=1")), _p50(ceil_b1))
    rows.append({
        "what": "Embed c=1 p50 − ceiling single-image p50",
        "value": d, "unit": "ms", "target": f"≤ {TARGET_C1_P50_OVER_CEILING_MS} ms",
        "met": None if d is None else d <= TARGET_C1_P50_OVER_CEILING_MS,
        "detail": f"{_f(_p50(_point(on, 'c=1')))} vs {_f(_p50(ceil_b1))} ms",
    })  # fmt: skip
    paired = found.get("c1_paired")
    if paired:
        low, high = paired["ci90"]
        rows.append({
            "what": "Embed c=1 − ceiling, lone calls paired call by call (median difference)",
            "value": paired["median_ms"], "unit": "ms", "target": f"≤ {TARGET_C1_P50_OVER_CEILING_MS} ms",
            "met": paired["median_ms"] <= TARGET_C1_P50_OVER_CEILING_MS,
            "detail": f"90% interval {low:+.2f} to {high:+.2f} ms over {paired['pairs']} pairs; p50 "
            f"{_f(paired['server_p50_ms'])} vs {_f(paired['ceiling_p50_ms'])} ms",
        })  # fmt: skip
    r = ratio(on_ips, off_at and off_at["images_per_s"])
    best_gain = ratio(_best(on) and _best(on)["images_per_s"], _best(off) and _best(off)["images_per_s"])
    rows.append({
        "what": f"batching on / off, Embed c={at} throughput",
        "value": r, "unit": "×", "target": f"≥ {TARGET_BATCHING_GAIN}",
        "met": None if r is None else r >= TARGET_BATCHING_GAIN,
        "detail": f"{_f(on_ips)} vs {_f(off_at and off_at['images_per_s'])} img/s; "
        f"best of sweep on/off {_f(best_gain, 2)}×",
    })  # fmt: skip
    per_c = []
    for p in (on or {}).get("points", []):
        q = _point(off, p["label"])
        if q and q.get("images_per_s"):
            per_c.append((p["label"], p["images_per_s"] / q["images_per_s"]))
    worst = min(per_c, key=lambda lr: lr[1]) if per_c else None
    rows.append({
        "what": "batching on / off, worst concurrency of the sweep",
        "value": worst and worst[1], "unit": "×", "target": f"≥ {TARGET_BATCHING_NEVER_LOSES}",
        "met": None if worst is None else worst[1] >= TARGET_BATCHING_NEVER_LOSES,
        "detail": ", ".join(f"{label} {v:.2f}" for label, v in per_c) or "–",
    })  # fmt: skip
    orig_p = _best(orig)
    r = ratio(on_ips, orig_p and orig_p["images_per_s"])
    rows.append({
        "what": f"Embed c={at} throughput / original pipeline",
        "value": r, "unit": "×", "target": f"≥ {TARGET_OVER_ORIGINAL:g}",
        "met": None if r is None else r >= TARGET_OVER_ORIGINAL,
        "detail": f"{_f(on_ips)} vs {_f(orig_p and orig_p['images_per_s'])} img/s",
    })  # fmt: skip
    s_p50, e_p50 = _p50(_point(found.get("search"), "c=1")), _p50(_point(found.get("embed_stores"), "c=1"))
    d = diff(s_p50, e_p50)
    rows.append({
        "what": f"Search c=1 p50 − Embed c=1 p50 ({found.get('search_items', '?')} items, "
        f"{found.get('search_where', 'Milvus Lite')})",
        "value": d, "unit": "ms", "target": f"≤ {TARGET_SEARCH_OVER_EMBED_MS} ms",
        "met": None if d is None else d <= TARGET_SEARCH_OVER_EMBED_MS,
        "detail": f"{_f(s_p50)} vs {_f(e_p50)} ms",
    })  # fmt: skip
    peer_at = _point(peer_s, f"c={at}")
    r = ratio(on_ips, peer_at and peer_at["images_per_s"])
    rows.append({
        "what": f"Embed c={at} throughput / peer (Triton dynamic batcher) c={at}",
        "value": r, "unit": "×", "target": "(no target)", "met": None,
        "detail": f"{_f(on_ips)} vs {_f(peer_at and peer_at['images_per_s'])} img/s"
        + (f"; peer skipped: {peer_s.get('skipped')}" if peer_s and peer_s.get("skipped") else ""),
    })  # fmt: skip
    d = diff(_p50(_point(on, "c=1")), _p50(_point(peer_s, "c=1")))
    rows.append({
        "what": "Embed c=1 p50 − peer c=1 p50",
        "value": d, "unit": "ms", "target": "(no target)", "met": None,
        "detail": f"{_f(_p50(_point(on, 'c=1')))} vs {_f(_p50(_point(peer_s, 'c=1')))} ms",
    })  # fmt: skip
    return rows


def profile_line(profile: dict[str, Any]) -> str:
    """The machine profile in one line: cores, affinity, quota, the server's and the ceiling's threads."""
    t = profile.get("server_threads") or {}
    server = (
        f"server {t.get('preprocess_threads')} decoding, {t.get('batch_workers')} worker(s) x "
        f"{t.get('intra_op_threads')} intra-op, wide session {t.get('wide_intra_op_threads') or 'none'}"
        if t
        else "server threads not reported"
    )
    flags = " ".join(profile.get("server_args") or []) or "none"
    return (
        f"{profile['cores']}; {server}; extra server flags: {flags}; "
        f"ceiling {profile['ceiling_intra_op_threads']} intra-op thread(s); "
        f"server CPUs {profile.get('server_cpus', 'as this process')}, "
        f"load generator CPUs {profile.get('load_generator_cpus', 'as this process')}"
    )


def alone_share(series: dict[str, Any] | None, model: str) -> str:
    """``"c=1 100%, c=32 0%"``: the share of each point's batches the batcher ran alone (empty if unknown)."""
    parts = []
    for p in (series or {}).get("points", []):
        b = ((p.get("server") or {}).get("batchers") or {}).get(model) or {}
        if b.get("batches") and b.get("alone_batches") is not None:
            parts.append(f"{p['label']} {b['alone_batches'] / b['batches']:.0%}")
    return ", ".join(parts)


def _f(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def headline_markdown(rows: list[dict[str, Any]]) -> str:
    """The targets table."""
    out = ["| measure | value | target | met? | detail |", "|---|---|---|---|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        value = "–" if r["value"] is None else f"{r['value']:.2f} {r['unit']}"
        out.append(f"| {r['what']} | {value} | {r['target']} | {met} | {r['detail']} |")
    return "\n".join(out)


# ---------------------------------------------------------------------- main --


def main(argv: Sequence[str] | None = None) -> int:
    """Runs everything asked and writes the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--registry", default=str(REPO / "models" / "models.toml"), help="model registry TOML")
    parser.add_argument("--images", default=None, help="photo folder (default: as lookalike bench)")
    parser.add_argument("--image-size", type=int, default=640, help="longer side of the photos sent, px")
    parser.add_argument("--concurrency", type=bench._int_list, default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--at", type=int, default=32, help="concurrency the throughput targets read")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--search-items", type=int, default=20_000)
    parser.add_argument("--search-duration", type=float, default=8.0)
    parser.add_argument("--ceiling-batches", type=bench._int_list, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="ONNX Runtime providers for server, ceiling and peer, comma-separated",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra lookalike-server flag (repeat), e.g. --server-arg=--models-intra-op-threads=2",
    )
    parser.add_argument(
        "--server-cpus",
        default="",
        help="run the servers and the in-process baselines on these CPUs only (taskset notation, e.g. 0): "
        "a machine profile with fewer cores; the load generator takes the other cores unless --client-cpus",
    )
    parser.add_argument("--client-cpus", default="", help="run the load generator on these CPUs only")
    parser.add_argument("--skip", default="", help="comma-separated: off,paired,ceiling,original,peer,search")
    parser.add_argument(
        "--c1-pairs", type=int, default=400, help="lone server and ceiling calls alternated for the paired c=1 reading"
    )
    parser.add_argument(
        "--original-models",
        default="",
        help="more registry models the original pipeline runs on, comma-separated (e.g. a Keras and a torch "
        "export of one network); --model always runs",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (c=1,4; 1 s windows; 2k items)")
    parser.add_argument("--name", default="")
    parser.add_argument("--out", default="")
    parser.add_argument("--data-dir", default=str(REPO / ".cache" / "bench-data"))
    parser.add_argument(
        "--search-milvus-uri",
        default="",
        help="run the search series against this Milvus server (e.g. http://127.0.0.1:19530) instead of Lite; "
        "items go to fresh collections, records to --search-redis-url",
    )
    parser.add_argument("--search-redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)  # fmt: skip
    if args.quick:
        args.concurrency, args.at, args.warmup, args.duration = [1, 4], 4, 0.5, 1.5
        args.search_items, args.search_duration, args.ceiling_batches, args.ceiling_seconds = 2000, 2.0, [1, 4], 1.0
    if args.at not in args.concurrency:
        parser.error(f"--at {args.at} must be one of --concurrency")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    name = args.name or f"cpu-{dt.date.today():%Y-%m-%d}"
    out_dir = Path(args.out or REPO / "benchmarks" / "results" / name)
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = REPO / ".cache" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    args.images_dir = bench.find_image_dir(args.images).resolve()
    images = bench.load_images(args.images_dir, args.image_size)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    common = [
        "--models-registry", str(Path(args.registry).resolve()), "--models-only", args.model,
        "--models-providers", ",".join(providers), "--log-level", "WARNING", *args.server_arg,
    ]  # fmt: skip
    embed_only = [*common, "--stores", "false", "--data-dir", str(Path(args.data_dir) / "none")]
    started = time.monotonic()
    loadavg_before = list(os.getloadavg())
    # The cores this run may use (taskset, a container's cpuset or CPU
    # quota); the server and the baselines inherit them.
    server_cpus = parse_cpus(args.server_cpus) or None
    client_cpus = parse_cpus(args.client_cpus) or None
    if server_cpus and not client_cpus:
        # The load generator on the other cores, so it takes nothing from the profile.
        client_cpus = (os.sched_getaffinity(0) - server_cpus) or None
    with pinned(server_cpus):
        limits = cpu_limits()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    found: dict[str, Any] = {}
    all_series: list[dict[str, Any]] = []
    models: list[Any] = []

    with running_server(embed_only, logs / "server-batching.log", cpus=server_cpus) as target:
        found["on"], models = sweep(target, "server, batching on", images, args)
        if "paired" not in skip:
            # c=1 again, call by call against a ceiling call (ceiling_ab.paired_c1):
            # the windows above are seconds apart, and the machine drifts between them.
            import baselines
            from ceiling_ab import paired_c1

            with pinned(server_cpus):
                lone = baselines.load_lone_model(
                    args.model, registry=args.registry, providers=providers, threads=limits.usable
                )
            found["c1_paired"] = paired_c1(target, lone, images, args.c1_pairs, server_cpus, client_cpus)
            del lone
            log(
                f"c=1 paired ({args.c1_pairs} pairs): server p50 {found['c1_paired']['server_p50_ms']:.2f} ms, "
                f"ceiling p50 {found['c1_paired']['ceiling_p50_ms']:.2f} ms, "
                f"median difference {found['c1_paired']['median_ms']:+.2f} ms"
            )
    all_series.append(found["on"])
    if "off" not in skip:
        with running_server(
            [*embed_only, "--batching-max-batch-size", "1"], logs / "server-nobatch.log", cpus=server_cpus
        ) as target:
            found["off"], _ = sweep(target, "server, no batching", images, args)
        all_series.append(found["off"])

    if ("ceiling" not in skip or "original" not in skip) and server_cpus:
        # The baselines get the server's cores, no more.
        os.sched_setaffinity(0, server_cpus)
    if "ceiling" not in skip or "original" not in skip:
        import baselines

        # The ceiling uses every core this run may use (ORT's own default
        # ignores taskset on some versions), and the report says how many.
        model = baselines.load_model(args.model, registry=args.registry, providers=providers, threads=limits.usable)
        if "ceiling" not in skip:
            log("ceiling: in-process preprocess + ONNX Runtime")
            found["ceiling"] = baselines.ceiling(model, images, args.ceiling_batches, args.ceiling_seconds)
            for p in found["ceiling"]["points"]:
                log(bench.format_point("ceiling", p))
            all_series.append(found["ceiling"])
        if "original" not in skip:
            from lookalike_server.config import BatchingConfig
            from lookalike_server.registry_reader import load_registry

            # The notebook read each photo from disk as it is (not resized or re-encoded).
            paths = baselines.image_paths(args.images_dir)
            names = list(
                dict.fromkeys([args.model, *(n.strip() for n in args.original_models.split(",") if n.strip())])
            )
            specs = {s.name: s for s in load_registry(args.registry, BatchingConfig(), only=names)}
            for name in names:
                log(f"original pipeline, {name}: new session per image")
                series = baselines.original_pipeline(specs[name], paths, providers=providers)
                series["name"] = f"original pipeline, {name}"
                log(f"original pipeline preprocessing: {series['preprocessing']}")
                log(bench.format_point("original", series["points"][0]))
                found.setdefault("original", series)  # the headline reads --model's
                all_series.append(series)
        del model
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)

    if "peer" not in skip:
        found["peer"] = peer(args, out_dir, providers)
        if found["peer"].get("skipped"):
            log(f"peer skipped: {found['peer']['skipped']}")
        all_series.append(found["peer"])

    if "search" not in skip:
        data_dir = Path(args.data_dir) / f"search-{args.model}-{args.search_items}"
        search_common = common
        if args.search_milvus_uri:
            # A fresh namespace on the shared servers, so the prefill marker
            # in data_dir never vouches for rows written by another run.
            tag = f"bench{int(time.time())}"
            data_dir = Path(args.data_dir) / f"search-{args.model}-{args.search_items}-{tag}"
            search_common = [
                *common, "--milvus-uri", args.search_milvus_uri, "--milvus-collection-prefix", tag,
                "--redis-url", args.search_redis_url, "--redis-key-prefix", f"{tag}:",
            ]  # fmt: skip
        # In a child process: Milvus Lite keeps its file lock until the
        # process that opened it exits, and the server must open it next.
        child = multiprocessing.get_context("spawn").Process(
            target=prefill, args=(data_dir, args.model, args.search_items, search_common)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"prefill failed with exit code {child.exitcode}")
        info = json.loads((data_dir / "prefilled.json").read_text())
        found["search_items"] = info["stored"]
        stores = [*search_common, "--data-dir", str(data_dir)]
        where = "Milvus standalone server" if args.search_milvus_uri else "Milvus Lite"
        found["search_where"] = where
        with running_server(stores, logs / "server-search.log", cpus=server_cpus) as target:
            found["embed_stores"], _ = sweep(
                target, "embed (server with stores)", images, args, concurrency=[1], duration=args.search_duration
            )
            found["search"], _ = sweep(
                target, f"search, {info['stored']} items on {where}, unique queries", images, args, method="search",
                concurrency=[1, 4], unique=True, duration=args.search_duration,
            )  # fmt: skip
            found["search_cached"], _ = sweep(
                target, f"search, {info['stored']} items on {where}, cached embeddings", images, args,
                method="search",
                concurrency=[1], duration=args.search_duration / 2,
            )  # fmt: skip
        all_series += [found["embed_stores"], found["search"], found["search_cached"]]

    machine = bench_report.describe_machine(models)
    machine["loadavg_1_5_15"] = loadavg_before
    machine["profile"] = {
        "cores_usable": limits.usable,
        "cores_machine": limits.machine,
        "affinity": list(limits.affinity),
        "cpu_quota": limits.quota,
        "cores": limits.describe(),
        "server_cpus": args.server_cpus or "as this process",
        "load_generator_cpus": ",".join(map(str, sorted(client_cpus))) if client_cpus else "as this process",
        "server_args": list(args.server_arg),
        "server_threads": next(
            (m.get("threads") for m in machine.get("models", {}).values() if m.get("threads")), None
        ),
        "ceiling_intra_op_threads": limits.usable,
        "original_pipeline_threads": "ONNX Runtime's default (a new session per image, as the notebook)",
    }
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["images_loaded"] = len(images)
    config["image_bytes_mean"] = round(sum(map(len, images)) / len(images))
    config["wall_s"] = round(time.monotonic() - started, 1)
    report = bench_report.new_report(name, machine, config)
    report["series"] = all_series
    report["headline"] = headline(found, args.at)
    report["c1_paired"] = found.get("c1_paired")
    bench_report.write_report(report, out_dir)
    # report.md: the targets first, then the generic report.
    body = (out_dir / "report.md").read_text()
    title, _, rest = body.partition("\n")
    lead = [
        title,
        "",
        f"Everything below ran in one `python benchmarks/compare.py` run ({config['wall_s']} s) on "
        f"{machine['cpu']} ({machine['cores']} cores, GPU: {', '.join(machine['gpus']) or 'none'}), "
        f"model `{args.model}`, photos resized to {args.image_size} px (mean {config['image_bytes_mean']} bytes).",
        "",
        f"Profile: {profile_line(machine['profile'])}.",
        "",
        "## Headline: targets of issues 12 and 5",
        "",
        headline_markdown(report["headline"]),
        "",
    ]
    alone = alone_share(found.get("on"), args.model)
    if alone:
        lead += [f"Batches run alone on the wide session (server, batching on): {alone}.", ""]
    originals = [s for s in all_series if s.get("kind") == "original"]
    if originals:
        lead += ["Original pipeline inputs:", ""]
        lead += [f"- `{s['model']}`: {s['preprocessing']}" for s in originals]
        lead += [""]
    skipped = [f"- {s['name']}: skipped — {s['skipped']}" for s in all_series if s.get("skipped")]
    if skipped:
        lead += ["Not run:", "", *skipped, ""]
    (out_dir / "report.md").write_text("\n".join(lead) + rest)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"report: {out_dir / 'report.md'} ({config['wall_s']} s)")
    print(headline_markdown(report["headline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
