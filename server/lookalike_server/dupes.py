"""FindDuplicates: walk one model's index (or several's) and yield near-duplicate groups, page by page.

The walk, in two phases, each with bounded memory:

1. **Pairs.** The collection (or the part a filter keeps) is read in batches
   of stored vectors (:meth:`MilvusStore.scan_vectors`); each batch is the
   query of one radius search over the same filter
   (:meth:`MilvusStore.neighbours`: a Milvus range search, or top-k and a cut
   where range search is refused), at most ``limits.dupes_neighbours`` hits
   per item. Each pair goes into a union-find that holds only ids with a near
   neighbour, never the whole index.
2. **Groups.** Each connected component (by smallest id) gets its records
   from Redis (only *complete* records listing this model count, as in
   Search) and its vectors from Milvus, is split by linkage to its representative so that
   it cannot chain (:mod:`lookalike_server.dupes_grouping`), and each group is yielded
   in pages of ``page_size`` members as soon as it is ready.

Exact copies are members with the representative's content hash, or with a
distance at or below :data:`~lookalike_server.validation.EXACT_DISTANCE`
(identical embeddings: the same pixels under other bytes). The deadline and
cancellation are checked between batches and between groups.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from lookalike_server.domain import DupeMember, DupesQuery, DupesSummary, GroupPage, RequestContext, SearchFilter
from lookalike_server.dupes_grouping import Grouped, UnionFind, split_component, split_component_multi
from lookalike_server.errors import InvalidArgument
from lookalike_server.store.milvus_scan import RANGE
from lookalike_server.store.redis_records import STATE_COMPLETE
from lookalike_server.validation import (
    DEFAULT_DUPES_PAGE,
    DEFAULT_DUPES_THRESHOLD,
    EXACT_DISTANCE,
    check_attribute_name,
    check_dupes_request,
)

if TYPE_CHECKING:
    from lookalike_server.config import Config
    from lookalike_server.embedder import Embedder
    from lookalike_server.ingest import Ingestor
    from lookalike_server.store import Stores

log = logging.getLogger(__name__)

# A walk logs its progress this often (a large index takes minutes).
PROGRESS_EVERY_S = 30.0
# Rows per scan batch (and queries per radius search): large enough to
# amortise a Milvus round trip, small enough that one batch of 1280-d vectors
# stays a few MB.
SCAN_BATCH = 256
# Queries per radius search: one Milvus call must stay well inside
# ``milvus.timeout_s`` (Milvus Lite answers ~50-70 queries a second on a
# 2-core box), and the deadline is checked between calls.
SEARCH_BATCH = 32
# Ids per vector/record fetch in the group phase.
_FETCH = 1000


class DuplicateFinder:
    """Runs FindDuplicates walks over the stores.

    Args:
        config: Server configuration (limits).
        stores: The stores.
        embedder: Loaded models (names, registry defaults).
        ingest: Model keys of records, and collections.
    """

    def __init__(self, config: Config, stores: Stores, embedder: Embedder, ingest: Ingestor) -> None:
        self.config = config
        self.stores = stores
        self.embedder = embedder
        self._ingest = ingest

    def resolve(self, query: DupesQuery) -> tuple[dict[str, float], bool]:
        """Model → threshold for every model compared (request order), and whether they are defaults.

        Raises:
            InvalidArgument: No model given on a multi-model server, ``model`` and
                ``models`` that disagree, a threshold with several models, a bad
                threshold, page size or filter attribute name.
            ModelNotFound: A model is not loaded.
        """
        models = self.embedder.models
        asked = list(dict.fromkeys(query.models))
        if asked and query.model and query.model != asked[0]:
            raise InvalidArgument(
                f"model {query.model!r} and models {asked} disagree: give models alone (or model = its first entry)"
            )
        if not asked and query.model:
            asked = [query.model]
        if asked:
            names = self.embedder.require(asked)
        elif len(models) == 1:
            names = list(models)
        else:
            raise InvalidArgument(f"model is required (this server has several); loaded models: {sorted(models)}")
        check_dupes_request(query.threshold, query.page_size)
        if len(names) > 1 and query.threshold > 0:
            raise InvalidArgument(
                f"threshold must be 0 when comparing under several models {list(names)}: each uses its own "
                "calibrated threshold (compare under one model to give a threshold)"
            )
        for attr in query.filter.attributes:
            check_attribute_name(attr, "filter attribute name")
        if query.threshold > 0:
            return {names[0]: float(query.threshold)}, False
        return {n: float(models[n].spec.dupes_threshold or DEFAULT_DUPES_THRESHOLD) for n in names}, True

    def find(self, query: DupesQuery, ctx: RequestContext) -> Iterator[GroupPage | DupesSummary]:
        """Yields group pages as groups complete, then the summary.

        With several models, each model's index is walked in turn (its own threshold)
        into one union-find, and the components are split by "near under any model"
        (:func:`~lookalike_server.dupes_grouping.split_component_multi`).

        Raises:
            InvalidArgument: See :meth:`resolve`; an unknown filter attribute.
            DeadlineExceeded / Cancelled: The call ran out of time or was cancelled.
            Unavailable: A store failed.
        """
        started = time.perf_counter()
        thresholds, is_default = self.resolve(query)
        names = list(thresholds)
        self._check_known_attributes(query.filter)
        summary = DupesSummary(
            names[0],
            thresholds[names[0]],
            is_default,
            exact_distance=EXACT_DISTANCE,
            models=names,
            thresholds=dict(thresholds),
        )
        uf = UnionFind()
        modes = []
        for n, name in enumerate(names):
            collection = self._ingest.collections[name]
            # Items scanned: the first walk's (an item is grouped only if indexed under every model).
            modes.append(self._pairs(collection, thresholds[name], query.filter, summary, ctx, uf, count_items=n == 0))
        summary.search_mode = RANGE if all(m == RANGE for m in modes) else next(m for m in modes if m != RANGE)
        page = query.page_size or DEFAULT_DUPES_PAGE
        for component in uf.sets():
            ctx.check("grouping")
            for pages in self._groups(thresholds, component, page, query.exact_only, summary):
                yield from pages
        summary.elapsed_ms = (time.perf_counter() - started) * 1e3
        yield summary

    # ------------------------------------------------------------ phases --
    def _check_known_attributes(self, flt: SearchFilter) -> None:
        if not flt.attributes:
            return
        known = self.stores.redis.known_attributes()
        unknown = sorted(set(flt.attributes) - known)
        if unknown:
            raise InvalidArgument(
                f"filter on unknown attribute(s) {unknown}; attributes in the index: {sorted(known)[:50]}"
            )

    def _pairs(
        self,
        collection: str,
        threshold: float,
        flt: SearchFilter,
        summary: DupesSummary,
        ctx: RequestContext,
        uf: UnionFind,
        *,
        count_items: bool = True,
    ) -> str:
        """Phase 1: every near pair of one model's index into ``uf``; returns the search mode used."""
        milvus = self.stores.milvus
        limit = self.config.limits.dupes_neighbours + 1  # the item itself is one of its own hits
        attrs = flt.attributes or None
        mode = RANGE
        started = last_log = time.monotonic()
        for ids, vectors in milvus.scan_vectors(
            collection, key_prefix=flt.key_prefix, attributes=attrs, batch_size=SCAN_BATCH
        ):
            if count_items:
                summary.items_scanned += len(ids)
            if time.monotonic() - last_log >= PROGRESS_EVERY_S:
                last_log = time.monotonic()
                log.info(
                    "FindDuplicates on %s: %d items scanned, %d pairs, %.0f s",
                    collection,
                    summary.items_scanned,
                    summary.pairs,
                    last_log - started,
                )
            for start in range(0, len(ids), SEARCH_BATCH):
                ctx.check("the next batch of the walk")
                batch_ids = ids[start : start + SEARCH_BATCH].tolist()
                hits, mode = milvus.neighbours(
                    collection,
                    vectors[start : start + SEARCH_BATCH],
                    threshold,
                    limit,
                    mode=mode,
                    key_prefix=flt.key_prefix,
                    attributes=attrs,
                )
                for item_id, near in zip(batch_ids, hits, strict=True):
                    if len(near) >= limit:
                        summary.capped_items += 1
                    for other, _dist in near:
                        if other == item_id:
                            continue
                        if item_id < other:  # each pair is seen from both ends; count it once
                            summary.pairs += 1
                        uf.union(item_id, other)
        return mode

    def _groups(
        self,
        thresholds: dict[str, float],
        component: list[int],
        page: int,
        exact_only: bool,
        summary: DupesSummary,
    ) -> Iterator[list[GroupPage]]:
        """Phase 2 for one component: records, vectors, the split, pages."""
        redis, milvus = self.stores.redis, self.stores.milvus
        names = list(thresholds)
        wanted = {self._ingest.keys[n] for n in names}
        records = {}
        for i in range(0, len(component), _FETCH):
            records.update(redis.get_many(component[i : i + _FETCH]))
        # Only complete records that list every compared model, as Search shows them.
        live = [
            i
            for i in component
            if (rec := records.get(i)) is not None
            and rec.state == STATE_COMPLETE
            and wanted <= set(self._ingest.record_keys(rec))
        ]
        if len(live) < 2:
            return
        vectors: dict[str, dict[int, np.ndarray]] = {}
        for name in names:
            collection = self._ingest.collections[name]
            vectors[name] = {}
            for i in range(0, len(live), _FETCH):
                vectors[name].update(milvus.get_vectors(collection, live[i : i + _FETCH]))
        if len(names) == 1:
            (name,) = names
            groups = [
                Grouped(g.representative, g.members, g.distances, {name: g.distances})
                for g in split_component(live, vectors[name], thresholds[name])
            ]
        else:
            groups = split_component_multi(live, vectors, thresholds)
        for group in groups:
            rep = records[group.representative]
            members = []
            for k, item_id in enumerate(group.members):
                rec = records[item_id]
                per_model = {n: group.per_model[n][k] for n in names}
                # Identical embeddings under every model compared: the same pixels.
                same_embedding = all(d <= EXACT_DISTANCE for d in per_model.values())
                exact = item_id != rep.id and (
                    (bool(rec.content_sha256) and rec.content_sha256 == rep.content_sha256) or same_embedding
                )
                members.append(
                    DupeMember(
                        item_id,
                        rec.key,
                        group.distances[k],
                        exact,
                        rec.content_sha256,
                        dict(rec.attributes),
                        per_model,
                    )
                )
            exact_count = sum(m.exact for m in members)
            if exact_only and not exact_count:
                continue
            summary.groups += 1
            summary.grouped_items += len(members)
            size = len(members)
            yield [
                GroupPage(rep.id, size, off, off + page < size, members[off : off + page], exact_count)
                for off in range(0, size, page)
            ]
