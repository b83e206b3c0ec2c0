"""Where the server's CPU goes, per Embed call, thread by thread, against the in-process ceiling's.

Throughput on a shared 2-core VM swings by a third within minutes; CPU time
per call swings far less, and it is what decides the one-core profile of
issue 12: there the server can only match the ceiling (the server's own
decoding and ``OnnxModel``, sequentially, in one process) if it spends no
more CPU per image. Each server runs pinned to ``--server-cpus`` (default CPU
0); the load (single-image Embed calls, ``--concurrency`` at once) comes from
the other CPUs. Per call, from ``/proc/<pid>/task/*/stat``, the CPU time of:

* ``loop``: the event loop (gRPC's Python side, admission, the response);
* ``decode``: the decoding threads;
* ``inference``: the batch workers (ONNX Runtime, on the caller's thread);
* ``grpc``: gRPC's C-core threads (``event_engine``, the poller);
* ``other``: any other thread.

Threads are told apart by the names the server gives them
(``lookalike_server.thread_names``); a checkout older than that shows its
Python threads as ``other``. The ceiling's CPU per image is measured in this
process on the same CPUs. ``--code`` compares checkouts' ``server/`` folders
round by round, in alternating order, all servers up at once (an idle one
costs nothing).

Usage::

    python benchmarks/server_cpu.py                                  # ~2 min: this checkout, 5 rounds
    python benchmarks/server_cpu.py --code /tmp/old/server --code server --rounds 8
    python benchmarks/server_cpu.py --floor      # and a bare grpc.aio echo at the same rate

``--floor`` measures the transport alone: a bare ``grpc.aio`` server that answers
the same Embed request after a wait chosen so that calls arrive at the rate the
(last) server managed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import baselines  # noqa: E402
import bench_report  # noqa: E402
import compare  # noqa: E402
from batching_ab import add_model_args, embed_only_flags, median_interval, prepare_run  # noqa: E402
from c1_overhead import FLOOR_SERVER, start_groups  # noqa: E402

GROUPS = ("loop", "decode", "inference", "grpc", "other")
# OS thread names (15 bytes at most) → group.
_PREFIXES = (("grpc-aio", "loop"), ("preprocess", "decode"), ("batcher", "inference"))
_GRPC_THREADS = (
    "event_engine",
    "grpc_global_tim",
    "lifeguard",
    "Thread-1 (_poll",
    "default-executo",
    "resolver-execut",
)


def thread_group(os_name: str) -> str:
    """The group of a thread by its OS name (``/proc/<pid>/task/<tid>/comm``)."""
    for prefix, group in _PREFIXES:
        if os_name.startswith(prefix):
            return group
    if os_name.startswith(_GRPC_THREADS) or os_name.startswith("grpc"):
        return "grpc"
    return "other"


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Every thread of ``pid``: tid → (OS name, CPU seconds so far)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            name = Path(task, "comm").read_text().strip()
            fields = Path(task, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended between listing and reading
            continue
        out[int(Path(task).name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def per_call(
    before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]], calls: int
) -> dict[str, float]:
    """CPU ms per call by group, and ``total``, from two :func:`thread_cpu` snapshots.

    A thread that ended before ``after`` was taken is not counted: the server's are long-lived.
    """
    out = dict.fromkeys(GROUPS, 0.0)
    for tid, (name, cpu) in after.items():
        out[thread_group(name)] += cpu - before.get(tid, (name, 0.0))[1]
    ms = {group: 1000.0 * seconds / calls for group, seconds in out.items()}
    ms["total"] = sum(ms[g] for g in GROUPS)
    return ms


def cores_by_group(
    before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]], seconds: float
) -> dict[str, Any]:
    """How many cores each group kept busy over ``seconds`` of wall time, and the busiest thread.

    A thread near 1.0 core is a ceiling of its own, however many cores the
    machine has: the event loop is one thread.
    """
    cores = dict.fromkeys(GROUPS, 0.0)
    busiest = ("", 0.0)
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        cores[thread_group(name)] += used / seconds
        if used / seconds > busiest[1]:
            busiest = (name, used / seconds)
    return {
        **{g: round(c, 3) for g, c in cores.items()},
        "busiest_thread": busiest[0],
        "busiest_share": round(busiest[1], 3),
    }


async def _load(target: str, images: Sequence[bytes], model: str, concurrency: int, seconds: float) -> int:
    """Single-image Embed calls, ``concurrency`` at once, for ``seconds``; how many completed."""
    import grpc

    from lookalike.v1 import lookalike_pb2 as pb
    from lookalike.v1 import lookalike_pb2_grpc as rpc

    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = rpc.LookalikeStub(channel)
        done = 0
        end = time.monotonic() + seconds

        async def worker(i: int) -> None:
            nonlocal done
            while time.monotonic() < end:
                await stub.Embed(pb.EmbedRequest(model=model, images=[images[(done + i) % len(images)]]), timeout=60)
                done += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return done


def measure(target: str, pid: int, images: Sequence[bytes], args: argparse.Namespace) -> dict[str, float]:
    """One window against one server: img/s and CPU ms per call by group."""
    asyncio.run(_load(target, images, args.model, args.concurrency, args.warmup))
    before = thread_cpu(pid)
    started = time.monotonic()
    calls = asyncio.run(_load(target, images, args.model, args.concurrency, args.duration))
    elapsed = time.monotonic() - started
    row = per_call(before, thread_cpu(pid), calls)
    row["images_per_s"] = calls / elapsed
    return row


def ceiling_cpu(model: Any, images: Sequence[bytes], seconds: float) -> dict[str, float]:
    """The in-process ceiling at batch 1 on this process's CPUs: img/s and CPU ms per image."""
    cpu = time.process_time()
    wall = time.monotonic()
    result = baselines.ceiling(model, images, [1], seconds=seconds, warmup_s=0.5)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    point = result["points"][0]
    # process_time covers the warm-up too: scale it by the share of wall time the window took.
    window = point["window_s"]
    return {"images_per_s": point["images_per_s"], "total": 1000.0 * cpu * (window / wall) / point["completed"]}


def floor_cpu(
    images: Sequence[bytes], args: argparse.Namespace, rate: float, cpus: set[int], client_cpus: set[int] | None
) -> dict[str, float]:
    """A bare ``grpc.aio`` Embed echo (``c1_overhead.FLOOR_SERVER``), pinned as the servers are.

    It answers after ``concurrency / rate`` seconds, so calls arrive at the rate the
    server managed: a loop woken per call costs more than one fed back to back.
    """
    wait_ms = 1000.0 * args.concurrency / rate
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR_SERVER, str(wait_ms)], stdout=subprocess.PIPE, text=True, cwd=REPO, preexec_fn=pin
    )
    try:
        assert proc.stdout is not None
        target = f"127.0.0.1:{int(proc.stdout.readline())}"
        with compare.pinned(client_cpus):
            row = measure(target, proc.pid, images, args)
    finally:
        proc.terminate()
        proc.wait(10)
    return {"wait_ms": wait_ms, "images_per_s": row["images_per_s"], "total": row["total"]}


def summarise(rounds: Sequence[Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Per measure: median, range and 90% interval over rounds."""
    out: dict[str, dict[str, Any]] = {}
    for key in (*GROUPS, "total", "images_per_s"):
        values = [r[key] for r in rounds]
        low, high = median_interval(values)
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values), "ci90": [low, high]}
    return out


@contextlib.contextmanager
def servers(
    codes: Sequence[str], flags: Sequence[str], logs: Path, cpus: set[int], reverse: bool = False
) -> Iterator[list[tuple[str, int]]]:
    """One pinned server per ``server/`` folder, all up at once: (target, pid) each, in ``codes``' order.

    ``reverse`` starts them last to first.
    """
    with contextlib.ExitStack() as stack:
        out: dict[int, tuple[str, int]] = {}
        for i in list(range(len(codes)))[:: -1 if reverse else 1]:
            pids: list[int] = []
            log = logs / f"server-cpu-{i}.log"
            target = stack.enter_context(compare.running_server(flags, log, pid_out=pids, cpus=cpus, code=codes[i]))
            out[i] = (target, pids[0])
        yield [out[i] for i in range(len(codes))]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the rounds and writes their JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--code", action="append", default=[], help="a checkout's server/ folder (repeat)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--starts", type=int, default=1, help="fresh sets of server processes, started in alternating order"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--server-cpus", default="0", help="pin the servers and the ceiling here (taskset notation)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra lookalike-server flag (repeat)")
    parser.add_argument("--floor", action="store_true", help="also a bare grpc.aio echo at the servers' rate")
    parser.add_argument("--out", default="", help="JSON path (default: benchmarks/results/server-cpu-DATE.json)")
    args = parser.parse_args(argv)
    out, logs, images = prepare_run(parser, args, "server-cpu")
    codes = args.code or [str(REPO / "server")]
    server_cpus = bench_report.parse_cpus(args.server_cpus)
    client_cpus = (os.sched_getaffinity(0) - server_cpus) or None
    with compare.pinned(server_cpus):
        model = baselines.load_model(args.model, registry=args.registry, providers=["CPUExecutionProvider"], threads=1)
    rows: dict[str, list[dict[str, float]]] = {code: [] for code in codes}
    ceiling: list[dict[str, float]] = []
    started = time.monotonic()
    r = 0
    for start, group in enumerate(start_groups(args.rounds, args.starts)):
        # A process keeps a speed of its own for its life: fresh sets, in both start orders.
        with servers(codes, embed_only_flags(args), logs, server_cpus, reverse=start % 2 == 1) as running:
            for _ in range(group):
                order = list(range(len(codes))) if r % 2 == 0 else list(reversed(range(len(codes))))
                for i in order:
                    target, pid = running[i]
                    with compare.pinned(client_cpus):
                        rows[codes[i]].append(measure(target, pid, images, args))
                with compare.pinned(server_cpus):
                    ceiling.append(ceiling_cpu(model, images, args.duration))
                line = "; ".join(
                    f"{Path(c).resolve().parent.name}: {rows[c][-1]['total']:.2f} ms/call, "
                    f"{rows[c][-1]['images_per_s']:.1f} img/s"
                    for c in codes
                )
                r += 1
                compare.log(f"round {r} (start {start + 1}): {line}; ceiling {ceiling[-1]['total']:.2f} ms/image")
    results: dict[str, Any] = {
        "model": args.model,
        "concurrency": args.concurrency,
        "server_cpus": sorted(server_cpus),
        "codes": {c: {"rounds": rows[c], **summarise(rows[c])} for c in codes},
        "ceiling": {
            "rounds": ceiling,
            "total": statistics.median(x["total"] for x in ceiling),
            "images_per_s": statistics.median(x["images_per_s"] for x in ceiling),
        },
        "machine": {"cpu": bench_report._cpu_model(), "cpu_count": os.cpu_count()},
        "args": vars(args),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if args.floor:
        rate = results["codes"][codes[-1]]["images_per_s"]["median"]
        results["floor"] = floor_cpu(images, args, rate, server_cpus, client_cpus)
    if len(codes) > 1:
        first = rows[codes[0]]
        results["paired_total_ms"] = {
            c: [b["total"] - a["total"] for a, b in zip(first, rows[c], strict=True)] for c in codes[1:]
        }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"CPU ms per call, median of {args.rounds} rounds (server on CPUs {args.server_cpus}, c={args.concurrency}):")
    print(f"{'code':<28}" + "".join(f"{g:>10}" for g in (*GROUPS, "total")) + f"{'img/s':>9}")
    for c in codes:
        s = results["codes"][c]
        name = str(Path(c).resolve().parent)[-27:]
        print(
            f"{name:<28}"
            + "".join(f"{s[g]['median']:>10.3f}" for g in (*GROUPS, "total"))
            + f"{s['images_per_s']['median']:>9.1f}"
        )
    ceil = results["ceiling"]
    print(f"{'ceiling (in-process, b=1)':<28}{'':>50}{ceil['total']:>10.3f}{ceil['images_per_s']:>9.1f}")
    if "floor" in results:
        fl = results["floor"]
        print(f"{'bare grpc.aio echo':<28}{'':>50}{fl['total']:>10.3f}{fl['images_per_s']:>9.1f}")
    for c, diffs in results.get("paired_total_ms", {}).items():
        low, high = median_interval(diffs)
        print(
            f"{c} − {codes[0]}: {statistics.median(diffs):+.3f} ms/call [90%: {low:+.3f}, {high:+.3f}], "
            f"lower in {sum(d < 0 for d in diffs)} of {len(diffs)} rounds"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
