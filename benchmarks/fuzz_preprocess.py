"""Fuzz image decoding and request validation for a fixed time: every outcome must be a mapped error.

Hypothesis generates real images (every supported format, many Pillow modes,
sizes 1..64), then mutates them the way an attacker would: header sizes
rewritten to anything in 0..2^32, truncation anywhere, random byte flips,
random bytes after a valid signature. Each input goes through the server's
own path: the front-door header probe and admission
(:class:`~lookalike_server.admission.Admission`), then ``decode_image`` and
``to_tensor`` for both presets. An exception that is not a
:class:`~lookalike_server.errors.ServiceError` would reach a client as
INTERNAL; the run counts them (goal: 0) and prints the first of each kind.

    nice -n 10 .venv/bin/python benchmarks/fuzz_preprocess.py --seconds 300 \
        --out benchmarks/results/fuzz_preprocess.json
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "client"), str(ROOT / "server")]

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from lookalike_server.admission import Admission  # noqa: E402
from lookalike_server.config import LimitsConfig  # noqa: E402
from lookalike_server.errors import ServiceError  # noqa: E402
from lookalike_server.preprocess import PRESETS, PreprocessSpec, decode_image, to_tensor  # noqa: E402

LIMITS = LimitsConfig()
SPECS = [PreprocessSpec(**PRESETS[name], preset=name) for name in ("imagenet", "caffe")]  # type: ignore[arg-type]
ADMISSION = Admission(LIMITS, {"m": 64}, {"m": SPECS[0]})

MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P"],
    "BMP": ["1", "L", "P", "RGB"],
    "WEBP": ["RGB", "RGBA"],
}
# Offsets of (width, height) in each format's header, and their packing.
SIZE_FIELDS = {"PNG": (16, ">II"), "GIF": (6, "<HH"), "BMP": (18, "<ii")}


@st.composite
def images(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**31))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    data = bytearray(buf.getvalue())
    how = draw(st.sampled_from(["none", "size", "truncate", "flip", "garbage", "size+truncate"]))
    if "size" in how:
        if fmt in SIZE_FIELDS:
            off, packing = SIZE_FIELDS[fmt]
            big = draw(st.integers(0, 2**31 - 1)) if packing == "<ii" else draw(st.integers(0, 2**32 - 1))
            small = draw(st.integers(0, 2**16 - 1))
            width, height = draw(st.permutations([big, small]))
            if packing == "<HH":
                width, height = width & 0xFFFF, height & 0xFFFF
            data[off : off + 8 if packing != "<HH" else off + 4] = struct.pack(packing, width, height)
        elif fmt == "JPEG" and b"\xff\xc0" in data:
            i = data.index(b"\xff\xc0")
            data[i + 5 : i + 9] = struct.pack(">HH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)))
    if "truncate" in how:
        data = data[: draw(st.integers(1, len(data)))]
    if how == "flip":
        for _ in range(draw(st.integers(1, 16))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    if how == "garbage":
        data = data[:12] + bytearray(draw(st.binary(min_size=0, max_size=256)))
    return how, bytes(data)


def run_one(data: bytes) -> str:
    """The server's path for one image; returns the status code name it would get."""
    try:
        ADMISSION.admit([data], ["m"]).release()
        img = decode_image(
            data,
            max_bytes=LIMITS.max_image_bytes,
            max_pixels=LIMITS.max_pixels,
            draft_size=(256, 256),
            max_aspect_ratio=LIMITS.max_aspect_ratio,
        )
        for spec in SPECS:
            x = to_tensor(img, spec)
            assert x.shape == spec.shape and np.isfinite(x).all()
        return "OK"
    except ServiceError as exc:
        return exc.code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    outcomes: Counter[str] = Counter()
    internal: dict[str, str] = {}
    started = time.monotonic()

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(images())
    def fuzz(case: tuple[str, bytes]) -> None:
        how, data = case
        try:
            outcomes[run_one(data)] += 1
        except Exception as exc:  # would be INTERNAL at the server
            outcomes["INTERNAL"] += 1
            key = f"{type(exc).__name__} ({how})"
            internal.setdefault(key, "".join(traceback.format_exception(exc))[-1500:])

    rounds = 0
    while time.monotonic() - started < args.seconds:
        fuzz()
        rounds += 1
    elapsed = time.monotonic() - started
    result = {
        "machine": "2-core shared box; other helpers' work ran concurrently",
        "seconds": round(elapsed, 1),
        "inputs": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "internal": outcomes.get("INTERNAL", 0),
        "internal_examples": internal,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if internal else 0


if __name__ == "__main__":
    sys.exit(main())
