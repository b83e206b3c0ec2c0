"""Turning what a caller holds into encoded image bytes, and small helpers on those bytes.

The server decodes images itself (see the proto), so the client never sends pixels: a path
is read as-is, bytes pass through untouched, and only a PIL image has to be encoded (PNG,
lossless, so the server sees exactly the pixels the caller had). Pillow is optional for the
client install; it is imported lazily and only where a PIL image or a thumbnail needs it.
"""

from __future__ import annotations

import base64
import io
import os
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from PIL import Image as PILImage

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
"""File name suffixes (lower case) taken as images when a directory is walked (``index``, ``bench``)."""

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "PILImage.Image"]
"""Anything the client accepts as an image: a file path, encoded bytes, or a PIL image."""

# Magic numbers of the formats the server accepts; enough to label a data URI without Pillow.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def _is_pil_image(obj: Any) -> bool:
    # Checked by duck type on the class's module so a client without Pillow never imports it.
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "save")


def is_image_input(obj: Any) -> bool:
    """Tells whether ``obj`` is one image (as opposed to a collection of images).

    Args:
        obj: Any object.

    Returns:
        True for a path, bytes-like object or PIL image.
    """
    return isinstance(obj, (str, os.PathLike, bytes, bytearray, memoryview)) or _is_pil_image(obj)


def encode_image(image: ImageInput) -> bytes:
    """Returns the encoded bytes to send for one image.

    Args:
        image: A path (``str`` or ``os.PathLike``) to an image file, already encoded bytes, or a
            PIL image (encoded as PNG; modes PNG cannot hold are converted to RGB/RGBA first).

    Returns:
        The encoded image bytes.

    Raises:
        FileNotFoundError: The path does not exist.
        TypeError: ``image`` is none of the accepted kinds.
    """
    if isinstance(image, bytes):
        return image
    if isinstance(image, (bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    if _is_pil_image(image):
        buf = io.BytesIO()
        img = image
        if img.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.mode else "RGB")
        img.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"expected an image path, encoded bytes or a PIL image, got {type(image).__name__}")


def sniff_mime(data: bytes) -> str:
    """Guesses the MIME type of encoded image bytes from their first bytes.

    Args:
        data: Encoded image.

    Returns:
        A MIME type such as ``"image/png"``; ``"application/octet-stream"`` if unknown.
    """
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def thumbnail(data: bytes, max_side: int = 192) -> tuple[bytes, str]:
    """Downscales an encoded image for embedding in a page, when Pillow is available.

    EXIF orientation is applied so the thumbnail looks like what the server embedded.
    Without Pillow, or if the bytes do not decode, the original bytes are returned unchanged
    (a browser will still show them, only the page gets bigger).

    Args:
        data: Encoded image.
        max_side: Longest side of the thumbnail in pixels.

    Returns:
        ``(bytes, mime)`` of the thumbnail: JPEG for opaque images, PNG when there is alpha.
    """
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return data, sniff_mime(data)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            img = ImageOps.exif_transpose(opened)
            img.thumbnail((max_side, max_side))
            has_alpha = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
            buf = io.BytesIO()
            if has_alpha:
                img.convert("RGBA").save(buf, format="PNG", optimize=True)
                return buf.getvalue(), "image/png"
            img.convert("RGB").save(buf, format="JPEG", quality=85)
            return buf.getvalue(), "image/jpeg"
    except Exception:  # any decode failure: fall back to the original bytes, never break a page
        return data, sniff_mime(data)


def data_uri(data: bytes, mime: str | None = None) -> str:
    """Returns ``data`` as a base64 ``data:`` URI.

    Args:
        data: The bytes.
        mime: MIME type; sniffed from the bytes when omitted.

    Returns:
        The URI string.
    """
    return f"data:{mime or sniff_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"
