"""Server CPU time per image under each thread split: a figure a busy machine distorts less.

Throughput on a shared machine mostly says how much of the CPUs the server
won from its neighbours, and a server with more threads wins more. The CPU
time the server process spends per image (user + system, from
``/proc/PID/stat``) says how much work each image cost, whoever else ran:
threads that fight over cores, spin or split a small batch into too many
pieces show up as more CPU-seconds per image. On a quiet machine with C
cores, throughput is at most C / (CPU-seconds per image).

For each configuration: start ``lookalike-server`` (embed-only, one model),
run a closed loop of single-image Embed calls at one concurrency, and read
the process's CPU time before and after the window.

Usage::

    python benchmarks/thread_budget_cpu.py --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from compare import running_server  # noqa: E402

from lookalike import bench  # noqa: E402

WORKERS, INTRA, DECODE = "--models-batch-workers", "--models-intra-op-threads", "--models-preprocess-threads"
CONFIGS: dict[str, list[str]] = {
    "budget (defaults)": [],
    "budget, no wide session": ["--models-wide-session", "off"],
    "1 decoding, 1 worker x 1 intra-op": [DECODE, "1", WORKERS, "1", INTRA, "1"],
    "2 decoding, 1 worker x 1 intra-op": [DECODE, "2", WORKERS, "1", INTRA, "1"],
    "1 decoding, 2 workers x 1 intra-op": [DECODE, "1", WORKERS, "2", INTRA, "1"],
    "2 decoding, 2 workers x 1 intra-op": [DECODE, "2", WORKERS, "2", INTRA, "1"],
    "1 decoding, 1 worker x 2 intra-op": [DECODE, "1", WORKERS, "1", INTRA, "2"],
    "old defaults: 2 decoding, 1 worker x 2 intra-op": [DECODE, "2", WORKERS, "1", INTRA, "2"],
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    """Runs every configuration and prints/writes the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument(
        "--batching",
        nargs="*",
        default=["--batching-max-batch-size", "1"],
        help="batching flags for every configuration (default: off, to compare threads alone)",
    )
    parser.add_argument("--only", nargs="*", default=[], help="run only the configurations named so")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the configurations, interleaved")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)  # fmt: skip
    images = bench.load_images(bench.find_image_dir(None), args.image_size)
    logs = REPO / ".cache" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    chosen = {k: v for k, v in CONFIGS.items() if not args.only or k in args.only}
    for label, flags in [item for _ in range(args.rounds) for item in chosen.items()]:
        server_args = [
            "--models-only", args.model, "--models-providers", "CPUExecutionProvider", "--stores", "false",
            "--data-dir", str(REPO / ".cache" / "bench-data" / "none"), "--log-level", "WARNING",
            *args.batching, *flags,
        ]  # fmt: skip
        pids: list[int] = []
        with running_server(server_args, logs / "thread-budget-cpu.log", pid_out=pids) as target:
            pid = pids[0]
            spec = bench.BenchSpec(
                target=target,
                method="embed",
                models=[args.model],
                points=[bench.LoadPoint(concurrency=args.concurrency)],
                images=images,
                warmup_s=1.0,
                duration_s=args.seconds,
                label=label,
            )
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            series, _ = asyncio.run(bench.run_series(spec))
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
        (point,) = series["points"]
        # The CPU window includes the 1 s warm-up; scale images by the same span.
        images_done = point["images_per_s"] * (t1 - t0)
        row = {
            "config": label,
            "flags": flags,
            "images_per_s": round(point["images_per_s"], 1),
            "cpu_ms_per_image": round((cpu1 - cpu0) * 1e3 / max(images_done, 1), 2),
            "p50_ms": round(point["latency_ms"]["p50"], 1),
            "loadavg_1": round(os.getloadavg()[0], 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        out = {
            "what": __doc__.split("\n\n")[0],
            "cores_usable": len(os.sched_getaffinity(0)),
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "batching": args.batching,
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
