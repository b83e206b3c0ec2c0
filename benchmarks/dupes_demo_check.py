#!/usr/bin/env python3
"""The issue's acceptance check on the demo set: `lookalike dupes` finds every planted copy, no distinct photo as exact.

The demo indexes the tuxpaint photo set (``scripts/demo.sh``). This script does
the same on a fresh server (embedded stores in a temp dir), then plants copies
of ``--planted`` photos picked at random (seeded): a lossless re-save (same
pixels, other bytes), a byte-for-byte copy, JPEG q60, a 90 % crop, half scale
and a brightness change, in a ``copies/`` folder indexed after the library.
Then it runs ``lookalike dupes --json`` for each model alone and as the CLI
runs by default (every loaded model: near when any model accepts a pair), and checks:

* every planted copy (byte copies aside: content dedupe makes them the same
  item, and ``lookalike index`` reports them "already indexed") is in its
  original's group (and how often that group is represented by the original
  rather than by an earlier, similar photo);
* the exact members are exactly the re-saves, and no two distinct photos of the
  set are marked exact (photos whose decoded pixels are identical are counted
  apart: they *are* exact copies);
* how many distinct photos ended up in some group as "similar" (not an error:
  the threshold admits about one pair of different photos in a thousand).

Usage::

    nice -n 19 python benchmarks/dupes_demo_check.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "benchmarks")]

from quality import running_server  # noqa: E402

EDITS = ("resave", "bytecopy", "jpeg60", "crop90", "scale50", "bright")


def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def plant(original: Path, out_dir: Path) -> dict[str, Path]:
    """Writes the edited copies of one photo; returns edit -> file."""
    with Image.open(original) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    w, h = img.size
    blobs = {
        "resave": (_save(img, "PNG", compress_level=1), "png"),
        "bytecopy": (original.read_bytes(), original.suffix.lstrip(".")),
        "jpeg60": (_save(img, "JPEG", quality=60), "jpg"),
        "crop90": (_save(img.crop((w // 20, h // 20, w - w // 20, h - h // 20)), "PNG"), "png"),
        "scale50": (_save(img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS), "PNG"), "png"),
        "bright": (_save(ImageEnhance.Brightness(img).enhance(1.15), "PNG"), "png"),
    }
    out = {}
    for edit, (data, ext) in blobs.items():
        path = out_dir / f"{original.parent.name}__{original.stem}__{edit}.{ext}"
        path.write_bytes(data)
        out[edit] = path
    return out


def cli(target: str, *args: str) -> str:
    """Runs the ``lookalike`` CLI; returns stdout."""
    cmd = [sys.executable, "-m", "lookalike.cli", "--target", target, "--timeout", "600", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout


def pixel_hash(path: Path) -> str:
    with Image.open(path) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    return hashlib.sha256(img.tobytes() + str(img.size).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=REPO / "data" / "tuxpaint")
    parser.add_argument("--planted", type=int, default=20, help="photos that get copies")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dupes-demo-"))
    library = work / "library"
    library.mkdir()
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    for p in photos:  # flat copy: keys are plain file names
        (library / f"{p.parent.name}__{p.name}").write_bytes(p.read_bytes())
    originals = sorted(library.iterdir())
    chosen = random.Random(args.seed).sample(originals, args.planted)
    copies = library / "copies"
    copies.mkdir()
    planted = {orig.name: plant(orig, copies) for orig in chosen}
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "photos": len(originals),
        "planted_photos": len(chosen),
        "edits": list(EDITS),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "shared": True},
        "models": {},
    }
    # Distinct photos whose decoded pixels are identical are exact copies in truth.
    by_pixels: dict[str, list[str]] = {}
    for p in originals:
        by_pixels.setdefault(pixel_hash(p), []).append(p.name)
    same_pixels = {n for names in by_pixels.values() if len(names) > 1 for n in names}
    twins_of = {n: set(names) for names in by_pixels.values() for n in names}
    report["library_files_with_a_pixel_identical_twin"] = sorted(same_pixels)

    (work / "data").mkdir(mode=0o700)
    with running_server(work / "data", []) as target:
        t0 = time.perf_counter()
        # Keys are "lib/<file>" and "lib/copies/<file>" (the path relative to the folder, prefixed).
        report["index_library"] = cli(target, "index", str(library), "--key-prefix", "lib/", "-q").strip()
        report["index_copies"] = cli(target, "index", str(library), "-r", "--key-prefix", "lib/", "-q").strip()
        report["index_s"] = round(time.perf_counter() - t0, 1)
        models = [line.split()[0] for line in cli(target, "models").splitlines() if line and not line[0].isspace()]
        # Each model alone, then the CLI's default: every loaded model (near under any of them).
        runs: list[tuple[str, list[str], list[str]]] = [(m, ["--model", m], [m]) for m in models]
        runs.append(("default: " + " or ".join(models), [], models))
        for label, flags, compared in runs:
            t0 = time.perf_counter()
            out = json.loads(cli(target, "dupes", *flags, "--json"))
            groups = out["groups"]
            rep_of = {m["key"][4:]: g["members"][0]["key"][4:] for g in groups for m in g["members"]}
            exact = {m["key"][4:] for g in groups for m in g["members"][1:] if m["exact"]}
            missed, led_by_original = [], 0
            for orig, files in planted.items():
                for edit, path in files.items():
                    if edit == "bytecopy":
                        continue  # the same content: no item of its own
                    key = f"copies/{path.name}"
                    rep = rep_of.get(key)
                    if rep is None or rep != rep_of.get(orig):  # not grouped with its original
                        missed.append(key)
                    elif rep in twins_of[orig]:  # represented by its original (or a pixel twin of it)
                        led_by_original += 1
            # How far each missed copy is from its original (the same model, via Embed).
            missed_distance = {}
            if missed:
                from lookalike.client import LookalikeClient

                with LookalikeClient(target, timeout=600) as client:
                    for key in missed:
                        orig_name = next(o for o, f in planted.items() if any(key.endswith(p.name) for p in f.values()))
                        with Image.open(library / orig_name) as im:
                            size = "x".join(map(str, im.size))
                        dist = {}
                        for model in compared:
                            vecs = client.embed([library / orig_name, library / key], model)
                            dist[model] = round(float(((vecs[0] - vecs[1]) ** 2).sum()), 4)
                        missed_distance[key] = {"original_size": size, **dist}
            resaves = {f"copies/{files['resave'].name}" for files in planted.values()}
            library_keys = {p.name for p in originals}
            distinct_exact = sorted(k for k in exact if k in library_keys and k not in same_pixels)
            grouped_distinct = sorted(
                k for k, rep in rep_of.items() if k in library_keys and k != rep and k not in same_pixels
            )
            report["models"][label] = {
                "threshold": out["summary"]["threshold"],
                "thresholds": out["summary"]["thresholds"],
                "items_scanned": out["summary"]["items_scanned"],
                "groups": len(groups),
                "planted_copies": sum(len(f) - 1 for f in planted.values()),
                "planted_copies_missed": missed,
                "missed_copy_distance_to_original": missed_distance,
                "planted_copies_whose_group_the_original_represents": led_by_original,
                "exact_are_exactly_the_resaves": exact - set(same_pixels) == resaves,
                "distinct_photos_marked_exact": distinct_exact,
                "distinct_photos_grouped_as_similar": grouped_distinct,
                "dupes_s": round(time.perf_counter() - t0, 1),
            }
            print(f"[demo-check] {label}: {report['models'][label]}", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"dupes-demo-check-{report['date']}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
