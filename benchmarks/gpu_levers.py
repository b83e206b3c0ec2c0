"""Each GPU lever of issue 12 alone, against one baseline, in one run (``benchmarks/gpu_sweep.sh`` calls this).

Steps, one after the other (so that none competes with another for the GPU or
the host), with their budget on an H200 with 16 host cores (ResNet50, Embed of
640-px JPEGs at concurrency 16 and 64, 1 s warm-up + 4 s per point). The
budgets are estimates from the earlier H200 runs (a server sweep of four
points took about 35 s with its start-up): no step has run on a GPU yet, so
the first run's ``seconds`` per step (``results.json``) should replace them.

=============  ===========================================================  ========
step           what runs                                                    budget
=============  ===========================================================  ========
variants       ``lookalike-export uint8`` and ``quantize --mode fp16`` of    50 s
               the model, and fp16 of the uint8 graph (each checked)
baseline       server, CUDA provider, default settings                      30 s
ceiling        the server's preprocessing + ONNX session in this process,   15 s
               sequential, batch 1/32/64 (the issue's "≥ 0.8× ceiling")
uint8          server, the ``<model>_u8`` entry: normalisation in the graph  30 s
io_binding     server, ``--models-io-binding true``                         30 s
fp16           server, the ``<model>_fp16`` entry                           30 s
combined       server, ``<model>_u8_fp16`` with IO binding: the three       30 s
               levers above at once
replicas       ``--replicas`` (default 2) baseline servers, each its own     40 s
               process, on the one GPU; the load generator dials them all
               (round_robin). Where one server's event loop is the wall
               (its "server cores" loop figure near 1.0), this is the remedy
decode         decode + resize + crop of the same JPEGs in this process,    20 s
               N threads vs N processes: does decoding scale with threads
               (Pillow releases the GIL), or does it need processes?
nvjpeg         nvImageCodec GPU JPEG decode, only if the package is          10 s
               installed (never installed by this script: the GPU machine
               may have no internet); otherwise a skipped line
tensorrt       server with the TensorRT provider twice: the first start     ≤ what
               builds and caches the engine (start-up time recorded), the   is left,
               second loads it and is swept; skipped with a line where the  at most
               onnxruntime build or the machine has no TensorRT. Last, so   TRT
               that a slow engine build costs no other lever its figures    timeout
=============  ===========================================================  ========

A step that fails is recorded with its error and the run goes on; once
``--budget-s`` is spent, the remaining steps are recorded as skipped. Writes
``results.json`` (every series and step), ``report.md`` (the lever table
first: images/s at ``--at`` and the ratio to the baseline) and the plots.

``--cpu-structure`` runs every step on the CPU provider with a tiny
random-weight model and sub-second windows (about 30 s on 2 cores): it checks
the script's structure and writes the same files, and measures nothing that
matters. ``tests/export/test_gpu_sweep_structure.py`` runs it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_report  # noqa: E402
import compare  # noqa: E402
import server_cpu  # noqa: E402

from lookalike import bench  # noqa: E402

CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")
TRT = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU = ("CPUExecutionProvider",)
PARITY_PHOTOS = REPO / "tests" / "data" / "export"
# A lever "pays" past these ratios to the baseline (one run; noise is a few %).
PAYS, LOSES = 1.05, 0.95

#: How each lever is turned on in a deployment (the report repeats it).
HOW = {
    "baseline": "default settings",
    "uint8": 'lookalike-export uint8 MODEL.onnx (or --uint8-input on export); serve the "<name>_u8" entry',
    "io_binding": "--models-io-binding true (LOOKALIKE_MODELS_IO_BINDING=1)",
    "fp16": 'lookalike-export quantize MODEL.onnx --mode fp16; serve the "<name>_fp16" entry',
    "tensorrt": "--models-providers TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider "
    "(engines cached under DATA_DIR/cache/trt)",
    "decode": "--models-preprocess-threads N (threads); a process pool is not built",
    "nvjpeg": "not wired into the server: measured alone",
    "variants": "the files the uint8, fp16 and combined steps serve, parity-checked (see Variants below)",
    "combined": 'uint8 + fp16 + IO binding at once: quantize the "<name>_u8" file with --mode fp16, serve '
    '"<name>_u8_fp16" with --models-io-binding true',
    "ceiling": "(no setting: the in-process decode + infer loop the server is compared with)",
    "replicas": "N lookalike-server processes on the one GPU, each its own port (and data dir); clients dial "
    "all of them as one comma-separated target (client-side round_robin, lookalike.targets)",
}


def log(msg: str) -> None:
    """Progress on stderr, timestamped."""
    compare.log(msg)


# ------------------------------------------------------------------ models --


def tiny_model(folder: Path) -> tuple[Path, str]:
    """A small random-weight CNN (two convolutions, 32-d) and its registry: the CPU structure mode's model."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lookalike_server.registry import ModelEntry

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.2,
        "w2": rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    path = folder / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    entry = ModelEntry.from_preset(
        "imagenet", name="tiny", path="tiny.onnx", dim=32, height=32, width=32, resize_shorter=36,
        description="tiny random CNN (gpu_levers --cpu-structure)",
    )  # fmt: skip
    registry = folder / "models.toml"
    registry.write_text(entry.to_toml())
    return registry, "tiny"


def make_variants(registry: Path, model: str, photos: Sequence[Path]) -> dict[str, Any]:
    """Writes ``<model>_u8`` and ``<model>_fp16`` beside ``model`` and registers them; returns what each did."""
    from lookalike_export.entry import upsert_entry
    from lookalike_export.quantize import entry_from_registry, quantize_model
    from lookalike_export.uint8_input import wrap_uint8

    base = entry_from_registry(registry, model)
    src = (registry.parent / base.path).resolve()
    done: dict[str, Any] = {}
    try:
        u8 = wrap_uint8(src, base, photos=photos)
        upsert_entry(registry, u8.entry)
        done["uint8"] = {"entry": u8.entry.name, "parity": str(u8.parity) if u8.parity else None}
        if u8.parity:
            done["uint8"]["min_cosine"] = u8.parity.cosine_min
        log(u8.summary())
    except Exception as exc:  # recorded; the lever's step is then skipped
        done["uint8"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        fp16 = quantize_model(src, mode="fp16", registry=registry, name=model, calibration=photos)
        upsert_entry(registry, fp16.entry)
        done["fp16"] = {"entry": fp16.entry.name, "min_cosine": fp16.min_cosine, "n": fp16.n_eval}
        log(fp16.summary())
    except Exception as exc:
        done["fp16"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:  # the three graph and runner levers at once: uint8 input, fp16, (IO binding at serving time)
        if "entry" not in done["uint8"]:
            raise RuntimeError("no uint8 variant to convert")
        both = quantize_model(
            src.with_name(f"{src.stem}_u8.onnx"), mode="fp16", registry=registry, name=f"{model}_u8",
            calibration=photos,
        )  # fmt: skip
        upsert_entry(registry, both.entry)
        done["combined"] = {"entry": both.entry.name, "min_cosine": both.min_cosine, "n": both.n_eval}
        log(both.summary())
    except Exception as exc:
        done["combined"] = {"error": f"{type(exc).__name__}: {exc}"}
    return done


# ------------------------------------------------------------------- steps --


class Sweep:
    """Runs the steps in order, each timed, failing alone, within one overall budget.

    Args:
        budget_s: Seconds for the whole run; steps past it are skipped.
    """

    def __init__(self, budget_s: float) -> None:
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.steps: list[dict[str, Any]] = []
        self.series: list[dict[str, Any]] = []

    def left(self) -> float:
        """Seconds of the budget left."""
        return self.budget_s - (time.monotonic() - self.started)

    def step(
        self, lever: str, budget_s: float, fn: Callable[[dict[str, Any]], None], skip: str = "", need_s: float = 20
    ) -> None:
        """Runs ``fn(record)`` as step ``lever``; ``skip`` (a reason) records it as skipped instead.

        A step also is skipped when less than ``need_s`` (or its budget, if
        smaller) is left of the run's budget.
        """
        record: dict[str, Any] = {"lever": lever, "how": HOW.get(lever, ""), "budget_s": budget_s, "status": "measured"}
        self.steps.append(record)
        if not skip and self.left() < min(budget_s, need_s):
            skip = f"{self.left():.0f} s left of the run's budget ({self.budget_s:.0f} s); this step needs {need_s:.0f}"
        if skip:
            record.update(status="skipped", reason=skip)
            log(f"{lever}: skipped — {skip}")
            return
        log(f"=== {lever} (budget {budget_s:.0f} s, {self.left():.0f} s of the run left) ===")
        t0 = time.monotonic()
        try:
            fn(record)
        except Exception as exc:  # one lever failing must not lose the others' figures
            record.update(status="failed", reason=f"{type(exc).__name__}: {str(exc)[-1500:]}")
            log(f"{lever}: FAILED — {record['reason']}")
        record["seconds"] = round(time.monotonic() - t0, 1)
        if record["seconds"] > budget_s:
            record["over_budget"] = True

    def server_step(
        self,
        record: dict[str, Any],
        args: argparse.Namespace,
        images: list[bytes],
        model: str,
        extra: Sequence[str],
        replicas: int = 1,
    ) -> None:
        """Starts the lever's server(s), sweeps them, records the series and start-up time.

        ``replicas`` > 1 starts that many server processes, each with its own
        port and data dir, and the load generator dials them all (a comma list:
        gRPC's ``round_robin``, as :mod:`lookalike.targets` does for users).
        """
        ready_timeout = float(record.pop("_ready_timeout", 300.0))
        t0 = time.monotonic()
        pids: list[int] = []
        with contextlib.ExitStack() as stack:
            targets = _enter_together(
                stack,
                [
                    compare.running_server(
                        server_args(args, model, [*extra, *_replica_dir(args, i, replicas)]),
                        args.logs / f"server-{record['lever']}{f'-{i}' if replicas > 1 else ''}.log",
                        ready_timeout=ready_timeout,
                        pid_out=pids,
                    )
                    for i in range(replicas)
                ],
            )
            record["startup_s"] = round(time.monotonic() - t0, 1)
            if replicas > 1:
                record["replicas"] = replicas

            def snapshot() -> tuple[dict[int, dict[int, tuple[str, float]]], float]:
                return {pid: server_cpu.thread_cpu(pid) for pid in pids}, time.monotonic()

            # The servers' threads' CPU before the sweep and after each point (with its warm-up).
            marks = [snapshot()]

            def progress(line: str) -> None:
                compare.log(line)
                marks.append(snapshot())

            series, models = compare.sweep(
                ",".join(targets),
                f"{record['lever']}",
                images,
                args,
                models=[model],
                progress=progress,
                processes=args.load_processes,
            )
            # Which threads kept how many cores busy at c=at: a loop near one core, or
            # decoding at the host's cores, is the limit there; load generator cores
            # near its process count mean the figure is the client's, not the server's.
            i = args.concurrency.index(args.at)
            if len(marks) > i + 1:
                (before, start), (after, end) = marks[i], marks[i + 1]
                # Thread ids are unique across processes: the replicas' threads merge into one map.
                merged = [{t: v for threads in snap.values() for t, v in threads.items()} for snap in (before, after)]
                record["server_cores"] = server_cpu.cores_by_group(*merged, end - start)
                record["client_cores"] = series["points"][i].get("client_cores")
                if replicas > 1:  # each replica's own: did the calls spread over them?
                    record["replica_cores"] = [
                        server_cpu.cores_by_group(before[pid], after[pid], end - start) for pid in pids
                    ]
        series["lever"] = record["lever"]
        if models:
            record["providers"] = list(models[0].providers)
            args.served_models.extend(models)
            asked = step_providers(args, extra).split(",")[0]
            if record["providers"][0] != asked:
                # A provider whose libraries do not load falls back quietly: say so in the row.
                record["reason"] = f"asked for {asked}, the server got {record['providers']}"
        self.series.append(series)
        record["series"] = series["name"]
        point = compare._point(series, f"c={args.at}")
        record["images_per_s"] = point and point.get("images_per_s")
        record["p99_ms"] = {p["label"]: (p.get("latency_ms") or {}).get("p99") for p in series["points"]}


def _enter_together(
    stack: contextlib.ExitStack, managers: Sequence[contextlib.AbstractContextManager[str]]
) -> list[str]:
    """Enters every server context at once (each start waits for its warm-up), each exited by ``stack``.

    Replicas warm up side by side, not one after another: on a GPU each start
    takes 10-15 s of the sweep's budget, which the TensorRT step, last, needs.
    """
    with concurrent.futures.ThreadPoolExecutor(max(len(managers), 1)) as pool:  # waits for every start
        entered = [pool.submit(m.__enter__) for m in managers]
    for manager, fut in zip(managers, entered, strict=True):
        if fut.exception() is None:
            stack.push(manager.__exit__)  # stopped on leaving, whatever happens next
    for fut in entered:
        if (exc := fut.exception()) is not None:
            raise exc
    return [fut.result() for fut in entered]


def _replica_dir(args: argparse.Namespace, i: int, replicas: int) -> list[str]:
    """A data dir of its own for replica ``i`` of several (one process per data dir); none for one server."""
    return [f"--data-dir={args.work / f'replica-{i}'}"] if replicas > 1 else []


def step_providers(args: argparse.Namespace, extra: Sequence[str]) -> str:
    """The providers a step asks for: its own ``--models-providers=`` or the sweep's."""
    return next((e.split("=", 1)[1] for e in extra if e.startswith("--models-providers=")), args.providers)


def server_args(args: argparse.Namespace, model: str, extra: Sequence[str]) -> list[str]:
    """The lookalike-server flags of a step: embed-only, one model, the sweep's providers, then the lever's."""
    providers = step_providers(args, extra)
    rest = [e for e in extra if not e.startswith("--models-providers=")]
    data_dir = next((e.split("=", 1)[1] for e in extra if e.startswith("--data-dir=")), str(args.work / "none"))
    rest = [e for e in rest if not e.startswith("--data-dir=")]
    return [
        "--models-registry", str(args.registry), "--models-only", model, "--models-providers", providers,
        "--log-level", "WARNING", "--stores", "false", "--data-dir", data_dir,
        f"--batching-max-batch-size={args.max_batch}", *rest,
    ]  # fmt: skip


def tensorrt_problem(cpu_structure: bool) -> str:
    """Why the TensorRT step cannot run here, or ""."""
    if cpu_structure:
        return "CPU structure mode (TensorRT needs an NVIDIA GPU)"
    from lookalike_server.execution_providers import _provider_problem

    problem = _provider_problem("TensorrtExecutionProvider")
    if problem:
        return (
            f"TensorrtExecutionProvider cannot load here: {problem} "
            "(it needs CUDA and the TensorRT libraries, e.g. the tensorrt wheels matching onnxruntime-gpu)"
        )
    return ""


def nvjpeg_problem() -> str:
    """Why the GPU JPEG decode step cannot run here, or "" (nvImageCodec importable)."""
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except Exception as exc:
        return (
            f"no GPU JPEG decoder package installed ({type(exc).__name__}: {exc}); "
            "this sweep installs nothing: pip install nvidia-nvimgcodec-cu12 where the machine has internet"
        )
    return ""


def nvjpeg_decode(images: Sequence[bytes], seconds: float, batch: int = 64) -> dict[str, Any]:
    """Images/s of nvImageCodec decoding the JPEGs on the GPU, in batches (decode only: no resize)."""
    from nvidia import nvimgcodec

    decoder = nvimgcodec.Decoder()
    batches = [[images[(i + j) % len(images)] for j in range(batch)] for i in range(0, len(images), batch)]
    decoder.decode(batches[0])  # first call initialises the codecs
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in batches:
            out = decoder.decode(b)
            n += len(out)
    elapsed = time.perf_counter() - t0
    return {"batch": batch, "images": n, "seconds": round(elapsed, 2), "images_per_s": n / elapsed}


# ------------------------------------------------------------------ decode --

_WORKER_IMAGES: list[bytes] = []
_WORKER_SPEC: Any = None


def _init_worker(images: list[bytes], spec: Any) -> None:
    global _WORKER_IMAGES, _WORKER_SPEC
    _WORKER_IMAGES, _WORKER_SPEC = images, spec


def _prepare(i: int) -> Any:
    """One image as the server prepares it (decode, draft, EXIF, resize, crop, normalise)."""
    from lookalike_server.preprocess import preprocess

    data = _WORKER_IMAGES[i % len(_WORKER_IMAGES)]
    return preprocess(data, _WORKER_SPEC, max_bytes=1 << 30, max_pixels=1 << 30)


def _rate(pool: concurrent.futures.Executor, workers: int, seconds: float) -> float:
    """Images/s of ``pool`` keeping ``2 × workers`` preparations in flight for ``seconds``."""
    list(pool.map(_prepare, range(2 * workers)))  # warm: processes started, codecs loaded
    n, i, t0 = 0, 0, time.perf_counter()
    pending = {pool.submit(_prepare, i + k) for k in range(2 * workers)}
    i += 2 * workers
    while time.perf_counter() - t0 < seconds:
        done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for f in done:
            f.result()
            n += 1
            pending.add(pool.submit(_prepare, i))
            i += 1
    concurrent.futures.wait(pending)
    n += len(pending)
    return n / (time.perf_counter() - t0)


def decode_capacity(images: list[bytes], spec: Any, workers: Sequence[int], seconds: float) -> dict[str, Any]:
    """Host preprocessing throughput with N threads and with N processes, for each N."""
    _init_worker(images, spec)
    rows = []
    ctx = multiprocessing.get_context("forkserver")
    for n in workers:
        with concurrent.futures.ThreadPoolExecutor(n) as threads:
            t = _rate(threads, n, seconds)
        with concurrent.futures.ProcessPoolExecutor(
            n, mp_context=ctx, initializer=_init_worker, initargs=(images, spec)
        ) as procs:
            p = _rate(procs, n, seconds)
        rows.append({"workers": n, "threads_images_per_s": round(t, 1), "processes_images_per_s": round(p, 1)})
        log(f"decode: {n} workers: threads {t:.0f} img/s, processes {p:.0f} img/s")
    one = rows[0]["threads_images_per_s"] or 1.0
    for r in rows:
        r["threads_scaling"] = round(r["threads_images_per_s"] / one, 2)
    return {"cores": os.cpu_count(), "input_dtype": spec.input_dtype, "rows": rows}


# ------------------------------------------------------------------ report --


def verdict(ratio: float | None) -> str:
    """Whether a lever pays, from its ratio to the baseline."""
    if ratio is None:
        return "–"
    return "pays" if ratio >= PAYS else "loses" if ratio <= LOSES else "within noise"


def lever_table(steps: Sequence[dict[str, Any]], at: int, p99_at: str) -> str:
    """The report's first table: each lever, its figure at ``c=at`` and its ratio to the baseline."""
    base = next((s.get("images_per_s") for s in steps if s["lever"] == "baseline"), None)
    out = [
        f"| lever | status | img/s at c={at} | × baseline | verdict | p99 at {p99_at}, ms | start-up, s "
        f"| server cores at c={at}: loop / decode / inference / gRPC (busiest thread) "
        f"| load generator cores at c={at} | how to turn it on |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        ips = s.get("images_per_s")
        ratio = ips / base if ips is not None and base and s["lever"] not in ("baseline", "ceiling") else None
        if s["lever"] == "ceiling" and ips:
            ratio = base / ips if base else None  # the target: server / ceiling ≥ 0.8
        status = s["status"] + (f": {s['reason']}" if s.get("reason") else "")
        shown = _f(ips)
        if s.get("host_images_per_s") is not None:
            shown = f"{s['host_images_per_s']:.0f} (host only, no inference)"
        p99 = (s.get("p99_ms") or {}).get(p99_at)
        startup = s.get("startup_s")
        if s.get("first_startup_s") is not None:
            startup = f"{s['first_startup_s']} (build) / {s.get('startup_s')} (cached)"
        out.append(
            f"| {s['lever']} | {status} | {shown} | {_f(ratio, 2)} | "
            f"{'baseline/ceiling' if s['lever'] == 'ceiling' and ratio else verdict(ratio) if ratio else '–'} | "
            f"{_f(p99)} | {startup if startup is not None else '–'} | {_cores(s.get('server_cores'))} | "
            f"{_f(s.get('client_cores'), 2)} | {s['how']} |"
        )
    return "\n".join(out)


def _cores(c: dict[str, Any] | None) -> str:
    """``loop / decode / inference / gRPC (busiest thread: share)`` in cores, or a dash."""
    if not c:
        return "–"
    return (
        f"{c['loop']:.2f} / {c['decode']:.2f} / {c['inference']:.2f} / {c['grpc']:.2f} "
        f"({c['busiest_thread']}: {c['busiest_share']:.2f})"
    )


def _f(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float | int) else str(v)


def decode_table(result: dict[str, Any]) -> str:
    """Threads vs processes, per worker count."""
    out = ["| workers | threads, img/s | processes, img/s | threads scaling vs 1 |", "|---|---|---|---|"]
    for r in result["rows"]:
        out.append(
            f"| {r['workers']} | {r['threads_images_per_s']} | {r['processes_images_per_s']} "
            f"| {r['threads_scaling']}× |"
        )
    return "\n".join(out)


# -------------------------------------------------------------------- main --


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every step and writes the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", help="models.toml holding --model (default: a tiny model in --cpu-structure)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--cpu-structure", action="store_true", help="CPU provider, tiny model, tiny windows")
    parser.add_argument("--images", default=None, help="photo folder (default: as lookalike bench)")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--concurrency", type=bench._int_list, default=[16, 64])
    parser.add_argument("--at", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=2, help="server processes of the replicas step")
    parser.add_argument(
        "--load-processes",
        type=int,
        default=max(1, min(4, (os.cpu_count() or 1) // 4)),
        help="load generator processes (lookalike bench --processes); default a quarter of the cores, at most 4",
    )
    parser.add_argument("--ceiling-batches", type=bench._int_list, default=[1, 32, 64])
    parser.add_argument("--ceiling-seconds", type=float, default=2.0)
    parser.add_argument("--decode-workers", type=bench._int_list, default=[1, 2, 4, 8, 16])
    parser.add_argument("--decode-seconds", type=float, default=1.5)
    parser.add_argument("--trt-timeout", type=float, default=240.0, help="cap on the TensorRT step (engine build)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="whole run; later steps are skipped past it")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.work = REPO / ".cache" / "gpu-levers"
    args.logs = REPO / ".cache" / "bench-logs"
    args.logs.mkdir(parents=True, exist_ok=True)
    args.providers = ",".join(CPU if args.cpu_structure else CUDA)
    if args.cpu_structure:
        # Every step runs, on the CPU, as briefly as a step can run.
        args.concurrency, args.at, args.warmup, args.duration, args.max_batch = [1, 2], 2, 0.2, 0.5, 4
        args.ceiling_batches, args.ceiling_seconds = [1, 4], 0.3
        args.decode_workers, args.decode_seconds = [1, 2], 0.3
        args.load_processes = 2  # the multi-process load generator's path, at the smallest size
        args.budget_s = min(args.budget_s, 120.0)
        args.work = out / "work"  # the tiny model and its variants: kept with this run, apart from others
        registry, args.model = tiny_model(args.work / "tiny")
    else:
        if not args.registry:
            parser.error("--registry is needed outside --cpu-structure")
        registry = Path(args.registry)
    if args.at not in args.concurrency:
        parser.error(f"--at {args.at} must be one of --concurrency")
    args.registry = registry.resolve()
    args.served_models = []
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.images_dir = bench.find_image_dir(args.images).resolve()
    images = bench.load_images(args.images_dir, args.image_size)
    photos = sorted(p for p in PARITY_PHOTOS.glob("*") if p.suffix.lower() in (".jpg", ".png"))
    loadavg_before = list(os.getloadavg())
    sweep = Sweep(args.budget_s)
    variants: dict[str, Any] = {}
    m = args.model

    def variants_step(r: dict[str, Any]) -> None:
        variants.update(make_variants(args.registry, m, photos))
        r["variants"] = variants
        errors = {k: v["error"] for k, v in variants.items() if "error" in v}
        r["status"] = "done"
        if errors:
            r.update(status="failed", reason="; ".join(f"{k}: {e}" for k, e in errors.items()))

    sweep.step("variants", 50, variants_step, skip="asked" if "variants" in skip else "")

    def lever(model: str, extra: Sequence[str] = ()) -> Callable[[dict[str, Any]], None]:
        return lambda r: sweep.server_step(r, args, images, model, extra)

    def missing(kind: str) -> str:
        if kind in skip:
            return "asked"
        v = variants.get(kind, {})
        return "" if "entry" in v else f"no {kind} variant ({v.get('error', 'variants step skipped')})"

    sweep.step("baseline", 30, lever(m), skip="asked" if "baseline" in skip else "")

    def ceiling_step(r: dict[str, Any]) -> None:
        import baselines

        model = baselines.load_model(m, registry=args.registry, providers=args.providers.split(","))
        series = baselines.ceiling(model, images, args.ceiling_batches, args.ceiling_seconds)
        r["providers"] = list(model.providers)
        if r["providers"][0] != args.providers.split(",")[0]:
            r["reason"] = f"asked for {args.providers}, the session got {r['providers']}"
        del model
        series["lever"] = "ceiling"
        sweep.series.append(series)
        r["series"] = series["name"]
        r["images_per_s"] = series["best"]["images_per_s"]
        r["best_batch"] = series["best"]["batch_size"]

    sweep.step("ceiling", 15, ceiling_step, skip="asked" if "ceiling" in skip else "")
    sweep.step("uint8", 30, lever(f"{m}_u8"), skip=missing("uint8"))
    sweep.step("io_binding", 30, lever(m, ["--models-io-binding=true"]), skip="asked" if "io_binding" in skip else "")
    sweep.step("fp16", 30, lever(f"{m}_fp16"), skip=missing("fp16"))
    sweep.step("combined", 30, lever(f"{m}_u8_fp16", ["--models-io-binding=true"]), skip=missing("combined"))
    sweep.step(
        "replicas",
        40,
        lambda r: sweep.server_step(r, args, images, m, [], replicas=args.replicas),
        skip="asked" if "replicas" in skip else "",
    )

    decode_result: dict[str, Any] = {}

    def decode_step(r: dict[str, Any]) -> None:
        from lookalike_server.config import BatchingConfig
        from lookalike_server.registry_reader import load_registry

        (spec,) = load_registry(args.registry, BatchingConfig(), only=[m])
        workers = [n for n in args.decode_workers if n <= (os.cpu_count() or 1)] or [1]
        decode_result.update(decode_capacity(images, spec.preprocess, workers, args.decode_seconds))
        r["decode"] = decode_result
        best = max(decode_result["rows"], key=lambda row: row["threads_images_per_s"])
        r["host_images_per_s"] = best["threads_images_per_s"]
        r["note"] = "host preprocessing alone (no inference): the most images/s the host can feed"

    sweep.step("decode", 20, decode_step, skip="asked" if "decode" in skip else "")

    def nvjpeg_step(r: dict[str, Any]) -> None:
        res = nvjpeg_decode(images, args.decode_seconds)
        r["nvjpeg"] = res
        r["host_images_per_s"] = res["images_per_s"]
        r["note"] = "GPU JPEG decode alone (no resize, no inference)"

    sweep.step("nvjpeg", 10, nvjpeg_step, skip=("asked" if "nvjpeg" in skip else "") or nvjpeg_problem())

    def tensorrt_step(r: dict[str, Any]) -> None:
        # A data dir of its own that outlives the run: the engine cache is the lever.
        data = args.work / "trt-data"
        extra = [f"--models-providers={','.join(TRT)}", f"--data-dir={data}"]
        t0 = time.monotonic()
        cap = min(args.trt_timeout, max(sweep.left() - 40, 30))
        with compare.running_server(
            server_args(args, m, extra), args.logs / "server-tensorrt-build.log", ready_timeout=cap
        ):
            r["first_startup_s"] = round(time.monotonic() - t0, 1)
        r["engine_files"] = sorted(p.name for p in (data / "cache" / "trt").glob("*"))[:20]
        r["_ready_timeout"] = max(sweep.left() - 20, 30)
        sweep.server_step(r, args, images, m, extra)

    sweep.step("tensorrt", args.trt_timeout + 30, tensorrt_step, skip=("asked" if "tensorrt" in skip else "")
               or tensorrt_problem(args.cpu_structure), need_s=90)  # fmt: skip

    name = out.name
    machine = bench_report.describe_machine(args.served_models)
    machine["loadavg_1_5_15"] = loadavg_before
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "served_models"}
    config["images_loaded"] = len(images)
    config["image_bytes_mean"] = round(sum(map(len, images)) / len(images))
    config["wall_s"] = round(time.monotonic() - sweep.started, 1)
    report = bench_report.new_report(name, machine, config)
    report["series"] = sweep.series
    report["steps"] = sweep.steps
    report["mode"] = "cpu-structure" if args.cpu_structure else "gpu"
    bench_report.write_report(report, out)
    body = (out / "report.md").read_text()
    title, _, rest = body.partition("\n")
    p99_at = f"c={min(args.concurrency, key=lambda c: abs(c - 16))}"
    lead = [
        title,
        "",
        f"One `benchmarks/gpu_sweep.sh` run ({config['wall_s']} s, budget {args.budget_s:.0f} s) on "
        f"{machine['cpu']} ({machine['cores']} cores, GPU: {', '.join(machine['gpus']) or 'none'}), "
        f"model `{m}`, providers {args.providers}, photos resized to {args.image_size} px "
        f"(mean {config['image_bytes_mean']} bytes), concurrency {args.concurrency}, "
        f"{args.load_processes} load generator process(es) (their cores near that count: the client was the limit).",
        "",
    ]
    if args.cpu_structure:
        lead += [
            "**CPU structure mode**: every step ran on the CPU provider with a tiny random model and "
            "sub-second windows. These figures test the script, not the levers.",
            "",
        ]
    lead += [
        "## Levers, each alone against the baseline",
        "",
        f"A lever pays at ≥ {PAYS}× the baseline's images/s at c={args.at} and loses at ≤ {LOSES}× (one run). "
        "The ceiling row's ratio is baseline / ceiling (the issue asks ≥ 0.8).",
        "",
        lever_table(sweep.steps, args.at, p99_at),
        "",
    ]
    if decode_result:
        lead += ["## Host decoding: threads vs processes", "", decode_table(decode_result), ""]
    if variants:
        lead += ["## Variants", "", "```", json.dumps(variants, indent=2, default=str), "```", ""]
    (out / "report.md").write_text("\n".join(lead) + rest)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"report: {out / 'report.md'} ({config['wall_s']} s)")
    print(lever_table(sweep.steps, args.at, p99_at))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
