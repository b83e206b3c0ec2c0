"""The application core in plain Python types: the facade the gRPC servicer calls.

Each concern lives in the module named for it:

* :mod:`lookalike_server.validation` — every request limit, in one place;
* :mod:`lookalike_server.ingest` — Insert, Delete, the write protocol and the
  repair sweep, with the invariant they keep:

  **an insert acknowledged OK (created or not) is stored complete and found
  by a search with its own vector under every model it lists; a complete
  record always has its rows; no pending record outlives its owner's lease;
  no id is ever reused; a retry returns the same id;**
* :mod:`lookalike_server.lease` — this server instance's lease and in-flight attempts;
* :mod:`lookalike_server.repair` — the sweep (unfinished records, complete ones without rows);
* :mod:`lookalike_server.query` — Search and Get;
* :mod:`lookalike_server.dupes` — FindDuplicates (near-duplicate groups);
* :mod:`lookalike_server.embedding_cache` — embedding through the cache.

A server without stores (``stores = false``) is *embed-only*: it has no
:class:`~lookalike_server.store.Stores`, and every data-plane call fails in
one place (:meth:`LookalikeService._data`) with FAILED_PRECONDITION.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lookalike_server.config import Config
from lookalike_server.domain import (
    InsertItem,
    InsertResult,
    ItemView,
    ModelHits,
    RequestContext,
    SearchOutcome,
    SearchQuery,
    Timing,
)
from lookalike_server.embedder import Embedder
from lookalike_server.embedding_cache import CachedEmbedder
from lookalike_server.errors import FailedPrecondition, InvalidArgument, Unavailable
from lookalike_server.models import OnnxModel
from lookalike_server.validation import check_images

if TYPE_CHECKING:
    from lookalike_server.admission import Permit
    from lookalike_server.batching import BatcherStats
    from lookalike_server.domain import DupesQuery, DupesSummary, GroupPage
    from lookalike_server.dupes import DuplicateFinder
    from lookalike_server.ingest import Ingestor
    from lookalike_server.query import Searcher
    from lookalike_server.repair import Repairer
    from lookalike_server.store import Stores
    from lookalike_server.store.milvus import MilvusStore
    from lookalike_server.store.redis import RedisStore


@dataclass(frozen=True)
class ModelView:
    """A loaded model as ListModels shows it."""

    name: str
    model: OnnxModel
    collection: str


@dataclass
class _DataPlane:
    """What a server with stores has and an embed-only one lacks."""

    stores: Stores
    ingest: Ingestor
    query: Searcher
    repair: Repairer
    dupes: DuplicateFinder


class LookalikeService:
    """The application core; the gRPC servicer is a thin adapter over it.

    Args:
        config: Server configuration.
        embedder: Batchers and preprocessing for the loaded models.
        milvus: Vector store, or None (with ``redis``) for an embed-only server.
        redis: Metadata store, or None (with ``milvus``) for an embed-only server.
        lease_s: Lease of this server instance on its in-flight inserts.
    """

    def __init__(
        self,
        config: Config,
        embedder: Embedder,
        milvus: MilvusStore | None,
        redis: RedisStore | None,
        *,
        lease_s: float | None = None,
    ) -> None:
        self.config = config
        self.embedder = embedder
        self.collections: dict[str, str] = {}
        self._plane: _DataPlane | None = None
        if (milvus is None) != (redis is None):
            raise ValueError("give both stores (a full server) or neither (embed-only)")
        if milvus is not None and redis is not None:
            # Imported here: an embed-only server never loads the store clients.
            from lookalike_server.dupes import DuplicateFinder
            from lookalike_server.ingest import Ingestor
            from lookalike_server.lease import DEFAULT_LEASE_S
            from lookalike_server.query import Searcher
            from lookalike_server.repair import Repairer
            from lookalike_server.store import Stores

            for name, model in embedder.models.items():
                self.collections[name] = milvus.ensure_collection(name, model.spec.version, model.spec.dim)
            stores = Stores(milvus, redis)
            cached = CachedEmbedder(embedder, lambda: stores.redis)
            ingest = Ingestor(config, stores, embedder.models, self.collections, cached, lease_s or DEFAULT_LEASE_S)
            query = Searcher(config, stores, embedder, cached, ingest)
            dupes = DuplicateFinder(config, stores, embedder, ingest)
            self._plane = _DataPlane(stores, ingest, query, Repairer(ingest), dupes)

    # ------------------------------------------------------------ access --
    @property
    def embed_only(self) -> bool:
        """True for a server without stores."""
        return self._plane is None

    def _data(self) -> _DataPlane:
        if self._plane is None:
            raise FailedPrecondition(
                "this server runs without Milvus/Redis (stores = false): only ListModels and Embed are served"
            )
        return self._plane

    @property
    def milvus(self) -> MilvusStore | None:
        """The vector store (None when embed-only). Settable, for fault-injection tests."""
        return None if self._plane is None else self._plane.stores.milvus

    @milvus.setter
    def milvus(self, store: MilvusStore) -> None:
        self._data().stores.milvus = store

    @property
    def redis(self) -> RedisStore | None:
        """The metadata store (None when embed-only). Settable, for fault-injection tests."""
        return None if self._plane is None else self._plane.stores.redis

    @redis.setter
    def redis(self, store: RedisStore) -> None:
        self._data().stores.redis = store

    @property
    def ingestor(self) -> Ingestor:
        """The write side (raises when embed-only)."""
        return self._data().ingest

    @property
    def models(self) -> dict[str, OnnxModel]:
        """Loaded models by name."""
        return self.embedder.models

    def model_views(self) -> list[ModelView]:
        """Every loaded model with its collection ("" when embed-only), for ListModels."""
        return [ModelView(name, model, self.collections.get(name, "")) for name, model in self.models.items()]

    def batcher_stats(self, reset: bool = False) -> dict[str, BatcherStats]:
        """Each model's batcher counters since the last reset, for GetStats.

        Args:
            reset: Start a new window (the monotonic totals keep counting).
        """
        return self.embedder.stats(reset=reset)

    # ------------------------------------------------------------- calls --
    def admit(self, images: Sequence[bytes], models: Sequence[str], ctx: RequestContext) -> Permit | None:
        """Front-door admission: headers read, budgets taken, or refused before any decoding.

        The servicer calls it on the event loop, before the call's work goes
        to a thread, so a refused call costs no thread and no decoding.

        Args:
            images: The call's (or stream item's) encoded images.
            models: Requested model names (empty = all loaded).
            ctx: The call's context (its deadline bounds the expected wait).

        Returns:
            A permit to release when the work ends, or None when there are no images.

        Raises:
            ModelNotFound: A model that is not loaded.
            InvalidArgument: An image that is not one (TooLarge: one past a size limit).
            Overloaded: The budgets cannot take the images now, or not before the deadline.
        """
        if not images:
            return None
        names = self.embedder.require(list(models))
        return self.embedder.admission.admit(images, names, remaining_s=ctx.remaining())

    def embed(self, images: Sequence[bytes], model: str, ctx: RequestContext) -> tuple[np.ndarray, Timing]:
        """Embeds images with one model; nothing is stored."""
        name = self._embed_model(images, model)
        started = time.perf_counter()
        vectors, timing = self.embedder.embed(images, [name], ctx)
        timing.total_ms = (time.perf_counter() - started) * 1e3
        return vectors[name], timing

    async def embed_async(
        self, images: Sequence[bytes], model: str, ctx: RequestContext, work_done: Callable[[], None] | None = None
    ) -> tuple[np.ndarray, Timing]:
        """:meth:`embed` on the event loop (:meth:`.Embedder.embed_async`).

        ``work_done`` is called once when the work this call queued has ended
        (at once if the request is refused before any was queued).
        """
        try:
            name = self._embed_model(images, model)
        except BaseException:
            if work_done is not None:
                work_done()
            raise
        started = time.perf_counter()
        vectors, timing = await self.embedder.embed_async(images, [name], ctx, work_done)
        timing.total_ms = (time.perf_counter() - started) * 1e3
        return vectors[name], timing

    def _embed_model(self, images: Sequence[bytes], model: str) -> str:
        """Embed's checks: a loaded model named, images within the limits."""
        if not model:
            raise InvalidArgument(f"model is required; loaded models: {sorted(self.models)}")
        (name,) = self.embedder.require([model])
        check_images(images, self.config.limits)
        return name

    def insert(
        self, items: Sequence[InsertItem], models: Sequence[str], ctx: RequestContext
    ) -> tuple[list[InsertResult], Timing]:
        """Indexes items under the given models (empty = all). Idempotent; see :mod:`.ingest`."""
        plane = self._data()
        names = self.embedder.require(models)
        return plane.ingest.insert(items, names, ctx)

    def search(self, query: SearchQuery, ctx: RequestContext) -> tuple[list[ModelHits], Timing]:
        """Nearest items for one query, per model."""
        return self._data().query.search(query, ctx)

    def search_outcome(self, query: SearchQuery, ctx: RequestContext) -> SearchOutcome:
        """Nearest items for one query, per model, and fused across them when the query asks."""
        return self._data().query.search_outcome(query, ctx)

    def admit_walk(self, query: DupesQuery) -> Permit:
        """Validates a FindDuplicates request and takes a walk slot, before any work.

        Raises:
            FailedPrecondition: An embed-only server.
            InvalidArgument / ModelNotFound: A bad request (see :meth:`DuplicateFinder.resolve`).
            Overloaded: Every walk slot is taken.
        """
        self._data().dupes.resolve(query)
        return self.embedder.admission.admit_walk("FindDuplicates")

    def find_duplicates(self, query: DupesQuery, ctx: RequestContext) -> Iterator[GroupPage | DupesSummary]:
        """Near-duplicate groups of one model's index, page by page, then a summary (see :mod:`.dupes`)."""
        return self._data().dupes.find(query, ctx)

    def get(self, item_id: int | None = None, key: str | None = None) -> ItemView:
        """A stored item by id or key."""
        return self._data().query.get(item_id, key)

    def delete(self, item_id: int) -> tuple[str, ...]:
        """Removes an item from every collection, then its record; returns the models it had."""
        return self._data().ingest.delete(item_id)

    def repair(self, older_than_s: float | None = None, *, verify: bool | None = None) -> int:
        """Runs the repair sweep (see :mod:`lookalike_server.repair`).

        Args:
            older_than_s: Ignored (kept for callers of the first release): a
                pending record is removed when its owner's lease is gone, not
                by age, so replicas never remove each other's in-flight work.
            verify: Also check complete records against Milvus; default: on
                the first sweep, then hourly.

        Returns:
            Unfinished items removed plus (item, model) pairs un-listed.
        """
        del older_than_s
        if self._plane is None:
            return 0
        return self._plane.repair.repair(verify=verify)

    def check_stores(self) -> None:
        """Raises Unavailable when a store does not answer."""
        if self._plane is None:
            return
        self._plane.stores.milvus.ping()
        self._plane.stores.redis.ping()

    def close(self) -> None:
        """Drains pending writes, ends the lease, stops the I/O pool (stores are closed by their owner)."""
        if self._plane is not None:
            self._plane.ingest.close()
            self._plane.query.close()


__all__ = ["LookalikeService", "ModelView", "Unavailable"]
