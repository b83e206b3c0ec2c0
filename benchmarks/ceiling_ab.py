"""The server against the in-process ceiling, interleaved, so issue 12's two ratios can be read on a noisy VM.

``benchmarks/compare.py`` runs the server's sweeps and then the ceiling, minutes
apart. On this project's 2-core Xeon VM the same configuration swung up to 2x
within minutes, and four runs of one commit read "c=32 throughput ÷ ceiling"
anywhere from 0.86 to 1.31. Here the two sides are measured back to back, in
rounds whose order alternates (server first, then ceiling first), so drift on
the machine falls on both alike. The ceiling (``baselines.ceiling``: the
server's own preprocessing and ``OnnxModel`` in this process, sequentially)
runs at batch 1 and at its best batch, chosen once by a short sweep first; the
server answers single-image Embed calls at concurrency 1 and at ``--at``.

Each round gives:

* **throughput ratio**: server img/s at ``--at`` ÷ ceiling img/s at its best batch
  (issue 12: ≥ 1.0);
* **c=1 overhead**: server p50 at concurrency 1 − the ceiling's batch-1 p50
  (issue 12: ≤ 2 ms).

Reported: per-round values, their medians, ranges and bootstrap 90% intervals
(``batching_ab.median_interval``). ``--server-cpus`` pins the server and the
ceiling to those CPUs and the load generator to the others, as compare.py does
(the one-core profile: ``--server-cpus 0``). ``--intra-op-threads N`` is the
other profile issue 12 names: ONNX Runtime held to N intra-op threads on both
sides (the server's ``--models-intra-op-threads N`` with its wide session off,
and the ceiling's session), all cores still usable for the rest.

Usage::

    python benchmarks/ceiling_ab.py                      # ~3 min on 2 cores: 9 rounds
    python benchmarks/ceiling_ab.py --server-cpus 0      # the one-core profile
    python benchmarks/ceiling_ab.py --intra-op-threads 1 # ONNX Runtime on one thread, both sides
    python benchmarks/ceiling_ab.py --rounds 3 --duration 1.5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import baselines  # noqa: E402
import bench_report  # noqa: E402
import compare  # noqa: E402
from batching_ab import _choice, add_model_args, embed_only_flags, median_interval, prepare_run  # noqa: E402

from lookalike import bench  # noqa: E402

TARGET_RATIO = 1.0
TARGET_OVERHEAD_MS = 2.0


def summary(rounds: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Medians, ranges and 90% intervals of the per-round ratio and c=1 overhead."""
    ratios = [r["server_images_per_s"] / r["ceiling_images_per_s"] for r in rounds]
    overheads = [r["server_c1_p50_ms"] - r["ceiling_b1_p50_ms"] for r in rounds]
    out: dict[str, Any] = {}
    for name, values in (("ratio", ratios), ("overhead_ms", overheads)):
        low, high = median_interval(values)
        out[name] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "ci90": [low, high],
            "rounds": values,
        }
    out["ratio"]["met"] = out["ratio"]["median"] >= TARGET_RATIO
    out["overhead_ms"]["met"] = out["overhead_ms"]["median"] <= TARGET_OVERHEAD_MS
    return out


def paired_c1(
    target: str,
    model: Any,
    images: Sequence[bytes],
    pairs: int,
    server_cpus: set[int] | None = None,
    client_cpus: set[int] | None = None,
) -> dict[str, Any]:
    """The c=1 overhead read call by call: a lone server call and a lone ceiling call, alternately.

    The rounds compare a server window with a ceiling window seconds apart,
    and on a shared VM the speed of the machine moves between the two (one
    run's rounds spread from +2.3 to +7.6 ms). Here each server call (a
    blocking stub, one image) sits beside a ceiling call (the same
    preprocessing and model, one image, ``model.embed_batch(..., wide=True)``
    from :func:`baselines.load_lone_model`), their order alternating, so
    drift falls on both alike; the median of the pairs' differences is read
    with a bootstrap 90% interval. The ceiling's threads must not spin past
    their run, or they take the cores from the server's next call.
    """
    import grpc

    from lookalike.v1 import lookalike_pb2 as pb
    from lookalike.v1 import lookalike_pb2_grpc as rpc
    from lookalike_server.preprocess import preprocess

    spec = model.spec.preprocess
    requests = [pb.EmbedRequest(model=model.spec.name, images=[data]) for data in images]
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
    stub = rpc.LookalikeStub(channel)

    def server_call(i: int) -> float:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        started = time.perf_counter()
        stub.Embed(requests[i % len(requests)], timeout=30)
        return time.perf_counter() - started

    def ceiling_call(i: int) -> float:
        if server_cpus:
            os.sched_setaffinity(0, server_cpus)
        started = time.perf_counter()
        tensor = preprocess(
            images[i % len(images)], spec, max_bytes=baselines.MAX_BYTES, max_pixels=baselines.MAX_PIXELS
        )
        model.embed_batch([tensor], wide=True)
        return time.perf_counter() - started

    before = os.sched_getaffinity(0)
    try:
        for i in range(20):  # warm both paths
            server_call(i)
            ceiling_call(i)
        server, ceiling = [], []
        for i in range(pairs):
            if i % 2:
                ceiling.append(ceiling_call(i))
                server.append(server_call(i))
            else:
                server.append(server_call(i))
                ceiling.append(ceiling_call(i))
    finally:
        os.sched_setaffinity(0, before)
        channel.close()
    diffs = [(s - c) * 1e3 for s, c in zip(server, ceiling, strict=True)]
    low, high = median_interval(diffs)
    median = statistics.median(diffs)
    return {
        "pairs": pairs,
        "server_p50_ms": statistics.median(server) * 1e3,
        "ceiling_p50_ms": statistics.median(ceiling) * 1e3,
        "median_ms": median,
        "ci90": [low, high],
        "met": median <= TARGET_OVERHEAD_MS,
    }


def profile_flags(intra_op_threads: int) -> list[str]:
    """Server flags holding ONNX Runtime to ``intra_op_threads`` (0: none, the server's own budget).

    The wide session goes off too: it would give a lone batch every core's
    thread, outside the profile.
    """
    if not intra_op_threads:
        return []
    return ["--models-intra-op-threads", str(intra_op_threads), "--models-wide-session", "off"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the interleaved rounds and writes their JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--at", type=int, default=32, help="the concurrency the throughput ratio reads")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--ceiling-batches", type=bench._int_list, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--providers", default="CPUExecutionProvider")
    parser.add_argument("--server-arg", action="append", default=[], help="extra lookalike-server flag (repeat)")
    parser.add_argument("--server-cpus", default="", help="pin the server and the ceiling here (taskset notation)")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads for the server's sessions and the ceiling's; 0 = each its default",
    )
    parser.add_argument(
        "--c1-pairs",
        type=int,
        default=400,
        help="after the rounds, this many alternating lone server and ceiling calls (the paired c=1 reading; 0 = skip)",
    )
    parser.add_argument("--out", default="", help="JSON path (default: benchmarks/results/ceiling-ab-DATE.json)")
    args = parser.parse_args(argv)
    if args.intra_op_threads < 0:
        parser.error("--intra-op-threads must be >= 0")
    if args.c1_pairs < 0:
        parser.error("--c1-pairs must be >= 0")
    out, logs, images = prepare_run(parser, args, "ceiling-ab")
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    server_cpus = bench_report.parse_cpus(args.server_cpus) or None
    # The load generator on the other cores, so it takes nothing from the profile.
    client_cpus = (os.sched_getaffinity(0) - server_cpus) or None if server_cpus else None
    flags = embed_only_flags(args, ",".join(providers)) + profile_flags(args.intra_op_threads)
    # compare.sweep reads these from its namespace.
    window = argparse.Namespace(model=args.model, warmup=args.warmup, duration=args.duration, concurrency=[1, args.at])
    started = time.monotonic()
    loadavg_before = list(os.getloadavg())
    with compare.pinned(server_cpus):
        limits = compare.cpu_limits()
        # Created here, ONNX Runtime's pool threads keep the server's CPUs.
        threads = args.intra_op_threads or limits.usable
        model = baselines.load_model(args.model, registry=args.registry, providers=providers, threads=threads)
    rounds: list[dict[str, Any]] = []
    with compare.running_server(flags, logs / "ceiling-ab.log", cpus=server_cpus) as target:
        with compare.pinned(server_cpus):
            first = baselines.ceiling(model, images, args.ceiling_batches, seconds=1.5, warmup_s=args.warmup)
        best = first["best"]["batch_size"]
        compare.log(f"ceiling sweep: best batch {best} ({first['best']['images_per_s']:.1f} img/s)")
        for r in range(args.rounds):
            row: dict[str, Any] = {"order": "server/ceiling" if r % 2 == 0 else "ceiling/server"}
            for side in row["order"].split("/"):
                if side == "server":
                    with compare.pinned(client_cpus):
                        series, models = compare.sweep(target, "server", images, window)
                    one, at = series["points"]
                    row["server_c1_p50_ms"] = one["latency_ms"]["p50"]
                    row["server_images_per_s"] = at["images_per_s"]
                    row["server_mean_batch"] = (at.get("server") or {}).get("mean_batch_size")
                else:
                    with compare.pinned(server_cpus):
                        ceil = baselines.ceiling(model, images, sorted({1, best}), args.duration, args.warmup)
                    points = {p["batch_size"]: p for p in ceil["points"]}
                    row["ceiling_b1_p50_ms"] = points[1]["latency_ms"]["p50"]
                    row["ceiling_images_per_s"] = points[best]["images_per_s"]
            rounds.append(row)
            compare.log(
                f"round {r + 1}: server c={args.at} {row['server_images_per_s']:.1f} vs ceiling b={best} "
                f"{row['ceiling_images_per_s']:.1f} img/s; c=1 p50 {row['server_c1_p50_ms']:.2f} vs "
                f"{row['ceiling_b1_p50_ms']:.2f} ms"
            )
        paired = None
        if args.c1_pairs:
            with compare.pinned(server_cpus):
                lone = baselines.load_lone_model(
                    args.model, registry=args.registry, providers=providers, threads=threads
                )
            paired = paired_c1(target, lone, images, args.c1_pairs, server_cpus, client_cpus)
    results: dict[str, Any] = {
        "model": args.model,
        "at": args.at,
        "ceiling_best_batch": best,
        "ceiling_sweep": first,
        # The server's plan and threads, from ListModels.
        "choice": _choice(next(m for m in models if m.name == args.model)),
        "profile": {
            "usable": limits.usable,
            "server_cpus": sorted(server_cpus or []),
            "cores": limits.describe(),
            "intra_op_threads": args.intra_op_threads,
            "ceiling_intra_op_threads": threads,
        },
        "rounds": rounds,
        **summary(rounds),
        "c1_paired": paired,
        "machine": {
            "cpu": bench_report._cpu_model(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": loadavg_before,
            "loadavg_after": list(os.getloadavg()),
        },
        "args": vars(args),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    ratio, over = results["ratio"], results["overhead_ms"]
    print(
        f"profile: {limits.usable} usable core(s), server CPUs {args.server_cpus or 'all'}, "
        f"ONNX Runtime intra-op threads {args.intra_op_threads or 'default'} (ceiling {threads}); ceiling batch {best}"
    )
    print(
        f"c={args.at} ÷ ceiling: median {ratio['median']:.3f} (rounds {ratio['min']:.3f}-{ratio['max']:.3f}, "
        f"90% interval {ratio['ci90'][0]:.3f}-{ratio['ci90'][1]:.3f}); target ≥ {TARGET_RATIO}: "
        f"{'met' if ratio['met'] else 'NOT met'}"
    )
    print(
        f"c=1 p50 − ceiling b=1 p50: median {over['median']:+.2f} ms (rounds {over['min']:+.2f} to "
        f"{over['max']:+.2f}, 90% interval {over['ci90'][0]:+.2f} to {over['ci90'][1]:+.2f}); target ≤ "
        f"{TARGET_OVERHEAD_MS} ms: {'met' if over['met'] else 'NOT met'}"
    )
    if paired is not None:
        print(
            f"c=1, paired call by call ({paired['pairs']} pairs): server p50 {paired['server_p50_ms']:.2f} ms, "
            f"ceiling p50 {paired['ceiling_p50_ms']:.2f} ms; median difference {paired['median_ms']:+.2f} ms "
            f"(90% interval {paired['ci90'][0]:+.2f} to {paired['ci90'][1]:+.2f}); target ≤ {TARGET_OVERHEAD_MS} ms: "
            f"{'met' if paired['met'] else 'NOT met'}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
