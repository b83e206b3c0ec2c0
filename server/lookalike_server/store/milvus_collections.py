"""Milvus collections: created with their index, loaded, and checked against the configuration.

Learnt from running both backends (pymilvus 3.0.2, Milvus Lite 3.2.2, Milvus
standalone 2.3.5):

* The index is created together with the collection, before any row, so Milvus
  never has to build it over existing data on the first search.
* Milvus Lite reopens collections in the *released* state, so
  :meth:`MilvusCollections.ensure_collection` always loads (loading is
  idempotent).
"""

from __future__ import annotations

import logging

import numpy as np
from pymilvus.exceptions import MilvusException

from lookalike_server import errors
from lookalike_server.config import MilvusConfig
from lookalike_server.store import milvus_schema as schema
from lookalike_server.store.milvus_connection import MilvusConnection
from lookalike_server.validation import MAX_DIM

log = logging.getLogger(__name__)


class MilvusCollections(MilvusConnection):
    """The collections of one Milvus, one per model version, and their dimensions.

    The base of :class:`~lookalike_server.store.milvus.MilvusStore`, which adds
    the row reads and writes.

    Args:
        config: Milvus settings (collection prefix, index, consistency, timeout).
        uri: ``http://host:port`` for a Milvus server, or a local ``*.db`` path
            for Milvus Lite.

    Raises:
        errors.Unavailable: Milvus cannot be reached.
    """

    def __init__(self, config: MilvusConfig, uri: str) -> None:
        super().__init__(config, uri)
        self._index_type = schema.choose_index_type(config, self._is_lite)
        if self._is_lite and self._index_type == "HNSW":
            log.warning(
                "HNSW on Milvus Lite: searches are ~9x slower than IVF_FLAT and a graph index may never "
                "return some stored items, even searched with their own vector (self-recall < 1 measured "
                "at M=16); prefer --milvus-index-type IVF_FLAT or FLAT on Lite"
            )
        # Dimension of each collection seen, so a write need not describe it.
        self._dims: dict[str, int] = {}

    def collection_name(self, model: str, version: str) -> str:
        """The collection holding ``model``'s vectors at ``version``.

        See :func:`~lookalike_server.store.milvus_schema.collection_name`.

        Args:
            model: Model name from the registry.
            version: Model version (changing it starts a fresh collection).

        Returns:
            ``{prefix}_{model}_v{version}``, sanitised, at most 255 characters.
        """
        return schema.collection_name(self._config.collection_prefix, model, version)

    @property
    def index_type(self) -> str:
        """The vector index this store creates: the configured one, or the backend's default."""
        return self._index_type

    def _check_index(self, name: str) -> None:
        """Says clearly when the collection's index is not the one configured.

        An index is built when the collection is created; a collection made
        by an older release (Milvus Lite then ignored every build parameter)
        or with other settings keeps its index until it is rebuilt.
        """
        try:
            info = self._client.describe_index(name, schema.VECTOR_FIELD, timeout=self._config.timeout_s)
        except MilvusException:
            return  # no such index: the caller creates ours
        got_type = str(info.get("index_type", ""))
        want = {k: str(v) for k, v in schema.build_params(self._config, self._index_type).items()}
        # Milvus Lite nests the build params under "params"; a 2.3 server returns them as
        # top-level keys of the description. Read both, or a server's index looks paramless.
        described = {**info, **dict(info.get("params") or {})}
        got = {k: str(v) for k, v in described.items() if k in want}
        if got_type != self._index_type or got != want:
            log.warning(
                "Milvus collection %s has a %s index with build params %s, not the configured %s %s; "
                "searches use it as it is. To rebuild, drop the collection (Milvus Lite: delete the "
                "data dir's milvus.db) and re-run `lookalike index`",
                name,
                got_type or "?",
                got or "{} (the engine's defaults)",
                self._index_type,
                want,
            )

    def _existing_dim(self, name: str) -> int:
        info = self._client.describe_collection(name, timeout=self._config.timeout_s)
        for f in info.get("fields", []):
            if f.get("name") == schema.VECTOR_FIELD:
                return int(f.get("params", {}).get("dim", 0))
        raise errors.ConfigError(f"Milvus collection {name!r} exists but has no {schema.VECTOR_FIELD!r} field")

    def ensure_collection(self, model: str, version: str, dim: int) -> str:
        """Creates (if needed) and loads the collection for a model version.

        Idempotent and safe to call from several servers at once: a concurrent
        creator's "already exists" is treated as success and its schema checked.
        The index is part of the create call, so it exists before any row.

        Args:
            model: Model name.
            version: Model version.
            dim: Embedding dimension of the model.

        Returns:
            The collection name.

        Raises:
            errors.ConfigError: The collection exists with another dimension.
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        if dim < 1 or dim > MAX_DIM:
            raise errors.ConfigError(f"model {model!r}: embedding dimension {dim} is outside 1..{MAX_DIM}")
        name = self.collection_name(model, version)
        timeout = self._config.timeout_s
        try:
            if not self._client.has_collection(name, timeout=timeout):
                try:
                    self._client.create_collection(
                        name,
                        schema=schema.collection_schema(dim),
                        index_params=schema.index_params(self._config, self._index_type, self._is_lite),
                        consistency_level=self._config.consistency_level,
                        timeout=timeout,
                    )
                    log.info("created Milvus collection %s (dim %d, %s)", name, dim, self._index_type)
                except MilvusException:
                    # Lost a creation race with another server? Then it exists now.
                    if not self._client.has_collection(name, timeout=timeout):
                        raise
            existing = self._existing_dim(name)
            if existing != dim:
                raise errors.ConfigError(
                    f"Milvus collection {name!r} holds {existing}-dimensional vectors but model "
                    f"{model!r} version {version!r} produces {dim}; "
                    "bump the model version or drop the collection"
                )
            if not self._client.list_indexes(name, timeout=timeout):
                # Created by something else without an index: add ours before loading.
                self._client.create_index(
                    name, schema.index_params(self._config, self._index_type, self._is_lite), timeout=timeout
                )
            self._check_index(name)
            # Lite reopens collections released; load is a no-op when loaded.
            self._client.load_collection(name, timeout=timeout)
        except (errors.ConfigError, errors.ServiceError):
            raise
        except Exception as exc:
            self._raise(exc, "ensure_collection", name)
        with self._lock:
            self._dims[name] = dim
        return name

    def _dim(self, collection: str) -> int:
        with self._lock:
            dim = self._dims.get(collection)
        if dim is None:
            try:
                dim = self._existing_dim(collection)
            except errors.ConfigError:
                raise
            except Exception as exc:
                self._raise(exc, "describe_collection", collection)
            with self._lock:
                self._dims[collection] = dim
        return dim

    def _check_vectors(self, collection: str, vectors: np.ndarray, what: str) -> np.ndarray:
        """``vectors`` as a finite float32 ``(n, dim)`` array for ``collection``.

        Raises:
            errors.InvalidArgument: Wrong shape or dimension, NaN or infinity.
        """
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        dim = self._dim(collection)
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise errors.InvalidArgument(
                f"{what} must have shape (n, {dim}) for collection {collection!r}, got {tuple(np.shape(vectors))}"
            )
        if not np.isfinite(arr).all():
            raise errors.InvalidArgument(f"{what} contain NaN or infinite values")
        return arr
