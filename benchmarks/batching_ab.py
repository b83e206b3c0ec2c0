"""Batching on against batching off, interleaved, so a 3% difference can be read.

``benchmarks/compare.py`` runs the batching-on and batching-off servers one after
the other, one short window per concurrency: on a 2-core VM two such windows
minutes apart differ by 10-20% with nothing changed, so "batching on ≥ 0.97×
off at every concurrency" (issue 12) cannot be read from them. Here "on" and
"off" are both up at once (the idle one costs nothing: no request, no
inference) and each concurrency is measured in alternating rounds, on/off then
off/on, so drift on the machine falls on both sides alike. The ratio reported
per concurrency is the median of the per-round ratios, with their range, a
bootstrap 90% interval for that median, and each side's mean batch size.

Two ways to have both up at once:

* **One process** (the default, ``--one-process``): one server whose registry
  (written to ``.cache/bench-logs/batching-ab-models.toml``) holds the same
  ONNX file twice: ``<model>`` as the registry has it (self-tuned batching)
  and ``<model>_b1`` with ``[models.batching] max_batch_size = 1``; rounds
  alternate between the two names. Both sides then share the process: its
  gRPC threads, decoding pool, allocator and scheduler history.
* **Two processes** (``--two-process``): two servers, the second started
  with ``--batching-max-batch-size 1``. In an A/A run on a quiet 2-core EPYC
  the server started first was 1-4% slower than its identical twin (median
  per concurrency, 5 rounds), a bias as large as the 3% being judged; that is
  why one process is the default. This mode stays for comparison with the
  runs made with it.

Each model gets the whole thread budget, not a share of it: the server sizes
the budget once from the cores and gives every model its own session and
batch workers with it (``server/lookalike_server/thread_budget.py``), so the
two models of the one process run with the threads a one-model server gives
its only model (checked on the shared 2-core VM: 2 workers x 1 intra-op
thread, 1 decoding thread on each side, as a one-model server). ListModels'
thread choice of both sides is in the report (``choice_on`` / ``choice_off``,
and ``threads_alike``). One number is measured per model rather than sized:
whether the model keeps its wide session (its warm-up must find it 5%
faster), so the two sides can differ there; the run then warns, and
``--server-arg=--models-wide-session=on`` (or ``off``) pins it for both.
Likewise the batching plan is measured per model at warm-up: under ``--aa``
the two sides can still be tuned apart on a busy machine (seen in a smoke
run: batch 1 on one side, buckets 1-2 on its twin), and the run warns that
its rounds are then no A/A (``plans_alike`` in the report).

The report also records what each side chose at start-up (its buckets, the
reason, the thread budget from ListModels): where the self-tuning batcher chose
batch 1, both sides run the same configuration and the ratio shows the
machine's noise floor; where it chose buckets, the ratio is what they bought.

Usage::

    python benchmarks/batching_ab.py                        # ~7 min on 2 cores, one process
    python benchmarks/batching_ab.py --concurrency 1,32 --rounds 3 --duration 2
    python benchmarks/batching_ab.py --off-first             # "off" loaded (or started) first
    python benchmarks/batching_ab.py --aa                    # A/A: both sides alike
    python benchmarks/batching_ab.py --two-process           # two servers, as the first runs did

``--off-first`` puts the "off" entry first in the one-process registry (it is
loaded and warmed first) or starts the "off" server first; read a result
beside the other order, and beside an ``--aa`` run of the same mode.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_report  # noqa: E402
import compare  # noqa: E402

from lookalike import bench  # noqa: E402
from lookalike_server.registry import TABLE_KEYS, read_entries, toml_value  # noqa: E402

TARGET_RATIO = 0.97
#: The second name of the model in the one-process registry: batching off, or its A/A twin.
OFF_SUFFIX = "_b1"
AA_SUFFIX = "_aa"


def _render(entry: dict[str, Any]) -> str:
    """One raw ``[[models]]`` table as TOML, keys as given (the reader judges them, not this)."""
    lines = ["[[models]]"] + [f"{k} = {toml_value(v)}" for k, v in entry.items() if k not in TABLE_KEYS]
    for table in TABLE_KEYS:
        if entry.get(table):
            lines += [f"[models.{table}]"] + [f"{k} = {toml_value(v)}" for k, v in entry[table].items()]
    return "\n".join(lines) + "\n"


def write_ab_registry(
    source: Path, model: str, dest: Path, *, aa: bool = False, off_first: bool = False
) -> dict[str, str]:
    """Writes a registry holding ``model`` of ``source`` twice, for the one-process A/B.

    The "on" entry is ``model``'s table as ``source`` has it; the "off" entry is
    the same table under ``model + "_b1"`` with ``[models.batching]
    max_batch_size = 1`` (other batching keys kept), or under ``model + "_aa"``
    and unchanged with ``aa``. Both name the same file by its absolute path,
    so ``dest`` may live anywhere. The tables are copied key by key, not
    rebuilt from defaults, so the server reads both exactly as it reads
    ``source``'s entry.

    Args:
        source: The registry to copy the entry from.
        model: The entry's name.
        dest: The registry file to write (its folder is created).
        aa: A/A calibration: the second entry keeps the first's batching.
        off_first: Write the "off" entry first, so the server loads and warms it first.

    Returns:
        The model name of each side, ``{"on": ..., "off": ...}``.

    Raises:
        ValueError: ``source`` has no entry named ``model``, or the second name is too long.
    """
    source = source.resolve()
    entries = [e for e in read_entries(source) if e.get("name") == model]
    if not entries:
        raise ValueError(f"{source} has no model named {model!r}")
    on = dict(entries[0])
    path = Path(str(on["path"]))
    on["path"] = str(path if path.is_absolute() else (source.parent / path).resolve())
    off = {**on, "name": model + (AA_SUFFIX if aa else OFF_SUFFIX)}
    if not aa:
        off["batching"] = {**on.get("batching", {}), "max_batch_size": 1}
    if len(off["name"]) > 63:  # registry.NAME_RE's limit; the server would refuse it at start
        raise ValueError(f"model name {model!r} too long for a second name {off['name']!r}")
    ordered = (off, on) if off_first else (on, off)
    header = (
        f"# Written by benchmarks/batching_ab.py: {model!r} of {source}, twice, for the one-process A/B.\n"
        "# Regenerated at every run; edits are lost.\n\n"
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(header + "\n".join(_render(e) for e in ordered))
    return {"on": str(on["name"]), "off": str(off["name"])}


def _choice(model: Any) -> dict[str, Any]:
    """What a server chose at start-up, from its ListModels entry."""
    threads = model.threads
    return {
        "model": model.name,
        "max_batch_size": model.max_batch_size,
        "batch_buckets": list(model.batch_buckets),
        "max_delay_ms": model.max_delay_ms,
        "batching_reason": model.batching_reason,
        "bucket_costs": [
            {"batch_size": c.batch_size, "ms_per_run": round(c.ms_per_run, 3), "ms_per_image": round(c.ms_per_image, 3)}
            for c in model.bucket_costs
        ],
        "threads": {
            "cores": threads.cores,
            "preprocess": threads.preprocess_threads,
            "batch_workers": threads.batch_workers,
            "intra_op": threads.intra_op_threads,
            "inter_op": threads.inter_op_threads,
            "wide_intra_op": threads.wide_intra_op_threads,
            "reason": threads.reason,
        },
    }


def _threads_alike(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`_choice` results have the same thread numbers (the reasons may word it apart)."""
    return {k: v for k, v in a["threads"].items() if k != "reason"} == {
        k: v for k, v in b["threads"].items() if k != "reason"
    }


def _plans_alike(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`_choice` results batch alike (buckets, limit, delay); an A/A needs it."""
    keys = ("max_batch_size", "batch_buckets", "max_delay_ms")
    return all(a[k] == b[k] for k in keys)


def median_interval(values: Sequence[float], level: float = 0.9, resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap interval for the median of ``values`` (percentile method, fixed seed).

    With 5 rounds whose ratios spread 0.85-1.15 the median alone looks exact;
    the interval says how far another run's median could fall from it.
    """
    rng = random.Random(12)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    return meds[int(tail * (resamples - 1))], meds[int((1.0 - tail) * (resamples - 1))]


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [r["on_images_per_s"] / r["off_images_per_s"] for r in rounds if r["off_images_per_s"]]
    low, high = median_interval(ratios)
    batches = {
        side: [r[f"{side}_mean_batch"] for r in rounds if r.get(f"{side}_mean_batch") is not None]
        for side in ("on", "off")
    }
    return {
        "on_images_per_s": statistics.median(r["on_images_per_s"] for r in rounds),
        "off_images_per_s": statistics.median(r["off_images_per_s"] for r in rounds),
        "on_p50_ms": statistics.median(r["on_p50_ms"] for r in rounds),
        "off_p50_ms": statistics.median(r["off_p50_ms"] for r in rounds),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_ci90": [low, high],
        "on_mean_batch": statistics.median(batches["on"]) if batches["on"] else None,
        "off_mean_batch": statistics.median(batches["off"]) if batches["off"] else None,
        "met": statistics.median(ratios) >= TARGET_RATIO,
    }


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The options the interleaved scripts share: ``--model``, ``--registry``, ``--images``, ``--image-size``."""
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--registry", default=str(REPO / "models" / "models.toml"))
    parser.add_argument("--images", default=None, help="photo folder (default: as lookalike bench)")
    parser.add_argument("--image-size", type=int, default=640)


def embed_only_flags(args: argparse.Namespace, providers: str = "CPUExecutionProvider") -> list[str]:
    """lookalike-server flags for ``args.model`` alone, with no stores, then ``args.server_arg``."""
    return [
        "--models-registry", str(Path(args.registry).resolve()), "--models-only", args.model,
        "--models-providers", providers, "--log-level", "WARNING",
        "--stores", "false", "--data-dir", str(REPO / ".cache" / "bench-data" / "none"), *args.server_arg,
    ]  # fmt: skip


def prepare_run(parser: argparse.ArgumentParser, args: argparse.Namespace, stem: str) -> tuple[Path, Path, list[bytes]]:
    """Checks ``--rounds``; the JSON path (default ``results/<stem>-DATE.json``), the logs folder, the photos."""
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    out = Path(args.out or REPO / "benchmarks" / "results" / f"{stem}-{dt.date.today():%Y-%m-%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = REPO / ".cache" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    return out, logs, bench.load_images(bench.find_image_dir(args.images).resolve(), args.image_size)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the interleaved A/B and writes its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--concurrency", type=bench._int_list, default=[1, 4, 16, 32])
    parser.add_argument("--rounds", type=int, default=5, help="on/off pairs per concurrency")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--server-arg", action="append", default=[], help="extra lookalike-server flag for both")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--one-process",
        dest="mode",
        action="store_const",
        const="one-process",
        help="one server, the model registered twice (batching as tuned, and max_batch_size = 1); the default",
    )
    mode.add_argument(
        "--two-process",
        dest="mode",
        action="store_const",
        const="two-process",
        help="two servers, the second with --batching-max-batch-size 1 (the first runs' mode)",
    )
    parser.set_defaults(mode="one-process")
    parser.add_argument(
        "--off-first", action="store_true", help="load the 'off' model first (one process) or start its server first"
    )
    parser.add_argument(
        "--aa",
        action="store_true",
        help="A/A calibration: the 'off' side gets the 'on' side's batching, so the ratios show the noise floor",
    )
    parser.add_argument("--out", default="", help="JSON path (default: benchmarks/results/batching-ab-DATE.json)")
    args = parser.parse_args(argv)
    out, logs, images = prepare_run(parser, args, "batching-ab")
    common = [
        "--log-level", "WARNING", "--stores", "false", "--data-dir", str(REPO / ".cache" / "bench-data" / "none"),
        *args.server_arg,
    ]  # fmt: skip
    # compare.sweep reads these from its namespace.
    window = argparse.Namespace(
        model=args.model, warmup=args.warmup, duration=args.duration, concurrency=args.concurrency
    )
    started = time.monotonic()
    loadavg_before = list(os.getloadavg())
    results: dict[str, Any] = {"mode": args.mode, "points": {}}
    with contextlib.ExitStack() as stack:
        if args.mode == "one-process":
            registry = logs / "batching-ab-models.toml"
            names = write_ab_registry(Path(args.registry), args.model, registry, aa=args.aa, off_first=args.off_first)
            target = stack.enter_context(
                compare.running_server(["--models-registry", str(registry), *common], logs / "ab-one.log")
            )
            targets = {"on": target, "off": target}
        else:
            names = {"on": args.model, "off": args.model}
            single = ["--models-registry", str(Path(args.registry).resolve()), "--models-only", args.model, *common]
            flags = {"on": single, "off": single if args.aa else [*single, "--batching-max-batch-size", "1"]}
            # The A/A run found the server started first 1-4% slower than its twin (median per
            # concurrency), so the start order is a flag: run both orders and compare the two.
            targets = {
                side: stack.enter_context(compare.running_server(flags[side], logs / f"ab-{side}.log"))
                for side in (("off", "on") if args.off_first else ("on", "off"))
            }
        results["models"] = names
        for c in args.concurrency:
            rounds = []
            for r in range(args.rounds):
                order = ("on", "off") if r % 2 == 0 else ("off", "on")
                row: dict[str, Any] = {"order": "/".join(order)}
                for side in order:
                    series, models = compare.sweep(
                        targets[side], f"batching {side}", images, window, concurrency=[c], models=[names[side]]
                    )
                    (point,) = series["points"]
                    row[f"{side}_images_per_s"] = point["images_per_s"]
                    row[f"{side}_p50_ms"] = point["latency_ms"]["p50"]
                    row[f"{side}_mean_batch"] = (point.get("server") or {}).get("mean_batch_size")
                    # One process lists both models: take this side's.
                    results.setdefault(f"choice_{side}", _choice(next(m for m in models if m.name == names[side])))
                rounds.append(row)
                compare.log(
                    f"c={c} round {r + 1}: on {row['on_images_per_s']:.1f} off {row['off_images_per_s']:.1f} img/s"
                )
            results["points"][str(c)] = {"rounds": rounds, **_summary(rounds)}
    results["machine"] = {
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "loadavg_before": loadavg_before,
        "loadavg_after": list(os.getloadavg()),
        "cpu": bench_report._cpu_model(),
    }
    results["args"] = {k: v for k, v in vars(args).items()}
    results["target"] = f"median per-round ratio on/off ≥ {TARGET_RATIO} at every concurrency"
    results["met"] = all(p["met"] for p in results["points"].values())
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["aa"] = args.aa
    # One process: the side whose model was loaded and warmed first; two: whose server started first.
    results["started_first"] = "off" if args.off_first else "on"
    results["threads_alike"] = _threads_alike(results["choice_on"], results["choice_off"])
    results["plans_alike"] = _plans_alike(results["choice_on"], results["choice_off"])
    out.write_text(json.dumps(results, indent=2) + "\n")
    chose_one = results["choice_on"]["max_batch_size"] == 1
    print(f"mode: {args.mode} ({names['on']} on, {names['off']} off); {results['started_first']} first")
    print(f"A/A calibration (same batching on both): {args.aa}; the tuner chose batch 1: {chose_one}")
    for side in ("on", "off"):
        t = results[f"choice_{side}"]["threads"]
        print(
            f"threads {side:>3}: {t['batch_workers']} worker(s) x {t['intra_op']} intra-op, wide {t['wide_intra_op']}, "
            f"decoding {t['preprocess']}, {t['cores']} cores"
        )
    if not results["threads_alike"]:
        print(
            "WARNING: the two sides run with different threads (choice_on/choice_off in the JSON); a wide session "
            "kept by one warm-up only is pinned with --server-arg=--models-wide-session=on (or off)"
        )
    if args.aa and not results["plans_alike"]:
        # Each side's warm-up measures its own bucket costs; on a busy machine two measurements
        # of the same model can fall either side of the tuner's 10% bar.
        print(
            f"WARNING: A/A, but the tuner chose differently: on max batch {results['choice_on']['max_batch_size']}, "
            f"off {results['choice_off']['max_batch_size']} (batching_reason in the JSON); "
            "these rounds are not an A/A"
        )
    print(
        f"{'c':>4} {'on img/s':>9} {'off img/s':>9} {'ratio':>6} {'range':>13} {'90% interval':>13}  "
        "p50 on/off ms  mean batch on/off"
    )
    for c, p in results["points"].items():
        low, high = p["ratio_ci90"]
        mb = "/".join(
            "-" if p[f"{side}_mean_batch"] is None else f"{p[f'{side}_mean_batch']:.2f}" for side in ("on", "off")
        )
        print(
            f"{c:>4} {p['on_images_per_s']:9.1f} {p['off_images_per_s']:9.1f} {p['ratio_median']:6.3f} "
            f"{p['ratio_min']:.3f}-{p['ratio_max']:.3f} {low:.3f}-{high:.3f}  "
            f"{p['on_p50_ms']:.1f}/{p['off_p50_ms']:.1f}  {mb}"
        )
    print(f"target {results['target']}: {'met' if results['met'] else 'NOT met'}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
