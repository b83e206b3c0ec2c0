"""The front door's JPEG header walk (``preprocess.jpeg_size``) against Pillow's parser.

Admission budgets memory by the size the header walk reports, and the decoder
allocates by the size Pillow reads. These tests hold the walk to one rule:
when it answers, it answers what Pillow does; when a header is anything but
plain, it leaves the answer (or the error) to Pillow.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from lookalike_server import preprocess
from lookalike_server.errors import InvalidArgument, TooLarge
from lookalike_server.preprocess import decode_image, jpeg_size, probe_image

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 50_000_000}
DATA = Path(__file__).resolve().parents[1] / "data"


def encode(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def pillow_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data), formats=["JPEG"]).size


def sof(width: int, height: int, components: int = 3) -> bytes:
    """A baseline frame header segment (SOF0) for a ``width`` x ``height`` image."""
    body = bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([components])
    body += b"".join(bytes([c + 1, 0x11, 0]) for c in range(components))
    return b"\xff\xc0" + (len(body) + 2).to_bytes(2, "big") + body


def segments(data: bytes) -> list[tuple[int, int]]:
    """(offset, end) of each marker segment from the start of image to the start of scan, as far as they parse."""
    out, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        if data[i + 1] == 0xDA:
            out.append((i, i + 2))
            break
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        out.append((i, end))
        i = end
    return out


def variants() -> list[bytes]:
    """Real photos, the committed JPEG bombs, and what Pillow's encoder writes in its modes."""
    found = [p.read_bytes() for p in sorted((DATA / "photos").glob("*.jpg"))]
    found += [p.read_bytes() for p in sorted((DATA / "bombs").glob("*.jpg"))]
    rgb = Image.effect_mandelbrot((97, 61), (-2, -1.2, 1, 1.2), 50).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    found += [
        encode(rgb),
        encode(rgb, progressive=True),
        encode(rgb, optimize=True, subsampling=0, quality=95),
        encode(rgb, exif=exif.tobytes(), comment=b"a comment", dpi=(300, 300)),
        encode(rgb, icc_profile=b"\0" * 3000),
        encode(rgb.convert("L")),
        encode(rgb.convert("CMYK")),
        encode(rgb.resize((1, 4000))),
    ]
    return found


def test_reads_what_pillow_reads_on_real_photos_bombs_and_pillows_encoder_modes():
    cases = variants()
    assert len(cases) >= 15
    for data in cases:
        assert jpeg_size(data) == pillow_size(data)


def test_a_plain_jpeg_is_probed_without_opening_it_in_pillow(monkeypatch: pytest.MonkeyPatch):
    data = encode(Image.new("RGB", (300, 200), "red"))

    def no_pillow(*_a: object) -> Image.Image:
        raise AssertionError("Pillow opened a plain JPEG's header")

    monkeypatch.setattr(preprocess, "_open", no_pillow)
    header = probe_image(data, **LIMITS)
    assert (header.width, header.height) == (300, 200)
    # Any other image still goes to Pillow (so the patch above is the one probe_image uses).
    png = io.BytesIO()
    Image.new("RGB", (30, 20)).save(png, "PNG")
    with pytest.raises(InvalidArgument, match="Pillow opened"):
        probe_image(png.getvalue(), **LIMITS)


@pytest.mark.parametrize("first", [(1, 1), (8000, 6000)])
def test_a_second_frame_header_is_left_to_pillow_so_admission_budgets_what_the_decoder_allocates(first):
    # A crafted file: an extra frame header after the start of image. Pillow
    # keeps the last one it reads; budgeting the first (1x1) would let a
    # client past the pixel budget with images that decode at full size.
    real = encode(Image.new("RGB", (640, 480), "blue"))
    crafted = real[:2] + sof(*first) + real[2:]
    assert jpeg_size(crafted) is None
    assert pillow_size(crafted) == (640, 480)
    header = probe_image(crafted, **LIMITS)
    assert (header.width, header.height) == (640, 480)
    with pytest.raises(InvalidArgument):  # libjpeg refuses a second frame header outright
        decode_image(crafted, **LIMITS)
    # ... and a later, larger frame header is budgeted at its size, or refused.
    start_of_scan = segments(real)[-1][0]
    grown = real[:start_of_scan] + sof(20_000, 20_000) + real[start_of_scan:]
    assert jpeg_size(grown) is None
    with pytest.raises(TooLarge):
        probe_image(grown, **LIMITS)


def test_junk_between_markers_and_truncated_headers_are_left_to_pillow():
    real = encode(Image.new("RGB", (64, 48), "green"))
    first_end = segments(real)[0][1]
    junk = real[:first_end] + b"junk" + real[first_end:]
    assert jpeg_size(junk) is None
    assert (probe_image(junk, **LIMITS).width, probe_image(junk, **LIMITS).height) == pillow_size(junk)
    for cut in range(2, segments(real)[-1][0] + 1):
        assert jpeg_size(real[:cut]) is None
    with pytest.raises(InvalidArgument):
        probe_image(real[:40], **LIMITS)


def test_mutated_headers_never_get_a_size_pillow_disagrees_with():
    """Random damage to real headers: the walk answers Pillow's size or None, never another size."""
    rng = random.Random(12)
    bases = variants()[:8]
    answered = declined = decoder_refused = 0
    for n in range(3000):
        data = bytearray(rng.choice(bases))
        header_end = segments(bytes(data))[-1][1]
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            pos = rng.randrange(2, header_end)
            if kind < 0.5:
                data[pos] = rng.randrange(256)
            elif kind < 0.7:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
            elif kind < 0.85:
                del data[pos : pos + rng.randint(1, 6)]
            else:
                offset, _ = rng.choice(segments(bytes(data)) or [(2, 2)])
                data[offset:offset] = sof(rng.randint(0, 65_535), rng.randint(0, 65_535), rng.choice((1, 3, 4)))
        data = bytes(data)
        size = jpeg_size(data)
        if size is None:
            declined += 1
            continue
        answered += 1
        try:
            expected = pillow_size(data)
        except Exception:
            # Pillow refuses what the walk read: the decoder refuses it too,
            # with the status a bad image gets (after admission, not before).
            decoder_refused += 1
            with pytest.raises((InvalidArgument, TooLarge)):
                decode_image(data, **LIMITS)
            continue
        assert size == expected, f"mutation {n}: walk read {size}, Pillow {expected}"
    # Both branches were exercised (not a test that passes by declining everything).
    assert answered > 500 and declined > 500, (answered, declined, decoder_refused)
