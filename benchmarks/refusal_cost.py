#!/usr/bin/env python3
"""Server CPU time per call: a refused Embed, a health check, and a bare ``grpc.aio`` health check.

Why: under overload the server spends CPU saying no. This measures how much, against the
floor any gRPC call costs in Python: the same health check answered by a bare ``grpc.aio``
server with nothing else in it. The server under test runs pinned to CPU 0 and this client to
CPU 1 (when the machine has two), so the server's CPU time (from ``/proc/<pid>/stat``) is its
own. A "refused" call is an Embed of a real photo for a model the server does not have: it
takes the whole front-door path of an overload refusal (request parsing, the admission
check, the error mapping and the status with its trailer) without depending on load.

    .venv/bin/python benchmarks/refusal_cost.py --calls 3000 --out benchmarks/results/refusal-cost.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "client"), str(ROOT / "server"), str(ROOT / "benchmarks")]

from overload import start_server  # noqa: E402

from lookalike.v1 import lookalike_pb2 as pb  # noqa: E402
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc  # noqa: E402

BARE_SERVER = textwrap.dedent(
    """
    import asyncio, grpc
    from grpc_health.v1 import health, health_pb2_grpc
    async def main():
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"lookalike-server ready on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()
    asyncio.run(main())
    """
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(pid: int, call: Callable[[], Awaitable[None]], calls: int, concurrency: int) -> dict[str, float]:
    """Server CPU microseconds per call and calls per second, ``calls`` calls at ``concurrency``."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await call()

    c0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - c0
    return {"server_cpu_us_per_call": round(cpu / calls * 1e6), "calls_per_s": round(calls / wall)}


async def run(args: argparse.Namespace, lookalike_port: int, lookalike_pid: int, bare_port: int, bare_pid: int):
    image = (ROOT / "tests" / "data" / "photos" / "giraffe.jpg").read_bytes()
    opts = [("grpc.enable_retries", 0)]
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{lookalike_port}", options=opts)
    bare = grpc.aio.insecure_channel(f"127.0.0.1:{bare_port}", options=opts)
    stub, health, bare_health = (
        pb_grpc.LookalikeStub(ch),
        health_pb2_grpc.HealthStub(ch),
        health_pb2_grpc.HealthStub(bare),
    )
    refused_req = pb.EmbedRequest(model="no-such-model", images=[image])

    async def refused() -> None:
        try:
            await stub.Embed(refused_req, timeout=10)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        else:
            raise AssertionError("the call was not refused")

    async def check() -> None:
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)

    async def bare_check() -> None:
        await bare_health.Check(health_pb2.HealthCheckRequest(), timeout=10)

    cases = {
        "refused Embed (lookalike-server)": (lookalike_pid, refused),
        "health check (lookalike-server)": (lookalike_pid, check),
        "health check (bare grpc.aio server)": (bare_pid, bare_check),
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in cases}
    for pid, fn in cases.values():  # warm each path
        await measure(pid, fn, 200, args.concurrency)
    for _ in range(args.rounds):  # interleaved rounds, so drift hits every case alike
        for name, (pid, fn) in cases.items():
            results[name].append(await measure(pid, fn, args.calls, args.concurrency))
    await ch.close()
    await bare.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="calls per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--machine", default=f"{os.cpu_count()}-CPU machine", help="recorded in the result")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    two = (os.cpu_count() or 1) >= 2
    server_cpus = {0} if two else None
    proc, port = start_server(["--models-only", "mobilenet_v2"], server_cpus)
    pin = (lambda: os.sched_setaffinity(0, {0})) if two else None
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER], stdout=subprocess.PIPE, text=True, preexec_fn=pin)
    assert bare.stdout is not None
    bare_port = int(bare.stdout.readline().rsplit(":", 1)[1])
    if two:
        os.sched_setaffinity(0, {1})
    try:
        results = asyncio.run(run(args, port, proc.pid, bare_port, bare.pid))
    finally:
        for p in (proc, bare):
            p.terminate()
            p.wait(60)
    out = {
        "machine": args.machine,
        "pinned": "server CPU 0, client CPU 1" if two else "not pinned (one CPU)",
        "calls_per_round": args.calls,
        "concurrency": args.concurrency,
        "rounds": results,
        "median_server_cpu_us_per_call": {
            k: sorted(r["server_cpu_us_per_call"] for r in v)[len(v) // 2] for k, v in results.items()
        },
    }
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
