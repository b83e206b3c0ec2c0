"""What the front door's header probe costs per image: the JPEG marker walk against Pillow's ``Image.open``.

Admission reads every image's size on the event loop before any work
(``preprocess.probe_image``). For a plainly formed JPEG the size comes from
``preprocess.jpeg_size``; before 4ada034 it came from Pillow, which parses
every header segment in Python. This prints, per photo set, the median cost
per image of: the walk alone, ``Image.open`` + ``.size`` alone, and the whole
probe as the server runs it. Figures are from a warm loop; in the server the
same code costs several times as much (the caches hold decoding's data).

Usage::

    python benchmarks/header_probe.py                       # the committed test photos
    python benchmarks/header_probe.py --images data/mate --image-size 640 --out results/header-probe.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from lookalike.bench import load_images
from lookalike_server.preprocess import jpeg_size, probe_image, sniff_format

REPO = Path(__file__).resolve().parents[1]
LIMITS = {"max_bytes": 64 << 20, "max_pixels": 1 << 32}


def pillow_size(data: bytes) -> tuple[int, int]:
    """What the probe did before: Pillow opens the JPEG (every header segment parsed) for its size."""
    return Image.open(io.BytesIO(data), formats=["JPEG"]).size


def per_image_us(fn: Callable[[bytes], object], images: Sequence[bytes], seconds: float) -> float:
    """Median over rounds of the mean µs per image of ``fn`` across ``images``."""
    rounds: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rounds) < 5:
        started = time.perf_counter()
        for data in images:
            fn(data)
        rounds.append((time.perf_counter() - started) / len(images) * 1e6)
    return statistics.median(rounds)


def main(argv: Sequence[str] | None = None) -> int:
    """Times the three ways per image and prints (and optionally writes) them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(REPO / "tests" / "data" / "photos"))
    parser.add_argument("--image-size", type=int, default=0, help="re-encode at this longer side (0: as they are)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    images = [d for d in load_images(args.images, args.image_size) if sniff_format(d) == "JPEG"]
    if not images:
        parser.error(f"no JPEG photos in {args.images}")
    walked = sum(jpeg_size(d) is not None for d in images)
    result = {
        "images": len(images),
        "walk_answered": walked,
        "walk_us": per_image_us(jpeg_size, images, args.seconds),
        "pillow_open_us": per_image_us(pillow_size, images, args.seconds),
        "probe_us": per_image_us(lambda d: probe_image(d, **LIMITS), images, args.seconds),
        "source": str(args.images),
        "image_size": args.image_size,
    }
    print(
        f"{len(images)} JPEGs ({walked} read by the walk): walk {result['walk_us']:.1f} µs, "
        f"Pillow open {result['pillow_open_us']:.1f} µs, probe as the server runs it {result['probe_us']:.1f} µs "
        "an image (warm loop)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
