"""Whole-collection reads for the duplicate walk: a batched scan and a neighbour search within a radius.

Learnt from running both backends (pymilvus 3.0.2, Milvus Lite 3.2.2, Milvus
standalone 2.3.5):

* Both answer a *range search* (``radius`` in the search parameters: for L2,
  hits with ``distance < radius``; ``range_filter`` would set a lower bound) on
  FLAT, IVF_FLAT and HNSW indexes, capped by ``limit``. Where an engine or
  index refuses it, :meth:`MilvusScans.neighbours` falls back to a top-k search
  and cuts the hits at the radius itself: same answer whenever an item has
  fewer than ``limit`` neighbours, which the caller counts.
* ``query_iterator`` pages through a collection by primary key with a filter,
  holding one batch at a time on the client, on both backends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from lookalike_server import errors
from lookalike_server.store.milvus_collections import MilvusCollections
from lookalike_server.store.milvus_filter import build_filter
from lookalike_server.store.milvus_schema import ID_FIELD, METRIC, VECTOR_FIELD, search_params
from lookalike_server.validation import MAX_TOP_K

log = logging.getLogger(__name__)

RANGE, TOPK = "range", "topk"


class MilvusScans(MilvusCollections):
    """Batched scans and radius searches over a collection (a base of ``MilvusStore``)."""

    def scan_vectors(
        self,
        collection: str,
        *,
        key_prefix: str = "",
        attributes: Mapping[str, str] | None = None,
        batch_size: int = 512,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every row the filter keeps, one batch at a time (bounded memory).

        Args:
            collection: From :meth:`ensure_collection`.
            key_prefix: Only items whose key starts with this.
            attributes: Only items with all these attribute values.
            batch_size: Rows per batch.

        Yields:
            ``(ids, vectors)``: an int64 array and a float32 ``(n, dim)`` array.

        Raises:
            errors.InvalidArgument: Bad filter fields.
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        expr = build_filter(key_prefix, attributes)
        try:
            it = self._client.query_iterator(
                collection,
                batch_size=batch_size,
                filter=expr,
                output_fields=[ID_FIELD, VECTOR_FIELD],
                timeout=self._config.timeout_s,
            )
        except Exception as exc:
            self._raise(exc, "scan", collection)
        try:
            while True:
                try:
                    rows = it.next()
                except Exception as exc:
                    self._raise(exc, "scan", collection)
                if not rows:
                    return
                ids = np.fromiter((int(r[ID_FIELD]) for r in rows), dtype=np.int64, count=len(rows))
                vectors = np.asarray([r[VECTOR_FIELD] for r in rows], dtype=np.float32)
                yield ids, vectors
        finally:
            try:
                it.close()
            except Exception as exc:  # closing a half-read iterator must not hide the real error
                log.debug("closing scan iterator of %s: %s", collection, exc)

    def neighbours(
        self,
        collection: str,
        vectors: np.ndarray,
        radius: float,
        limit: int,
        *,
        mode: str = RANGE,
        key_prefix: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> tuple[list[list[tuple[int, float]]], str]:
        """Rows within ``radius`` (squared L2, inclusive) of each query vector, nearest first.

        Args:
            collection: From :meth:`ensure_collection`.
            vectors: ``(n, dim)`` normalised query vectors.
            radius: Largest distance kept.
            limit: Most hits per query (1..16384).
            mode: ``"range"`` to try a range search, ``"topk"`` for a top-k
                search cut at ``radius``.
            key_prefix: Only items whose key starts with this.
            attributes: Only items with all these attribute values.

        Returns:
            ``(hits, mode)``: per query a list of ``(id, distance)``, and the
            mode that answered (``"topk"`` after a refused range search, so
            the caller need not try again).

        Raises:
            errors.InvalidArgument: Bad filter fields or limit.
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        if not 1 <= limit <= MAX_TOP_K:
            raise errors.InvalidArgument(f"limit must be in 1..{MAX_TOP_K}, got {limit}")
        arr = self._check_vectors(collection, vectors, "query vectors")
        if arr.shape[0] == 0:
            return [], mode
        expr = build_filter(key_prefix, attributes)
        filtered = bool(key_prefix or attributes)
        params: dict[str, Any] = search_params(self._config, self._index_type, limit, filtered=filtered)
        if mode == RANGE:
            # radius is exclusive for L2 (distance < radius): nudge it so a
            # hit exactly at the threshold counts, then cut exactly below.
            inner: dict[str, Any] = {**params["params"], "radius": float(radius) * (1 + 1e-6) + 1e-9}
            ranged = {"metric_type": METRIC, "params": inner}
            try:
                return self._cut(self._search(collection, arr, expr, limit, ranged), radius), RANGE
            except errors.Unavailable:
                raise
            except errors.ServiceError as exc:
                log.warning("range search refused on %s (%s); falling back to top-k and a cut", collection, exc)
        return self._cut(self._search(collection, arr, expr, limit, params), radius), TOPK

    def _search(self, collection: str, arr: np.ndarray, expr: str, limit: int, params: dict[str, Any]) -> Any:
        try:
            return self._client.search(
                collection,
                data=[v.tolist() for v in arr],
                filter=expr,
                limit=limit,
                output_fields=[ID_FIELD],
                search_params=params,
                anns_field=VECTOR_FIELD,
                consistency_level=self._config.consistency_level,
                timeout=self._config.timeout_s,
            )
        except Exception as exc:
            self._raise(exc, "neighbour search", collection)

    @staticmethod
    def _cut(result: Any, radius: float) -> list[list[tuple[int, float]]]:
        return [[(int(h["id"]), float(h["distance"])) for h in hits if h["distance"] <= radius] for hits in result]
