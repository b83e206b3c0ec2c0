"""``lookalike bench``: a load generator for a running Lookalike server.

What ``ghz`` or Triton's ``perf_analyzer`` would give, for this service:

* **Closed loop** (``--concurrency 1,4,16``): N callers, each sending its next
  request as soon as the previous one answered. Measures the throughput a
  given concurrency reaches and the latency it costs.
* **Open loop** (``--rate 50,100``): requests arrive on a Poisson schedule
  regardless of how the server copes. Latency is measured from each request's
  *scheduled* send time, so when the server (or this client) falls behind the
  queueing shows up in the figures instead of silently lowering the offered
  load (coordinated omission).
* Unary calls or streams (``--stream``: SearchStream / InsertStream, N in
  flight on one stream); methods ``embed``, ``search`` (one model or several
  side by side) and ``insert``; real photos as payload (``--images DIR``),
  optionally resized (``--image-size``).

Every load point runs a warm-up (discarded), then a measurement window. Before
the window the server's counters are zeroed (``GetStats(reset=True)``); after
it they are read back, giving the batch-size histogram the micro-batcher
produced under exactly that load. Each response's ``ServerTiming`` gives the
server's own breakdown (queue wait, preprocessing, inference, Milvus, Redis).

Output (under ``--out``, default ``benchmarks/results/<name>``): ``results.json``
(everything), ``report.md`` (a table per series) and, when matplotlib is
installed (the ``bench`` extra), ``latency_vs_throughput.png`` and
``batch_sizes.png``.

The load generator is one asyncio loop over ``grpc.aio``: a request in flight
is a coroutine, not a thread, so 64 concurrent callers cost next to nothing on
a 2-core machine where the client shares the CPUs with the server it measures.
This module depends only on the client's own dependencies; Pillow (for
``--image-size``) and matplotlib (for plots) are optional.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import io
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
LATENCY_KEYS: tuple[str, ...] = ("min", "mean", *(f"p{q}" for q in PERCENTILES), "max")
# ServerTiming fields averaged over a window's successful responses.
TIMING_FIELDS: tuple[str, ...] = (
    "total_ms",
    "queue_ms",
    "preprocess_ms",
    "inference_ms",
    "milvus_ms",
    "redis_ms",
    "batch_size",
)
METHODS: tuple[str, ...] = ("embed", "search", "insert")
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
DEFAULT_IMAGE_DIRS: tuple[str, ...] = ("tests/data/photos", ".cache/photos")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Largest number of requests an open-loop point keeps in flight; arrivals past
# it are counted as CLIENT_OVERLOAD instead of growing memory without bound.
DEFAULT_MAX_IN_FLIGHT = 4096


class BenchError(Exception):
    """A benchmark cannot run as asked (bad arguments, no images, no server)."""


# --------------------------------------------------------------- statistics --


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default method).

    Args:
        sorted_values: Values in ascending order; at least one.
        q: Percentile in 0..100.

    Returns:
        The interpolated value.

    Raises:
        ValueError: No values, or q out of range.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} out of 0..100")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float | None]:
    """min/mean/p50/p90/p95/p99/max in milliseconds; all None when empty."""
    values = sorted(x * 1000.0 for x in latencies_s)
    if not values:
        return dict.fromkeys(LATENCY_KEYS)
    out: dict[str, float | None] = {"min": values[0], "mean": math.fsum(values) / len(values)}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    out["max"] = values[-1]
    return out


def merge_histograms(*hists: Mapping[Any, int]) -> dict[int, int]:
    """Adds batch-size histograms (keys may be ints or their JSON strings)."""
    total: Counter[int] = Counter()
    for hist in hists:
        for size, count in hist.items():
            total[int(size)] += int(count)
    return dict(sorted(total.items()))


def histogram_mean(hist: Mapping[Any, int]) -> float | None:
    """Mean batch size of a histogram (batches weighted by count); None if empty."""
    batches = sum(int(c) for c in hist.values())
    if not batches:
        return None
    return sum(int(s) * int(c) for s, c in hist.items()) / batches


def items_weighted_mean(hist: Mapping[Any, int]) -> float | None:
    """Mean batch size as seen by an item (batches weighted by size x count)."""
    items = sum(int(s) * int(c) for s, c in hist.items())
    if not items:
        return None
    return sum(int(s) ** 2 * int(c) for s, c in hist.items()) / items


@dataclass
class TimingAccumulator:
    """Running means of ``ServerTiming`` fields over successful responses."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_FIELDS, 0.0))
    count: int = 0

    def add(self, timing: Any) -> None:
        """Adds one response's ``ServerTiming`` (or any object with those fields)."""
        for name in TIMING_FIELDS:
            self.sums[name] += float(getattr(timing, name, 0.0) or 0.0)
        self.count += 1

    def means(self) -> dict[str, float | None]:
        """Field means, or all None when no response carried timing."""
        if not self.count:
            return dict.fromkeys(TIMING_FIELDS)
        return {name: self.sums[name] / self.count for name in TIMING_FIELDS}


@dataclass
class WindowRecorder:
    """What one measurement window saw, from the client's side.

    Attributes:
        start: Monotonic time the window opened.
        stop: Monotonic time it closed (set by the driver).
        latencies: Seconds, one per answered request (OK or not).
        statuses: gRPC status code name -> count.
        errors: One sample message per non-OK status code.
        timing: Server timing of OK responses.
        sent: Requests sent (or, open loop, scheduled) in the window.
        completed_in_window: Answers that arrived before ``stop``; the
            throughput numerator, so the drain after the window (when the
            concurrency tails off) does not bias it.
        images_in_window: Images carried by those answers' requests.
    """

    start: float = 0.0
    stop: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)
    timing: TimingAccumulator = field(default_factory=TimingAccumulator)
    sent: int = 0
    completed_in_window: int = 0
    ok_in_window: int = 0
    images_in_window: int = 0

    def record(
        self, started: float, finished: float, code: str, images: int, timing: Any = None, message: str = ""
    ) -> None:
        """Records one answered request."""
        self.latencies.append(finished - started)
        self.statuses[code] += 1
        if code != "OK" and code not in self.errors:
            self.errors[code] = message[:300]
        if code == "OK" and timing is not None:
            self.timing.add(timing)
        if finished <= self.stop or not self.stop:
            self.completed_in_window += 1
            if code == "OK":
                self.ok_in_window += 1
                self.images_in_window += images

    def summary(self) -> dict[str, Any]:
        """The client-side part of a load point."""
        window = max(self.stop - self.start, 1e-9)
        completed = sum(self.statuses.values())
        ok = self.statuses.get("OK", 0)
        return {
            "window_s": round(window, 3),
            "requests": self.sent,
            "completed": completed,
            "ok": ok,
            "errors": completed - ok,
            "throughput_rps": self.ok_in_window / window,
            "images_per_s": self.images_in_window / window,
            "attempted_rps": self.completed_in_window / window,
            "latency_ms": latency_summary(self.latencies),
            "status": dict(sorted(self.statuses.items())),
            "error_samples": dict(self.errors),
            "server_timing_ms": self.timing.means(),
        }


def stats_summary(resp: Any, method: str | None = None) -> dict[str, Any]:
    """Turns a ``GetStatsResponse`` into plain JSON-able data.

    Args:
        resp: The ``GetStatsResponse`` read after a window.
        method: RPC name (``"Embed"``...) whose requests to count separately.

    Returns:
        Per-model batcher counters, the merged batch-size histogram and its
        means, and requests by status.
    """
    batchers: dict[str, Any] = {}
    for b in resp.batchers:
        hist = {int(k): int(v) for k, v in sorted(b.batch_size_histogram.items())}
        batchers[b.model] = {
            "batch_size_histogram": hist,
            "batches": b.batches,
            "items": b.items,
            "rejected": b.rejected,
            "expired": b.expired,
            "cancelled": b.cancelled,
            "mean_queue_ms": b.queue_ms_sum / b.items if b.items else None,
            "mean_run_ms": b.run_ms_sum / b.batches if b.batches else None,
        }
    merged = merge_histograms(*(b["batch_size_histogram"] for b in batchers.values()))
    by_status = dict(sorted(resp.requests_by_status.items()))
    out: dict[str, Any] = {
        "batchers": batchers,
        "batch_size_histogram": merged,
        "mean_batch_size": histogram_mean(merged),
        "item_mean_batch_size": items_weighted_mean(merged),
        "requests_by_status": by_status,
    }
    if method:
        # Keys are "<Method>:<CODE>"; match the method exactly (Search is not SearchStream).
        out["method_requests"] = sum(v for k, v in by_status.items() if re.split(r"[:/]", k, maxsplit=1)[0] == method)
    return out


# ------------------------------------------------------------------ payload --


def find_image_dir(explicit: str | None) -> Path:
    """The photo folder: ``--images`` or the first default that exists."""
    if explicit:
        path = Path(explicit)
        if not path.is_dir():
            raise BenchError(f"--images {explicit}: not a directory")
        return path
    for candidate in DEFAULT_IMAGE_DIRS:
        if Path(candidate).is_dir() and any(Path(candidate).iterdir()):
            return Path(candidate)
    raise BenchError(
        "no photos found: pass --images DIR (e.g. after `python scripts/get_photos.py`); "
        f"looked in {', '.join(DEFAULT_IMAGE_DIRS)}"
    )


def load_images(directory: str | Path, image_size: int = 0, limit: int = 256) -> list[bytes]:
    """Reads encoded images from a folder, optionally resized.

    Args:
        directory: Folder of photos (searched recursively, sorted by path).
        image_size: 0 sends each file's bytes as they are; N resizes so the
            longer side is N pixels and re-encodes as JPEG (quality 90), which
            needs Pillow.
        limit: Most images to keep.

    Returns:
        Encoded images.

    Raises:
        BenchError: No images, or resizing asked without Pillow.
    """
    paths = sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise BenchError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {directory}")
    raw = [p.read_bytes() for p in paths]
    if not image_size:
        return raw
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BenchError("--image-size needs Pillow: pip install 'lookalike[bench]'") from exc
    out = []
    for data in raw:
        with Image.open(io.BytesIO(data)) as opened:
            img = opened.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(background, img).convert("RGB")
            w, h = rgb.size
            ratio = image_size / max(w, h)
            rgb = rgb.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            rgb.save(buf, format="JPEG", quality=90)
            out.append(buf.getvalue())
    return out


@dataclass
class RequestFactory:
    """Builds the i-th request of a run.

    Attributes:
        method: ``embed``, ``search`` or ``insert``.
        models: Model names (embed uses the first; empty search/insert = all).
        images: Encoded photos, used round-robin.
        images_per_request: Images per Embed request / items per Insert.
        top_k: Hits per model for Search.
        unique: Make every Embed/Search payload unique too (a per-request
            suffix), so the server's embedding cache, keyed by content hash,
            never answers: each search then pays for a real embedding.
        run_id: Makes insert payloads and keys unique per run, so inserts are
            real writes and not idempotent lookups of earlier content.
    """

    method: str
    models: list[str]
    images: list[bytes]
    images_per_request: int = 1
    top_k: int = 10
    unique: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BenchError(f"unknown method {self.method!r}; one of {', '.join(METHODS)}")
        if not self.images:
            raise BenchError("no images to send")
        if self.method == "embed" and not self.models:
            raise BenchError("embed needs a model")

    def _image(self, i: int) -> bytes:
        if self.unique:
            return self._unique_image(i)
        return self.images[i % len(self.images)]

    def _unique_image(self, i: int) -> bytes:
        # JPEG/PNG/WebP decoders stop at their end marker and ignore trailing
        # bytes, so a suffix changes the content hash without changing pixels.
        return self.images[i % len(self.images)] + f"\0lookalike-bench {self.run_id} {i}".encode()

    @property
    def images_per_call(self) -> int:
        """Images one request carries."""
        return 1 if self.method == "search" else self.images_per_request

    def unary(self, i: int) -> tuple[str, Any]:
        """(RPC name, request) for request number i."""
        n = self.images_per_request
        if self.method == "embed":
            return "Embed", pb.EmbedRequest(model=self.models[0], images=[self._image(i * n + j) for j in range(n)])
        if self.method == "search":
            return "Search", pb.SearchRequest(image=self._image(i), models=self.models, top_k=self.top_k)
        items = [
            pb.InsertItem(key=f"bench/{self.run_id}/{i * n + j}", image=self._unique_image(i * n + j)) for j in range(n)
        ]
        return "Insert", pb.InsertRequest(items=items, models=self.models)

    def stream_rpc(self) -> str:
        """Name of the streaming RPC for this method."""
        if self.method == "search":
            return "SearchStream"
        if self.method == "insert":
            return "InsertStream"
        raise BenchError("streaming needs --method search or insert (Embed has no streaming RPC)")

    def stream_item(self, i: int) -> Any:
        """Request message number i of a stream (its request_id is ``str(i)``)."""
        rid = str(i)
        if self.method == "search":
            query = pb.SearchRequest(image=self._image(i), models=self.models, top_k=self.top_k)
            return pb.SearchStreamRequest(request_id=rid, query=query)
        if self.method == "insert":
            item = pb.InsertItem(key=f"bench/{self.run_id}/{i}", image=self._unique_image(i))
            return pb.InsertStreamRequest(request_id=rid, item=item, models=self.models)
        raise BenchError("streaming needs --method search or insert")


# ------------------------------------------------------------------ drivers --


@dataclass
class LoadPoint:
    """One point of a sweep: a closed-loop concurrency or an open-loop rate."""

    concurrency: int | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise BenchError("a load point is either a concurrency or a rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise BenchError("concurrency must be >= 1")
        if self.rate is not None and self.rate <= 0:
            raise BenchError("rate must be > 0")

    @property
    def label(self) -> str:
        """``c=4`` or ``r=50/s``."""
        return f"c={self.concurrency}" if self.concurrency is not None else f"r={self.rate:g}/s"


def _code_of(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name, exc.details() or ""
    return "CLIENT_" + type(exc).__name__.upper(), str(exc)


class Driver:
    """Runs load points against one server over one ``grpc.aio`` channel."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        factory: RequestFactory,
        *,
        stream: bool = False,
        timeout_s: float = 30.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        seed: int = 0,
    ) -> None:
        self.stub = pb_grpc.LookalikeStub(channel)
        self.factory = factory
        self.stream = stream
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.rng = random.Random(seed)
        self._counter = 0
        if stream:
            factory.stream_rpc()  # fail early for embed

    def _next_index(self) -> int:
        self._counter += 1
        return self._counter

    async def _one_unary(self, rec: WindowRecorder | None, started: float) -> None:
        rpc, request = self.factory.unary(self._next_index())
        images = self.factory.images_per_call
        try:
            resp = await getattr(self.stub, rpc)(request, timeout=self.timeout_s)
        except Exception as exc:  # every failure is a data point, never a crash
            code, message = _code_of(exc)
            if rec is not None:
                rec.record(started, time.monotonic(), code, images, message=message)
            return
        if rec is not None:
            rec.record(started, time.monotonic(), "OK", images, timing=resp.timing)

    async def _closed_unary(self, concurrency: int, until: float, rec: WindowRecorder | None) -> None:
        async def caller() -> None:
            while time.monotonic() < until:
                if rec is not None:
                    rec.sent += 1
                await self._one_unary(rec, time.monotonic())

        await asyncio.gather(*(caller() for _ in range(concurrency)))

    async def _open_unary(self, rate: float, until: float, rec: WindowRecorder | None) -> None:
        tasks: set[asyncio.Task[None]] = set()
        scheduled = time.monotonic()
        while True:
            scheduled += self.rng.expovariate(rate)
            if scheduled >= until:
                break
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if rec is not None:
                rec.sent += 1
            if len(tasks) >= self.max_in_flight:
                if rec is not None:
                    rec.record(scheduled, time.monotonic(), "CLIENT_OVERLOAD", 0, message="max in flight")
                continue
            # Latency counts from `scheduled`, not from when we got round to
            # sending: a late send is queueing the user would have seen.
            task = asyncio.create_task(self._one_unary(rec, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def _stream(self, point: LoadPoint, until: float, rec: WindowRecorder | None) -> None:
        """One stream; closed loop keeps N in flight, open loop writes on schedule."""
        call = getattr(self.stub, self.factory.stream_rpc())(timeout=self.timeout_s + (until - time.monotonic()))
        started: dict[str, float] = {}
        images = self.factory.images_per_call
        slots = asyncio.Semaphore(point.concurrency or self.max_in_flight)

        async def writer() -> None:
            scheduled = time.monotonic()
            try:
                while True:
                    if point.rate is not None:
                        scheduled += self.rng.expovariate(point.rate)
                        if scheduled >= until:
                            break
                        delay = scheduled - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await slots.acquire()
                    now = time.monotonic()
                    if now >= until:
                        slots.release()
                        break
                    msg = self.factory.stream_item(self._next_index())
                    started[msg.request_id] = scheduled if point.rate is not None else now
                    if rec is not None:
                        rec.sent += 1
                    await call.write(msg)
            finally:
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await call.done_writing()

        async def reader() -> None:
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return
                t0 = started.pop(resp.request_id, None)
                slots.release()
                if t0 is None or rec is None:
                    continue
                if resp.HasField("error"):
                    rec.record(
                        t0,
                        time.monotonic(),
                        resp.error.code_name or str(resp.error.code),
                        images,
                        message=resp.error.message,
                    )
                else:
                    rec.record(t0, time.monotonic(), "OK", images, timing=resp.result.timing)

        try:
            await asyncio.gather(writer(), reader())
        except Exception as exc:
            # The stream itself failed: every unanswered request failed with it.
            code, message = _code_of(exc)
            now = time.monotonic()
            for t0 in started.values():
                if rec is not None:
                    rec.record(t0, now, code, images, message=message)
            started.clear()

    async def run_phase(self, point: LoadPoint, seconds: float, rec: WindowRecorder | None) -> None:
        """Applies the load for ``seconds`` and waits for every answer (drain)."""
        until = time.monotonic() + seconds
        if rec is not None:
            rec.start, rec.stop = time.monotonic(), until
        if self.stream:
            await self._stream(point, until, rec)
        elif point.concurrency is not None:
            await self._closed_unary(point.concurrency, until, rec)
        else:
            assert point.rate is not None
            await self._open_unary(point.rate, until, rec)

    async def get_stats(self, reset: bool) -> Any | None:
        """``GetStats``; None when the server does not implement it."""
        try:
            return await self.stub.GetStats(pb.GetStatsRequest(reset=reset), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise

    async def measure(self, point: LoadPoint, warmup_s: float, duration_s: float) -> dict[str, Any]:
        """Warm-up, reset the server's counters, measure, read them back."""
        if warmup_s > 0:
            await self.run_phase(point, warmup_s, None)
        await self.get_stats(reset=True)
        rec = WindowRecorder()
        await self.run_phase(point, duration_s, rec)
        stats = await self.get_stats(reset=False)
        rpc = self.factory.stream_rpc() if self.stream else self.factory.unary(0)[0]
        result: dict[str, Any] = {
            "label": point.label,
            "mode": "closed" if point.concurrency is not None else "open",
            "concurrency": point.concurrency,
            "rate": point.rate,
            "rpc": rpc,
            "images_per_request": self.factory.images_per_call,
            **rec.summary(),
        }
        result["server"] = stats_summary(stats, rpc) if stats is not None else None
        return result


# ------------------------------------------------------------------ machine --


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def describe_machine(models: Sequence[Any] = ()) -> dict[str, Any]:
    """CPU, cores, memory, GPUs, and the providers each served model got.

    Args:
        models: ``ModelInfo`` messages from ``ListModels`` (may be empty).
    """
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 0
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gib": _memory_gib(),
        # Others may share the machine: the load before the run says how quiet it was.
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpus": _gpus(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "models": {
            m.name: {
                "version": m.version,
                "dim": m.dim,
                "providers": list(m.providers),
                "providers_requested": list(m.providers_requested),
                "max_batch_size": m.max_batch_size,
                "max_delay_ms": m.max_delay_ms,
                "batch_buckets": list(m.batch_buckets),
            }
            for m in models
        },
    }


# ------------------------------------------------------------------ running --


@dataclass
class BenchSpec:
    """Everything one ``lookalike bench`` series needs."""

    target: str
    method: str = "embed"
    models: list[str] = field(default_factory=list)
    points: list[LoadPoint] = field(default_factory=lambda: [LoadPoint(concurrency=1)])
    stream: bool = False
    images: list[bytes] = field(default_factory=list)
    images_per_request: int = 1
    top_k: int = 10
    unique: bool = False
    warmup_s: float = 1.0
    duration_s: float = 5.0
    timeout_s: float = 30.0
    label: str = ""
    seed: int = 0
    connect_timeout_s: float = 30.0


async def run_series(
    spec: BenchSpec, progress: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], list[Any]]:
    """Runs every load point of a spec against its server.

    Args:
        spec: What to run.
        progress: Called with a one-line summary after each point.

    Returns:
        (the series as JSON-able data, the server's ``ModelInfo`` list).

    Raises:
        BenchError: The server cannot be reached or the spec is invalid.
    """
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    async with grpc.aio.insecure_channel(spec.target, options=options) as channel:
        stub = pb_grpc.LookalikeStub(channel)
        try:
            listing = await stub.ListModels(pb.ListModelsRequest(), timeout=spec.connect_timeout_s, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            raise BenchError(f"cannot reach {spec.target}: {exc.code().name}: {exc.details()}") from None
        served = [m.name for m in listing.models]
        models = list(spec.models)
        unknown = [m for m in models if m not in served]
        if unknown:
            raise BenchError(f"model(s) {unknown} not served by {spec.target}; it serves {served}")
        if spec.method == "embed" and not models:
            if not served:
                raise BenchError(f"{spec.target} serves no models")
            models = served[:1]
        factory = RequestFactory(
            spec.method,
            models,
            spec.images,
            images_per_request=spec.images_per_request,
            top_k=spec.top_k,
            unique=spec.unique,
        )
        driver = Driver(channel, factory, stream=spec.stream, timeout_s=spec.timeout_s, seed=spec.seed)
        points = []
        for point in spec.points:
            result = await driver.measure(point, spec.warmup_s, spec.duration_s)
            points.append(result)
            if progress:
                progress(format_point(spec.label or spec.method, result))
    series = {
        "name": spec.label or f"{spec.method}{'-stream' if spec.stream else ''}",
        "kind": "server",
        "target": spec.target,
        "method": spec.method,
        "models": models,
        "stream": spec.stream,
        "unique_payloads": spec.unique or spec.method == "insert",
        "images_per_request": factory.images_per_call,
        "warmup_s": spec.warmup_s,
        "duration_s": spec.duration_s,
        "points": points,
    }
    return series, list(listing.models)


def format_point(name: str, p: Mapping[str, Any]) -> str:
    """One human line for a finished point."""
    lat = p.get("latency_ms") or {}

    def ms(key: str) -> str:
        v = lat.get(key)
        return "-" if v is None else f"{v:.1f}"

    server = p.get("server") or {}
    mb = server.get("mean_batch_size")
    return (
        f"{name:<24} {p.get('label', ''):>9}  {p.get('throughput_rps', 0):8.1f} req/s "
        f"{p.get('images_per_s', 0):8.1f} img/s  p50 {ms('p50')} p99 {ms('p99')} ms  "
        f"errors {p.get('errors', 0)}" + (f"  mean batch {mb:.1f}" if mb else "")
    )


def new_report(name: str, machine: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """An empty report that series are appended to."""
    return {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": dict(machine),
        "config": dict(config),
        "series": [],
    }


# ------------------------------------------------------------------ reports --


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(series: Sequence[Mapping[str, Any]]) -> str:
    """One Markdown table with a row per load point of every series."""
    head = (
        "| series | load | req/s | img/s | min | p50 | p90 | p95 | p99 | max | errors "
        "| mean batch | queue | preproc | infer | milvus | redis |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in series:
        for p in s.get("points", []):
            lat = p.get("latency_ms") or {}
            t = p.get("server_timing_ms") or {}
            server = p.get("server") or {}
            errors = p.get("errors", 0)
            if errors:
                worst = ", ".join(f"{k} {v}" for k, v in (p.get("status") or {}).items() if k != "OK")
                errors = f"{errors} ({worst})"
            rows.append(
                "| "
                + " | ".join(
                    [
                        str(s.get("name", "")),
                        str(p.get("label", "")),
                        _fmt(p.get("throughput_rps")),
                        _fmt(p.get("images_per_s")),
                        *(_fmt(lat.get(k)) for k in ("min", "p50", "p90", "p95", "p99", "max")),
                        str(errors),
                        _fmt(server.get("mean_batch_size"), 2),
                        *(_fmt(t.get(k), 2) for k in ("queue_ms", "preprocess_ms", "inference_ms")),
                        *(_fmt(t.get(k), 2) for k in ("milvus_ms", "redis_ms")),
                    ]
                )
                + " |"
            )
    return "\n".join(rows)


def machine_markdown(machine: Mapping[str, Any]) -> str:
    """The machine as a short bullet list."""
    lines = [
        f"- CPU: {machine.get('cpu')} — {machine.get('cores')} logical cores "
        f"({machine.get('cores_usable')} usable), {machine.get('memory_gib')} GiB RAM",
        f"- GPU: {', '.join(machine.get('gpus') or []) or 'none'}",
        f"- OS: {machine.get('os')}; Python {machine.get('python')}; grpcio {machine.get('grpcio')}",
    ]
    for name, m in (machine.get("models") or {}).items():
        lines.append(
            f"- model `{name}` v{m.get('version')}: providers {m.get('providers')}, "
            f"max batch {m.get('max_batch_size')}, max delay {m.get('max_delay_ms')} ms"
        )
    return "\n".join(lines)


def markdown_report(report: Mapping[str, Any]) -> str:
    """The whole report as Markdown: machine, configuration, table, plots."""
    parts = [
        f"# Benchmark: {report.get('name')}",
        "",
        f"Run {report.get('created')}.",
        "",
        "## Machine",
        "",
        machine_markdown(report.get("machine") or {}),
        "",
        "## Results",
        "",
        "Latency in ms (client-side, from send — or, open loop, from the scheduled send — to answer). "
        "Server columns are means of the responses' `ServerTiming` (ms) and the mean batch size from "
        "`GetStats` over the same window.",
        "",
        markdown_table(report.get("series") or []),
        "",
    ]
    plots = report.get("plots") or []
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    cfg = report.get("config")
    if cfg:
        parts += ["## Configuration", "", "```json", json.dumps(cfg, indent=2, default=str), "```", ""]
    return "\n".join(parts)


def write_plots(report: Mapping[str, Any], out_dir: Path) -> list[str]:
    """Latency-vs-throughput and batch-size PNGs; [] without matplotlib.

    Returns:
        File names written (relative to ``out_dir``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    series = [s for s in report.get("series") or [] if s.get("points")]

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, s in enumerate(series):
        pts = [p for p in s["points"] if p.get("images_per_s") and (p.get("latency_ms") or {}).get("p50")]
        if not pts:
            continue
        colour = f"C{i % 10}"
        x = [p["images_per_s"] for p in pts]
        for q, style in (("p50", "-o"), ("p99", "--^")):
            ax.plot(
                x,
                [p["latency_ms"][q] for p in pts],
                style,
                color=colour,
                label=f"{s['name']} {q}",
                markersize=4,
            )
        for p in pts:
            if len(pts) > 1:
                ax.annotate(
                    p.get("label", ""),
                    (p["images_per_s"], p["latency_ms"]["p50"]),
                    fontsize=6,
                    xytext=(2, 2),
                    textcoords="offset points",
                    color=colour,
                )
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Latency percentiles vs throughput — {report.get('name')}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "latency_vs_throughput.png", dpi=110)
    plt.close(fig)
    written.append("latency_vs_throughput.png")

    # One panel per series whose batches were ever larger than 1 (a "no
    # batching" series would only show a single bar): bars grouped by load
    # point, height = share of the items that ran in a batch of that size.
    panels = []
    for s in series:
        pts = [p for p in s["points"] if (p.get("server") or {}).get("batch_size_histogram")]
        if any(int(k) > 1 for p in pts for k in p["server"]["batch_size_histogram"]):
            panels.append((s["name"], pts))
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.8 * len(panels)), squeeze=False)
        for ax, (name, pts) in zip(axes.flat, panels, strict=False):
            sizes = sorted({int(k) for p in pts for k in p["server"]["batch_size_histogram"]})
            width = 0.8 / len(pts)
            for j, p in enumerate(pts):
                hist = {int(k): int(v) for k, v in p["server"]["batch_size_histogram"].items()}
                items = sum(k * v for k, v in hist.items()) or 1
                xs = [i - 0.4 + width * (j + 0.5) for i in range(len(sizes))]
                mean = p["server"].get("mean_batch_size")
                label = f"{p.get('label', '')} (mean {mean:.1f})" if mean else p.get("label", "")
                ax.bar(xs, [hist.get(k, 0) * k / items for k in sizes], width, label=label, color=f"C{j % 10}")
            ax.set_xticks(range(len(sizes)), [str(k) for k in sizes], fontsize=7)
            ax.set_xlabel("batch size (real, unpadded)", fontsize=8)
            ax.set_ylabel("share of items", fontsize=8)
            ax.set_title(f"Batch sizes — {name}", fontsize=9)
            ax.legend(fontsize=7, ncol=4)
        fig.tight_layout()
        fig.savefig(out_dir / "batch_sizes.png", dpi=110)
        plt.close(fig)
        written.append("batch_sizes.png")
    return written


def write_report(report: dict[str, Any], out_dir: str | Path, plots: bool = True) -> Path:
    """Writes results.json, report.md and the PNGs into ``out_dir``.

    Returns:
        The folder written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(report, out) if plots else []
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown_report(report))
    return out


# ---------------------------------------------------------------------- CLI --


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("need integers >= 1")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("need numbers > 0")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``lookalike bench`` flags to a parser."""
    parser.add_argument(
        "--target",
        default=os.environ.get("LOOKALIKE_TARGET", "127.0.0.1:50051"),
        help="server address host:port (env LOOKALIKE_TARGET)",
    )
    parser.add_argument("--method", choices=METHODS, default="embed", help="RPC to load (default embed)")
    parser.add_argument(
        "--model",
        "--models",
        dest="models",
        default="",
        help="model name(s), comma-separated; several = multi-model search/insert "
        "(default: embed the first served model; search/insert every model)",
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        type=_int_list,
        default=None,
        help="closed loop: comma-separated concurrencies to sweep (default 1,4,16)",
    )
    load.add_argument(
        "--rate",
        type=_float_list,
        default=None,
        help="open loop: comma-separated Poisson arrival rates, requests/s",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="use SearchStream/InsertStream: N requests in flight on one stream",
    )
    parser.add_argument(
        "--images",
        default=None,
        help=f"folder of photos to send (default: first of {', '.join(DEFAULT_IMAGE_DIRS)})",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=0,
        help="resize photos so the longer side is N px, as JPEG (0 = send files as they are)",
    )
    parser.add_argument(
        "--images-per-request",
        type=int,
        default=1,
        help="images per Embed request / items per Insert request (default 1)",
    )
    parser.add_argument(
        "--unique",
        action="store_true",
        help="make every payload unique (defeats the server's embedding cache; insert always is)",
    )
    parser.add_argument("--top-k", type=int, default=10, help="hits per model for search (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per point, discarded")
    parser.add_argument("--duration", type=float, default=5.0, help="measurement seconds per point")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request deadline, seconds")
    parser.add_argument("--name", default="", help="run name (default <method>-<UTC time>)")
    parser.add_argument("--label", default="", help="series name in tables and plots (default the method)")
    parser.add_argument("--out", default="", help="output folder (default benchmarks/results/<name>)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--seed", type=int, default=0, help="seed of the open-loop arrival schedule")


def spec_from_args(args: argparse.Namespace) -> BenchSpec:
    """Turns parsed flags into a :class:`BenchSpec` (loads the photos)."""
    if args.duration <= 0 or args.warmup < 0:
        raise BenchError("--duration must be > 0 and --warmup >= 0")
    if args.images_per_request < 1:
        raise BenchError("--images-per-request must be >= 1")
    if args.rate:
        points = [LoadPoint(rate=r) for r in args.rate]
    else:
        points = [LoadPoint(concurrency=c) for c in (args.concurrency or [1, 4, 16])]
    images = load_images(find_image_dir(args.images), args.image_size)
    return BenchSpec(
        target=args.target,
        method=args.method,
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        points=points,
        stream=args.stream,
        images=images,
        images_per_request=args.images_per_request,
        top_k=args.top_k,
        unique=args.unique,
        warmup_s=args.warmup,
        duration_s=args.duration,
        timeout_s=args.timeout,
        label=args.label,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``lookalike bench`` with parsed arguments.

    Returns:
        0 when every point got answers, 1 when a point got none OK (the
        report is still written), 2 when the bench could not run.
    """
    try:
        spec = spec_from_args(args)
        name = args.name or f"{spec.method}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}"
        out_dir = Path(args.out or Path("benchmarks") / "results" / name)

        def progress(line: str) -> None:
            print(line, flush=True)

        series, models = asyncio.run(run_series(spec, progress))
    except BenchError as exc:
        print(f"lookalike bench: {exc}", file=sys.stderr)
        return 2
    config = {k: v for k, v in vars(args).items() if not callable(v)}
    config["images_loaded"] = len(spec.images)
    config["image_bytes_mean"] = round(sum(map(len, spec.images)) / len(spec.images))
    report = new_report(name, describe_machine(models), config)
    report["series"].append(series)
    write_report(report, out_dir, plots=not args.no_plots)
    print(f"report: {out_dir / 'report.md'}")
    return 0 if all(p["ok"] for p in series["points"]) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lookalike.bench``."""
    parser = argparse.ArgumentParser(prog="lookalike bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
