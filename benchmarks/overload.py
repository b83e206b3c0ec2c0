"""Open-loop overload: one-image Embed at 1x, 2x, 4x and 8x the sustainable rate.

Starts an embed-only ``lookalike-server`` (``--stores false``) as a
subprocess, measures the sustainable rate with a short closed-loop run, then
offers Poisson arrivals at each multiple of it for ``--seconds`` each (open
loop: arrivals do not wait for answers, as real clients do not). Reports per
level: goodput (answers/s), served p50/p99, rejection (RESOURCE_EXHAUSTED)
p50/p99 and counts of every other outcome.

On a small machine the load generator takes cores from the server; pin them
apart (``--server-cpus 0 --client-cpus 1``) to measure the server alone, as
a generator on another machine would.

``--client lookalike`` (the default) sends through the Python client
(:class:`lookalike.AsyncLookalikeClient`, retries off), whose adaptive
throttle refuses calls locally while the server refuses most of them
(:mod:`lookalike.throttle`); refusals are then reported in two parts, the
server's and the client's own, and together. ``--client raw`` sends through
the bare generated stub, as a client in another language without such a
throttle would: every refusal is the server's.

    .venv/bin/python benchmarks/overload.py --seconds 15 --out benchmarks/results/overload.json \
        -- --limits-max-queue-wait-ms 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "client"), str(ROOT / "server")]

from lookalike import AsyncLookalikeClient, LookalikeError  # noqa: E402
from lookalike.v1 import lookalike_pb2 as pb  # noqa: E402
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_report import parse_cpus  # noqa: E402


def start_server(extra: list[str], cpus: set[int] | None = None) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'client'}:{ROOT / 'server'}"}
    cmd = [sys.executable, "-m", "lookalike_server", "--port", "0", "--stores", "false", *extra]
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=pin)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("lookalike-server ready on"):
            return proc, int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"server exited with {proc.wait()}")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1e3, 1)


async def sustainable(stub: pb_grpc.LookalikeStub, request: pb.EmbedRequest, seconds: float, workers: int) -> float:
    """Closed-loop throughput (calls/s) at ``workers`` concurrency."""
    done = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            try:
                await stub.Embed(request, timeout=30)
                done += 1
            except grpc.aio.AioRpcError:
                pass

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return done / (time.monotonic() - started)


Send = Callable[[], Awaitable[object]]


async def offered(send: Send, rate: float, seconds: float, seed: int) -> dict[str, object]:
    """Poisson arrivals at ``rate``/s for ``seconds``; every call's outcome and latency."""
    rng = random.Random(seed)
    served: list[float] = []
    rejected: list[float] = []  # by the server
    local: list[float] = []  # by the client's throttle, never sent
    other: Counter[str] = Counter()

    async def call() -> None:
        t0 = time.perf_counter()
        try:
            await send()
            served.append(time.perf_counter() - t0)
        except (grpc.aio.AioRpcError, LookalikeError) as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else exc.code
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                (local if getattr(exc, "local", False) else rejected).append(time.perf_counter() - t0)
            else:
                other[code.name] += 1

    tasks = []
    started = time.monotonic()
    next_at = started
    while next_at < started + seconds:
        next_at += rng.expovariate(rate)
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(call()))
    await asyncio.gather(*tasks)
    return {
        "offered_per_s": round(len(tasks) / seconds, 1),
        "calls": len(tasks),
        "goodput_per_s": round(len(served) / seconds, 1),
        "served": len(served),
        "served_p50_ms": pct(served, 0.5),
        "served_p99_ms": pct(served, 0.99),
        "rejected": len(rejected) + len(local),
        "rejection_p50_ms": pct(rejected + local, 0.5),
        "rejection_p99_ms": pct(rejected + local, 0.99),
        "rejected_by_server": len(rejected),
        "server_rejection_p50_ms": pct(rejected, 0.5),
        "server_rejection_p99_ms": pct(rejected, 0.99),
        "rejected_by_client": len(local),
        "client_rejection_p99_ms": pct(local, 0.99),
        "other": dict(other),
    }


async def run(args: argparse.Namespace, port: int) -> dict[str, object]:
    image = (ROOT / "tests" / "data" / "photos" / args.photo).read_bytes()
    request = pb.EmbedRequest(model=args.model, images=[image])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_retries", 0)])
    stub = pb_grpc.LookalikeStub(channel)
    await sustainable(stub, request, 3, args.workers)  # warm
    rate = await sustainable(stub, request, args.calibrate_s, args.workers)
    if args.client == "raw":

        async def send() -> object:
            return await stub.Embed(request, timeout=args.timeout)

        client = None
    else:
        client = AsyncLookalikeClient(f"127.0.0.1:{port}", retries=0, timeout=args.timeout)

        async def send() -> object:
            return await client.embed(image, model=args.model)

    levels = {}
    for mult in args.levels:
        levels[f"{mult}x"] = await offered(send, rate * mult, args.seconds, seed=mult)
        print(f"{mult}x: {json.dumps(levels[f'{mult}x'])}", flush=True)
        await asyncio.sleep(2)  # let the queue empty between levels
    if client is not None:
        await client.close()
    await channel.close()
    return {"sustainable_per_s": round(rate, 1), "levels": levels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each load level")
    parser.add_argument("--calibrate-s", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=8, help="closed-loop concurrency for calibration")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--photo", default="giraffe.jpg")
    parser.add_argument(
        "--client",
        choices=("lookalike", "raw"),
        default="lookalike",
        help="send through the Python client (with its adaptive throttle) or the bare stub",
    )
    parser.add_argument("--out", default="")
    parser.add_argument(
        "--server-cpus",
        default="",
        help="pin the server to these CPUs (e.g. 0), so the load generator does not take the server's cores",
    )
    parser.add_argument("--client-cpus", default="", help="pin this load generator to these CPUs (e.g. 1)")
    parser.add_argument("--machine", default=f"{os.cpu_count()}-CPU machine", help="recorded in the result")
    parser.add_argument("server_args", nargs="*", help="extra lookalike-server flags (after --)")
    args = parser.parse_args()
    if args.client_cpus:
        os.sched_setaffinity(0, parse_cpus(args.client_cpus))
    proc, port = start_server(["--models-only", args.model, *args.server_args], parse_cpus(args.server_cpus))
    try:
        result = asyncio.run(run(args, port))
    finally:
        proc.terminate()
        proc.wait(60)
    levels = result["levels"]
    assert isinstance(levels, dict)
    best = max(v["goodput_per_s"] for v in levels.values())
    one, four = levels.get("1x"), levels.get("4x")
    summary = {}
    if one and four:
        summary = {
            "rejection_p99_at_4x_ms": four["rejection_p99_ms"],
            "server_rejection_p99_at_4x_ms": four["server_rejection_p99_ms"],
            "served_p99_4x_over_1x": round(four["served_p99_ms"] / one["served_p99_ms"], 2)
            if four["served_p99_ms"] and one["served_p99_ms"]
            else None,
            "goodput_4x_over_best": round(four["goodput_per_s"] / best, 2) if best else None,
        }
    out = {
        "machine": args.machine,
        "cpus": {"server": args.server_cpus or "all", "load generator": args.client_cpus or "all"},
        "client": args.client,
        "server_args": ["--models-only", args.model, *args.server_args],
        **result,
        "summary": summary,
    }
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
