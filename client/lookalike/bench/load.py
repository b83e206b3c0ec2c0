"""Payload and load drivers of ``lookalike bench``: photos, request factory, closed and open loops."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from lookalike.bench.stats import (
    DEFAULT_IMAGE_DIRS,
    DEFAULT_MAX_IN_FLIGHT,
    METHODS,
    BenchError,
    WindowRecorder,
    stats_summary,
)
from lookalike.images import IMAGE_SUFFIXES
from lookalike.security import ChannelSecurity
from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

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
        "no photos to send: pass --images DIR, any folder of .jpg/.png files "
        f"(in a lookalike checkout, `python scripts/get_photos.py` fills {DEFAULT_IMAGE_DIRS[-1]}); "
        f"looked in {', '.join(str(Path(d).resolve()) for d in DEFAULT_IMAGE_DIRS)}"
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


def open_channel(uri: str, options: Sequence[tuple[str, Any]], security: ChannelSecurity) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``uri``: TLS (with the token in its credentials) or plaintext."""
    creds = security.channel_credentials()
    if creds is None:
        return grpc.aio.insecure_channel(uri, options=list(options))
    return grpc.aio.secure_channel(uri, creds, options=list(options))


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
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.stub = pb_grpc.LookalikeStub(channel)
        # The token on a plaintext channel (ChannelSecurity.call_metadata); over TLS it
        # rides in the channel's credentials and this is empty.
        self.metadata = tuple(metadata) or None
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
            resp = await getattr(self.stub, rpc)(request, timeout=self.timeout_s, metadata=self.metadata)
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
        call = getattr(self.stub, self.factory.stream_rpc())(
            timeout=self.timeout_s + (until - time.monotonic()), metadata=self.metadata
        )
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
        """``GetStats``; None when the server does not implement it or the token lacks its ``admin`` scope.

        A read-only token can still load Embed and Search; the points then carry
        no server-side counters.
        """
        try:
            return await self.stub.GetStats(pb.GetStatsRequest(reset=reset), timeout=10, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED):
                return None
            raise

    async def measure(self, point: LoadPoint, warmup_s: float, duration_s: float) -> dict[str, Any]:
        """Warm-up, reset the server's counters, measure, read them back."""
        if warmup_s > 0:
            await self.run_phase(point, warmup_s, None)
        await self.get_stats(reset=True)
        rec = WindowRecorder()
        cpu = time.process_time()
        await self.run_phase(point, duration_s, rec)
        cpu = time.process_time() - cpu
        stats = await self.get_stats(reset=False)
        return self.point_result(point, rec, stats, cpu)

    def point_result(
        self, point: LoadPoint, rec: WindowRecorder, stats: Any | None, client_cpu_s: float, processes: int = 1
    ) -> dict[str, Any]:
        """A load point's JSON: the client's window, the server's counters, the load generator's CPU.

        Args:
            point: The load applied.
            rec: The window (merged, when several processes applied the load).
            stats: ``GetStats`` read after the window (None: not implemented).
            client_cpu_s: CPU seconds the load generator's processes spent in the window.
            processes: Processes that applied the load.
        """
        rpc = self.factory.stream_rpc() if self.stream else self.factory.unary(0)[0]
        result: dict[str, Any] = {
            "label": point.label,
            "mode": "closed" if point.concurrency is not None else "open",
            "concurrency": point.concurrency,
            "rate": point.rate,
            "rpc": rpc,
            "images_per_request": self.factory.images_per_call,
            **rec.summary(),
            # Near 1.0 per process, the figures are the load generator's limit, not the server's.
            "load_processes": processes,
            "client_cores": round(client_cpu_s / max(rec.stop - rec.start, 1e-9), 3),
        }
        result["server"] = stats_summary(stats, rpc) if stats is not None else None
        return result
