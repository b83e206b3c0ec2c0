"""Parity between a framework model and its ONNX export, on real photos.

The reference preprocessing here follows the registry entry exactly as the
server applies it (``lookalike_server.preprocess``): EXIF transpose, RGB
(transparency composited on white), torchvision ``Resize(int)`` +
``CenterCrop`` arithmetic or a straight resize, scale, colour order,
``(x - mean) / std``, layout. It is written again here, on purpose, so the
exporter runs without the serving stack and a test can compare the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lookalike_server.errors import ModelLoadError
from lookalike_server.registry import ModelEntry

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def load_rgb(path: Path) -> Image.Image:
    """Opens an image as the server does: EXIF orientation, RGB, alpha on white."""
    with Image.open(path) as opened:
        im: Image.Image = ImageOps.exif_transpose(opened)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")


def preprocess_image(img: Image.Image, entry: ModelEntry) -> np.ndarray:
    """Turns an RGB image into one input tensor (no batch axis) per ``entry``.

    Args:
        img: An RGB image.
        entry: The registry entry that says how.

    Returns:
        float32, (3, H, W) for NCHW or (H, W, 3) for NHWC.
    """
    resample = _FILTERS[entry.interpolation]
    if entry.resize_shorter:
        w, h = img.size
        short, long_ = (w, h) if w <= h else (h, w)
        # torchvision Resize(int): the long side is truncated, not rounded.
        new_short, new_long = entry.resize_shorter, int(entry.resize_shorter * long_ / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample)
        # torchvision CenterCrop: offsets rounded half to even (Python round).
        top = round((new_h - entry.height) / 2.0)
        left = round((new_w - entry.width) / 2.0)
        img = img.crop((left, top, left + entry.width, top + entry.height))
    elif img.size != (entry.width, entry.height):
        img = img.resize((entry.width, entry.height), resample)
    x: np.ndarray = np.asarray(img, dtype=np.float32) * np.float32(entry.scale)
    if entry.color_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(entry.mean, np.float32)) / np.asarray(entry.std, np.float32)
    if entry.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def find_photos(folder: Path) -> list[Path]:
    """Lists image files under ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())


def photo_batch(paths: Sequence[Path], entry: ModelEntry) -> np.ndarray:
    """Preprocesses photos into one (N, …) float32 batch."""
    if not paths:
        raise ModelLoadError(f"{entry.name}: no photos to check parity on")
    return np.stack([preprocess_image(load_rgb(p), entry) for p in paths])


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
