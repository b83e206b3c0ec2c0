#!/usr/bin/env python3
"""Decoding fidelity: the server's vectors vs Keras' own ``load_img`` + ``preprocess_input``, per photo.

Exports a Keras application (random weights: ImageNet weights cannot be
downloaded here) with ``decode = "fast"`` (the default) and with
``decode = "exact"``, each through ``lookalike-export``'s own check, on:

* the eight committed test photos (``tests/data/photos``, 60-400 px; one of
  them, ``horse_exif_rot90.jpg``, carries EXIF orientation 6);
* ``giraffe_exif_rot270.jpg``: a photo written by Pillow with EXIF orientation 8;
* ``large_1920x1080.jpg`` and ``large_5640x3172.jpg``: test photos upscaled
  (Lanczos) to camera sizes and written as JPEG q90, large enough for the
  server's reduced-size JPEG decoding (1/2 and 1/4 scale).

Cosine: between the server's vector (``lookalike_server.preprocess`` + ONNX
Runtime) and Keras' (``load_img`` + ``preprocess_input`` + the Keras model).

    PYTHONPATH=server:client:export:. python benchmarks/fidelity.py [--arch vgg16]

Writes benchmarks/results/fidelity.md and fidelity.json (needs a Python with
TensorFlow: ``.venv-keras`` or ``$LOOKALIKE_KERAS_PYTHON``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from lookalike_export.fidelity import FidelityReport
from lookalike_export.keras_export import export_keras
from lookalike_export.parity import find_photos

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "data" / "photos"
RESULTS = ROOT / "benchmarks" / "results"
#: Made photos: name -> (source photo, size, EXIF orientation or 0).
MADE = {
    "large_1920x1080.jpg": ("daffodil.jpg", (1920, 1080), 0),
    "large_5640x3172.jpg": ("crowned_crane.jpg", (5640, 3172), 0),
    "giraffe_exif_rot270.jpg": ("giraffe.jpg", None, 8),
}
_EXIF_ORIENTATION = 0x0112


def make_photos(dst: Path) -> list[Path]:
    """Writes the fidelity photo set into ``dst``: the committed photos plus the made ones.

    Returns:
        The photos, sorted (the order the exporter checks them in).
    """
    dst.mkdir(parents=True, exist_ok=True)
    for p in find_photos(PHOTOS):
        shutil.copyfile(p, dst / p.name)
    for name, (source, size, orientation) in MADE.items():
        with Image.open(PHOTOS / source) as im:
            img = im.convert("RGB")
        if size is not None:
            img = img.resize(size, Image.Resampling.LANCZOS)
        exif = Image.Exif()
        if orientation == 8:
            # Orientation 8 = "rotate 90° counter-clockwise to display": store the
            # pixels turned the other way, so a viewer shows the photo upright.
            img = img.transpose(Image.Transpose.ROTATE_270)
            exif[_EXIF_ORIENTATION] = 8
        img.save(dst / name, format="JPEG", quality=90, exif=exif.tobytes())
    return find_photos(dst)


def measure(arch: str, decode: str, photos: list[Path], out: Path) -> FidelityReport:
    """One Keras export (random weights, seed 0) checked on ``photos``; its fidelity report."""
    _, report = export_keras(arch, weights="random", out_dir=out, decode=decode, photos=photos)
    assert report is not None
    return report


def main() -> None:
    """Measures both decode presets and writes the results table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vgg16", choices=("vgg16", "resnet50"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lookalike-fidelity-") as td:
        photos = make_photos(Path(td) / "photos")
        sizes = {}
        for p in photos:
            with Image.open(p) as im:
                sizes[p.name] = f"{im.size[0]}x{im.size[1]}"
        reports = {d: measure(args.arch, d, photos, Path(td) / d) for d in ("fast", "exact")}
    for report in reports.values():
        print(report)
    rows: list[dict[str, Any]] = [
        {
            "photo": p.name,
            "size": sizes[p.name],
            **{f"cosine_{d}": reports[d].photos[i].cosine for d in reports},
            **{f"max_tensor_diff_{d}": reports[d].photos[i].max_abs_diff for d in reports},
            "departures_fast": list(reports["fast"].photos[i].departures),
        }
        for i, p in enumerate(photos)
    ]
    RESULTS.mkdir(exist_ok=True)
    meta = {"arch": args.arch, "weights": "random (seed 0)", "machine": platform.processor() or platform.machine()}
    (RESULTS / "fidelity.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Decoding fidelity: server vs Keras `load_img` + `preprocess_input`",
        "",
        f"`python benchmarks/fidelity.py --arch {args.arch}`: Keras {args.arch}, random weights (seed 0), "
        "include_top=False, pooling=max, caffe preprocessing. Cosine between the server's vector "
        "(`lookalike_server.preprocess` + ONNX Runtime) and Keras' own (load_img + preprocess_input + "
        "the Keras model), per photo, under each `decode` preset. Large photos are committed test photos "
        "upscaled with Lanczos and saved as JPEG q90; the EXIF photos carry orientation 6 and 8.",
        "",
        "| photo | size | cosine, decode fast | cosine, decode exact | max tensor diff fast / exact | "
        "why fast differs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        why = "; ".join(d.split(";")[0] for d in r["departures_fast"]) or "-"
        lines.append(
            f"| `{r['photo']}` | {r['size']} | {r['cosine_fast']:.7f} | {r['cosine_exact']:.7f} | "
            f"{r['max_tensor_diff_fast']:.3g} / {r['max_tensor_diff_exact']:.3g} | {why} |"
        )
    (RESULTS / "fidelity.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'fidelity.md'}")


if __name__ == "__main__":
    main()
