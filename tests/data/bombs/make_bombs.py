"""Writes the decompression/aspect-ratio bomb corpus next to this file (committed; rerun to regenerate).

Each file is tiny on the wire and would cost the server a lot if decoded or
resized naively. Every one must get INVALID_ARGUMENT (tests/e2e/test_bounded_cost.py).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, rows: bytes | None = None, colour: int = 2, extra: bytes = b"") -> bytes:
    """A PNG whose header says width x height; rows default to a few zero bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    body = zlib.compress(rows if rows is not None else b"\0" * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 size rewritten."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_header(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    # The image descriptor's size too (after the global colour table).
    j = data.index(b"\x2c")
    data[j + 5 : j + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_header(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "BMP")
    data = bytearray(buf.getvalue())
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


BOMBS: dict[str, bytes] = {
    # Aspect-ratio bombs: resize_shorter(256) would make 256W x 256 before cropping.
    "png_4000x1.png": png(4000, 1, b"\0" + b"\x80" * 12000),
    "png_1x4000.png": png(1, 4000, b"\0\x80\x80\x80" * 4000),
    "png_10000000x1.png": png(10_000_000, 1),
    "png_1x10000000.png": png(1, 10_000_000),
    # Pixel bombs: over the 50-Mpx limit, a few hundred bytes each.
    "png_20000x20000.png": png(20_000, 20_000),
    "png_65535x65535_zeros.png": png(65_535, 65_535, b"\0" * 200_000),
    "jpeg_65500x65500.jpg": jpeg_header(65_500, 65_500),
    "jpeg_60000x1.jpg": jpeg_header(60_000, 1),
    "gif_65535x65535.gif": gif_header(65_535, 65_535),
    "gif_65535x1.gif": gif_header(65_535, 1),
    "bmp_100000x100000.bmp": bmp_header(100_000, 100_000),
    "bmp_negative_height.bmp": bmp_header(4, -2_000_000_000),
    # A zTXt chunk that inflates to 64 MB of text ahead of tiny pixels.
    "png_ztxt_64mb.png": png(
        8, 8, b"\0" + b"\0" * 24 * 8 + b"\0" * 7, extra=_chunk(b"zTXt", b"c\0\0" + zlib.compress(b"a" * (64 << 20), 9))
    ),
}


if __name__ == "__main__":
    for name, data in BOMBS.items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")
