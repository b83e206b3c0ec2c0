"""Embedding through the Redis embedding cache, shared by insert and search."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lookalike_server.domain import RequestContext, Timing
from lookalike_server.embedder import Embedder

if TYPE_CHECKING:
    from lookalike_server.store.redis import RedisStore


class CachedEmbedder:
    """Embeds images, reading and filling the cache by content hash.

    Args:
        embedder: Batchers and preprocessing of the loaded models.
        redis: Returns the metadata store at call time (None = no cache);
            a callable so a test may swap the store underneath.
    """

    def __init__(self, embedder: Embedder, redis: Callable[[], RedisStore | None]) -> None:
        self._embedder = embedder
        self._redis = redis

    def embed(
        self,
        images: Sequence[bytes],
        shas: Sequence[str],
        models: Sequence[str],
        ctx: RequestContext,
        timing: Timing,
        ttl_s: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Vectors of each image under each model, cached ones not recomputed.

        Args:
            images: Encoded images.
            shas: Hex sha256 of each image (the cache key).
            models: Loaded model names.
            ctx: Deadline and cancellation.
            timing: Accumulates Redis and inference time.
            ttl_s: Lifetime of the entries this call adds; None = the
                configured ``redis.cache_ttl_s``; 0 = add none (read only).

        Returns:
            ``{model: (len(images), dim) float32}``.
        """
        redis = self._redis()
        specs = {m: self._embedder.models[m].spec for m in models}
        out: dict[str, np.ndarray] = {}
        todo: dict[str, list[int]] = {}
        started = time.perf_counter()
        for m, spec in specs.items():
            cached = redis.cache_get_many(spec.key, shas) if redis else [None] * len(shas)
            out[m] = np.empty((len(images), spec.dim), dtype=np.float32)
            for i, vec in enumerate(cached):
                if vec is not None and vec.shape == (spec.dim,):
                    out[m][i] = vec
                else:
                    todo.setdefault(m, []).append(i)
        timing.redis_ms += (time.perf_counter() - started) * 1e3
        if not todo:
            return out
        # One embed call for the images any model still needs, under the
        # models that need them (usually: all of them, or none).
        need = sorted({i for idx in todo.values() for i in idx})
        vectors, t = self._embedder.embed([images[i] for i in need], list(todo), ctx)
        timing.merge_max(t)
        started = time.perf_counter()
        pos = {i: k for k, i in enumerate(need)}
        for m, idx in todo.items():
            rows = vectors[m][[pos[i] for i in idx]]
            out[m][idx] = rows
            if redis is not None and ttl_s != 0:
                redis.cache_put_many(specs[m].key, [shas[i] for i in idx], rows, ttl_s)
        timing.redis_ms += (time.perf_counter() - started) * 1e3
        return out
