"""Where a lone Embed call's time goes, and two checkouts' overhead compared, interleaved.

Issue 12 asks for a single-image Embed at concurrency 1 within 2 ms of the
in-process ceiling (decode, then infer). What the server spends on top of the
work is small against the noise of a 2-core VM, where decoding alone moves by a
millisecond from one minute to the next. So this script reads, per call:

* the client's latency (a synchronous stub, one call at a time, 2 ms apart);
* the server's own figures from the response's ``ServerTiming``: decoding
  (``preprocess_ms``), queueing for a batch worker (``queue_ms``) and the run
  (``inference_ms``), and the time the server saw (``total_ms``);

and reports per round the median **overhead** = client latency − decoding −
inference: what the call costs beyond the work, which the work's own drift
does not move. Each ``--code`` is a ``server/`` folder of a checkout (default:
this one); all are started at once and measured in alternating rounds, so a
change can be read as paired per-round differences against the first.

``--floor`` also measures a bare ``grpc.aio`` server in another process that
answers the same request with a ready 1280-float response after an
``asyncio.sleep`` of ``--floor-wait-ms`` (default 12, about a lone call's
decode and inference on 2 cores): the transport's share for a call that long,
which no server code can remove. The wait matters on a VM: with nothing to
wait for, the same echo answered in 0.89 ms on the 2-core EPYC; waiting
12 ms, it took 1.97 ms beyond the wait (idle threads and vCPUs wake slowly).

Usage::

    python benchmarks/c1_overhead.py                                  # this checkout, ~1 min
    python benchmarks/c1_overhead.py --code /path/to/old/server --code server --rounds 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_report  # noqa: E402
import compare  # noqa: E402
from batching_ab import add_model_args, embed_only_flags, median_interval, prepare_run  # noqa: E402

FLOOR_SERVER = """
import asyncio, sys, grpc
WAIT_S = float(sys.argv[1]) / 1000
from lookalike.v1 import lookalike_pb2 as pb, lookalike_pb2_grpc as rpc
REPLY = pb.EmbedResponse(model="m", dim=1280, embeddings=[pb.Embedding(values=[0.5] * 1280)])
class Echo(rpc.LookalikeServicer):
    async def Embed(self, request, context):
        if WAIT_S:
            await asyncio.sleep(WAIT_S)
        return REPLY
async def main():
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    rpc.add_LookalikeServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def call_series(target: str, model: str, images: Sequence[bytes], calls: int, gap_s: float) -> list[dict[str, float]]:
    """``calls`` sequential Embed calls; per call the client's ms and the server's timing fields."""
    import grpc

    from lookalike.v1 import lookalike_pb2 as pb
    from lookalike.v1 import lookalike_pb2_grpc as rpc

    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = rpc.LookalikeStub(channel)
        rows = []
        for i in range(calls):
            t0 = time.perf_counter()
            reply = stub.Embed(pb.EmbedRequest(model=model, images=[images[i % len(images)]]), timeout=30)
            client_ms = (time.perf_counter() - t0) * 1e3
            t = reply.timing
            rows.append(
                {
                    "client_ms": client_ms,
                    "total_ms": t.total_ms,
                    "preprocess_ms": t.preprocess_ms,
                    "queue_ms": t.queue_ms,
                    "inference_ms": t.inference_ms,
                }
            )
            time.sleep(gap_s)
    return rows


def round_summary(rows: Sequence[dict[str, float]], skip: int) -> dict[str, float]:
    """Medians of one round's calls (the first ``skip`` dropped), with the overhead beyond the work."""
    kept = rows[skip:] or rows
    out = {k: statistics.median(r[k] for r in kept) for k in kept[0]}
    out["overhead_ms"] = statistics.median(r["client_ms"] - r["preprocess_ms"] - r["inference_ms"] for r in kept)
    out["outside_server_ms"] = statistics.median(r["client_ms"] - r["total_ms"] for r in kept)
    return out


def paired(first: Sequence[float], other: Sequence[float]) -> dict[str, Any]:
    """Per-round differences ``other - first``: median, 90% interval, and how many rounds were lower."""
    diffs = [b - a for a, b in zip(first, other, strict=True)]
    low, high = median_interval(diffs)
    lower = sum(d < 0 for d in diffs)
    return {"median": statistics.median(diffs), "ci90": [low, high], "rounds": diffs, "lower": lower}


@contextlib.contextmanager
def floor_server(wait_ms: float) -> Iterator[str]:
    """A bare grpc.aio Embed echo in another process, answering after ``wait_ms``; yields its target."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR_SERVER, str(wait_ms)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def servers(codes: Sequence[str], flags: Sequence[str], logs: Path, reverse: bool = False) -> Iterator[list[str]]:
    """One lookalike server per ``server/`` folder, all up at once; targets in ``codes``' order.

    ``reverse`` starts them last to first.
    """
    order = list(range(len(codes)))[:: -1 if reverse else 1]
    with contextlib.ExitStack() as stack:
        targets = {
            i: stack.enter_context(compare.running_server(flags, logs / f"c1-overhead-{i}.log", code=codes[i]))
            for i in order
        }
        yield [targets[i] for i in range(len(codes))]


def start_groups(rounds: int, starts: int) -> list[int]:
    """How many of ``rounds`` each of ``starts`` fresh sets of servers runs (as even as can be)."""
    starts = max(1, min(starts, rounds))
    return [rounds // starts + (1 if s < rounds % starts else 0) for s in range(starts)]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the rounds and writes their JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument(
        "--code", action="append", default=[], help="a checkout's server/ folder (repeat; default: this one)"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--starts",
        type=int,
        default=1,
        help="spread the rounds over this many fresh sets of server processes, started in alternating order: "
        "a process keeps a speed of its own for its life (decoding up to 0.67 ms apart in an A/A run), "
        "which paired rounds within one set cannot tell from the code",
    )
    parser.add_argument("--calls", type=int, default=300, help="calls per round and server")
    parser.add_argument("--skip", type=int, default=30, help="calls dropped at the start of each round")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="pause between calls")
    parser.add_argument("--floor", action="store_true", help="also measure a bare grpc.aio echo (transport only)")
    parser.add_argument("--floor-wait-ms", type=float, default=12.0, help="how long the echo waits before answering")
    parser.add_argument("--server-arg", action="append", default=[], help="extra lookalike-server flag (repeat)")
    parser.add_argument("--out", default="", help="JSON path (default: benchmarks/results/c1-overhead-DATE.json)")
    args = parser.parse_args(argv)
    out, logs, images = prepare_run(parser, args, "c1-overhead")
    codes = args.code or [str(REPO / "server")]
    flags = embed_only_flags(args)
    started = time.monotonic()
    per_code: list[list[dict[str, float]]] = [[] for _ in codes]
    floor: list[dict[str, float]] = []
    echo_server = floor_server(args.floor_wait_ms) if args.floor else contextlib.nullcontext()
    r = 0
    with echo_server as echo:
        for start, group in enumerate(start_groups(args.rounds, args.starts)):
            with servers(codes, flags, logs, reverse=start % 2 == 1) as targets:
                for _ in range(group):
                    order = list(range(len(codes)))
                    if r % 2:
                        order.reverse()
                    for i in order:
                        rows = call_series(targets[i], args.model, images, args.calls, args.gap_ms / 1e3)
                        per_code[i].append(round_summary(rows, args.skip))
                    line = ", ".join(
                        f"{Path(codes[i]).resolve().parent.name}: overhead {per_code[i][-1]['overhead_ms']:.2f} ms "
                        f"(client {per_code[i][-1]['client_ms']:.2f})"
                        for i in range(len(codes))
                    )
                    if echo is not None:
                        rows = call_series(echo, "m", images, args.calls, args.gap_ms / 1e3)
                        floor.append(round_summary(rows, args.skip))
                        line += f"; bare echo {floor[-1]['client_ms'] - args.floor_wait_ms:.2f} ms beyond its wait"
                    r += 1
                    compare.log(f"round {r} (start {start + 1}): {line}")
    results: dict[str, Any] = {
        "model": args.model,
        "codes": [
            {
                "code": str(Path(code).resolve()),
                "rounds": rounds,
                "median": {k: statistics.median(x[k] for x in rounds) for k in rounds[0]},
            }
            for code, rounds in zip(codes, per_code, strict=True)
        ],
        "overhead_vs_first": [
            paired([x["overhead_ms"] for x in per_code[0]], [x["overhead_ms"] for x in rounds])
            for rounds in per_code[1:]
        ],
        "floor": {
            "wait_ms": args.floor_wait_ms,
            "rounds": floor,
            "beyond_wait_ms": statistics.median(x["client_ms"] for x in floor) - args.floor_wait_ms,
        }
        if floor
        else None,
        "machine": {"cpu": bench_report._cpu_model(), "cpu_count": os.cpu_count(), "loadavg": list(os.getloadavg())},
        "args": vars(args),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    for c in results["codes"]:
        m = c["median"]
        print(
            f"{c['code']}: client {m['client_ms']:.2f} ms = decode {m['preprocess_ms']:.2f} + inference "
            f"{m['inference_ms']:.2f} + overhead {m['overhead_ms']:.2f} (queue {m['queue_ms']:.2f}; outside the "
            f"server's own timing {m['outside_server_ms']:.2f})"
        )
    for code, d in zip(codes[1:], results["overhead_vs_first"], strict=True):
        print(
            f"{code} - {codes[0]}: overhead {d['median']:+.2f} ms (90% interval {d['ci90'][0]:+.2f} to "
            f"{d['ci90'][1]:+.2f}; lower in {d['lower']} of {len(d['rounds'])} rounds)"
        )
    if floor:
        print(
            f"bare grpc.aio echo of the same request, answering after {args.floor_wait_ms:g} ms: "
            f"{results['floor']['beyond_wait_ms']:.2f} ms beyond the wait"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
