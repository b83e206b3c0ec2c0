"""The embedding cache in Redis: float32 vectors by model version and content hash, with a TTL.

:class:`lookalike_server.embedding_cache.CachedEmbedder` decides when to read
and fill it; this module only stores and fetches the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import redis

from lookalike_server import errors
from lookalike_server.store.redis_connection import RedisConnection


class RedisEmbeddingCache(RedisConnection):
    """Cached embeddings (``P emb:<model_key>:<sha>``), one MGET or pipeline per batch.

    The base of :class:`~lookalike_server.store.redis.RedisStore`. With
    ``RedisConfig.embedding_cache`` off, reads miss and writes do nothing.
    """

    def _cache_key(self, model_key: str, sha: str) -> str:
        return self._keys.embedding(model_key, sha)

    def cache_get_many(self, model_key: str, shas: Sequence[str]) -> list[np.ndarray | None]:
        """Cached embeddings by content hash (one MGET; on a cluster, one per master).

        Args:
            model_key: Model name and version, e.g. ``"resnet50:1"``.
            shas: Content hashes.

        Returns:
            One float32 vector or None per hash (all None when the cache is off).
        """
        if not self._config.embedding_cache or not shas:
            return [None] * len(shas)
        self._check_open()
        try:
            keys = [self._cache_key(model_key, s) for s in shas]
            # Cache keys have no hash tag: on a cluster they span slots, which
            # one MGET refuses; mget_nonatomic sends one MGET per slot group.
            if isinstance(self._redis, redis.RedisCluster):
                values = self._redis.mget_nonatomic(keys)
            else:
                values = self._redis.mget(keys)
        except Exception as exc:
            self._raise(exc, "cache_get_many")
        # copy(): frombuffer views the immutable bytes; callers may normalise in place.
        return [np.frombuffer(cast(bytes, v), dtype=np.float32).copy() if v else None for v in values]

    def cache_put_many(
        self, model_key: str, shas: Sequence[str], vectors: np.ndarray, ttl_s: int | None = None
    ) -> None:
        """Caches embeddings (one pipeline), each with a TTL.

        Args:
            model_key: Model name and version.
            shas: Content hashes, one per row of ``vectors``.
            vectors: ``(n, dim)`` array, stored as float32 bytes.
            ttl_s: Lifetime in seconds; None = ``RedisConfig.cache_ttl_s``.
        """
        if not self._config.embedding_cache or not len(shas):
            return
        self._check_open()
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != len(shas):
            raise errors.InvalidArgument(f"cache_put_many: {len(shas)} hashes for an array of shape {arr.shape}")
        ttl = (self._config.cache_ttl_s if ttl_s is None else ttl_s) or None
        pipe = self._redis.pipeline(transaction=False)
        for sha, vec in zip(shas, arr, strict=True):
            pipe.set(self._cache_key(model_key, sha), vec.tobytes(), ex=ttl)
        try:
            pipe.execute()
        except Exception as exc:
            self._raise(exc, "cache_put_many")

    def cache_drop(self, model_keys: Sequence[str], sha: str) -> None:
        """Removes one content hash's cached embeddings under each model key (one DEL; per slot on a cluster).

        Args:
            model_keys: Model names and versions.
            sha: Content hash.
        """
        if not self._config.embedding_cache or not model_keys:
            return
        self._check_open()
        try:
            self._redis.delete(*(self._cache_key(m, sha) for m in model_keys))
        except Exception as exc:
            self._raise(exc, "cache_drop")
