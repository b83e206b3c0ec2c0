"""Parity between a framework model and its ONNX export, on real photos.

The photos are preprocessed by the server's own code
(:func:`lookalike_server.preprocess.preprocess`, with the entry's decode
settings: JPEG draft, EXIF orientation), not by a copy of it, so the check
covers what the server will really feed the model. How those tensors compare
with the framework's own loading is :mod:`lookalike_export.fidelity`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike_server.errors import ModelLoadError
from lookalike_server.preprocess import preprocess, to_tensor
from lookalike_server.registry import ModelEntry

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# The exporter checks the photos it is given, whatever their size: the server's
# byte and pixel limits are the server's business, not the parity check's.
_NO_LIMIT = 1 << 40


def preprocess_file(path: Path, entry: ModelEntry) -> np.ndarray:
    """One photo as the server turns it into ``entry``'s input tensor (no batch axis).

    Args:
        path: An image file.
        entry: The registry entry (its preprocessing and decode settings).

    Returns:
        float32, (3, H, W) for NCHW or (H, W, 3) for NHWC.

    Raises:
        ModelLoadError: The server could not decode the photo.
    """
    try:
        return preprocess(path.read_bytes(), entry.preprocess_spec(), max_bytes=_NO_LIMIT, max_pixels=_NO_LIMIT)
    except Exception as exc:  # InvalidArgument/TooLarge from the server's decoder, OSError
        raise ModelLoadError(f"{entry.name}: parity photo {path.name}: {exc}") from exc


def preprocess_image(img: Image.Image, entry: ModelEntry) -> np.ndarray:
    """Resize/crop and normalise an already decoded RGB image, with the server's code."""
    return to_tensor(img.convert("RGB"), entry.preprocess_spec())


def find_photos(folder: Path) -> list[Path]:
    """Lists image files under ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())


def photo_batch(paths: Sequence[Path], entry: ModelEntry) -> np.ndarray:
    """Preprocesses photos into one (N, …) float32 batch, exactly as the server would."""
    if not paths:
        raise ModelLoadError(f"{entry.name}: no photos to check parity on")
    return np.stack([preprocess_file(p, entry) for p in paths])


@dataclass(frozen=True)
class ParityReport:
    """How far an ONNX Runtime output is from the framework's.

    Attributes:
        max_abs_diff: Largest absolute difference of the raw outputs.
        max_ref: Largest absolute raw framework output (scale of the numbers).
        max_abs_diff_normalised: Largest difference after L2 normalisation,
            which is what the server stores and compares.
        cosine_min: Smallest cosine similarity between paired outputs.
        n: Number of inputs compared.
    """

    max_abs_diff: float
    max_ref: float
    max_abs_diff_normalised: float
    cosine_min: float
    n: int

    def ok(self, atol: float = 1e-4) -> bool:
        """True when raw outputs agree to ``atol`` relative to their scale (at least 1).

        Random-weight networks can produce outputs in the hundreds, where fp32
        itself has no 1e-4 absolute resolution; the tolerance therefore scales
        with ``max(1, max_ref)``. Normalised embeddings must agree to ``atol``.
        """
        return self.max_abs_diff <= atol * max(1.0, self.max_ref) and self.max_abs_diff_normalised <= atol

    def __str__(self) -> str:
        return (
            f"n={self.n} max_abs_diff={self.max_abs_diff:.3g} (max |ref| {self.max_ref:.3g}) "
            f"normalised max_abs_diff={self.max_abs_diff_normalised:.3g} min cosine={self.cosine_min:.7f}"
        )


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def compare(ref: np.ndarray, got: np.ndarray) -> ParityReport:
    """Compares two (N, dim) output arrays."""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    rn, gn = l2_normalise(ref64), l2_normalise(got64)
    return ParityReport(
        max_abs_diff=float(np.max(np.abs(ref64 - got64))),
        max_ref=float(np.max(np.abs(ref64))),
        max_abs_diff_normalised=float(np.max(np.abs(rn - gn))),
        cosine_min=float(np.min(np.sum(rn * gn, axis=1))),
        n=int(ref.shape[0]),
    )


def onnx_session(path: Path) -> object:
    """Opens a CPU ONNX Runtime session (the exporter never needs a GPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelLoadError(f"{path.name}: ONNX Runtime cannot load it ({exc})") from exc


def run_onnx(path: Path, batch: np.ndarray, input_name: str = "input", output_name: str = "embedding") -> np.ndarray:
    """Runs an ONNX file on a batch with ONNX Runtime (CPU)."""
    sess = onnx_session(path)
    return np.asarray(sess.run([output_name], {input_name: batch})[0])  # type: ignore[attr-defined]


def check_parity(
    onnx_path: Path,
    framework_fn: Callable[[np.ndarray], np.ndarray],
    batch: np.ndarray,
    *,
    name: str,
    atol: float = 1e-4,
) -> ParityReport:
    """Runs both sides on ``batch`` and raises when they disagree.

    Args:
        onnx_path: The exported model.
        framework_fn: The source framework's forward on a numpy batch.
        batch: Preprocessed real photos.
        name: Model name, for the error line.
        atol: Tolerance (see :meth:`ParityReport.ok`).

    Returns:
        The report.

    Raises:
        ModelLoadError: One line naming the model and the differences.
    """
    ref = framework_fn(batch)
    got = run_onnx(onnx_path, batch)
    if ref.shape != got.shape:
        raise ModelLoadError(f"{name}: ONNX output shape {got.shape} differs from framework's {ref.shape}")
    report = compare(ref, got)
    if not report.ok(atol):
        raise ModelLoadError(f"{name}: ONNX output differs from the framework beyond {atol}: {report}")
    return report
