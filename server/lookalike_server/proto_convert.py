"""Protobuf messages ↔ the service's plain domain types.

The service (:mod:`lookalike_server.service`) knows nothing of gRPC; these
functions are the only place a ``lookalike.v1`` message is read into a domain
type or built from one. They check shapes, not values: limits are the
service's (:mod:`lookalike_server.validation`), except for what only the wire
form can tell, such as an image field that is set but empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lookalike.v1 import lookalike_pb2 as pb
from lookalike_server.domain import (
    DupesQuery,
    DupesSummary,
    GroupPage,
    InsertItem,
    InsertResult,
    ItemView,
    ModelHits,
    SearchFilter,
    SearchQuery,
    Timing,
)
from lookalike_server.errors import InvalidArgument, grpc_code_for
from lookalike_server.rpc_calls import error_message, status_code

if TYPE_CHECKING:
    from lookalike_server.batching import BatcherStats
    from lookalike_server.service import ModelView


# ------------------------------------------------------------ requests --
def search_query(req: pb.SearchRequest) -> SearchQuery:
    """Proto → domain query (validation of values happens in the service)."""
    which = req.WhichOneof("query")
    flt = SearchFilter(req.filter.key_prefix, dict(req.filter.attributes))
    common: dict[str, Any] = {
        "models": tuple(req.models),
        "top_k": req.top_k,
        "filter": flt,
        "exclude_self": req.exclude_self,
    }
    if which == "image":
        if not req.image:  # set but empty: say so, as Insert does, not "needs one of"
            raise InvalidArgument("query image is empty (0 bytes)")
        return SearchQuery(image=req.image, **common)
    if which == "id":
        return SearchQuery(item_id=req.id, **common)
    if which == "vector":
        return SearchQuery(
            vector=np.asarray(req.vector.values, dtype=np.float32), vector_model=req.vector.model, **common
        )
    return SearchQuery(**common)


def dupes_query(req: pb.FindDuplicatesRequest) -> DupesQuery:
    """Proto → domain FindDuplicates request (values are checked by the service)."""
    flt = SearchFilter(req.filter.key_prefix, dict(req.filter.attributes))
    return DupesQuery(req.model, float(req.threshold), flt, int(req.page_size), bool(req.exact_only))


def dupes_response(part: GroupPage | DupesSummary) -> pb.FindDuplicatesResponse:
    """One group page, or the closing summary → proto."""
    if isinstance(part, DupesSummary):
        return pb.FindDuplicatesResponse(
            summary=pb.DuplicatesSummary(
                model=part.model,
                threshold=part.threshold,
                default_threshold=part.default_threshold,
                exact_distance=part.exact_distance,
                items_scanned=part.items_scanned,
                groups=part.groups,
                grouped_items=part.grouped_items,
                pairs=part.pairs,
                search_mode=part.search_mode,
                capped_items=part.capped_items,
                elapsed_ms=part.elapsed_ms,
            )
        )
    return pb.FindDuplicatesResponse(
        group=pb.DuplicateGroup(
            representative_id=part.representative_id,
            size=part.size,
            offset=part.offset,
            more=part.more,
            exact_count=part.exact_count,
            members=[
                pb.DuplicateMember(
                    id=m.id,
                    key=m.key,
                    distance=m.distance,
                    exact=m.exact,
                    content_sha256=m.content_sha256,
                    attributes=m.attributes,
                )
                for m in part.members
            ],
        )
    )


def insert_item(item: pb.InsertItem) -> InsertItem:
    """Proto item → domain item (Insert and InsertStream)."""
    return InsertItem(item.key, item.image, dict(item.attributes))


# ----------------------------------------------------------- responses --
def to_error(exc: BaseException) -> pb.Error:
    """A per-item stream error."""
    name = grpc_code_for(exc)
    return pb.Error(code=status_code(name).value[0], code_name=name, message=error_message(exc))


def timing_pb(t: Timing) -> pb.ServerTiming:
    """Domain timing → proto."""
    return pb.ServerTiming(
        total_ms=t.total_ms,
        preprocess_ms=t.preprocess_ms,
        queue_ms=t.queue_ms,
        inference_ms=t.inference_ms,
        milvus_ms=t.milvus_ms,
        redis_ms=t.redis_ms,
        batch_size=t.batch_size,
    )


def embed_response(model: str, vectors: np.ndarray, timing: Timing) -> pb.EmbedResponse:
    """One model's embeddings (one row per image) → proto."""
    return pb.EmbedResponse(
        model=model,
        dim=vectors.shape[1],
        embeddings=[pb.Embedding(values=row) for row in vectors.tolist()],
        timing=timing_pb(timing),
    )


def search_response(results: list[ModelHits], timing: Timing) -> pb.SearchResponse:
    """Domain hits → proto."""
    return pb.SearchResponse(
        results=[
            pb.ModelHits(
                model=r.model,
                hits=[pb.Hit(id=h.id, distance=h.distance, key=h.key, attributes=h.attributes) for h in r.hits],
            )
            for r in results
        ],
        timing=timing_pb(timing),
    )


def insert_result_pb(r: InsertResult) -> pb.InsertResult:
    """Domain insert result → proto."""
    return pb.InsertResult(id=r.id, created=r.created, models=list(r.models), content_sha256=r.content_sha256)


def item_pb(item: ItemView) -> pb.Item:
    """A stored item → proto."""
    return pb.Item(
        id=item.id,
        key=item.key,
        attributes=item.attributes,
        content_sha256=item.content_sha256,
        models=list(item.models),
        created_at=item.created_at,
    )


def model_info_pb(view: ModelView) -> pb.ModelInfo:
    """A loaded model as ListModels shows it: its spec, the providers it got, its batching."""
    model = view.model
    spec, pre = model.spec, model.spec.preprocess
    return pb.ModelInfo(
        name=view.name,
        version=spec.version,
        dim=spec.dim,
        preprocessing=pb.Preprocessing(
            preset=pre.preset,
            height=pre.height,
            width=pre.width,
            resize_shorter=pre.resize_shorter,
            interpolation=pre.interpolation,
            color_order=pre.color_order,
            layout=pre.layout,
            scale=pre.scale,
            mean=list(pre.mean),
            std=list(pre.std),
            pooling=spec.pooling,
        ),
        providers_requested=model.providers_requested,
        providers=model.providers,
        batch_buckets=list(model.buckets),
        max_batch_size=model.max_batch_size,
        max_delay_ms=spec.batching.max_delay_ms,
        collection=view.collection,
        description=spec.description,
        onnx_sha256=model.sha256,
    )


def batcher_stats_pb(model: str, st: BatcherStats) -> pb.BatcherStats:
    """One model's batcher counters → proto (seconds become milliseconds)."""
    return pb.BatcherStats(
        model=model,
        batch_size_histogram=st.batch_sizes,
        batches=st.batches,
        items=st.items,
        rejected=st.rejected,
        expired=st.expired,
        cancelled=st.cancelled,
        queue_ms_sum=st.queue_s_sum * 1e3,
        run_ms_sum=st.run_s_sum * 1e3,
        queue_depth=st.queue_depth,
    )
