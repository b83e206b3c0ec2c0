#!/usr/bin/env python3
"""Whole image or centre crop: how the shipped models should fit a photo into 224 x 224.

The shipped models were exported with their frameworks' evaluation recipe, Resize(256) +
CenterCrop(224), which keeps (224/256)^2 = 77% of a square photo and less of a wide one
(57% of a 4:3 photo). A search server sees whole photos, not ImageNet's centred objects, so
this measures three ways of fitting the image, with the server's own decoding and resizing
code (:mod:`lookalike_server.preprocess`) and the shipped ONNX files:

* ``crop``: shorter side to 256, centre crop 224 (``resize_shorter = 256``; models v1);
* ``whole``: the whole image resized to 224 x 224, aspect not kept (``resize_shorter = 0``,
  what Keras' ``load_img(target_size=...)`` does; models v2);
* ``pad``: the whole image centred on a white square, then resized (not a server setting;
  measured to see whether keeping the aspect ratio matters).

On three measurements:

1. **Validation: the Tux Paint drawings** (``scripts/get_photos.py drawings``), the stamps
   that the photo set leaves out, labelled the same way; no image is in both sets. This is
   the set the setting is chosen on.
2. **Test: the Tux Paint photos** (``scripts/get_photos.py tuxpaint``), where issue 13 asks
   for fused P@1 >= 0.75. Leave-one-out P@1, P@5 and mAP as ``lookalike eval`` computes them
   (each image queries, itself excluded), per model and fused (``distance``: summed squared
   L2; ``rrf``: k = 60, ties by the distance sum, as the server).
3. **Copy detection on the photos:** every photo edited 11 ways (``benchmarks/quality.py``'s
   five, plus two random off-centre crops of 50-80%, a 4x downscale, JPEG quality 25, a flip
   with a 10 degree rotation, and a colour/contrast/brightness jitter; seeded), each edit
   querying the index of all photos; recall@1 of its original.

Embedding is in-process (no gRPC): the same preprocessing code and ONNX files as the server,
so the ``crop`` rows reproduce the v1 tables of ``lookalike eval``.

Usage::

    python scripts/get_photos.py tuxpaint --out data/tuxpaint
    python scripts/get_photos.py drawings --out data/tuxdrawings
    nice -n 19 python benchmarks/fit_modes.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import platform
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from fusion_methods import LeaveOneOut, _sqd  # noqa: E402
from quality import TRANSFORMS  # noqa: E402

from lookalike_server.config import BatchingConfig  # noqa: E402
from lookalike_server.preprocess import decode_image, normalise, resize_and_crop  # noqa: E402
from lookalike_server.preprocess_spec import FILTERS, PreprocessSpec  # noqa: E402
from lookalike_server.registry_reader import load_registry  # noqa: E402

MODELS = ("mobilenet_v2", "efficientnet_lite0")
MODES = ("crop", "whole", "pad")
LIMIT = 1 << 28


def fit(img: Image.Image, spec: PreprocessSpec, mode: str) -> np.ndarray:
    """One image as the model's input tensor under ``mode`` (see the module docstring)."""
    if mode == "crop":
        out = resize_and_crop(img, replace(spec, resize_shorter=256))
    elif mode == "whole":
        out = resize_and_crop(img, replace(spec, resize_shorter=0))
    else:
        w, h = img.size
        side = max(w, h)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        out = square.resize((spec.width, spec.height), FILTERS[spec.interpolation])
    return normalise(out, spec)


class Embedder:
    """The shipped models' ONNX sessions with their registry preprocessing."""

    def __init__(self) -> None:
        import onnxruntime as ort

        specs = load_registry(REPO / "models" / "models.toml", BatchingConfig(), only=MODELS)
        self.specs = {s.name: s.preprocess for s in specs}
        self.sessions = {s.name: ort.InferenceSession(str(s.path), providers=["CPUExecutionProvider"]) for s in specs}

    def __call__(self, model: str, images: list[Image.Image], mode: str) -> np.ndarray:
        """L2-normalised embeddings, float64, one row per image."""
        x = np.stack([fit(im, self.specs[model], mode) for im in images])
        sess = self.sessions[model]
        name = sess.get_inputs()[0].name
        out = np.concatenate([sess.run(None, {name: x[i : i + 16]})[0] for i in range(0, len(x), 16)])
        out = out.reshape(len(x), -1).astype(np.float64)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def load_set(folder: Path) -> tuple[list[Image.Image], np.ndarray]:
    """Decoded images (as the server decodes them) and their labels (parent folder names)."""
    paths = sorted(p for p in folder.rglob("*.png"))
    if len(paths) < 50:
        raise SystemExit(f"only {len(paths)} images under {folder}: run scripts/get_photos.py first")
    images = [decode_image(p.read_bytes(), max_bytes=LIMIT, max_pixels=LIMIT) for p in paths]
    return images, np.array([p.parent.name for p in paths])


def _encode(img: Image.Image, quality: int | None = None) -> bytes:
    """PNG, or JPEG at ``quality`` when given."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality) if quality else img.save(buf, format="PNG")
    return buf.getvalue()


def harsher_edits(img: Image.Image, rng: random.Random) -> dict[str, bytes]:
    """Six edits beyond quality.py's five (see the module docstring)."""
    w, h = img.size
    out: dict[str, bytes] = {}
    for i in range(2):
        f = rng.uniform(0.5, 0.8)
        cw, ch = max(1, int(w * f)), max(1, int(h * f))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out[f"offcrop{i}"] = _encode(img.crop((x, y, x + cw, y + ch)))
    out["down25"] = _encode(img.resize((max(1, w // 4), max(1, h // 4)), Image.Resampling.LANCZOS))
    out["jpeg25"] = _encode(img, quality=25)
    out["fliprot10"] = _encode(ImageOps.mirror(img).rotate(10, fillcolor=(255, 255, 255)))
    jitter = ImageEnhance.Contrast(img).enhance(1.3)
    jitter = ImageEnhance.Brightness(jitter).enhance(0.8)
    out["jitter"] = _encode(ImageEnhance.Color(jitter).enhance(1.4))
    return out


def leave_one_out(embed: Embedder, images: list[Image.Image], labels: np.ndarray, mode: str) -> dict[str, Any]:
    """P@1, P@5, mAP per model and fused, each image querying the others."""
    ev = LeaveOneOut(labels)
    d = {m: _sqd(v, v) for m, v in ((m, embed(m, images, mode)) for m in MODELS)}
    total = d[MODELS[0]] + d[MODELS[1]]
    rows = {m: ev.scores(ev.order(d[m])) for m in MODELS}
    rows["fused:distance"] = ev.scores(ev.order(total))
    rows["fused:rrf"] = ev.scores(ev.order(ev.rrf(list(d.values())), total))
    return rows


def copy_detection(embed: Embedder, images: list[Image.Image], mode: str, seed: int) -> dict[str, Any]:
    """Recall@1 of the original per edit, per model and fused by distance."""
    rng = random.Random(seed)
    queries: list[tuple[int, str, Image.Image]] = []
    for i, img in enumerate(images):
        blobs = {k: fn(img) for k, fn in TRANSFORMS.items()} | harsher_edits(img, rng)
        queries += [(i, k, decode_image(b, max_bytes=LIMIT, max_pixels=LIMIT)) for k, b in blobs.items()]
    truth = np.array([i for i, _, _ in queries])
    edit = np.array([k for _, k, _ in queries])
    d = {m: _sqd(embed(m, [q for _, _, q in queries], mode), embed(m, images, mode)) for m in MODELS}
    d["fused:distance"] = d[MODELS[0]] + d[MODELS[1]]
    out: dict[str, Any] = {"queries": len(queries)}
    for name, dist in d.items():
        hit = dist.argmin(1) == truth
        out[name] = {"all": float(hit.mean())} | {k: float(hit[edit == k].mean()) for k in sorted(set(edit))}
    return out


def markdown(report: dict[str, Any]) -> str:
    """The committed tables."""
    lines = [
        f"# Whole image or centre crop, {report['date']}",
        "",
        "`nice -n 19 python benchmarks/fit_modes.py` (what each mode and set is: its docstring). "
        f"Shipped models, CPU, in-process; {report['machine']}.",
        "",
    ]
    for key, title in (("drawings", "Validation: Tux Paint drawings"), ("photos", "Test: Tux Paint photos")):
        s = report[key]
        lines += [
            f"## {title} ({s['images']} images, {s['labels']} labels), leave-one-out P@1 (hits) / mAP",
            "",
            "| ranking | " + " | ".join(MODES) + " |",
            "| --- |" + " ---: |" * len(MODES),
        ]
        for ranking in s[MODES[0]]:
            cells = [f"{s[m][ranking]['p1']:.3f} ({s[m][ranking]['hits']}) / {s[m][ranking]['map']:.3f}" for m in MODES]
            lines.append(f"| {ranking} | " + " | ".join(cells) + " |")
        lines.append("")
    c = report["copies"]
    edits = [k for k in c[MODES[0]][MODELS[0]] if k != "all"]
    lines += [
        f"## Copy detection on the photos ({c[MODES[0]]['queries']} edited queries), recall@1",
        "",
        "| mode | ranking | all | " + " | ".join(edits) + " |",
        "| --- | --- |" + " ---: |" * (len(edits) + 1),
    ]
    for mode in MODES:
        for ranking in (*MODELS, "fused:distance"):
            r = c[mode][ranking]
            lines.append(f"| {mode} | {ranking} | {r['all']:.3f} | " + " | ".join(f"{r[k]:.2f}" for k in edits) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=REPO / "data" / "tuxpaint")
    parser.add_argument("--drawings", type=Path, default=REPO / "data" / "tuxdrawings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write fit-modes-DATE.{json,md} here")
    args = parser.parse_args(argv)
    embed = Embedder()
    report: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
    }
    for key, folder in (("drawings", args.drawings), ("photos", args.photos)):
        images, labels = load_set(folder)
        report[key] = {"images": len(images), "labels": len(set(labels))}
        report[key] |= {mode: leave_one_out(embed, images, labels, mode) for mode in MODES}
        if key == "photos":
            report["copies"] = {mode: copy_detection(embed, images, mode, args.seed) for mode in MODES}
    text = markdown(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"fit-modes-{report['date']}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"fit-modes-{report['date']}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
