"""The ``lookalike bench`` command: a spec from flags, a series run, ``results.json`` written."""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from lookalike.bench.load import Driver, LoadPoint, RequestFactory, find_image_dir, load_images, open_channel
from lookalike.bench.procs import ProcessDriver
from lookalike.bench.stats import DEFAULT_IMAGE_DIRS, MAX_MESSAGE_BYTES, METHODS, BenchError
from lookalike.security import ChannelSecurity, add_security_arguments, security_from_args
from lookalike.targets import resolve_target
from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

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
    #: Load generator processes (see :mod:`lookalike.bench.procs`); 1 = this one.
    processes: int = 1
    #: TLS and token (:class:`lookalike.security.ChannelSecurity`); None = plaintext, no token.
    security: ChannelSecurity | None = None


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
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    security = spec.security or ChannelSecurity()
    try:
        resolved = resolve_target(spec.target)
        security.check(spec.target)  # e.g. no token in clear text to another machine
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    metadata = security.call_metadata
    # Several replicas: the same round_robin + health checks as the client (no retries:
    # the bench counts every failure).
    balancing = resolved.service_config()
    if balancing:
        options.append(("grpc.service_config", json.dumps(balancing)))
    if resolved.authority:
        options.append(("grpc.default_authority", resolved.authority))
    async with open_channel(resolved.uri, options, security) as channel:
        stub = pb_grpc.LookalikeStub(channel)
        try:
            listing = await stub.ListModels(
                pb.ListModelsRequest(), timeout=spec.connect_timeout_s, wait_for_ready=True, metadata=metadata or None
            )
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
        driver = Driver(
            channel, factory, stream=spec.stream, timeout_s=spec.timeout_s, seed=spec.seed, metadata=metadata
        )
        loader: Driver | ProcessDriver = driver
        if spec.processes > 1:
            loader = await asyncio.to_thread(
                ProcessDriver,
                spec.processes,
                resolved.uri,
                options,
                factory,
                driver,
                security=security,
                stream=spec.stream,
                timeout_s=spec.timeout_s,
                seed=spec.seed,
            )
        points = []
        try:
            for point in spec.points:
                result = await loader.measure(point, spec.warmup_s, spec.duration_s)
                points.append(result)
                if progress:
                    progress(format_point(spec.label or spec.method, result))
        finally:
            if isinstance(loader, ProcessDriver):
                await asyncio.to_thread(loader.close)
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
        "load_processes": spec.processes,
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
    parser.add_argument("--out", default="", help="output folder (default ./out/bench/<name>)")
    parser.add_argument("--no-plots", action="store_true", help=argparse.SUPPRESS)  # plots: bench_report.py
    parser.add_argument("--seed", type=int, default=0, help="seed of the open-loop arrival schedule")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="load generator processes, each with its own channel, sharing every point's load "
        "(default 1; raise it when a point's client_cores nears 1.0)",
    )
    add_security_arguments(parser)


def spec_from_args(args: argparse.Namespace) -> BenchSpec:
    """Turns parsed flags into a :class:`BenchSpec` (loads the photos)."""
    if args.duration <= 0 or args.warmup < 0:
        raise BenchError("--duration must be > 0 and --warmup >= 0")
    if args.images_per_request < 1:
        raise BenchError("--images-per-request must be >= 1")
    if args.processes < 1:
        raise BenchError("--processes must be >= 1")
    if args.rate:
        points = [LoadPoint(rate=r) for r in args.rate]
    else:
        points = [LoadPoint(concurrency=c) for c in (args.concurrency or [1, 4, 16])]
    images = load_images(find_image_dir(args.images), args.image_size)
    return BenchSpec(
        target=args.target if isinstance(args.target, str) else ",".join(args.target),
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
        processes=args.processes,
        security=security_from_args(args),
    )


def _threads(m: Any) -> dict[str, Any] | None:
    """A ListModels entry's thread budget as a dict (None from a server that reports none).

    Takes the protobuf ``ModelInfo`` or the client's :class:`lookalike.types.ModelInfo`
    (``benchmarks/quality.py`` passes the latter).
    """
    if hasattr(m, "HasField") and not m.HasField("threads"):
        return None
    t = m.threads
    if t is None:
        return None
    names = (
        "cores",
        "preprocess_threads",
        "intra_op_threads",
        "inter_op_threads",
        "batch_workers",
        "wide_intra_op_threads",
        "reason",
    )
    return {k: getattr(t, k) for k in names}


def machine_summary(models: Sequence[Any] = ()) -> dict[str, Any]:
    """What ran the load, cheaply: host, OS, cores, load, versions, and the served models.

    The full profile (CPU model, memory, GPUs) is ``benchmarks/bench_report.py``'s job.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        # Others may share the machine: the load before the run says how quiet it was.
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
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
                # What the server measured at warm-up and why it chose the above.
                "ms_per_image_by_bucket": {c.batch_size: round(c.ms_per_image, 3) for c in m.bucket_costs},
                "batching_reason": m.batching_reason,
                "threads": _threads(m),
            }
            for m in models
        },
    }


def new_report(name: str, machine: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """An empty report that series are appended to (the ``results.json`` layout)."""
    return {
        "name": name,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": dict(machine),
        "config": dict(config),
        "series": [],
    }


def run(args: argparse.Namespace) -> int:
    """Runs ``lookalike bench`` with parsed arguments and writes ``results.json``.

    The folder is ``--out``, else ``./out/bench/<name>`` under the current directory (never
    ``benchmarks/results/``: committed results are chosen, not a side effect).

    Returns:
        0 when every point got answers, 1 when a point got none OK (the results are still
        written), 2 when the bench could not run.
    """
    try:
        spec = spec_from_args(args)
        name = args.name or f"{spec.method}-{_dt.datetime.now(_dt.UTC):%Y%m%d-%H%M%S}"
        out_dir = Path(args.out or Path("out") / "bench" / name)

        def progress(line: str) -> None:
            print(line, flush=True)

        series, models = asyncio.run(run_series(spec, progress))
    except BenchError as exc:
        print(f"lookalike bench: {exc}", file=sys.stderr)
        return 2
    config = {k: v for k, v in vars(args).items() if not callable(v)}
    config["images_loaded"] = len(spec.images)
    config["image_bytes_mean"] = round(sum(map(len, spec.images)) / len(spec.images))
    report = new_report(name, machine_summary(models), config)
    report["series"].append(series)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"results: {out_dir / 'results.json'}")
    print(f"report.md and plots (in a lookalike checkout): python benchmarks/bench_report.py {out_dir}")
    return 0 if all(p["ok"] for p in series["points"]) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lookalike.bench``."""
    parser = argparse.ArgumentParser(prog="lookalike bench", description=(__doc__ or "").split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
