#!/usr/bin/env python3
"""Retrieval quality and CPU speed of fp32 vs int8 (dynamic, static) vs fp16 variants.

Labelled set: Debian's ``tuxpaint-stamps-default`` (real photo cut-outs). Classes
are the leaf folders under ``stamps/`` holding at least 9 images, skipping
``cartoon``, ``symbols`` and ``alphabets`` folders (drawings, not photos): 18
classes, 282 images. P@1 = leave-one-out nearest neighbour by L2 on normalised
embeddings. Speed: median ms/image at batch 1 and 32, ONNX Runtime CPU.

    python benchmarks/quantize_quality.py            # fetches the .deb with apt-get if needed

Writes benchmarks/results/precision.md and precision.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lookalike_export.parity import find_photos, photo_batch
from lookalike_export.quantize import (
    _has_gpu,
    embed,
    entry_from_registry,
    make_variant,
    precision_at_1,
    session,
    time_ms_per_image,
)

ROOT = Path(__file__).resolve().parent.parent
SKIP = ("cartoon", "symbols", "alphabets")


def stamps_dir(cache: Path) -> Path:
    """Finds or unpacks tuxpaint-stamps-default (Debian package, fetched with apt-get)."""
    for d in (Path("/usr/share/tuxpaint/stamps"), cache / "x/usr/share/tuxpaint/stamps"):
        if d.is_dir():
            return d
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "tuxpaint-stamps-default"], cwd=cache, check=True)
    deb = next(cache.glob("tuxpaint-stamps-default_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(cache / "x")], check=True)
    return cache / "x/usr/share/tuxpaint/stamps"


def labelled_set(root: Path, min_count: int = 9) -> tuple[list[Path], list[str]]:
    by_dir: dict[str, list[Path]] = {}
    for p in root.rglob("*.png"):
        rel = p.parent.relative_to(root).as_posix()
        if not any(s in rel.split("/") for s in SKIP):
            by_dir.setdefault(rel, []).append(p)
    paths, labels = [], []
    for label, ps in sorted(by_dir.items()):
        if len(ps) >= min_count:
            paths += sorted(ps)
            labels += [label] * len(ps)
    return paths, labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "efficientnet_lite0"])
    ap.add_argument("--registry", default=str(ROOT / "models" / "models.toml"))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "tuxpaint"))
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per batch size")
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = default)")
    ap.add_argument("--max-p1-drop", type=float, default=0.05)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "precision"))
    args = ap.parse_args()

    stamps = stamps_dir(Path(args.cache))
    paths, labels = labelled_set(stamps)
    calib = find_photos(ROOT / "tests" / "data" / "export")
    gpu = _has_gpu()
    registry = Path(args.registry)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for name in args.models:
            entry = entry_from_registry(registry, name)
            src = registry.parent / entry.path
            batch = photo_batch(paths, entry)
            variants = {"fp32": src}
            for mode in ("int8-dynamic", "int8-static", "fp16"):
                dst = Path(td) / f"{name}_{mode}.onnx"
                t = time.perf_counter()
                make_variant(src, dst, mode, entry, calib)
                print(f"{name} {mode}: made in {time.perf_counter() - t:.1f}s")
                variants[mode] = dst
            ref = None
            for mode, path in variants.items():
                row = {"model": name, "precision": mode, "size_mb": round(path.stat().st_size / 2**20, 2)}
                if mode == "fp16" and not gpu:
                    row["note"] = "no GPU in this run: fp16 exported, not measured (CPU EP runs fp16 by casting)"
                    rows.append(row)
                    continue
                providers = ("CUDAExecutionProvider",) if mode == "fp16" else ("CPUExecutionProvider",)
                sess = session(path, args.threads, providers)
                emb = embed(sess, batch, entry)
                row["p1"] = round(precision_at_1(emb, labels), 4)
                if ref is None:
                    ref = emb
                row["min_cos_to_fp32"] = round(float(np.min(np.sum(ref * emb, axis=1))), 4)
                row["mean_cos_to_fp32"] = round(float(np.mean(np.sum(ref * emb, axis=1))), 4)
                row["ms_per_image_b1"] = round(time_ms_per_image(sess, entry, 1, args.repeats * 3), 2)
                row["ms_per_image_b32"] = round(time_ms_per_image(sess, entry, 32, args.repeats), 2)
                rows.append(row)
                print(row)
    base = {r["model"]: r for r in rows if r["precision"] == "fp32"}
    for r in rows:
        if "p1" in r:
            b = base[r["model"]]
            r["p1_drop"] = round(b["p1"] - r["p1"], 4)
            r["within_gate"] = r["p1_drop"] <= args.max_p1_drop
            r["speedup_b1"] = round(b["ms_per_image_b1"] / r["ms_per_image_b1"], 2)
            r["speedup_b32"] = round(b["ms_per_image_b32"] / r["ms_per_image_b32"], 2)
    meta = {
        "dataset": f"tuxpaint-stamps-default: {len(paths)} images, {len(set(labels))} classes",
        "classes": sorted(set(labels)),
        "calibration": [p.name for p in calib],
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "gpu": gpu,
        "max_p1_drop": args.max_p1_drop,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Precision variants: retrieval quality and CPU speed",
        "",
        f"Made by `python benchmarks/quantize_quality.py` (ONNX Runtime {ort.__version__}, CPU, "
        f"{os.cpu_count()} cores). Dataset: {meta['dataset']} (leaf folders with ≥ 9 photo cut-outs; "
        "cartoon/symbol folders skipped). P@1: leave-one-out nearest neighbour, L2 on normalised "
        "embeddings. int8-static calibrated on the 5 photos in `tests/data/export/`. "
        f"Gate: P@1 drop ≤ {args.max_p1_drop}.",
        "",
        "| model | precision | MB | P@1 | ΔP@1 | min / mean cos to fp32 | ms/img b1 | ms/img b32 | speed-up b1 / b32 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "p1" not in r:
            lines.append(f"| {r['model']} | {r['precision']} | {r['size_mb']} | – | – | – | – | – | {r['note']} |")
            continue
        gate = "" if r["within_gate"] else " ⚠"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['size_mb']} | {r['p1']:.3f} | {-r['p1_drop']:+.3f}{gate} | "
            f"{r['min_cos_to_fp32']:.3f} / {r['mean_cos_to_fp32']:.3f} | {r['ms_per_image_b1']:.2f} | "
            f"{r['ms_per_image_b32']:.2f} | {r['speedup_b1']:.2f}× / {r['speedup_b32']:.2f}× |"
        )
    lines += [
        "",
        "Timings come from a shared 2-core machine and vary run to run when other jobs run beside it;",
        "compare rows of one run only. int8-dynamic quantises Conv to ConvInteger, which ONNX Runtime's",
        "CPU provider runs slowly: use int8-static (QDQ) for CNNs.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
