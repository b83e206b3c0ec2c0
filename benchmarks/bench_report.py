"""Reports of ``lookalike bench`` runs: machine profile, Markdown tables, plots.

This lives in ``benchmarks/``, not in the thin client: ``pip install lookalike`` stays
grpcio + protobuf (+ tqdm). ``lookalike bench`` writes ``results.json``; this module turns
it into ``report.md`` and, with matplotlib (the ``bench`` extra), ``latency_vs_throughput.png``
and ``batch_sizes.png``::

    lookalike bench --concurrency 1,8 --duration 5 --out out/bench/embed
    python benchmarks/bench_report.py out/bench/embed

``benchmarks/compare.py`` and ``benchmarks/quality.py`` import it (``benchmarks/`` on
``sys.path``) for their own reports, with the full machine profile (CPU model, memory,
GPUs via ``nvidia-smi``) from :func:`describe_machine`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lookalike.bench import machine_summary, new_report

__all__ = [
    "describe_machine",
    "machine_markdown",
    "markdown_report",
    "markdown_table",
    "new_report",
    "render",
    "write_plots",
    "write_report",
]

# ------------------------------------------------------------------ machine --


def parse_cpus(spec: str) -> set[int]:
    """``"0"`` or ``"0,2-3"`` (taskset's notation) → a CPU set; empty string → empty set."""
    cpus: set[int] = set()
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def describe_machine(models: Sequence[Any] = ()) -> dict[str, Any]:
    """CPU, cores, memory, GPUs, and the providers each served model got.

    :func:`lookalike.bench.machine_summary` (what the client records cheaply at run time)
    plus the CPU model, memory and GPUs.

    Args:
        models: ``ModelInfo`` messages from ``ListModels`` (may be empty).
    """
    machine = machine_summary(models)
    machine.update(cpu=_cpu_model(), memory_gib=_memory_gib(), gpus=_gpus())
    return machine


# ------------------------------------------------------------------ reports --


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(series: Sequence[Mapping[str, Any]]) -> str:
    """One Markdown table with a row per load point of every series."""
    head = (
        "| series | load | req/s | img/s | min | p50 | p90 | p95 | p99 | max | errors "
        "| mean batch | queue | preproc | infer | milvus | redis |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in series:
        for p in s.get("points", []):
            lat = p.get("latency_ms") or {}
            t = p.get("server_timing_ms") or {}
            server = p.get("server") or {}
            errors = p.get("errors", 0)
            if errors:
                worst = ", ".join(f"{k} {v}" for k, v in (p.get("status") or {}).items() if k != "OK")
                errors = f"{errors} ({worst})"
            rows.append(
                "| "
                + " | ".join(
                    [
                        str(s.get("name", "")),
                        str(p.get("label", "")),
                        _fmt(p.get("throughput_rps")),
                        _fmt(p.get("images_per_s")),
                        *(_fmt(lat.get(k)) for k in ("min", "p50", "p90", "p95", "p99", "max")),
                        str(errors),
                        _fmt(server.get("mean_batch_size"), 2),
                        *(_fmt(t.get(k), 2) for k in ("queue_ms", "preprocess_ms", "inference_ms")),
                        *(_fmt(t.get(k), 2) for k in ("milvus_ms", "redis_ms")),
                    ]
                )
                + " |"
            )
    return "\n".join(rows)


def machine_markdown(machine: Mapping[str, Any]) -> str:
    """The machine as a short bullet list."""
    lines = [
        f"- CPU: {machine.get('cpu')} — {machine.get('cores')} logical cores "
        f"({machine.get('cores_usable')} usable), {machine.get('memory_gib')} GiB RAM",
        f"- GPU: {', '.join(machine.get('gpus') or []) or 'none'}",
        f"- OS: {machine.get('os')}; Python {machine.get('python')}; grpcio {machine.get('grpcio')}",
    ]
    for name, m in (machine.get("models") or {}).items():
        lines.append(
            f"- model `{name}` v{m.get('version')}: providers {m.get('providers')}, "
            f"max batch {m.get('max_batch_size')}, max delay {m.get('max_delay_ms')} ms"
        )
        if m.get("ms_per_image_by_bucket"):
            costs = ", ".join(f"b={b}: {c} ms" for b, c in m["ms_per_image_by_bucket"].items())
            lines.append(f"  - measured at warm-up, per image: {costs}; chosen: {m.get('batching_reason')}")
        if m.get("threads"):
            t = m["threads"]
            lines.append(
                f"  - threads: {t['preprocess_threads']} decoding, {t['batch_workers']} batch worker(s) x "
                f"{t['intra_op_threads']} ORT intra-op, {t['inter_op_threads']} inter-op, "
                f"wide session for batches alone: {t.get('wide_intra_op_threads') or 'none'} intra-op "
                f"({t['reason']})"
            )
    return "\n".join(lines)


def markdown_report(report: Mapping[str, Any]) -> str:
    """The whole report as Markdown: machine, configuration, table, plots."""
    parts = [
        f"# Benchmark: {report.get('name')}",
        "",
        f"Run {report.get('created')}.",
        "",
        "## Machine",
        "",
        machine_markdown(report.get("machine") or {}),
        "",
        "## Results",
        "",
        "Latency in ms (client-side, from send — or, open loop, from the scheduled send — to answer). "
        "Server columns are means of the responses' `ServerTiming` (ms) and the mean batch size from "
        "`GetStats` over the same window.",
        "",
        markdown_table(report.get("series") or []),
        "",
    ]
    plots = report.get("plots") or []
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    cfg = report.get("config")
    if cfg:
        parts += ["## Configuration", "", "```json", json.dumps(cfg, indent=2, default=str), "```", ""]
    return "\n".join(parts)


def write_plots(report: Mapping[str, Any], out_dir: Path) -> list[str]:
    """Latency-vs-throughput and batch-size PNGs; [] without matplotlib.

    Returns:
        File names written (relative to ``out_dir``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    series = [s for s in report.get("series") or [] if s.get("points")]

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, s in enumerate(series):
        pts = [p for p in s["points"] if p.get("images_per_s") and (p.get("latency_ms") or {}).get("p50")]
        if not pts:
            continue
        colour = f"C{i % 10}"
        x = [p["images_per_s"] for p in pts]
        for q, style in (("p50", "-o"), ("p99", "--^")):
            ax.plot(
                x,
                [p["latency_ms"][q] for p in pts],
                style,
                color=colour,
                label=f"{s['name']} {q}",
                markersize=4,
            )
        for p in pts:
            if len(pts) > 1:
                ax.annotate(
                    p.get("label", ""),
                    (p["images_per_s"], p["latency_ms"]["p50"]),
                    fontsize=6,
                    xytext=(2, 2),
                    textcoords="offset points",
                    color=colour,
                )
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Latency percentiles vs throughput — {report.get('name')}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "latency_vs_throughput.png", dpi=110)
    plt.close(fig)
    written.append("latency_vs_throughput.png")

    # One panel per series whose batches were ever larger than 1 (a "no
    # batching" series would only show a single bar): bars grouped by load
    # point, height = share of the items that ran in a batch of that size.
    panels = []
    for s in series:
        pts = [p for p in s["points"] if (p.get("server") or {}).get("batch_size_histogram")]
        if any(int(k) > 1 for p in pts for k in p["server"]["batch_size_histogram"]):
            panels.append((s["name"], pts))
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.8 * len(panels)), squeeze=False)
        for ax, (name, pts) in zip(axes.flat, panels, strict=False):
            sizes = sorted({int(k) for p in pts for k in p["server"]["batch_size_histogram"]})
            width = 0.8 / len(pts)
            for j, p in enumerate(pts):
                hist = {int(k): int(v) for k, v in p["server"]["batch_size_histogram"].items()}
                items = sum(k * v for k, v in hist.items()) or 1
                xs = [i - 0.4 + width * (j + 0.5) for i in range(len(sizes))]
                mean = p["server"].get("mean_batch_size")
                label = f"{p.get('label', '')} (mean {mean:.1f})" if mean else p.get("label", "")
                ax.bar(xs, [hist.get(k, 0) * k / items for k in sizes], width, label=label, color=f"C{j % 10}")
            ax.set_xticks(range(len(sizes)), [str(k) for k in sizes], fontsize=7)
            ax.set_xlabel("batch size (real, unpadded)", fontsize=8)
            ax.set_ylabel("share of items", fontsize=8)
            ax.set_title(f"Batch sizes — {name}", fontsize=9)
            ax.legend(fontsize=7, ncol=4)
        fig.tight_layout()
        fig.savefig(out_dir / "batch_sizes.png", dpi=110)
        plt.close(fig)
        written.append("batch_sizes.png")
    return written


def write_report(report: dict[str, Any], out_dir: str | Path, plots: bool = True) -> Path:
    """Writes results.json, report.md and the PNGs into ``out_dir``.

    Returns:
        The folder written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(report, out) if plots else []
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown_report(report))
    return out


def render(results_dir: str | Path, plots: bool = True) -> Path:
    """Writes ``report.md`` (and plots) next to a ``results.json`` written by ``lookalike bench``.

    The machine section is the one recorded at run time; when this runs on the same machine
    (same hostname) the full profile (CPU model, memory, GPUs) is added.

    Returns:
        The folder written.
    """
    out = Path(results_dir)
    report = json.loads((out / "results.json").read_text())
    machine = report.get("machine") or {}
    if machine.get("hostname") == platform.node():
        full = describe_machine()
        full["models"] = machine.get("models") or {}
        full["loadavg_1_5_15"] = machine.get("loadavg_1_5_15")  # the load at run time, not now
        report["machine"] = full
    return write_report(report, out, plots=plots)


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/bench_report.py RESULTS_DIR [--no-plots]``."""
    parser = argparse.ArgumentParser(description="report.md and plots from a lookalike bench results.json")
    parser.add_argument("results_dir", help="folder holding results.json")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    try:
        out = render(args.results_dir, plots=not args.no_plots)
    except (OSError, ValueError) as exc:
        print(f"bench_report: {exc}", file=sys.stderr)
        return 1
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
