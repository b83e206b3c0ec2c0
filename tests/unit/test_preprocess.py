"""Decoding, limits and tensor layout of the preprocessing step."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lookalike_server.errors import InvalidArgument, TooLarge
from lookalike_server.preprocess import (
    PreprocessSpec,
    decode_image,
    normalise,
    preprocess,
    resize_and_crop,
    sniff_format,
)

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 50_000_000}


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.zeros((h, w, 3), dtype=np.uint8)
    x[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    x[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    x[..., 2] = 77
    return Image.fromarray(x)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_every_supported_format_decodes_to_rgb(fmt):
    data = encode(gradient(), fmt)
    assert sniff_format(data) == fmt
    img = decode_image(data, **LIMITS)
    assert img.mode == "RGB" and img.size == (64, 48)


def test_gif_first_frame_is_used():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    img = decode_image(buf.getvalue(), **LIMITS)
    r, _g, b = img.getpixel((8, 8))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied():
    img = gradient(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(img, "JPEG", exif=exif.tobytes())
    out = decode_image(data, **LIMITS)
    assert out.size == (32, 64)


def test_decoding_an_upright_rgb_jpeg_makes_no_second_copy_of_its_pixels(monkeypatch):
    # Pillow's exif_transpose returns a full copy when there is nothing to
    # turn, unless asked to work in place: a second buffer the size of the
    # decoded image for every request.
    def no_copy(self):
        raise AssertionError("decoded pixels copied")

    data = encode(gradient(64, 32), "JPEG")
    monkeypatch.setattr(Image.Image, "copy", no_copy)
    out = decode_image(data, **LIMITS)
    assert out.mode == "RGB" and out.size == (64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6
    assert decode_image(encode(gradient(64, 32), "JPEG", exif=exif.tobytes()), **LIMITS).size == (32, 64)


def test_transparency_is_composited_onto_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    out = decode_image(encode(rgba, "PNG"), **LIMITS)
    assert out.getpixel((4, 4)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"just some text, not an image", "look like text"),
        (b"\x00\x01\x02\x03garbage", "unknown binary"),
    ],
)
def test_non_images_are_invalid_arguments(data, match):
    with pytest.raises(InvalidArgument, match=match):
        decode_image(data, **LIMITS)


def test_undecodable_image_message_names_no_python_object():
    """Pillow's "cannot identify image file <_io.BytesIO object at 0x…>" loses the object."""
    with pytest.raises(InvalidArgument) as info:
        decode_image(b"\xff\xd8\xff" + b"x" * 50, **LIMITS)
    assert info.value.message == "cannot decode JPEG image (53 bytes): cannot identify image file"


def test_truncated_jpeg_is_an_invalid_argument():
    data = encode(gradient(256, 256), "JPEG")
    with pytest.raises(InvalidArgument, match="cannot decode JPEG"):
        decode_image(data[: len(data) // 3], **LIMITS)


def test_decompression_bomb_is_refused_from_the_header():
    bomb = png_header_only(20000, 20000)
    assert len(bomb) < 200
    with pytest.raises(TooLarge, match="20000x20000"):
        decode_image(bomb, **LIMITS)


def test_zero_pixel_image_is_invalid():
    with pytest.raises(InvalidArgument):
        decode_image(png_header_only(0, 10), **LIMITS)


def test_byte_limit():
    data = encode(gradient(), "PNG")
    with pytest.raises(TooLarge, match="limit is 100 bytes"):
        decode_image(data, max_bytes=100, max_pixels=10**9)


def test_resize_and_crop_follows_torchvision_arithmetic():
    spec = PreprocessSpec(height=224, width=224, resize_shorter=256)
    out = resize_and_crop(gradient(640, 480), spec)
    assert out.size == (224, 224)
    # torchvision Resize(256) on 640x480 -> 341x256; crop offsets (58, 16).
    resized = gradient(640, 480).resize((341, 256), Image.Resampling.BILINEAR)
    expected = resized.crop((58, 16, 58 + 224, 16 + 224))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_straight_resize_when_resize_shorter_is_zero():
    spec = PreprocessSpec(height=100, width=50, resize_shorter=0, layout="NHWC")
    assert resize_and_crop(gradient(640, 480), spec).size == (50, 100)


def test_normalise_imagenet_nchw():
    spec = PreprocessSpec(height=2, width=2, resize_shorter=0)
    img = Image.new("RGB", (2, 2), (255, 0, 128))
    x = normalise(img, spec)
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    expected = (np.array([255, 0, 128]) / 255 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(x[:, 0, 0], expected, rtol=1e-6)


def test_normalise_caffe_bgr_nhwc():
    spec = PreprocessSpec(
        height=2,
        width=2,
        resize_shorter=0,
        color_order="BGR",
        layout="NHWC",
        scale=1.0,
        mean=(103.939, 116.779, 123.68),
        std=(1.0, 1.0, 1.0),
    )
    x = normalise(Image.new("RGB", (2, 2), (10, 20, 30)), spec)
    assert x.shape == (2, 2, 3)
    np.testing.assert_allclose(x[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-5)


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_normalise_gives_the_plain_formula_bit_for_bit_on_every_pixel(color_order: str, layout: str) -> None:
    """Every pixel and channel where it belongs, with the float32 values of the obvious numpy code."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # not square: rows and columns can't swap unseen
    spec = PreprocessSpec(height=5, width=7, resize_shorter=0, color_order=color_order, layout=layout)
    x = pixels.astype(np.float32)
    if color_order == "BGR":
        x = x[..., ::-1]
    a, b = spec.affine
    expected = x * a - b
    if layout == "NCHW":
        expected = expected.transpose(2, 0, 1)
    got = normalise(Image.fromarray(pixels), spec)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == spec.shape
    np.testing.assert_array_equal(got, expected)
    # And the meaning: pixel (row 1, column 4), channel "first in the model's order".
    first = pixels[1, 4, 2 if color_order == "BGR" else 0]
    value = got[0, 1, 4] if layout == "NCHW" else got[1, 4, 0]
    assert value == pytest.approx((first * spec.scale - spec.mean[0]) / spec.std[0], rel=1e-5)


def test_preprocess_shape_matches_spec():
    spec = PreprocessSpec()
    x = preprocess(encode(gradient(300, 200), "JPEG"), spec, **LIMITS)
    assert x.shape == spec.shape == (3, 224, 224)


def test_large_jpeg_uses_reduced_decode_but_keeps_enough_pixels():
    big = encode(gradient(2400, 1800), "JPEG")
    img = decode_image(big, draft_size=(256, 256), **LIMITS)
    assert 512 <= min(img.size) < 1800


@pytest.mark.parametrize(
    "kwargs",
    [
        {"layout": "CHW"},
        {"color_order": "RGBA"},
        {"std": (1.0, 0.0, 1.0)},
        {"interpolation": "cubic"},
        {"resize_shorter": 100},
    ],
)
def test_invalid_specs_are_rejected(kwargs):
    with pytest.raises(ValueError):
        PreprocessSpec(**kwargs)


def test_empty_query_image_says_empty_not_needs_one_of():
    from lookalike.v1 import lookalike_pb2 as pb
    from lookalike_server.proto_convert import search_query

    req = pb.SearchRequest(image=b"")
    assert req.WhichOneof("query") == "image"  # proto3 oneof members keep presence
    with pytest.raises(InvalidArgument, match="query image is empty"):
        search_query(req)


# ------------------------------------------------- bounded cost (issue 9) --
def test_aspect_ratio_bombs_are_invalid_argument_with_an_actionable_message():
    for w, h in ((4000, 1), (1, 4000), (10_000_000, 1), (1, 10_000_000)):
        with pytest.raises(InvalidArgument) as info:
            decode_image(png_header_only(w, h), **LIMITS, max_aspect_ratio=32)
        assert f"{w}x{h}" in info.value.message and "crop it" in info.value.message


def test_resize_of_a_strip_only_resizes_what_the_crop_keeps():
    """A 4000x1 strip (aspect limit off) is resized straight to the crop: no 1,024,000x256 intermediate."""
    spec = PreprocessSpec()
    strip = Image.fromarray(np.tile(np.arange(4000, dtype=np.uint8)[None, :, None], (1, 1, 3)))
    out = resize_and_crop(strip, spec)
    assert out.size == (224, 224)
    # Ordinary shapes keep the exact two-step (torchvision) path.
    img = gradient(300, 200)
    two_step = img.resize((384, 256), Image.Resampling.BILINEAR).crop((80, 16, 304, 240))
    assert np.array_equal(np.asarray(resize_and_crop(img, spec)), np.asarray(two_step))


def test_box_resize_matches_the_two_step_result_closely():
    spec = PreprocessSpec()
    img = gradient(2000, 200)  # aspect 10: intermediate 2560x256 > 4 x 256^2, so the box path runs
    two_step = img.resize((2560, 256), Image.Resampling.BILINEAR).crop((1168, 16, 1392, 240))
    got = np.asarray(resize_and_crop(img, spec), dtype=np.int16)
    assert np.abs(got - np.asarray(two_step, dtype=np.int16)).max() <= 2


def test_probe_reads_only_the_header_and_counts_draft_pixels():
    from lookalike_server.preprocess import probe_image

    data = encode(gradient(4000, 3000), "JPEG")
    h = probe_image(data, **LIMITS, draft_size=(256, 256))
    assert (h.format, h.width, h.height) == ("JPEG", 4000, 3000)
    assert h.decoded_pixels == 1000 * 750  # libjpeg decodes at 1/4 scale


def test_decoder_exceptions_never_escape_unmapped():
    # Truncated in the middle of the header, and garbage after a valid signature.
    for data in (png_header_only(64, 64)[:20], b"\x89PNG\r\n\x1a\n" + b"\xff" * 40, b"GIF89a\xff\xff"):
        with pytest.raises(InvalidArgument):
            decode_image(data, **LIMITS)


def test_fair_executor_serves_requests_round_robin():
    import threading

    from lookalike_server.embedder import FairExecutor

    pool = FairExecutor(1, "test")
    gate = threading.Event()
    order: list[str] = []
    first = pool.submit("big", lambda: (gate.wait(5), order.append("big0")))
    for i in range(1, 10):
        pool.submit("big", order.append, f"big{i}")
    small = pool.submit("small", order.append, "small0")
    gate.set()
    small.result(5)
    first.result(5)
    assert order.index("small0") <= 2, order  # not after all ten of the big request
    pool.shutdown()
