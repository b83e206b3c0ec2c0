#!/usr/bin/env python3
"""Throughput over 1, 2 and 3 server replicas on one Milvus standalone and one Redis.

The server keeps no state of its own, so replicas scale out behind client-side
``round_robin`` (:mod:`lookalike.targets`). This measures what that buys on *this*
machine: a closed-loop load (``--concurrency`` callers, each sending its next call as
soon as the last one answered) of ``Embed`` and ``Search`` through one
:class:`~lookalike.aio.AsyncLookalikeClient` dialling the first N replicas, for each N in
``--replicas``. Per point it reports throughput, p50/p99 latency of answered calls, calls
the servers refused as overloaded (``RESOURCE_EXHAUSTED``: the client neither retries nor
throttles, and a refused caller waits the server's pushback hint), other errors, how the calls
spread over the replicas (each replica's own ``GetStats`` counters) and the CPU each
replica process used (``/proc/PID/stat``, user + system, as a share of one core), plus the
load generator's own CPU: whether a replica added on the same machine finds idle cores or
only splits busy ones is what the CPU columns show.

Set-up: the largest N replicas are started once (``python -m lookalike_server``, each its
own process and data dir, one model) and every point dials the first N of them; idle
replicas only run their health monitor. Milvus standalone is started from
``scripts/milvus_server.py`` unless ``--milvus-uri`` names one; Redis is ``--redis-url``
(default the local one) under a unique key prefix, whose keys are deleted at the end.
Search runs against ``--corpus`` synthetic images inserted first, with the shipped
``Bounded`` consistency (``--consistency Strong`` adds Milvus's wait for the newest writes,
about 200 ms a search on a 2.3 standalone). The machine-wide busy cores (``/proc/stat``)
are reported too: on a shared machine they show what else ran. The replicas' Redis
embedding caches are off unless ``--keep-caches``: the query images repeat, so every
Search after the first round would be a cache hit that embeds nothing.

The measurement (on a quiet machine, nothing else running; about 5 minutes)::

    .venv/bin/python benchmarks/replicas.py --replicas 1,2,3 --methods embed,search \\
        --concurrency 8 --seconds 30 --out benchmarks/results/replicas-$(date +%F).json

A short structural run (``tests/integration/test_replicas.py`` runs one measuring step)::

    nice -n 19 .venv/bin/python benchmarks/replicas.py --replicas 1,2,3 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "client", ROOT / "server", ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from lookalike import AsyncLookalikeClient, LookalikeClient  # noqa: E402
from lookalike.throttle import ThrottleSettings  # noqa: E402

MODEL = "mobilenet_v2"
_READY = re.compile(r"lookalike-server ready on (\S+)")
_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ processes


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (``/proc/stat``), every process counted."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    return (sum(values[:8]) - values[3] - values[4]) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" closing comm: field 3 is state, so utime (14) and stime (15) are 11 and 12.
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class ReplicaProcess:
    """One ``lookalike-server`` process started with ``--port 0``.

    Attributes:
        args: Its command-line flags.
        log: File its stderr (the log) goes to.
        target: ``host:port`` it listens on, once :meth:`start` returned.
    """

    args: list[str]
    log: Path
    proc: subprocess.Popen[str] | None = None
    target: str = ""
    _ready: list[str] = field(default_factory=list)

    def start(self, timeout_s: float = 180.0) -> None:
        """Starts the process and waits until it is ready (see :meth:`wait_ready`)."""
        self.launch()
        self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Starts the process without waiting (several replicas load their models at once)."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("client", "server"))}
        with self.log.open("a") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lookalike_server", *self.args],
                stdout=subprocess.PIPE,
                stderr=logf,
                text=True,
                env=env,
                cwd=ROOT,
            )
        self._ready = []

        def read() -> None:  # keeps draining stdout so the child never blocks on it
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                m = _READY.match(line)
                if m and not self._ready:
                    self._ready.append(m.group(1))

        threading.Thread(target=read, daemon=True).start()

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Waits for the "ready" line: models warm, stores reached, health SERVING.

        Raises:
            RuntimeError: It exited or was not ready in time; the log says why.
        """
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while not self._ready:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                self.stop(grace_s=5)
                raise RuntimeError(f"server not ready in {timeout_s} s; see {self.log}")
            time.sleep(0.05)
        host, _, port = self._ready[0].rpartition(":")
        self.target = f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '::') else host}:{port}"

    @property
    def pid(self) -> int:
        """The process id (0 before :meth:`start`)."""
        return self.proc.pid if self.proc is not None else 0

    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Sends SIGTERM (graceful: health NOT_SERVING, drain, exit) without waiting."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit code."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            code = self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code


def server_args(
    data_dir: Path,
    milvus_uri: str,
    redis_url: str,
    prefix: str,
    extra: Sequence[str] = (),
    shutdown_delay_s: float = 1.0,
    consistency: str = "Strong",
) -> list[str]:
    """Flags for one replica: loopback, a free port, one model, shared stores, a short drain.

    ``consistency`` is Milvus's: ``Strong`` gives tests read-your-writes across replicas;
    the benchmark uses the shipped ``Bounded``, which does not wait for the latest writes.
    """
    return [
        "--host", "127.0.0.1", "--port", "0", "--models-only", MODEL, "--data-dir", str(data_dir),
        "--milvus-uri", milvus_uri, "--milvus-collection-prefix", prefix.replace(":", "_"),
        "--milvus-consistency-level", consistency,
        "--redis-url", redis_url, "--redis-key-prefix", prefix,
        "--shutdown-delay-s", str(shutdown_delay_s), "--grace-s", "5", "--log-level", "WARNING",
        *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def milvus_standalone(uri: str | None, work: Path) -> Iterator[tuple[str, int]]:
    """The given Milvus URI (pid 0: unknown), or a standalone server started (and stopped) here."""
    if uri:
        yield uri, 0
        return
    sys.path.insert(0, str(ROOT / "scripts"))
    import milvus_server  # scripts/milvus_server.py

    base = work / "milvus"
    server = milvus_server.start(base, timeout_s=180)
    try:
        yield server.uri, server.pid
    finally:
        milvus_server.stop(base, grace_s=2)


def redis_pid(redis_url: str) -> int:
    """The Redis server's pid when it runs on this machine (``INFO``), else 0."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return pid if Path(f"/proc/{pid}").exists() else 0


@contextlib.contextmanager
def replicas(
    n: int,
    milvus_uri: str,
    redis_url: str,
    prefix: str,
    work: Path,
    extra: Sequence[str] = (),
    shutdown_delay_s: float = 1.0,
    consistency: str = "Strong",
) -> Iterator[list[ReplicaProcess]]:
    """``n`` replicas on the same stores, started together, stopped (SIGTERM) at the end."""
    started: list[ReplicaProcess] = []
    try:
        for i in range(n):
            data = work / f"replica{i}"
            data.mkdir(parents=True, exist_ok=True)
            args = server_args(data, milvus_uri, redis_url, prefix, extra, shutdown_delay_s, consistency)
            r = ReplicaProcess(args, work / f"replica{i}.log")
            started.append(r)
            r.launch()
        for r in started:
            r.wait_ready()
        yield started
    finally:
        for r in started:
            r.stop()


def drop_redis_prefix(redis_url: str, prefix: str) -> None:
    """Deletes this run's keys (never anything else) from the shared Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def drop_milvus_prefix(milvus_uri: str, prefix: str) -> None:
    """Drops this run's collections from a Milvus server that outlives the run."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_uri)
    for name in client.list_collections():
        if name.startswith(prefix.replace(":", "_")):
            client.drop_collection(name)
    client.close()


def served_counts(target: str) -> dict[str, int]:
    """A replica's own count of answered calls per method (``GetStats``), OK ones only."""
    with LookalikeClient(target, timeout=10) as c:
        stats = c.stats()
    # Keys are "Method:CODE" (the server's RequestCounter).
    return {k.rsplit(":", 1)[0]: int(v) for k, v in stats.requests_by_status.items() if k.endswith(":OK")}


# ----------------------------------------------------------------------- load


def make_image(seed: int, size: int = 256) -> bytes:
    """A distinct JPEG: a random colour gradient plus noise (so its embedding is distinct)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    chans = [(yy * rng.uniform(0, 2) + xx * rng.uniform(0, 2) + rng.uniform(0, 255)) % 255 for _ in range(3)]
    img = np.clip(np.stack(chans, -1) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@dataclass
class Point:
    """One measured point."""

    replicas: int
    method: str
    concurrency: int
    seconds: float
    calls: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    refused: int
    calls_per_replica: list[int]
    replica_cpu_cores: list[float]
    client_cpu_cores: float
    store_cpu_cores: dict[str, float]
    machine_busy_cores: float
    error_codes: dict[str, int] = field(default_factory=dict)


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def _closed_loop(
    client: AsyncLookalikeClient, method: str, images: list[bytes], concurrency: int, seconds: float
) -> tuple[list[float], dict[str, int]]:
    """``concurrency`` callers for ``seconds``; latencies (ms) of successes and error codes.

    A caller the server refuses as overloaded (``RESOURCE_EXHAUSTED``) waits the server's
    pushback hint (or 50 ms) before its next call, as a well-behaved client would, instead
    of spinning on refusals.
    """
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + seconds

    async def caller(worker: int) -> None:
        i = worker
        while time.monotonic() < stop_at:
            image = images[i % len(images)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                if method == "embed":
                    await client.embed(image, MODEL)
                else:
                    await client.search(image=image, top_k=10)
            except Exception as exc:  # counted, not fatal: the point reports them
                name = getattr(getattr(exc, "code", None), "name", type(exc).__name__)
                errors[name] = errors.get(name, 0) + 1
                if name == "RESOURCE_EXHAUSTED":
                    await asyncio.sleep(getattr(exc, "retry_after_s", None) or 0.05)
                continue
            latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(caller(w) for w in range(concurrency)))
    return latencies, errors


def measure(
    dialled: list[ReplicaProcess],
    method: str,
    images: list[bytes],
    concurrency: int,
    seconds: float,
    warmup_s: float,
    stores: dict[str, int] | None = None,
) -> Point:
    """One point: warm-up, then a closed loop through one round_robin client.

    Args:
        dialled: The replicas the client dials.
        method: ``embed`` or ``search``.
        images: Query images, used in turn.
        concurrency: Closed-loop callers.
        seconds: Measured seconds.
        warmup_s: Unmeasured seconds before, on the same client.
        stores: Name to pid of store processes on this machine whose CPU to report.
    """
    stores = {k: v for k, v in (stores or {}).items() if v}
    targets = [r.target for r in dialled]
    # Counters and CPU times bracket the measured loop only: the warm-up runs on the same
    # client (so every connection is up) before the first reading.
    counts_before: list[dict[str, int]] = []
    cpu_before: list[float] = []
    result: dict[str, Any] = {}

    def bracket_start() -> None:
        counts_before[:] = [served_counts(t) for t in targets]
        cpu_before[:] = [cpu_seconds(r.pid) for r in dialled]
        result["client_cpu0"] = time.process_time()
        result["stores0"] = {k: cpu_seconds(pid) for k, pid in stores.items()}
        result["machine0"] = machine_busy_seconds()

    async def run_bracketed() -> tuple[list[float], dict[str, int], float]:
        # No retries and no client-side throttling: every server refusal is counted, and
        # the load is what the callers send, not what a throttle lets through.
        async with AsyncLookalikeClient(targets, timeout=30, retries=0, throttle=ThrottleSettings(k=0)) as client:
            await _closed_loop(client, method, images, concurrency, warmup_s)
            await asyncio.to_thread(bracket_start)
            t0 = time.perf_counter()
            lat, errs = await _closed_loop(client, method, images, concurrency, seconds)
            elapsed = time.perf_counter() - t0
            result["cpu_after"] = [cpu_seconds(r.pid) for r in dialled]
            result["client_cpu1"] = time.process_time()
            result["stores1"] = {k: cpu_seconds(pid) for k, pid in stores.items()}
            result["machine1"] = machine_busy_seconds()
            return lat, errs, elapsed

    latencies, errors, elapsed = asyncio.run(run_bracketed())
    counts_after = [served_counts(t) for t in targets]
    rpc = "Embed" if method == "embed" else "Search"
    lat = sorted(latencies)
    return Point(
        replicas=len(dialled),
        method=method,
        concurrency=concurrency,
        seconds=round(elapsed, 3),
        calls=len(lat),
        errors=sum(v for k, v in errors.items() if k != "RESOURCE_EXHAUSTED"),
        refused=errors.get("RESOURCE_EXHAUSTED", 0),
        throughput_rps=round(len(lat) / elapsed, 2),
        p50_ms=round(_percentile(lat, 0.50), 2),
        p99_ms=round(_percentile(lat, 0.99), 2),
        calls_per_replica=[a.get(rpc, 0) - b.get(rpc, 0) for a, b in zip(counts_after, counts_before, strict=True)],
        replica_cpu_cores=[round((a - b) / elapsed, 3) for a, b in zip(result["cpu_after"], cpu_before, strict=True)],
        client_cpu_cores=round((result["client_cpu1"] - result["client_cpu0"]) / elapsed, 3),
        store_cpu_cores={k: round((result["stores1"][k] - result["stores0"][k]) / elapsed, 3) for k in stores},
        machine_busy_cores=round((result["machine1"] - result["machine0"]) / elapsed, 3),
        error_codes=errors,
    )


# ------------------------------------------------------------------------ main


def parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", default="1,2,3", help="replica counts to measure (default %(default)s)")
    p.add_argument("--methods", default="embed,search", help="embed and/or search (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=8, help="closed-loop callers (default %(default)s)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per point (default %(default)s)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured seconds per point (default %(default)s)")
    p.add_argument("--corpus", type=int, default=64, help="images inserted for Search (default %(default)s)")
    p.add_argument("--images", type=int, default=32, help="distinct query images (default %(default)s)")
    p.add_argument("--milvus-uri", default="", help="a running Milvus server; default: start a standalone one")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis (default %(default)s)")
    p.add_argument(
        "--consistency",
        default="Bounded",
        choices=["Strong", "Bounded", "Session", "Eventually"],
        help="the replicas' Milvus consistency level (default %(default)s, as shipped)",
    )
    p.add_argument(
        "--keep-caches",
        action="store_true",
        help="leave the replicas' Redis embedding caches on (default off: the few query images "
        "would be cache hits after the first round, and Search would measure the cache)",
    )
    p.add_argument("--server-arg", action="append", default=[], help="extra lookalike-server flag (repeatable)")
    p.add_argument("--workdir", default="", help="where data dirs and logs go (default a temp dir)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    return p


def table(points: Sequence[Point]) -> str:
    """The results as a Markdown table."""
    head = (
        "| replicas | method | conc. | calls/s | p50 ms | p99 ms | refused | errors | calls per replica "
        "| CPU cores per replica | client CPU | stores CPU | machine busy cores |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {p.replicas} | {p.method} | {p.concurrency} | {p.throughput_rps:.1f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} "
        f"| {p.refused} | {p.errors} | {' / '.join(map(str, p.calls_per_replica))} "
        f"| {' / '.join(f'{c:.2f}' for c in p.replica_cpu_cores)} | {p.client_cpu_cores:.2f} "
        f"| {', '.join(f'{k} {v:.2f}' for k, v in p.store_cpu_cores.items()) or '-'} "
        f"| {p.machine_busy_cores:.2f} of {os.cpu_count()} |"
        for p in points
    ]
    return "\n".join([head, *rows])


def run(args: argparse.Namespace) -> list[Point]:
    """Sets everything up, measures every point, tears everything down."""
    counts = sorted({int(x) for x in args.replicas.split(",") if x.strip()})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not counts or counts[0] < 1 or any(m not in ("embed", "search") for m in methods):
        raise SystemExit("--replicas takes counts >= 1; --methods takes embed and/or search")
    prefix = f"benchrep{uuid.uuid4().hex[:8]}:"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="replicas-"))
    images = [make_image(1_000_000 + i) for i in range(args.images)]
    points: list[Point] = []
    with contextlib.ExitStack() as stack:
        milvus_uri, milvus_pid = stack.enter_context(milvus_standalone(args.milvus_uri or None, work))
        stores = {"milvus": milvus_pid, "redis": redis_pid(args.redis_url)}
        if args.milvus_uri:  # a server that outlives the run: leave it as found
            stack.callback(drop_milvus_prefix, milvus_uri, prefix)
        stack.callback(drop_redis_prefix, args.redis_url, prefix)
        extra = list(args.server_arg)
        if not args.keep_caches:
            extra = ["--redis-embedding-cache", "false", "--redis-query-cache-ttl-s", "0", *extra]
        started = stack.enter_context(
            replicas(counts[-1], milvus_uri, args.redis_url, prefix, work, extra, consistency=args.consistency)
        )
        if "search" in methods:
            with LookalikeClient([r.target for r in started], timeout=120) as c:
                for i in range(0, args.corpus, 16):
                    batch = [(f"corpus/{j}.jpg", make_image(j)) for j in range(i, min(args.corpus, i + 16))]
                    c.insert(batch)
        for n in counts:
            for method in methods:
                point = measure(started[:n], method, images, args.concurrency, args.seconds, args.warmup_s, stores)
                print(table([point]).splitlines()[-1], flush=True)
                points.append(point)
    if not args.workdir:
        # Milvus's binaries and data take ~0.5 GB. Not reached when the run fails: the
        # replicas' logs stay for reading (their path is in the error).
        shutil.rmtree(work, ignore_errors=True)
    return points


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints (and optionally writes) the results."""
    args = parser().parse_args(argv)
    points = run(args)
    print()
    print(table(points))
    if args.out:
        report = {
            "benchmark": "replicas",
            "argv": sys.argv[1:] if argv is None else list(argv),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "points": [asdict(p) for p in points],
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
