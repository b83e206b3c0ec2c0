"""Embed / Insert / Search / Get / Delete orchestration, in plain Python types.

The write protocol that keeps Milvus and Redis consistent (no orphan vector,
no dangling record, no duplicate):

1. ``RedisStore.reserve`` atomically finds the item by content hash (or key)
   or allocates its id and writes a *pending* record. Two concurrent inserts
   of the same bytes get the same id; a retry after a lost response finds the
   existing id.
2. Embeddings are computed (or read from the embedding cache).
3. Rows are upserted into each model's collection under that id. Upsert makes
   a retry, or two racing writers of the same item, harmless: same id, same
   vector.
4. ``mark_complete`` flips the record to *complete* with the models indexed.

Search joins hits with records and keeps only *complete* ones, so a
half-written item is never returned. If step 2 or 3 fails, the insert deletes
the rows it may have written and the pending record it created; if that
clean-up fails too (the store is down), the pending record remains and
:meth:`LookalikeService.repair` removes it and its rows later (run at start-up
and periodically).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lookalike_server.batching import MicroBatcher
from lookalike_server.config import Config
from lookalike_server.domain import (
    Hit,
    InsertItem,
    InsertResult,
    ItemView,
    ModelHits,
    RequestContext,
    SearchQuery,
    Timing,
)
from lookalike_server.embedder import Embedder, unit_vector
from lookalike_server.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    TooLarge,
    Unavailable,
)
from lookalike_server.models import OnnxModel

if TYPE_CHECKING:
    from lookalike_server.store.milvus import MilvusStore
    from lookalike_server.store.redis import RedisStore

log = logging.getLogger(__name__)

_ATTR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_KEY_BYTES = 1024
MAX_ATTR_VALUE_BYTES = 1024
MAX_ATTRIBUTES = 64
# Hits whose record is missing or incomplete are dropped after the vector
# search; fetching a few extra keeps top_k full in that (rare) case.
_OVERFETCH = 8


@dataclass(frozen=True)
class _Row:
    """One vector to write to one collection."""

    id: int
    vector: np.ndarray
    key: str
    attributes: dict[str, str]


@dataclass(frozen=True)
class ModelView:
    """A loaded model as ListModels shows it."""

    model: OnnxModel
    collection: str


class LookalikeService:
    """The application core; the gRPC servicer is a thin adapter over it.

    Args:
        config: Server configuration.
        embedder: Batchers and preprocessing for the loaded models.
        milvus: Vector store, or None for an embed-only server.
        redis: Metadata store, or None for an embed-only server.
    """

    def __init__(
        self, config: Config, embedder: Embedder, milvus: MilvusStore | None, redis: RedisStore | None
    ) -> None:
        self.config = config
        self.embedder = embedder
        self.milvus = milvus
        self.redis = redis
        self.collections: dict[str, str] = {}
        # Per-model Milvus searches of one query run side by side here.
        self._io_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="store-io")
        # Rows of concurrent inserts are merged into one Milvus write (and one
        # flush) per collection: the same micro-batcher that merges inference.
        self._writers: dict[str, MicroBatcher[_Row, None]] = {}
        if milvus is not None:
            for name, model in embedder.models.items():
                collection = milvus.ensure_collection(  # type: ignore[attr-defined]
                    name, model.spec.version, model.spec.dim
                )
                self.collections[name] = collection
                self._writers[name] = MicroBatcher(
                    f"write-{name}",
                    functools.partial(self._write_rows, collection),
                    max_batch_size=512,
                    max_delay_s=0.002,
                    queue_size=100_000,
                )

    def _write_rows(self, collection: str, rows: list[_Row]) -> list[None]:
        """Writer batcher's batch function: one upsert for many inserts' rows."""
        self.milvus.insert(  # type: ignore[union-attr]
            collection,
            [r.id for r in rows],
            np.stack([r.vector for r in rows]),
            [r.key for r in rows],
            [r.attributes for r in rows],
        )
        return [None] * len(rows)

    # --------------------------------------------------------- helpers --
    @property
    def models(self) -> dict[str, OnnxModel]:
        """Loaded models by name."""
        return self.embedder.models

    def _stores(self) -> tuple:  # type: ignore[type-arg]
        if self.milvus is None or self.redis is None:
            raise FailedPrecondition(
                "this server runs without Milvus/Redis (stores = false): only ListModels and Embed are served"
            )
        return self.milvus, self.redis

    def _check_images(self, images: Sequence[bytes], what: str = "images") -> None:
        limit = self.config.limits.max_images_per_request
        if not images:
            raise InvalidArgument(f"no {what} given; send at least one")
        if len(images) > limit:
            raise TooLarge(f"{len(images)} {what} in one request; the limit is {limit} (use the stream RPC)")

    def _embed_cached(
        self,
        images: Sequence[bytes],
        shas: Sequence[str],
        models: Sequence[str],
        ctx: RequestContext,
        timing: Timing,
    ) -> dict[str, np.ndarray]:
        """Embeds, reading and filling the Redis embedding cache by content hash."""
        out: dict[str, np.ndarray] = {}
        todo: dict[str, list[int]] = {}
        started = time.perf_counter()
        for m in models:
            cached = self.redis.cache_get_many(self.models[m].spec.key, shas) if self.redis else [None] * len(shas)
            out[m] = np.empty((len(images), self.models[m].spec.dim), dtype=np.float32)
            for i, vec in enumerate(cached):
                if vec is not None and vec.shape == (self.models[m].spec.dim,):
                    out[m][i] = vec
                else:
                    todo.setdefault(m, []).append(i)
        timing.redis_ms += (time.perf_counter() - started) * 1e3
        if not todo:
            return out
        # One embed call for the images any model still needs, under the
        # models that need them (usually: all of them, or none).
        need = sorted({i for idx in todo.values() for i in idx})
        vectors, t = self.embedder.embed([images[i] for i in need], list(todo), ctx)
        timing.merge_max(t)
        started = time.perf_counter()
        for m, idx in todo.items():
            pos = {i: k for k, i in enumerate(need)}
            rows = vectors[m][[pos[i] for i in idx]]
            out[m][idx] = rows
            if self.redis is not None:
                self.redis.cache_put_many(self.models[m].spec.key, [shas[i] for i in idx], rows)
        timing.redis_ms += (time.perf_counter() - started) * 1e3
        return out

    # ----------------------------------------------------------- embed --
    def embed(self, images: Sequence[bytes], model: str, ctx: RequestContext) -> tuple[np.ndarray, Timing]:
        """Embeds images with one model; nothing is stored."""
        if not model:
            raise InvalidArgument(f"model is required; loaded models: {sorted(self.models)}")
        (name,) = self.embedder.require([model])
        self._check_images(images)
        started = time.perf_counter()
        vectors, timing = self.embedder.embed(images, [name], ctx)
        timing.total_ms = (time.perf_counter() - started) * 1e3
        return vectors[name], timing

    # ---------------------------------------------------------- insert --
    def validate_item(self, item: InsertItem, index: int = 0) -> None:
        """Checks key and attributes before anything is written."""
        where = f"item {index}" if index else "item"
        if not item.key:
            raise InvalidArgument(f"{where}: key is required (e.g. the image's path or URL)")
        if len(item.key.encode()) > MAX_KEY_BYTES:
            raise InvalidArgument(f"{where}: key is {len(item.key.encode())} bytes; the limit is {MAX_KEY_BYTES}")
        if not item.image:
            raise InvalidArgument(f"{where}: image is empty")
        if len(item.attributes) > MAX_ATTRIBUTES:
            raise InvalidArgument(f"{where}: {len(item.attributes)} attributes; the limit is {MAX_ATTRIBUTES}")
        for name, value in item.attributes.items():
            if not _ATTR_NAME_RE.match(name):
                raise InvalidArgument(f"{where}: attribute name {name!r} must match {_ATTR_NAME_RE.pattern}")
            if len(value.encode()) > MAX_ATTR_VALUE_BYTES:
                raise InvalidArgument(f"{where}: attribute {name!r} is longer than {MAX_ATTR_VALUE_BYTES} bytes")

    def insert(
        self, items: Sequence[InsertItem], models: Sequence[str], ctx: RequestContext
    ) -> tuple[list[InsertResult], Timing]:
        """Indexes items under the given models (empty = all). Idempotent.

        Args:
            items: Items to index; validated first, so one bad item writes nothing.
            models: Model names; empty = every loaded model.
            ctx: Deadline and cancellation.

        Returns:
            One result per item, in order, and timing.
        """
        _, redis = self._stores()
        names = self.embedder.require(models)
        self._check_images([it.image for it in items], "items")
        for i, item in enumerate(items):
            self.validate_item(item, i)
            if len(item.image) > self.config.limits.max_image_bytes:
                raise TooLarge(
                    f"item {i}: image is {len(item.image)} bytes; the limit is {self.config.limits.max_image_bytes}"
                )
        started = time.perf_counter()
        timing = Timing()
        shas = [hashlib.sha256(it.image).hexdigest() for it in items]

        t0 = time.perf_counter()
        reserved = []
        try:
            for item, sha in zip(items, shas, strict=True):
                ctx.check("reserving ids")
                reserved.append(redis.reserve(item.key, sha, item.attributes, self.config.index.dedupe))
        except BaseException:
            self._forget([rec for rec, created in reserved if created], names)
            raise
        timing.redis_ms += (time.perf_counter() - t0) * 1e3

        # Which (item, model) pairs need work: new items, pending ones (a
        # crashed or concurrent insert: redoing it is idempotent), and
        # complete items asked for a model they lack.
        work: dict[int, list[str]] = {}
        for i, (rec, _created) in enumerate(reserved):
            missing = names if rec.state != "complete" else [m for m in names if m not in rec.models]
            if missing:
                work[i] = list(missing)
        created_ids = [rec for rec, created in reserved if created]
        try:
            if work:
                todo_idx = sorted(work)
                todo_models = sorted({m for ms in work.values() for m in ms}, key=names.index)
                vectors = self._embed_cached(
                    [items[i].image for i in todo_idx], [shas[i] for i in todo_idx], todo_models, ctx, timing
                )
                ctx.check("writing vectors")
                t0 = time.perf_counter()
                writes = []
                for m in todo_models:
                    for k, i in enumerate(todo_idx):
                        if m in work[i]:
                            rec = reserved[i][0]
                            row = _Row(rec.id, vectors[m][k], rec.key, rec.attributes)
                            writes.append(self._writers[m].submit(row))
                # Not cancellable past this point: a half-written item must be
                # either completed or cleaned up by this call, not abandoned.
                for fut in writes:
                    fut.result()
                timing.milvus_ms += (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            results = []
            for i, (rec, created) in enumerate(reserved):
                if i in work:
                    try:
                        rec = redis.mark_complete(rec.id, work[i])
                    except NotFound:
                        # A Delete removed the record while we wrote vectors:
                        # take our rows back out rather than orphan them.
                        for m in work[i]:
                            self.milvus.delete(self.collections[m], [rec.id])  # type: ignore[union-attr]
                        raise Aborted(
                            f"item {rec.id} ({rec.key!r}) was deleted while this insert ran; retry the insert"
                        ) from None
                results.append(InsertResult(rec.id, created, tuple(rec.models), shas[i]))
            timing.redis_ms += (time.perf_counter() - t0) * 1e3
        except BaseException:
            # Undo what this call created; items that existed before keep
            # their record (at worst a model's row is re-written on retry).
            self._forget(created_ids, names)
            raise
        timing.total_ms = (time.perf_counter() - started) * 1e3
        return results, timing

    def _forget(self, records: Sequence, models: Sequence[str]) -> None:  # type: ignore[type-arg]
        """Best-effort removal of rows and pending records this call created."""
        if not records:
            return
        ids = [r.id for r in records]
        try:
            for m in models:
                self.milvus.delete(self.collections[m], ids)  # type: ignore[union-attr]
            for item_id in ids:
                self.redis.delete(item_id)  # type: ignore[union-attr]
        except ServiceError as exc:
            log.warning("insert clean-up of ids %s failed (%s); the repair sweep will remove them", ids, exc)

    def repair(self, older_than_s: float = 60.0) -> int:
        """Removes items left pending by a crash or a failed clean-up.

        Returns:
            Number of items removed.
        """
        if self.milvus is None or self.redis is None:
            return 0
        stale = self.redis.list_pending(older_than_s)
        for rec in stale:
            for m in self.collections:
                self.milvus.delete(self.collections[m], [rec.id])
            self.redis.delete(rec.id)
        if stale:
            log.info("repair: removed %d pending item(s): %s", len(stale), [r.id for r in stale][:20])
        return len(stale)

    # ---------------------------------------------------------- search --
    def _resolve_top_k(self, top_k: int) -> int:
        limits = self.config.limits
        if top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0 (0 = default {limits.default_top_k}); got {top_k}")
        if top_k > limits.max_top_k:
            raise InvalidArgument(f"top_k {top_k} is over the limit of {limits.max_top_k}")
        return top_k or limits.default_top_k

    def _check_filter(self, query: SearchQuery) -> None:
        attrs = query.filter.attributes
        if not attrs:
            return
        for name in attrs:
            if not _ATTR_NAME_RE.match(name):
                raise InvalidArgument(f"filter attribute name {name!r} must match {_ATTR_NAME_RE.pattern}")
        known = self.redis.known_attributes()  # type: ignore[union-attr]
        unknown = sorted(set(attrs) - known)
        if unknown:
            raise InvalidArgument(
                f"filter on unknown attribute(s) {unknown}; attributes in the index: {sorted(known)[:50]}"
            )

    def search(self, query: SearchQuery, ctx: RequestContext) -> tuple[list[ModelHits], Timing]:
        """Nearest items for one query, per model, side by side."""
        milvus, redis = self._stores()
        started = time.perf_counter()
        timing = Timing()
        top_k = self._resolve_top_k(query.top_k)
        self._check_filter(query)
        exclude: tuple[int, ...] = ()

        vectors: dict[str, np.ndarray]
        if query.vector is not None:
            vectors = self._query_vector(query)
        elif query.item_id is not None:
            t0 = time.perf_counter()
            rec = redis.get(query.item_id)
            timing.redis_ms += (time.perf_counter() - t0) * 1e3
            if rec is None or rec.state != "complete":
                raise NotFound(f"no item with id {query.item_id}")
            names = self.embedder.require(query.models) if query.models else [m for m in rec.models if m in self.models]
            lacking = [m for m in names if m not in rec.models]
            if lacking:
                raise FailedPrecondition(
                    f"item {query.item_id} is not indexed under {lacking} (it is under {list(rec.models)}); "
                    "insert it again naming those models"
                )
            t0 = time.perf_counter()
            vectors = {}
            for m in names:
                got = milvus.get_vectors(self.collections[m], [query.item_id])
                if query.item_id not in got:
                    raise FailedPrecondition(f"item {query.item_id} has no vector in model {m!r}; re-insert it")
                vectors[m] = got[query.item_id][None, :]
            timing.milvus_ms += (time.perf_counter() - t0) * 1e3
            if query.exclude_self:
                exclude = (query.item_id,)
        elif query.image:
            names = self.embedder.require(query.models)
            sha = hashlib.sha256(query.image).hexdigest()
            if len(query.image) > self.config.limits.max_image_bytes:
                raise TooLarge(f"image is {len(query.image)} bytes; the limit is {self.config.limits.max_image_bytes}")
            vectors = self._embed_cached([query.image], [sha], names, ctx, timing)
        else:
            raise InvalidArgument("the query needs one of: image (bytes), id (a stored item), vector")

        ctx.check("searching")
        t0 = time.perf_counter()
        fetch = min(top_k + len(exclude) + _OVERFETCH, 16384)
        futures = {
            m: self._io_pool.submit(
                milvus.search,
                self.collections[m],
                vec,
                fetch,
                key_prefix=query.filter.key_prefix,
                attributes=query.filter.attributes or None,
                exclude_ids=exclude,
            )
            for m, vec in vectors.items()
        }
        raw = {}
        for m, fut in futures.items():
            remaining = ctx.remaining()
            try:
                raw[m] = fut.result(timeout=None if remaining is None else max(remaining, 0.001))[0]
            except TimeoutError:
                ctx.check(f"the {m} search finished")
                raise
        timing.milvus_ms += (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        ids = sorted({h.id for hits in raw.values() for h in hits})
        records = redis.get_many(ids) if ids else {}
        timing.redis_ms += (time.perf_counter() - t0) * 1e3
        results = []
        for m in vectors:
            hits = []
            for h in raw[m]:
                rec = records.get(h.id)
                # Only complete records: a hit on a half-written or deleted
                # item is never returned.
                if rec is None or rec.state != "complete" or m not in rec.models:
                    continue
                hits.append(Hit(h.id, float(h.distance), rec.key, dict(rec.attributes)))
                if len(hits) == top_k:
                    break
            results.append(ModelHits(m, hits))
        timing.total_ms = (time.perf_counter() - started) * 1e3
        return results, timing

    def _query_vector(self, query: SearchQuery) -> dict[str, np.ndarray]:
        model = query.vector_model
        if not model:
            raise InvalidArgument("vector.model is required for a vector query")
        (name,) = self.embedder.require([model])
        if query.models and set(query.models) != {name}:
            raise InvalidArgument(f"a vector query searches only its own model {name!r}; got models {query.models}")
        dim = self.models[name].spec.dim
        values = np.asarray(query.vector).reshape(-1)
        if values.shape[0] != dim:
            raise InvalidArgument(f"vector has {values.shape[0]} values; model {name!r} needs {dim}")
        # Scaled before the norm: huge finite values must not overflow it.
        return {name: unit_vector(values)[None, :]}

    # ------------------------------------------------------ get/delete --
    def get(self, item_id: int | None = None, key: str | None = None) -> ItemView:
        """A stored item by id or key."""
        _, redis = self._stores()
        if item_id is not None:
            rec = redis.get(item_id)
            what = f"id {item_id}"
        elif key:
            rec = redis.get_by_key(key)
            what = f"key {key!r}"
        else:
            raise InvalidArgument("give an id or a key")
        if rec is None or rec.state != "complete":
            raise NotFound(f"no item with {what}")
        return ItemView(rec.id, rec.key, dict(rec.attributes), rec.content_sha256, tuple(rec.models), rec.created_at)

    def delete(self, item_id: int) -> tuple[str, ...]:
        """Removes an item from every collection, then its record.

        Milvus goes first: if it fails, the record stays and a retry deletes
        again (deletes are idempotent), so nothing is left unreachable.
        """
        milvus, redis = self._stores()
        rec = redis.get(item_id)
        if rec is None:
            raise NotFound(f"no item with id {item_id}")
        for m in self.collections:
            milvus.delete(self.collections[m], [item_id])
        redis.delete(item_id)
        return tuple(rec.models)

    # -------------------------------------------------------- health --
    def check_stores(self) -> None:
        """Raises Unavailable when a store does not answer."""
        if self.milvus is None or self.redis is None:
            return
        self.milvus.ping()
        self.redis.ping()

    def close(self) -> None:
        """Drains pending writes and stops the I/O pool (stores are closed by their owner)."""
        for writer in self._writers.values():
            writer.close()
        self._io_pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["LookalikeService", "ModelView", "Unavailable"]
