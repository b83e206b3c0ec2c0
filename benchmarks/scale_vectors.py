"""Synthetic embeddings for the scale benchmark, drawn to match real MobileNetV2 embeddings.

``benchmarks/scale.py`` needs a million 1280-d unit vectors that behave like the
server's real embeddings (how spread out they are, how far an item's nearest
neighbour is), without a million photos. This module:

1. **samples real embeddings** (:func:`real_embeddings`): each photo (the tuxpaint
   photo cut-outs and mate wallpapers of ``scripts/get_photos.py``) and a few random
   augmentations of it (crop, flip, small rotation, brightness/contrast, JPEG
   re-encoding) go through the server's own preprocessing and ONNX model
   (``models/models.toml``'s ``mobilenet_v2``), L2-normalised as Insert does;
2. **fits** (:func:`fit`) a Gaussian with mean + low-rank covariance (the top ``rank``
   principal components of the real embeddings) plus isotropic residual noise
   with the variance the components leave out;
3. **draws** (:func:`draw`): ``max(0, mean + U s g + r e)``, L2-normalised. The
   clip at zero keeps the draws non-negative like the real ones (MobileNetV2's
   pooled features come after a ReLU6). Row ``i`` always comes from chunk
   ``i // CHUNK`` with ``default_rng([seed, chunk])``, so any slice of the
   million is the same on every run and can be regenerated on its own.

:func:`nn_distances` gives the check that the draws resemble the real set: the
distance from each item to its nearest *other item* (real: the nearest
embedding of a different photo), compared at equal counts.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

CHUNK = 10_000


@dataclass(frozen=True)
class EmbeddingModel:
    """A fitted distribution of unit embeddings.

    Attributes:
        mean: ``(dim,)`` mean of the real embeddings.
        basis: ``(dim, rank)`` principal directions scaled by their standard deviations.
        residual_std: Standard deviation of the isotropic residual per dimension.
        sibling_distance: Median L2 distance between a real photo's embedding and an
            augmentation of it (what a "perturbed copy" query should look like).
        real_count: Real embeddings the fit used.
        real_nn: Real nearest-other-photo distances (:func:`nn_distances` with groups),
            kept for the resemblance check without the photos.
    """

    mean: np.ndarray
    basis: np.ndarray
    residual_std: float
    sibling_distance: float
    real_count: int
    real_nn: np.ndarray

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.mean.shape[0])

    def save(self, path: Path) -> None:
        """Writes the model as ``.npz``; float16 arrays keep the committed file small.

        :meth:`load` widens them to float32, so draws depend only on the file and the seed.
        """
        np.savez_compressed(
            path,
            mean=self.mean.astype(np.float16),
            basis=self.basis.astype(np.float16),
            real_nn=self.real_nn.astype(np.float16),
            residual_std=np.float32(self.residual_std),
            sibling_distance=np.float32(self.sibling_distance),
            real_count=np.int64(self.real_count),
        )

    @classmethod
    def load(cls, path: Path) -> EmbeddingModel:
        """Reads a model written by :meth:`save`."""
        with np.load(path) as z:
            return cls(
                z["mean"].astype(np.float32),
                z["basis"].astype(np.float32),
                float(z["residual_std"]),
                float(z["sibling_distance"]),
                int(z["real_count"]),
                z["real_nn"].astype(np.float32),
            )


# --------------------------------------------------------------- real sample --


def _augment(img: Image.Image, rng: np.random.Generator) -> bytes:
    """One random edit of the kind a near-duplicate photo has; encoded bytes."""
    w, h = img.size
    frac = rng.uniform(0.6, 0.95)
    cw, ch = max(1, int(w * frac)), max(1, int(h * frac))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = out.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.75, 1.25)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.75, 1.25)))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(40, 95)))
    return buf.getvalue()


def _photo_bytes(path: Path, augmentations: int, rng: np.random.Generator) -> list[bytes]:
    """The photo itself (PNG on white) followed by ``augmentations`` edited copies."""
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    img = Image.new("RGB", rgba.size, (255, 255, 255))
    img.paste(rgba, mask=rgba.getchannel("A"))
    img.thumbnail((640, 640))  # wallpapers are large; the model sees 224x224 anyway
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return [buf.getvalue()] + [_augment(img, rng) for _ in range(augmentations)]


def real_embeddings(
    photos: Sequence[Path], registry: Path, augmentations: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeds photos and augmentations of them with the server's own model code.

    Args:
        photos: Image files.
        registry: ``models/models.toml``.
        augmentations: Edited copies per photo.
        seed: Seed of the edits.

    Returns:
        ``(embeddings, photo_index, is_original)``: unit vectors ``(n, dim)``, the
        photo each came from, and whether it is the unedited photo.
    """
    from lookalike_server.config import BatchingConfig, LimitsConfig
    from lookalike_server.models import OnnxModel
    from lookalike_server.preprocess import preprocess
    from lookalike_server.registry_reader import load_registry

    (spec,) = load_registry(registry, BatchingConfig(), only=["mobilenet_v2"])
    model = OnnxModel(spec, ["CPUExecutionProvider"], intra_op_threads=1)
    limits = LimitsConfig()
    rng = np.random.default_rng(seed)
    vectors: list[np.ndarray] = []
    owners: list[int] = []
    originals: list[bool] = []
    for p, path in enumerate(photos):
        blobs = _photo_bytes(path, augmentations, rng)
        tensors = [
            preprocess(b, spec.preprocess, max_bytes=limits.max_image_bytes, max_pixels=limits.max_pixels)
            for b in blobs
        ]
        for start in range(0, len(tensors), 8):
            vectors += model.embed_batch(tensors[start : start + 8])
        owners += [p] * len(blobs)
        originals += [True] + [False] * augmentations
    return np.stack(vectors).astype(np.float32), np.array(owners), np.array(originals)


# ---------------------------------------------------------------- fit / draw --


def fit(embeddings: np.ndarray, owners: np.ndarray, originals: np.ndarray, rank: int) -> EmbeddingModel:
    """Mean + top-``rank`` principal components + isotropic residual.

    Args:
        embeddings: Real unit embeddings ``(n, dim)``.
        owners: Photo index of each row.
        originals: Whether each row is an unedited photo.
        rank: Principal components kept (at most ``n - 1``).

    Returns:
        The fitted model.
    """
    x = embeddings.astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    rank = min(rank, len(s) - 1)
    var = s**2 / (len(x) - 1)
    basis = vt[:rank].T * np.sqrt(var[:rank])
    residual_var = float(var[rank:].sum()) / x.shape[1]
    # Median distance original -> each of its augmentations.
    orig_of = {int(o): i for i, (o, is_o) in enumerate(zip(owners, originals, strict=True)) if is_o}
    sib = [float(np.linalg.norm(x[i] - x[orig_of[int(o)]])) for i, o in enumerate(owners) if not originals[i]]
    return EmbeddingModel(
        mean.astype(np.float32),
        basis.astype(np.float32),
        float(np.sqrt(residual_var)),
        float(np.median(sib)) if sib else 0.0,
        len(x),
        nn_distances(embeddings, owners).astype(np.float32),
    )


def _chunk(model: EmbeddingModel, seed: int, index: int) -> np.ndarray:
    """Chunk ``index`` of the stream (``CHUNK`` rows), the same on every call."""
    rng = np.random.default_rng([seed, index])
    g = rng.standard_normal((CHUNK, model.basis.shape[1]), dtype=np.float32)
    x = model.mean + g @ model.basis.T
    x += model.residual_std * rng.standard_normal(x.shape, dtype=np.float32)
    np.maximum(x, 0.0, out=x)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def draw(model: EmbeddingModel, start: int, count: int, seed: int) -> np.ndarray:
    """Rows ``start .. start + count`` of the seeded stream of synthetic unit embeddings."""
    first, last = start // CHUNK, (start + count - 1) // CHUNK
    parts = [_chunk(model, seed, c) for c in range(first, last + 1)]
    joined = np.concatenate(parts) if len(parts) > 1 else parts[0]
    off = start - first * CHUNK
    return np.ascontiguousarray(joined[off : off + count])


def stream(model: EmbeddingModel, rows: int, seed: int, batch: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, vectors)`` batches of the first ``rows`` rows, at most ``batch`` rows each.

    Draws ``batch`` rounded up to whole chunks at a time, so a small batch does not
    regenerate its chunk once per batch.
    """
    span = -(-batch // CHUNK) * CHUNK
    for block_start in range(0, rows, span):
        block = draw(model, block_start, min(span, rows - block_start), seed)
        for off in range(0, block.shape[0], batch):
            yield block_start + off, block[off : off + batch]


def perturb(model: EmbeddingModel, vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Near-duplicate queries: each vector moved by a draw-shaped step of the real sibling distance.

    The step follows the fitted covariance (so it moves along the directions
    real edits move along), scaled so that ``|q - v|`` is the median distance
    between a real photo and an augmentation of it; then re-normalised.
    """
    g = rng.standard_normal((vectors.shape[0], model.basis.shape[1]), dtype=np.float32)
    step = g @ model.basis.T + model.residual_std * rng.standard_normal(vectors.shape, dtype=np.float32)
    step *= model.sibling_distance / np.linalg.norm(step, axis=1, keepdims=True)
    q = vectors + step
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32)


def nn_distances(x: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Each row's L2 distance to its nearest other row (of another group, when groups are given)."""
    sq = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None)  # unit vectors: |a-b|^2 = 2 - 2 a.b
    np.fill_diagonal(sq, np.inf)
    if groups is not None:
        sq[groups[:, None] == groups[None, :]] = np.inf
    return np.sqrt(sq.min(axis=1))
