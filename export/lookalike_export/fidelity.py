"""Decoding fidelity: the server's vectors against the framework's own loading, photo by photo.

The parity check (:mod:`lookalike_export.parity`) proves that ONNX Runtime
computes what the framework computes *on the same tensor*. This module asks
the other question: is the tensor the server makes from a photo
(:func:`lookalike_server.preprocess.preprocess`, with the model's decode
settings) the one the framework's own loader makes (Keras: ``load_img`` +
``preprocess_input``)? The server departs from the framework on purpose in
three known ways, each explained in the report instead of failing the export:

* ``jpeg_draft``: a large JPEG is decoded at 1/2, 1/4 or 1/8 scale;
* ``exif_orientation``: an EXIF-rotated photo is turned upright;
* transparency is composited onto white, where Keras drops the alpha channel
  (no setting changes this).

With ``decode = "exact"`` the first two do not happen, so such photos must
match; a difference no known departure explains fails the export.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike_export.parity import l2_normalise
from lookalike_server.errors import ModelLoadError
from lookalike_server.preprocess import PreprocessSpec, probe_image

#: A photo matches when every tensor element agrees to this (pixel units, after normalisation)...
TENSOR_ATOL = 1e-3
#: ...and the server's vector has at least this cosine with the framework's.
MIN_COSINE = 0.99999
_EXIF_ORIENTATION = 0x0112
_NO_LIMIT = 1 << 40


def known_departures(data: bytes, spec: PreprocessSpec, framework: str = "Keras") -> list[str]:
    """What the server does to this photo that the framework's loader does not.

    Args:
        data: The encoded photo.
        spec: The model's preprocessing (its decode settings decide).
        framework: Named in the explanations.

    Returns:
        One sentence per departure, saying which setting would remove it.
    """
    out = []
    header = probe_image(data, max_bytes=_NO_LIMIT, max_pixels=_NO_LIMIT)
    full = header.width * header.height
    drafted = header.pixels_at(spec.draft_size)
    if drafted < full:
        scale = round((full / drafted) ** 0.5)
        out.append(
            f"JPEG decoded at 1/{scale} size by the server (jpeg_draft = true); {framework} decodes every "
            'pixel; set jpeg_draft = false (or decode = "exact") to match'
        )
    with Image.open(io.BytesIO(data)) as im:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if spec.exif_orientation and orientation not in (0, 1):
        out.append(
            f"EXIF orientation {orientation} applied by the server; {framework} ignores it; "
            'set exif_orientation = false (or decode = "exact") to match'
        )
    if alpha:
        out.append(
            f"transparency composited onto white by the server; {framework} drops the alpha channel "
            "(no setting changes this)"
        )
    return out


@dataclass(frozen=True)
class PhotoFidelity:
    """One photo: the server's input and vector against the framework's.

    Attributes:
        name: File name.
        cosine: Cosine between the server's vector (ONNX Runtime on the
            server's tensor) and the framework's (the framework's model on its
            own loader's tensor).
        max_abs_diff: Largest element difference of the two input tensors.
        departures: Known reasons they differ (:func:`known_departures`).
    """

    name: str
    cosine: float
    max_abs_diff: float
    departures: tuple[str, ...]

    @property
    def matches(self) -> bool:
        """Same tensor (to :data:`TENSOR_ATOL`) and same vector (cosine ≥ :data:`MIN_COSINE`)."""
        return self.max_abs_diff <= TENSOR_ATOL and self.cosine >= MIN_COSINE

    def __str__(self) -> str:
        verdict = "matches" if self.matches else "differs: " + "; ".join(self.departures or ("UNEXPLAINED",))
        return f"{self.name}: cosine {self.cosine:.7f}, max |tensor diff| {self.max_abs_diff:.3g} — {verdict}"


@dataclass(frozen=True)
class FidelityReport:
    """Every photo's :class:`PhotoFidelity`, under one model's decode settings.

    Attributes:
        framework: Whose loader was the reference (e.g. "Keras").
        decode: The model's decode preset ("fast", "exact" or "custom").
        photos: One row per photo, in the order given.
    """

    framework: str
    decode: str
    photos: tuple[PhotoFidelity, ...]

    @property
    def unexplained(self) -> list[PhotoFidelity]:
        """Photos that differ for no known reason: a bug, and the export fails."""
        return [p for p in self.photos if not p.matches and not p.departures]

    @property
    def cosine_min(self) -> float:
        """Smallest cosine over all photos."""
        return min(p.cosine for p in self.photos)

    def __str__(self) -> str:
        matched = sum(p.matches for p in self.photos)
        head = (
            f"fidelity vs {self.framework} (decode {self.decode}): {matched}/{len(self.photos)} photos match, "
            f"min cosine {self.cosine_min:.7f}"
        )
        return "\n".join([head, *(f"  {p}" for p in self.photos)])


def fidelity_report(
    paths: Sequence[Path],
    spec: PreprocessSpec,
    *,
    server_tensors: np.ndarray,
    framework_tensors: np.ndarray,
    server_vectors: np.ndarray,
    framework_vectors: np.ndarray,
    framework: str = "Keras",
) -> FidelityReport:
    """Compares the server's inputs and vectors with the framework's, photo by photo.

    Args:
        paths: The photos, in batch order.
        spec: The model's preprocessing.
        server_tensors: ``lookalike_server.preprocess`` of each photo, (N, …).
        framework_tensors: The framework loader's tensors, same shape.
        server_vectors: ONNX Runtime's outputs on ``server_tensors``, (N, dim).
        framework_vectors: The framework model's outputs on ``framework_tensors``.
        framework: Named in the report.

    Returns:
        The report; see :func:`check_fidelity` for the verdict.
    """
    n = len(paths)
    diff = np.abs(server_tensors.reshape(n, -1).astype(np.float64) - framework_tensors.reshape(n, -1))
    cos = np.sum(
        l2_normalise(server_vectors.astype(np.float64)) * l2_normalise(framework_vectors.astype(np.float64)), axis=1
    )
    rows = tuple(
        PhotoFidelity(
            p.name, float(cos[i]), float(diff[i].max()), tuple(known_departures(p.read_bytes(), spec, framework))
        )
        for i, p in enumerate(paths)
    )
    return FidelityReport(framework, spec.decode, rows)


def check_fidelity(report: FidelityReport, *, name: str) -> FidelityReport:
    """Passes a report whose every difference is a known departure.

    Raises:
        ModelLoadError: One line naming the model and the photos that differ unexplained.
    """
    bad = report.unexplained
    if bad:
        raise ModelLoadError(
            f"{name}: the server's preprocessing differs from {report.framework}'s for no known reason "
            f"(decode {report.decode}): "
            + "; ".join(f"{p.name} cosine {p.cosine:.7f}, max |tensor diff| {p.max_abs_diff:.3g}" for p in bad)
        )
    return report
