"""Search and Get: the read paths, joining Milvus hits with Redis records.

Only *complete* records are ever returned, and a hit counts under a model only
when the record lists that model's key, so a half-written or half-deleted item
is never visible (see :mod:`lookalike_server.ingest` for the write side).
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from lookalike_server.config import Config
from lookalike_server.domain import (
    FusedHit,
    Hit,
    ItemView,
    ModelHits,
    RequestContext,
    SearchOutcome,
    SearchQuery,
    Timing,
)
from lookalike_server.embedder import Embedder
from lookalike_server.embedding_cache import CachedEmbedder
from lookalike_server.errors import FailedPrecondition, InvalidArgument, NotFound
from lookalike_server.fusion import FusionPlan, fuse, missing_ids, plan_fusion, squared_l2
from lookalike_server.ingest import Ingestor
from lookalike_server.models import l2_normalise
from lookalike_server.store import Stores
from lookalike_server.store.redis_records import STATE_COMPLETE
from lookalike_server.thread_names import name_os_thread
from lookalike_server.validation import (
    MAX_TOP_K,
    check_attribute_name,
    check_image_bytes,
    check_key_size,
    check_query_vector,
    resolve_top_k,
)

# Hits whose record is missing or incomplete are dropped after the vector
# search; fetching a few extra keeps top_k full in that (rare) case.
_OVERFETCH = 8


class Searcher:
    """Search and Get over the stores.

    Args:
        config: Server configuration.
        stores: The stores (shared with the ingestor).
        embedder: Loaded models (for require/dim).
        embed: Cached embedding.
        ingest: For model keys of records.
    """

    def __init__(
        self, config: Config, stores: Stores, embedder: Embedder, embed: CachedEmbedder, ingest: Ingestor
    ) -> None:
        self.config = config
        self.stores = stores
        self.embedder = embedder
        self._embed = embed
        self._ingest = ingest
        self.collections = ingest.collections
        # Per-model Milvus searches of one query run side by side here.
        self._io_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="store-io", initializer=name_os_thread)

    def _check_filter(self, query: SearchQuery) -> None:
        attrs = query.filter.attributes
        if not attrs:
            return
        for name in attrs:
            check_attribute_name(name, "filter attribute name")
        known = self.stores.redis.known_attributes()
        unknown = sorted(set(attrs) - known)
        if unknown:
            raise InvalidArgument(
                f"filter on unknown attribute(s) {unknown}; attributes in the index: {sorted(known)[:50]}"
            )

    def search(self, query: SearchQuery, ctx: RequestContext) -> tuple[list[ModelHits], Timing]:
        """Nearest items for one query, per model, side by side (see :meth:`search_outcome`)."""
        outcome = self.search_outcome(query, ctx)
        return outcome.results, outcome.timing

    def search_outcome(self, query: SearchQuery, ctx: RequestContext) -> SearchOutcome:
        """Nearest items for one query, per model, and fused across them when asked."""
        started = time.perf_counter()
        timing = Timing()
        top_k = resolve_top_k(query.top_k, self.config.limits)
        self._check_filter(query)
        exclude: tuple[int, ...] = ()
        plan: FusionPlan | None = None

        vectors: dict[str, np.ndarray]
        if query.vector is not None:
            if query.fusion is not None:
                raise InvalidArgument(
                    "a vector query searches only its own model, and fusion combines two or more models: "
                    "query by image or by a stored item's id to fuse"
                )
            vectors = self._query_vector(query)
        elif query.item_id is not None:
            vectors = self._stored_vectors(query, timing)
            plan = self._plan(query, list(vectors), top_k)
            if query.exclude_self:
                exclude = (query.item_id,)
        elif query.image:
            names = self.embedder.require(query.models)
            plan = self._plan(query, names, top_k)  # before the embedding it could waste
            check_image_bytes(query.image, self.config.limits)
            sha = hashlib.sha256(query.image).hexdigest()
            # Query images are cached briefly (repeats are common, each new
            # image is not): a stream of distinct queries must not fill Redis.
            vectors = self._embed.embed(
                [query.image], [sha], names, ctx, timing, ttl_s=self.config.redis.query_cache_ttl_s
            )
        else:
            raise InvalidArgument("the query needs one of: image (bytes), id (a stored item), vector")

        depth = max(top_k, plan.candidates) if plan is not None else top_k
        listed, model_keys = self._nearest(query, vectors, depth, exclude, ctx, timing)
        results = [ModelHits(m, hits[:top_k]) for m, hits in listed.items()]
        outcome = SearchOutcome(results, timing)
        if plan is not None:
            outcome.fused = self._fuse(plan, vectors, listed, model_keys, top_k, ctx, timing)
            outcome.fusion_method = plan.method
        timing.total_ms = (time.perf_counter() - started) * 1e3
        return outcome

    def _plan(self, query: SearchQuery, names: list[str], top_k: int) -> FusionPlan | None:
        if query.fusion is None:
            return None
        return plan_fusion(query.fusion, names, top_k, self.config.limits.max_top_k)

    def _nearest(
        self,
        query: SearchQuery,
        vectors: dict[str, np.ndarray],
        depth: int,
        exclude: tuple[int, ...],
        ctx: RequestContext,
        timing: Timing,
    ) -> tuple[dict[str, list[Hit]], dict[int, tuple[str, ...]]]:
        """Each model's ``depth`` nearest visible items, joined with their records.

        Returns:
            Model → its hits, and each hit's id → the model keys its record lists.
        """
        milvus, redis = self.stores.milvus, self.stores.redis
        ctx.check("searching")
        t0 = time.perf_counter()
        fetch = min(depth + len(exclude) + _OVERFETCH, MAX_TOP_K)
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
        raw = {m: self._wait(fut, ctx, f"the {m} search finished")[0] for m, fut in futures.items()}
        timing.milvus_ms += (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        ids = sorted({h.id for hits in raw.values() for h in hits})
        records = redis.get_many(ids) if ids else {}
        timing.redis_ms += (time.perf_counter() - t0) * 1e3
        keys = {i: self._ingest.record_keys(r) for i, r in records.items()}
        listed: dict[str, list[Hit]] = {}
        for m in vectors:
            key = self._ingest.keys[m]
            hits = []
            for h in raw[m]:
                rec = records.get(h.id)
                # Only complete records that list this model: a hit on a
                # half-written or deleted item is never returned.
                if rec is None or rec.state != STATE_COMPLETE or key not in keys[h.id]:
                    continue
                hits.append(Hit(h.id, float(h.distance), rec.key, dict(rec.attributes)))
                if len(hits) == depth:
                    break
            listed[m] = hits
        return listed, keys

    def _wait(self, fut: Future[Any], ctx: RequestContext, stage: str) -> Any:
        """A store call's result within the request's deadline."""
        remaining = ctx.remaining()
        try:
            return fut.result(timeout=None if remaining is None else max(remaining, 0.001))
        except TimeoutError:
            ctx.check(stage)
            raise

    def _fuse(
        self,
        plan: FusionPlan,
        vectors: dict[str, np.ndarray],
        listed: dict[str, list[Hit]],
        model_keys: dict[int, tuple[str, ...]],
        top_k: int,
        ctx: RequestContext,
        timing: Timing,
    ) -> list[FusedHit]:
        """The fused list: candidates from each model, missing distances from the stored vectors."""
        candidates = {m: [(h.id, h.distance) for h in listed[m][: plan.candidates]] for m in plan.models}
        joined = {h.id: h for m in plan.models for h in listed[m][: plan.candidates]}
        # A candidate's vector under another model counts only when its record lists
        # that model (the same rule as for hits): a half-written row is never used.
        wanted: dict[str, list[int]] = {}
        for m, ids in missing_ids(candidates).items():
            key = self._ingest.keys[m]
            wanted[m] = [i for i in ids if key in model_keys[i]]
        ctx.check("fetching vectors for fusion")
        t0 = time.perf_counter()
        futures = {
            m: self._io_pool.submit(self.stores.milvus.get_vectors, self.collections[m], ids)
            for m, ids in wanted.items()
            if ids
        }
        computed: dict[str, dict[int, float]] = {}
        for m, fut in futures.items():
            got: dict[int, np.ndarray] = self._wait(fut, ctx, f"the {m} vectors came")
            if got:
                ids = sorted(got)
                dists = squared_l2(vectors[m][0], np.stack([got[i] for i in ids]))
                computed[m] = dict(zip(ids, dists.tolist(), strict=True))
        timing.milvus_ms += (time.perf_counter() - t0) * 1e3
        return [
            FusedHit(s.id, s.score, joined[s.id].key, dict(joined[s.id].attributes), s.models)
            for s in fuse(plan, candidates, computed, top_k)
        ]

    def _stored_vectors(self, query: SearchQuery, timing: Timing) -> dict[str, np.ndarray]:
        """A stored item's own vectors, per model asked (default: every one it lists)."""
        assert query.item_id is not None
        t0 = time.perf_counter()
        rec = self.stores.redis.get(query.item_id)
        timing.redis_ms += (time.perf_counter() - t0) * 1e3
        if rec is None or rec.state != STATE_COMPLETE:
            raise NotFound(f"no item with id {query.item_id}")
        listed = self._ingest.record_keys(rec)
        keys = self._ingest.keys
        if query.models:
            names = self.embedder.require(query.models)
        else:
            names = [m for m in self.embedder.models if keys[m] in listed]
        lacking = [m for m in names if keys[m] not in listed]
        if lacking:
            raise FailedPrecondition(
                f"item {query.item_id} is not indexed under {lacking} (it is under "
                f"{list(self._ingest.record_names(rec))}); insert it again naming those models"
            )
        t0 = time.perf_counter()
        vectors = {}
        for m in names:
            got = self.stores.milvus.get_vectors(self.collections[m], [query.item_id])
            if query.item_id not in got:
                raise FailedPrecondition(
                    f"item {query.item_id} has no vector in model {m!r}; re-insert it (the repair sweep "
                    "un-lists the model so the re-insert writes it)"
                )
            vectors[m] = got[query.item_id][None, :]
        timing.milvus_ms += (time.perf_counter() - t0) * 1e3
        return vectors

    def _query_vector(self, query: SearchQuery) -> dict[str, np.ndarray]:
        model = query.vector_model
        if not model:
            raise InvalidArgument("vector.model is required for a vector query")
        (name,) = self.embedder.require([model])
        if query.models and set(query.models) != {name}:
            raise InvalidArgument(f"a vector query searches only its own model {name!r}; got models {query.models}")
        assert query.vector is not None
        vec = check_query_vector(query.vector, name, self.embedder.models[name].spec.dim)
        return {name: l2_normalise(vec[None, :])}

    def get(self, item_id: int | None = None, key: str | None = None) -> ItemView:
        """A stored (complete) item by id or key."""
        redis = self.stores.redis
        if item_id is not None:
            rec = redis.get(item_id)
            what = f"id {item_id}"
        elif key:
            check_key_size(key)  # before Redis: a longer key names no item
            rec = redis.get_by_key(key)
            what = f"key {key!r}"
        else:
            raise InvalidArgument("give an id or a key")
        if rec is None or rec.state != STATE_COMPLETE:
            raise NotFound(f"no item with {what}")
        return ItemView(
            rec.id, rec.key, dict(rec.attributes), rec.content_sha256, self._ingest.record_names(rec), rec.created_at
        )

    def close(self) -> None:
        """Stops the I/O pool."""
        self._io_pool.shutdown(wait=False, cancel_futures=True)
