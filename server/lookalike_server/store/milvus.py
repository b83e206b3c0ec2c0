"""Vector store over Milvus: one collection per model version.

Works unchanged against Milvus Lite (a local ``*.db`` path) and a Milvus server
(``http://host:19530``). :class:`MilvusStore` adds the row reads and writes to
the layers below it, each in its own module:

* :mod:`.milvus_schema`: collection names, fields, index and search parameters;
* :mod:`.milvus_filter`: filter expressions from typed fields, portable across
  Milvus versions;
* :mod:`.milvus_connection`: the client, and every pymilvus / gRPC exception
  translated into the server's error family (:mod:`lookalike_server.errors`),
  so nothing above the store ever sees a dependency's exception;
* :mod:`.milvus_collections`: collections created with their index, loaded and
  checked;
* :mod:`.milvus_scan`: batched scans and radius searches (the duplicate walk).

Milvus Lite scans unflushed rows slowly, hence the flush policy
(``MilvusConfig.flush_rows``). On a Milvus server one flush costs about half a
second and is not needed for search speed, so deployments on a server should
raise ``flush_rows`` or set it to 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lookalike_server import errors
from lookalike_server.config import MilvusConfig
from lookalike_server.store.milvus_connection import short_error
from lookalike_server.store.milvus_filter import build_filter
from lookalike_server.store.milvus_scan import MilvusScans
from lookalike_server.store.milvus_schema import (
    ATTRS_FIELD,
    ID_FIELD,
    KEY_FIELD,
    KEY_MAX_BYTES,
    VECTOR_FIELD,
    search_params,
)
from lookalike_server.validation import ATTRIBUTE_NAME, MAX_TOP_K

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchHit:
    """One search result.

    Attributes:
        id: Item id (the Milvus primary key, equal to the Redis record id).
        distance: Squared L2 distance as Milvus reports it (0 = identical).
    """

    id: int
    distance: float


class MilvusStore(MilvusScans):
    """Vectors of items, one collection per model version.

    Thread-safe: the pymilvus client multiplexes calls over one gRPC channel,
    and the only state here (dimension cache, unflushed-row counters) is
    guarded by a lock.

    Args:
        config: Milvus settings (token, database, index, consistency, flush policy, timeout).
        uri: ``http://host:port`` (``https://`` for TLS) for a Milvus server, or
            a local ``*.db`` path for Milvus Lite.

    Raises:
        errors.Unavailable: Milvus cannot be reached.
    """

    def __init__(self, config: MilvusConfig, uri: str) -> None:
        super().__init__(config, uri)
        # flush_rows < 0 = auto: flush every write on Lite (it scans unflushed
        # rows slowly), never explicitly on a server (it seals segments itself,
        # and one flush costs ~0.5 s there).
        self._flush_rows = config.flush_rows if config.flush_rows >= 0 else (1 if self._is_lite else 0)
        self._unflushed: dict[str, int] = {}

    # ------------------------------------------------------------------ writes

    def insert(
        self,
        collection: str,
        ids: Sequence[int],
        vectors: np.ndarray,
        keys: Sequence[str],
        attributes: Sequence[Mapping[str, str]],
    ) -> None:
        """Writes rows with upsert semantics, so retrying a failed call is safe.

        Args:
            collection: From :meth:`ensure_collection`.
            ids: Item ids (one per row).
            vectors: ``(n, dim)`` float array.
            keys: Client keys (at most 1024 UTF-8 bytes each).
            attributes: String attributes per row.

        Raises:
            errors.InvalidArgument: Lengths disagree, wrong dimension, NaN,
                a key too long, or an attribute that is not ``str -> str``
                with an identifier name.
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        arr = self._check_vectors(collection, vectors, "vectors")
        n = arr.shape[0]
        if not (len(ids) == n == len(keys) == len(attributes)):
            raise errors.InvalidArgument(
                f"insert needs one id, key and attribute map per vector: got {len(ids)} ids, {n} vectors, "
                f"{len(keys)} keys, {len(attributes)} attribute maps"
            )
        if n == 0:
            return
        rows = []
        for item_id, vec, key, attrs in zip(ids, arr, keys, attributes, strict=True):
            if len(key.encode("utf-8")) > KEY_MAX_BYTES:
                raise errors.InvalidArgument(f"key of item {item_id} exceeds {KEY_MAX_BYTES} UTF-8 bytes")
            for name, value in attrs.items():
                if not ATTRIBUTE_NAME.match(name) or not isinstance(value, str):
                    raise errors.InvalidArgument(
                        f"attribute {name!r} of item {item_id}: names must be identifiers, values strings"
                    )
            rows.append({ID_FIELD: int(item_id), VECTOR_FIELD: vec.tolist(), KEY_FIELD: key, ATTRS_FIELD: dict(attrs)})
        try:
            with self._write_lock:
                self._client.upsert(collection, rows, timeout=self._config.timeout_s)
        except Exception as exc:
            self._raise(exc, f"upsert of {n} rows", collection)
        self._wrote(collection, n)

    def delete(self, collection: str, ids: Sequence[int]) -> None:
        """Deletes rows by id; ids that do not exist are ignored (idempotent).

        Args:
            collection: From :meth:`ensure_collection`.
            ids: Item ids.

        Raises:
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        id_list = [int(i) for i in ids]
        if not id_list:
            return
        try:
            with self._write_lock:
                self._client.delete(collection, ids=id_list, timeout=self._config.timeout_s)
        except Exception as exc:
            self._raise(exc, f"delete of {len(id_list)} ids", collection)
        self._wrote(collection, len(id_list))

    def _wrote(self, collection: str, rows: int) -> None:
        """Applies the flush policy after a write of ``rows`` rows."""
        threshold = self._flush_rows
        if threshold == 0:
            return
        with self._lock:
            pending = self._unflushed.get(collection, 0) + rows
            due = pending >= threshold
            self._unflushed[collection] = 0 if due else pending
        if due:
            self.flush(collection)

    def flush(self, collection: str | None = None) -> None:
        """Seals unflushed rows of one collection, or of every one written to.

        Args:
            collection: The collection, or None for all with unflushed writes.

        Raises:
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        with self._lock:
            if collection is None:
                names = [c for c, n in self._unflushed.items() if n] or list(self._dims)
            else:
                names = [collection]
            for name in names:
                self._unflushed[name] = 0
        for name in names:
            try:
                with self._write_lock:
                    self._client.flush(name, timeout=self._config.timeout_s)
            except Exception as exc:
                self._raise(exc, "flush", name)

    # ------------------------------------------------------------------- reads

    def _consistency(self, override: str | None) -> str:
        if override is None:
            return self._config.consistency_level
        if override not in ("Strong", "Bounded", "Session", "Eventually"):
            raise errors.InvalidArgument(
                f"consistency level must be Strong, Bounded, Session or Eventually, got {override!r}"
            )
        return override

    def search(
        self,
        collection: str,
        vectors: np.ndarray,
        top_k: int,
        *,
        key_prefix: str = "",
        attributes: Mapping[str, str] | None = None,
        exclude_ids: Sequence[int] = (),
        consistency_level: str | None = None,
    ) -> list[list[SearchHit]]:
        """Nearest neighbours of each query vector.

        Args:
            collection: From :meth:`ensure_collection`.
            vectors: ``(n, dim)`` (or ``(dim,)``) query vectors.
            top_k: Hits wanted per query (1..16384).
            key_prefix: Only items whose key starts with this.
            attributes: Only items with all these attribute values.
            exclude_ids: Never return these ids.
            consistency_level: Override of the configured level for this call,
                e.g. "Strong" when a client needs to see its own writes. On a
                Milvus server Strong waits for the next time tick (~200 ms per
                search); Bounded may miss writes of the last few seconds and
                still return rows deleted in that window.

        Returns:
            One list per query row, nearest first, with squared L2 distances.

        Raises:
            errors.InvalidArgument: Bad top_k, vectors or filter fields.
            errors.FailedPrecondition: The collection does not exist.
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        if not 1 <= top_k <= MAX_TOP_K:
            raise errors.InvalidArgument(f"top_k must be in 1..{MAX_TOP_K}, got {top_k}")
        arr = self._check_vectors(collection, vectors, "query vectors")
        expr = build_filter(key_prefix, attributes, exclude_ids)
        if arr.shape[0] == 0:
            return []
        try:
            result = self._client.search(
                collection,
                data=[v.tolist() for v in arr],
                filter=expr,
                limit=top_k,
                # Only the primary key: the service joins metadata from Redis.
                output_fields=[ID_FIELD],
                search_params=search_params(
                    self._config, self._index_type, top_k, filtered=bool(key_prefix or attributes)
                ),
                anns_field=VECTOR_FIELD,
                consistency_level=self._consistency(consistency_level),
                timeout=self._config.timeout_s,
            )
        except Exception as exc:
            self._raise(exc, "search", collection)
        return [[SearchHit(int(h["id"]), float(h["distance"])) for h in hits] for hits in result]

    def get_vectors(
        self, collection: str, ids: Sequence[int], *, consistency_level: str | None = None
    ) -> dict[int, np.ndarray]:
        """Stored vectors by id.

        Args:
            collection: From :meth:`ensure_collection`.
            ids: Item ids.
            consistency_level: Override of the configured level for this call.

        Returns:
            ``{id: float32 vector}``; ids without a row are absent.

        Raises:
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        id_list = sorted({int(i) for i in ids})
        if not id_list:
            return {}
        try:
            rows = self._client.query(
                collection,
                ids=id_list,
                output_fields=[ID_FIELD, VECTOR_FIELD],
                consistency_level=self._consistency(consistency_level),
                timeout=self._config.timeout_s,
            )
        except Exception as exc:
            self._raise(exc, "get_vectors", collection)
        return {int(r[ID_FIELD]): np.asarray(r[VECTOR_FIELD], dtype=np.float32) for r in rows}

    def count(self, collection: str) -> int:
        """Number of live rows (deleted and overwritten rows not counted).

        Uses ``count(*)`` with Strong consistency rather than the collection
        statistics, which count every row ever written, deletes included.

        Raises:
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        try:
            rows = self._client.query(
                collection,
                filter="",
                output_fields=["count(*)"],
                consistency_level="Strong",
                timeout=self._config.timeout_s,
            )
        except Exception as exc:
            self._raise(exc, "count", collection)
        return int(rows[0]["count(*)"])

    def existing_ids(self, collection: str, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` have a row, read with Strong consistency (the verify sweep).

        Strong, because a row written a moment ago must not look missing: the
        sweep would otherwise un-list a model that is in fact stored.

        Raises:
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        id_list = sorted({int(i) for i in ids})
        if not id_list:
            return set()
        try:
            rows = self._client.query(
                collection,
                ids=id_list,
                output_fields=[ID_FIELD],
                consistency_level="Strong",
                timeout=self._config.timeout_s,
            )
        except Exception as exc:
            self._raise(exc, "existing_ids", collection)
        return {int(r[ID_FIELD]) for r in rows}

    # --------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Flushes pending writes (best effort) and closes the client. Idempotent."""
        if self._closed:
            return
        with self._lock:
            pending = [c for c, n in self._unflushed.items() if n]
        for name in pending:
            try:
                self._client.flush(name, timeout=self._config.timeout_s)
            except Exception as exc:  # closing must not fail on an unreachable server
                log.warning("flush of %s at close failed: %s", name, short_error(exc))
        super().close()
