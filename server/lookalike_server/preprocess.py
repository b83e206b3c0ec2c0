"""Encoded image bytes → model input tensor, with Pillow and numpy.

Two steps, so that a query searched under several models is decoded once:

* :func:`decode_image` sniffs the format, enforces the byte and pixel limits
  *before* decoding (decompression bombs never allocate), applies EXIF
  orientation (unless the model says ``exif_orientation = false``), takes a
  GIF's first frame, composites transparency onto white, and returns an RGB
  image. For JPEG it asks libjpeg for a reduced-size decode (``draft``) when
  the image is far larger than any model needs: decoding a 12-megapixel photo
  at 1/4 scale is several times faster and the image is downsampled
  afterwards anyway (unless the model says ``jpeg_draft = false``: then every
  pixel is decoded, as the model's framework does). Which decodes a set of
  models needs is :func:`~lookalike_server.preprocess_spec.plan_decodes`.
* :func:`to_tensor` resizes/crops per a model's :class:`PreprocessSpec` and
  normalises into a float32 array in the model's channel order and layout
  (without the batch axis).

Both run on the server's preprocessing thread pool: Pillow's decoders and
resamplers, and numpy's arithmetic, release the GIL.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from lookalike_server.errors import InvalidArgument, ServiceError, TooLarge
from lookalike_server.preprocess_spec import (  # re-exported: callers know them from here
    DECODE_PRESETS,
    FILTERS,
    PRESETS,
    DecodePlan,
    PreprocessSpec,
    plan_decodes,
)

__all__ = [
    "DECODE_PRESETS",
    "PRESETS",
    "SUPPORTED_FORMATS",
    "DecodePlan",
    "ImageHeader",
    "PreprocessSpec",
    "decode_image",
    "jpeg_size",
    "plan_decodes",
    "preprocess",
    "probe_image",
    "resize_and_crop",
    "sniff_format",
    "to_tensor",
]

# Magic numbers of the formats we accept. Sniffing first gives a precise error
# ("this is text, not an image") instead of Pillow's generic one, and keeps
# Pillow's rarer (and less fuzzed) decoders out of reach of clients.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"WEBP", 8, "WEBP"),
)
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")

# The server enforces its own, configurable pixel limit from the header before
# any pixel is decoded (decode_image). Pillow's global limit would otherwise
# fire first with a message quoting *its* limit, not the one the operator set.
Image.MAX_IMAGE_PIXELS = None


def sniff_format(data: bytes) -> str:
    """Names the image format from its first bytes.

    Args:
        data: Encoded image.

    Returns:
        One of :data:`SUPPORTED_FORMATS`.

    Raises:
        InvalidArgument: Empty input or not a supported format.
    """
    if not data:
        raise InvalidArgument("image is empty (0 bytes)")
    for magic, offset, fmt in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (fmt != "WEBP" or data[:4] == b"RIFF"):
            return fmt
    head = data[:16]
    looks_like = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "unknown binary data"
    raise InvalidArgument(
        f"not a supported image: the first bytes look like {looks_like} ({head[:8]!r}); "
        f"send encoded {', '.join(SUPPORTED_FORMATS)} bytes"
    )


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding a pixel.

    Attributes:
        format: One of :data:`SUPPORTED_FORMATS`.
        width: Width in pixels.
        height: Height in pixels.
        decoded_pixels: Pixels the decoder will actually allocate (a JPEG
            decoded at draft scale costs a fraction of width*height).
    """

    format: str
    width: int
    height: int
    decoded_pixels: int

    def pixels_at(self, draft_size: tuple[int, int] | None) -> int:
        """Pixels one decode with this JPEG draft hint allocates (None: full size)."""
        scale = _draft_scale(self.width, self.height, draft_size) if self.format == "JPEG" else 1
        return -(-self.width // scale) * -(-self.height // scale)


def _draft_scale(width: int, height: int, draft_size: tuple[int, int] | None) -> int:
    """The 1/2/4/8 reduction libjpeg will use, as ``Image.draft`` computes it."""
    if draft_size is None:
        return 1
    want_w, want_h = draft_size[0] * 2, draft_size[1] * 2
    ratio = min(width // max(want_w, 1), height // max(want_h, 1))
    for scale in (8, 4, 2):
        if ratio >= scale:
            return scale
    return 1


def _check_header(fmt: str, width: int, height: int, max_pixels: int, max_aspect_ratio: float) -> None:
    """The limits that a header alone decides, with messages a person can act on."""
    if width <= 0 or height <= 0:
        raise InvalidArgument(f"{fmt} image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise TooLarge(f"{fmt} image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect_ratio:
        raise InvalidArgument(
            f"{fmt} image is {width}x{height}: aspect ratio {aspect:.0f}:1 is over the limit of "
            f"{max_aspect_ratio:g}:1; crop it to the region of interest (models see a square input)"
        )


def _open(data: bytes, fmt: str) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=[fmt])


# Pillow's own table of JPEG markers, split the way its parser treats them:
# markers followed by a length and a segment, markers that stand alone, and
# frame headers (which carry the size). Taken from Pillow so that the scan
# below walks a header exactly as the decoder will.
_JPEG_SEGMENTS = frozenset(m for m, entry in JpegImagePlugin.MARKER.items() if entry[2] is not None)
_JPEG_BARE = frozenset(m for m, entry in JpegImagePlugin.MARKER.items() if entry[2] is None)
_JPEG_FRAMES = frozenset(m for m, entry in JpegImagePlugin.MARKER.items() if entry[2] is JpegImagePlugin.SOF)
_JPEG_START_OF_SCAN = 0xFFDA


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a plainly well-formed JPEG, from its one frame header; None otherwise.

    The event loop probes every image's header before admitting it, and
    Pillow's ``Image.open`` parses every segment of a JPEG header in Python
    (quantisation tables, EXIF): 20-50 µs in a loop, about 0.13 ms of the
    loop's time a call in the server, where decoding keeps evicting it from
    the caches. This walk only steps from marker to marker (under 10 µs;
    ``benchmarks/header_probe.py``).

    It accepts only what it can read exactly as Pillow's parser reads it:
    markers back to back from the start of image to the start of scan,
    Pillow's own marker table, exactly one frame header with 8-bit samples
    and 1, 3 or 4 components. Anything else (junk between markers, a second
    frame header, a truncated segment, no start of scan) returns None and
    the caller asks Pillow, whose answer or error then stands. So the size
    admission budgets is always the size the decoder will allocate: a file
    whose first frame header said 1x1 and a later one 8000x8000 would
    otherwise be budgeted as one pixel (libjpeg happens to refuse a second
    frame header, but the budget must not rest on the decoder's strictness).
    """
    n = len(data)
    size = None
    i = 2  # after the start-of-image marker (FF D8), which sniff_format has seen
    while i + 1 < n:
        if data[i] != 0xFF:
            return None  # junk between markers: Pillow skips it; leave that to Pillow
        marker = 0xFF00 | data[i + 1]
        if marker == 0xFFFF:  # a fill byte before a marker
            i += 1
            continue
        if marker == _JPEG_START_OF_SCAN:
            return size
        if marker in _JPEG_BARE:
            i += 2
            continue
        if marker not in _JPEG_SEGMENTS or i + 4 > n:
            return None
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if end <= i + 3 or end > n:
            return None
        if marker in _JPEG_FRAMES:
            # Segment: precision, height (2), width (2), components, ...
            if size is not None or end - i < 10 or data[i + 4] != 8 or data[i + 9] not in (1, 3, 4):
                return None
            size = (int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big"))
        i = end
    return None


def probe_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_aspect_ratio: float = float("inf"),
    draft_size: tuple[int, int] | None = None,
) -> ImageHeader:
    """Reads an image's header and applies every limit a header decides.

    Cheap (no pixel is decoded): the front door calls it for admission
    before any work. A well-formed JPEG's size comes from :func:`jpeg_size`;
    every other image, and any JPEG that walk does not vouch for, is opened
    with Pillow, which reads the size lazily.

    Raises:
        InvalidArgument: Empty, unsupported or unreadable header, zero size,
            extreme aspect ratio.
        TooLarge: Over ``max_bytes`` or ``max_pixels``.
    """
    if len(data) > max_bytes:
        raise TooLarge(f"image is {len(data)} bytes; the limit is {max_bytes} bytes")
    fmt = sniff_format(data)
    size = jpeg_size(data) if fmt == "JPEG" else None
    if size is not None:
        width, height = size
    else:
        try:
            width, height = _open(data, fmt).size
        except ServiceError:
            raise
        except Exception as exc:  # a header parser must not turn bad bytes into INTERNAL
            raise _undecodable(fmt, data, exc) from None
    _check_header(fmt, width, height, max_pixels, max_aspect_ratio)
    header = ImageHeader(fmt, width, height, 0)
    return ImageHeader(fmt, width, height, header.pixels_at(draft_size))


def _undecodable(fmt: str, data: bytes, exc: BaseException) -> ServiceError:
    """Maps whatever a decoder raised to the error a client sees."""
    if isinstance(exc, MemoryError):
        return TooLarge(f"{fmt} image ({len(data)} bytes) needs more memory to decode than the server allows")
    if isinstance(exc, Image.DecompressionBombError):
        return TooLarge(f"{fmt} image is too large to decode safely: {exc}")
    reason = str(exc).split(" <_io.", 1)[0] or type(exc).__name__  # Pillow names our BytesIO: noise
    return InvalidArgument(f"cannot decode {fmt} image ({len(data)} bytes): {reason}")


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    draft_size: tuple[int, int] | None = None,
    max_aspect_ratio: float = float("inf"),
    exif_orientation: bool = True,
) -> Image.Image:
    """Decodes and validates an image, returning it in RGB.

    Args:
        data: Encoded image bytes.
        max_bytes: Largest accepted encoded size.
        max_pixels: Largest accepted width*height, checked from the header
            before any pixel is decoded.
        draft_size: For JPEG, the smallest (width, height) the caller needs;
            libjpeg may then decode at 1/2, 1/4 or 1/8 scale, keeping at least
            twice this size so the later resample still has detail. None
            decodes every pixel.
        max_aspect_ratio: Longest side / shortest side accepted.
        exif_orientation: Turn the image upright per its EXIF orientation
            tag; False keeps the stored pixel order, as Keras and
            torchvision load it.

    Returns:
        A loaded RGB image, EXIF orientation applied if asked.

    Raises:
        InvalidArgument: Empty, unsupported, truncated or corrupt input,
            zero-sized image, extreme aspect ratio. Whatever the decoder
            raises is mapped to one of these two errors, never leaked.
        TooLarge: Over ``max_bytes`` or ``max_pixels``.
    """
    if len(data) > max_bytes:
        raise TooLarge(f"image is {len(data)} bytes; the limit is {max_bytes} bytes")
    fmt = sniff_format(data)
    try:
        img = _open(data, fmt)
        width, height = img.size
        _check_header(fmt, width, height, max_pixels, max_aspect_ratio)
        if fmt == "JPEG" and draft_size is not None:
            img.draft("RGB", (draft_size[0] * 2, draft_size[1] * 2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()  # decode now, inside the try: truncation surfaces here
            if exif_orientation:
                # In place: without it, Pillow returns a full copy of the
                # decoded image even when there is nothing to turn (1.4 MB for
                # a 640x554 photo, for every request).
                ImageOps.exif_transpose(img, in_place=True)
            if img.size[0] * img.size[1] > max_pixels:  # EXIF cannot grow it, but be sure
                raise TooLarge(f"{fmt} image decodes to {img.size}; the limit is {max_pixels} pixels")
            return _to_rgb(img)
    except ServiceError:
        raise
    except Exception as exc:  # every decoder failure is the input's fault or a limit, never INTERNAL
        raise _undecodable(fmt, data, exc) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (not left as black)."""
    if img.mode == "RGB":
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resizes (and centre-crops) to the model's input size.

    Follows torchvision's ``Resize(int)`` + ``CenterCrop`` arithmetic exactly
    when ``resize_shorter`` is set, so features match a PyTorch pipeline.

    The resize never allocates more than the crop needs: the source region
    that the centre crop keeps is resized straight to the crop size (Pillow's
    ``box``), instead of resizing the whole image first. Same geometry, same
    filter, but a 4000x1 strip no longer becomes a 1,024,000x256 intermediate.
    Images of ordinary shape keep the two-step path, which is bit-exact with
    torchvision.
    """
    resample = FILTERS[spec.interpolation]
    if not spec.resize_shorter:
        if img.size != (spec.width, spec.height):
            img = img.resize((spec.width, spec.height), resample)
        return img
    w, h = img.size
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = spec.resize_shorter, int(spec.resize_shorter * long_ / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    top = round((new_h - spec.height) / 2.0)
    left = round((new_w - spec.width) / 2.0)
    if new_w * new_h > _MAX_INTERMEDIATE_FACTOR * spec.resize_shorter * spec.resize_shorter:
        # The crop's rectangle in source coordinates: resize only that.
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + spec.width) * sx, (top + spec.height) * sy)
        return img.resize((spec.width, spec.height), resample, box=box)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample)
    return img.crop((left, top, left + spec.width, top + spec.height))


# Up to this many times resize_shorter² pixels, the resize target is made
# whole (exact torchvision arithmetic); beyond it only the cropped region is.
_MAX_INTERMEDIATE_FACTOR = 4


def normalise(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Turns an RGB image of the input size into the tensor the model's graph takes.

    float32 in the model's colour order and layout, normalised; or, for a
    uint8-input graph (``input_dtype = "uint8"``), the RGB pixels as they are,
    ``(H, W, 3)`` uint8: the graph casts and normalises them itself.
    """
    if spec.input_dtype == "uint8":
        return np.array(img, dtype=np.uint8)  # a copy that owns its memory, not a view of Pillow's buffer
    pixels = np.asarray(img)  # (H, W, 3) uint8, RGB
    if spec.color_order == "BGR":
        # A copy, not the reversed view: numpy would then step 3 values at a time.
        pixels = pixels[:, :, [2, 1, 0]]
    h, w, _ = pixels.shape
    # (x * scale - mean) / std, folded into x * a - b and written straight into
    # the output, with numpy's inner loop along whole rows. Broadcasting the 3
    # channel coefficients over (H, W, 3) made it loop 3 values at a time and
    # cost about 1 ms more per 224x224 image: a server's decoding of a 640-px
    # photo for MobileNetV2 went from 5.18 to 4.31 ms (2-core EPYC,
    # benchmarks/results/c1-overhead-epyc-2026-12-07-normalise.json), for the
    # same float32 values bit for bit (tests/unit/test_preprocess.py).
    a, b = spec.affine
    if spec.layout == "NCHW":
        out = np.empty((3, h, w), np.float32)
        np.multiply(pixels.transpose(2, 0, 1), a[:, None, None], out=out)
        np.subtract(out, b[:, None, None], out=out)
        return out
    # The coefficients repeated along a row, made once per model.
    row_a, row_b = spec.affine_rows if w == spec.width else (np.tile(a, w), np.tile(b, w))
    rows = np.empty((h, w * 3), np.float32)
    np.multiply(pixels.reshape(h, w * 3), row_a, out=rows)
    np.subtract(rows, row_b, out=rows)
    return rows.reshape(h, w, 3)


def to_tensor(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize/crop then normalise: one model's input, without the batch axis."""
    return normalise(resize_and_crop(img, spec), spec)


def preprocess(data: bytes, spec: PreprocessSpec, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Decodes one image and prepares it for one model, with the model's decode settings.

    The server's path for one model (the embedder shares a decode between
    models whose settings agree, with the same result); the exporter's parity
    check calls it so that it checks what the server really computes.
    """
    img = decode_image(
        data,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        draft_size=spec.draft_size,
        exif_orientation=spec.exif_orientation,
    )
    return to_tensor(img, spec)
