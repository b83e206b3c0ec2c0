"""Load from several processes, for servers faster than one Python client.

One ``grpc.aio`` client process spent about 0.6 ms of CPU a call sending
640-px photos to Embed (2-core EPYC, benchmarks/README.md), so it tops out
near 1,600 calls a second: against a server that answers more (a GPU host) the
load generator, not the server, becomes the limit, and the point's
``client_cores`` near 1.0 says so. With ``processes`` > 1,
each load point is split over that many child processes (a concurrency into
near-equal shares, a rate into equal ones), each with its own channel and event
loop, and their windows are merged: latencies and status counts pooled,
throughput summed.

The children are spawned, not forked (gRPC does not survive a fork), once per
series. Each point runs in two steps so that the server's counters cover the
measured window only, as with one process: every child warms up and drains,
the parent resets the server's counters, then every child measures until one
shared deadline on ``CLOCK_MONOTONIC``, which all processes of a machine share.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from lookalike.bench.load import Driver, LoadPoint, RequestFactory, open_channel
from lookalike.bench.stats import BenchError, WindowRecorder
from lookalike.security import ChannelSecurity

#: How long the children get, from the parent's word, before a window starts:
#: enough for each to read its message and schedule its callers.
START_MARGIN_S = 0.05
#: Seconds a child may take to spawn, import gRPC and open its channel.
SPAWN_TIMEOUT_S = 60.0


def split_point(point: LoadPoint, processes: int) -> list[LoadPoint]:
    """``point`` as one share per process; a concurrency below ``processes`` uses fewer processes.

    >>> [p.concurrency for p in split_point(LoadPoint(concurrency=10), 4)]
    [3, 3, 2, 2]
    >>> [p.rate for p in split_point(LoadPoint(rate=90.0), 3)]
    [30.0, 30.0, 30.0]
    """
    if point.concurrency is not None:
        n = min(processes, point.concurrency)
        base, extra = divmod(point.concurrency, n)
        return [LoadPoint(concurrency=base + (1 if i < extra else 0)) for i in range(n)]
    assert point.rate is not None
    return [LoadPoint(rate=point.rate / processes) for _ in range(processes)]


class ProcessDriver:
    """:class:`Driver`'s ``measure`` with the load applied from several child processes.

    Args:
        processes: Child processes (at least 2; one process is :class:`Driver` itself).
        uri: The channel target the children dial (as the parent's channel does).
        options: The channel options.
        factory: Builds the requests; each child numbers its own.
        stats: The parent's driver: it reads and resets the server's counters
            and formats the points; it sends no load.
        security: TLS and token, as the parent's channel has them.
        stream: Load the streaming RPC.
        timeout_s: Per-request deadline.
        seed: Open-loop schedule seed; child ``i`` uses ``seed + i``.
    """

    def __init__(
        self,
        processes: int,
        uri: str,
        options: Sequence[tuple[str, Any]],
        factory: RequestFactory,
        stats: Driver,
        *,
        security: ChannelSecurity | None = None,
        stream: bool = False,
        timeout_s: float = 30.0,
        seed: int = 0,
    ) -> None:
        if processes < 2:
            raise BenchError("a process driver needs at least 2 processes")
        self._stats = stats
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        try:
            for i in range(processes):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_child,
                    args=(
                        child,
                        _ChildSpec(
                            uri, list(options), factory, stream, timeout_s, seed + i, security or ChannelSecurity()
                        ),
                    ),
                    name=f"lookalike-bench-load-{i}",
                    daemon=True,
                )
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for conn in self._conns:
                _expect(conn, "ready", SPAWN_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    async def measure(self, point: LoadPoint, warmup_s: float, duration_s: float) -> dict[str, Any]:
        """Warm-up in every child, reset the server's counters, measure in every child, merge."""
        shares = split_point(point, len(self._conns))
        used = self._conns[: len(shares)]
        for conn, share in zip(used, shares, strict=True):
            conn.send(("warm", share, time.monotonic() + START_MARGIN_S + warmup_s))
        for conn in used:
            await _reply(conn, "warm", warmup_s + 60.0)
        await self._stats.get_stats(reset=True)
        end = time.monotonic() + START_MARGIN_S + duration_s
        for conn, share in zip(used, shares, strict=True):
            conn.send(("measure", share, end))
        answers = [await _reply(conn, "measured", duration_s + 60.0) for conn in used]
        stats = await self._stats.get_stats(reset=False)
        window = WindowRecorder.merged([rec for rec, _ in answers])
        cpu = sum(cpu for _, cpu in answers)
        return self._stats.point_result(point, window, stats, cpu, processes=len(used))

    def close(self) -> None:
        """Stops the children (each closes its channel first)."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
        for conn in self._conns:
            conn.close()


def _expect(conn: Connection, what: str, timeout_s: float) -> Any:
    """The child's next message, which must be ``(what, payload)``; its error or silence raises."""
    if not conn.poll(timeout_s):
        raise BenchError(f"a load process sent no {what!r} within {timeout_s:.0f} s")
    try:
        kind, payload = conn.recv()
    except EOFError:
        raise BenchError("a load process exited") from None
    if kind == "error":
        raise BenchError(f"a load process failed: {payload}")
    if kind != what:
        raise BenchError(f"a load process sent {kind!r}, expected {what!r}")
    return payload


async def _reply(conn: Connection, what: str, timeout_s: float) -> Any:
    return await asyncio.to_thread(_expect, conn, what, timeout_s)


@dataclass(frozen=True)
class _ChildSpec:
    """What a load process needs to open its channel and build its requests (pickled to it)."""

    uri: str
    options: list[tuple[str, Any]]
    factory: RequestFactory
    stream: bool
    timeout_s: float
    seed: int
    security: ChannelSecurity


def _child(conn: Connection, spec: _ChildSpec) -> None:
    """A load process: a channel and a driver, running the points the parent sends until None."""
    try:
        asyncio.run(_child_main(conn, spec))
    except BaseException as exc:  # told to the parent, which raises it
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


async def _child_main(conn: Connection, spec: _ChildSpec) -> None:
    # A run id of its own per child: unique payloads and insert keys, which
    # carry the run id and the request's number, stay unique across processes.
    factory = replace(spec.factory, run_id=f"{spec.factory.run_id}-{spec.seed}")
    async with open_channel(spec.uri, spec.options, spec.security) as channel:
        driver = Driver(
            channel,
            factory,
            stream=spec.stream,
            timeout_s=spec.timeout_s,
            seed=spec.seed,
            metadata=spec.security.call_metadata,
        )
        await channel.channel_ready()
        conn.send(("ready", None))
        while (job := await asyncio.to_thread(conn.recv)) is not None:
            step, point, until = job
            if step == "warm":
                await driver.run_phase(point, max(until - time.monotonic(), 0.0), None)
                conn.send(("warm", None))
            else:
                rec = WindowRecorder()
                cpu = time.process_time()
                await driver.run_phase(point, max(until - time.monotonic(), 0.0), rec)
                conn.send(("measured", (rec, time.process_time() - cpu)))
