"""Idle streams vs health and Embed: the same calls with and without N open, silent streams.

Starts an embed-only server from a source tree (``--tree``: this checkout by
default; point it at a checkout of the old synchronous server to compare),
measures Health/Check and one-image Embed latency (sequential calls), then
opens ``--streams`` InsertStreams that never send a message and measures
again. Also samples the server's RSS and thread count in both states.

    nice -n 10 .venv/bin/python benchmarks/idle_streams.py --streams 1000 --out benchmarks/results/idle_streams.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "client"), str(ROOT / "server")]

from lookalike.v1 import lookalike_pb2 as pb  # noqa: E402
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc  # noqa: E402


def start_server(tree: Path) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'client'}:{tree / 'server'}"}
    cmd = [sys.executable, "-m", "lookalike_server", "--port", "0", "--stores", "false"]
    cmd += ["--models-only", "mobilenet_v2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("lookalike-server ready on"):
            return proc, int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"server exited with {proc.wait()}")


def proc_status(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"])}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1e3, 1)


async def probe(target: str, image: bytes, calls: int, timeout: float) -> dict[str, object]:
    channel = grpc.aio.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    stub = pb_grpc.LookalikeStub(channel)
    out: dict[str, object] = {}
    for name, make in (
        ("health", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)),
        ("embed", lambda: stub.Embed(pb.EmbedRequest(model="mobilenet_v2", images=[image]), timeout=timeout)),
    ):
        ok: list[float] = []
        failed: dict[str, int] = {}
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                await make()
                ok.append(time.perf_counter() - t0)
            except grpc.aio.AioRpcError as exc:
                failed[exc.code().name] = failed.get(exc.code().name, 0) + 1
        out[name] = {"ok": len(ok), "failed": failed, "p50_ms": pct(ok, 0.5), "p99_ms": pct(ok, 0.99)}
    await channel.close()
    return out


async def run(args: argparse.Namespace, pid: int, target: str) -> dict[str, object]:
    image = (ROOT / "tests" / "data" / "photos" / "giraffe.jpg").read_bytes()
    await probe(target, image, 5, 10)  # warm
    without = await probe(target, image, args.calls, args.timeout)
    without["server"] = proc_status(pid)
    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, args.streams // 100))]
    streams = [pb_grpc.LookalikeStub(channels[i % len(channels)]).InsertStream() for i in range(args.streams)]
    await asyncio.sleep(3)  # let every stream reach the server
    with_streams = await probe(target, image, args.calls, args.timeout)
    with_streams["server"] = proc_status(pid)
    for s in streams:
        s.cancel()
    for c in channels:
        await c.close()
    return {"without_streams": without, "with_streams": with_streams}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="source checkout whose server to start")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--out", default="")
    parser.add_argument("--machine", default=f"{os.cpu_count()}-CPU machine", help="recorded in the result")
    args = parser.parse_args()
    proc, port = start_server(args.tree.resolve())
    try:
        result = asyncio.run(run(args, proc.pid, f"127.0.0.1:{port}"))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = {
        "machine": args.machine,
        "tree": str(args.tree),
        "streams": args.streams,
        **result,
    }
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
