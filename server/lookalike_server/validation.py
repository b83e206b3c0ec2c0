"""The one home of every request limit, and the checks that apply them.

A limit written in two modules drifts; the stores and the service import the
constants below instead of restating them. Limits a deployment tunes (images
per request, image bytes, top_k) live in :class:`~lookalike_server.config.LimitsConfig`;
the constants here are fixed by the stores' schemas or by Milvus itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lookalike_server.errors import InvalidArgument, TooLarge

if TYPE_CHECKING:  # config imports the caps below: no import back at run time
    from lookalike_server.config import LimitsConfig
    from lookalike_server.domain import InsertItem

#: Client keys are stored in a Milvus VARCHAR of this many bytes.
MAX_KEY_BYTES = 1024
#: Attribute names are used in Milvus filter expressions: identifiers only.
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_ATTR_VALUE_BYTES = 1024
MAX_ATTRIBUTES = 64
#: Milvus' own cap on ``limit`` in one search.
MAX_TOP_K = 16384
#: Milvus' own cap on a float vector's dimension.
MAX_DIM = 32768
#: FindDuplicates: largest threshold (squared L2 between normalised vectors).
#: 2 is "orthogonal"; beyond it nothing is a near-duplicate of anything.
MAX_DUPES_THRESHOLD = 2.0
#: FindDuplicates: threshold for a model whose registry entry sets none (uncalibrated: below the
#: 0.37-0.59 the shipped models calibrate to, see benchmarks/results/dupes-calibration-*.md).
DEFAULT_DUPES_THRESHOLD = 0.25
#: FindDuplicates: members per message when the request gives 0, and the most a request may ask.
DEFAULT_DUPES_PAGE = 100
MAX_DUPES_PAGE = 1000
#: FindDuplicates: distances at or below this are identical embeddings (an exact copy).
EXACT_DISTANCE = 1e-4


def check_images(images: Sequence[bytes], limits: LimitsConfig, what: str = "images") -> None:
    """At least one image, at most ``limits.max_images_per_request``."""
    limit = limits.max_images_per_request
    if not images:
        raise InvalidArgument(f"no {what} given; send at least one")
    if len(images) > limit:
        raise TooLarge(f"{len(images)} {what} in one request; the limit is {limit} (use the stream RPC)")


def check_image_bytes(image: bytes, limits: LimitsConfig, where: str = "") -> None:
    """An image no larger than ``limits.max_image_bytes``."""
    if len(image) > limits.max_image_bytes:
        prefix = f"{where}: " if where else ""
        raise TooLarge(f"{prefix}image is {len(image)} bytes; the limit is {limits.max_image_bytes}")


def check_attribute_name(name: str, what: str = "attribute name") -> None:
    """Raises InvalidArgument unless ``name`` is an identifier usable in a filter."""
    if not isinstance(name, str) or not ATTRIBUTE_NAME.match(name):
        raise InvalidArgument(f"{what} {name!r} must match {ATTRIBUTE_NAME.pattern}")


def check_key_size(key: str, where: str = "") -> None:
    """A key no longer than :data:`MAX_KEY_BYTES` in UTF-8: no item can have a longer one."""
    size = len(key.encode())
    if size > MAX_KEY_BYTES:
        prefix = f"{where}: " if where else ""
        raise InvalidArgument(f"{prefix}key is {size} bytes; the limit is {MAX_KEY_BYTES}")


def validate_item(item: InsertItem, index: int = 0) -> None:
    """Checks an item's key, image and attributes before anything is written."""
    where = f"item {index}" if index else "item"
    if not item.key:
        raise InvalidArgument(f"{where}: key is required (e.g. the image's path or URL)")
    check_key_size(item.key, where)
    if not item.image:
        raise InvalidArgument(f"{where}: image is empty")
    if len(item.attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"{where}: {len(item.attributes)} attributes; the limit is {MAX_ATTRIBUTES}")
    for name, value in item.attributes.items():
        check_attribute_name(name, f"{where}: attribute name")
        if len(value.encode()) > MAX_ATTR_VALUE_BYTES:
            raise InvalidArgument(f"{where}: attribute {name!r} is longer than {MAX_ATTR_VALUE_BYTES} bytes")


def resolve_top_k(top_k: int, limits: LimitsConfig) -> int:
    """The top_k a search uses: 0 means the default; over the cap is refused."""
    if top_k < 0:
        raise InvalidArgument(f"top_k must be >= 0 (0 = default {limits.default_top_k}); got {top_k}")
    if top_k > limits.max_top_k:
        raise InvalidArgument(f"top_k {top_k} is over the limit of {limits.max_top_k}")
    return top_k or limits.default_top_k


def check_query_vector(vector: np.ndarray, model: str, dim: int) -> np.ndarray:
    """A raw query vector as a finite, non-zero float32 row of unit length.

    The values are divided by their largest magnitude before the norm is
    taken, so huge finite values (1280 x 3e38, whose squares overflow float32)
    normalise correctly instead of being called "zero length".
    """
    vec = np.asarray(vector, dtype=np.float64).reshape(-1)
    if vec.shape[0] != dim:
        raise InvalidArgument(f"vector has {vec.shape[0]} values; model {model!r} needs {dim}")
    if not np.all(np.isfinite(vec)):
        raise InvalidArgument("vector contains NaN or infinite values")
    peak = float(np.max(np.abs(vec))) if vec.size else 0.0
    if peak == 0.0:
        raise InvalidArgument("vector has zero length (every value is 0); it has no direction to search by")
    scaled = vec / peak
    return (scaled / np.linalg.norm(scaled)).astype(np.float32)


def check_dupes_request(threshold: float, page_size: int) -> None:
    """A FindDuplicates threshold (0 = the model's default) and page size (0 = the default).

    Raises:
        InvalidArgument: Naming the bad field, its range and what 0 means.
    """
    if not np.isfinite(threshold) or not 0.0 <= threshold <= MAX_DUPES_THRESHOLD:
        raise InvalidArgument(
            f"threshold {threshold!r} is out of range: give a squared L2 distance in (0, {MAX_DUPES_THRESHOLD}] "
            "(0.05-0.3 is typical for near-duplicates), or 0 for the model's calibrated default"
        )
    if not 0 <= page_size <= MAX_DUPES_PAGE:
        raise InvalidArgument(
            f"page_size {page_size} is out of range: give 1..{MAX_DUPES_PAGE} members per message, "
            f"or 0 for {DEFAULT_DUPES_PAGE}"
        )
