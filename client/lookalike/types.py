"""Typed results (frozen dataclasses) and their converters from the protobuf messages.

Everything here is plain data: no channel, no I/O. The converters (``_model_info``,
``_search_result``...) are shared by the sync and async clients through
:mod:`lookalike._core`.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lookalike.images import ImageInput
from lookalike.v1 import lookalike_pb2 as pb

__all__ = [
    "BatcherStats",
    "BucketCost",
    "DeleteResult",
    "FusedHit",
    "Fusion",
    "FusionInput",
    "Hit",
    "InsertResult",
    "InsertStreamResult",
    "Item",
    "ItemInput",
    "ModelHits",
    "ModelInfo",
    "ModelScore",
    "NewItem",
    "Preprocessing",
    "SearchQuery",
    "SearchResult",
    "SearchStreamResult",
    "ServerTiming",
    "Stats",
    "ThreadBudget",
    "vector_norm",
]

# ---------------------------------------------------------------------- results --


@dataclass(frozen=True)
class Preprocessing:
    """How a model turns decoded pixels into its input tensor (see the proto for each field).

    ``decode`` is ``"fast"``, ``"exact"`` or ``"custom"`` (the two flags
    mixed); ``""`` from a server too old to report its decoding.
    """

    preset: str
    height: int
    width: int
    resize_shorter: int
    interpolation: str
    color_order: str
    layout: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pooling: str
    decode: str = ""
    jpeg_draft: bool = False
    exif_orientation: bool = False


@dataclass(frozen=True)
class BucketCost:
    """One batch bucket's cost, measured by the server at warm-up."""

    batch_size: int
    ms_per_run: float
    ms_per_image: float


@dataclass(frozen=True)
class ThreadBudget:
    """How the server split its cores between decoding and inference (see the proto)."""

    cores: int
    preprocess_threads: int
    intra_op_threads: int
    inter_op_threads: int
    batch_workers: int
    reason: str
    wide_intra_op_threads: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """A model the server has loaded."""

    name: str
    version: str
    dim: int
    preprocessing: Preprocessing | None
    providers_requested: tuple[str, ...]
    providers: tuple[str, ...]
    batch_buckets: tuple[int, ...]
    max_batch_size: int
    max_delay_ms: float
    collection: str
    description: str
    onnx_sha256: str
    bucket_costs: tuple[BucketCost, ...] = ()
    batching_reason: str = ""
    threads: ThreadBudget | None = None


@dataclass(frozen=True)
class ServerTiming:
    """Where the server spent a request's time, in milliseconds."""

    total_ms: float
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    milvus_ms: float
    redis_ms: float
    batch_size: int


@dataclass(frozen=True)
class Hit:
    """One search hit: a stored item and its squared L2 distance (0..4) to the query."""

    id: int
    distance: float
    key: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelHits:
    """One model's hits for a query, nearest first."""

    model: str
    hits: list[Hit]


@dataclass(frozen=True)
class ModelScore:
    """One model's view of a fused hit: its distance there and its rank (0 = not a candidate)."""

    model: str
    distance: float
    rank: int


@dataclass(frozen=True)
class FusedHit:
    """One hit of the fused list.

    ``score`` is the weighted distance sum (method ``"distance"``, lower is nearer) or the summed
    reciprocal ranks (``"rrf"``, higher is nearer); ``models`` says how each model saw the item.
    """

    id: int
    score: float
    key: str
    attributes: dict[str, str] = field(default_factory=dict)
    models: tuple[ModelScore, ...] = ()


@dataclass(frozen=True)
class SearchResult:
    """The answer to one search: a hit list per model, in request order.

    Iterating yields the :class:`ModelHits`; ``result["mobilenet_v2"]`` picks one model's.
    With fusion asked, ``fused`` holds one list across the models and ``fusion_method`` the
    method that built it (``"distance"`` or ``"rrf"``); without, ``fused`` is empty and
    ``fusion_method`` is ``None``.
    """

    results: list[ModelHits]
    timing: ServerTiming | None = None
    fused: list[FusedHit] = field(default_factory=list)
    fusion_method: str | None = None

    def __iter__(self) -> Iterator[ModelHits]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, model: str) -> ModelHits:
        for r in self.results:
            if r.model == model:
                return r
        raise KeyError(model)

    @property
    def models(self) -> list[str]:
        """Names of the models searched, in order."""
        return [r.model for r in self.results]


@dataclass(frozen=True)
class InsertResult:
    """The outcome of indexing one item."""

    id: int
    created: bool
    models: list[str]
    content_sha256: str


@dataclass(frozen=True)
class InsertStreamResult:
    """One item's outcome on :meth:`LookalikeClient.insert_stream`.

    Exactly one of ``result`` and ``error`` is set. ``error`` may also come from the client
    (e.g. a file that could not be read), in which case the item never reached the server.
    """

    index: int
    key: str
    result: InsertResult | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        """True when the item is indexed (newly or already)."""
        return self.result is not None


@dataclass(frozen=True)
class SearchStreamResult:
    """One query's outcome on :meth:`LookalikeClient.search_stream`; one of result/error is set."""

    index: int
    result: SearchResult | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        """True when the query succeeded."""
        return self.result is not None


@dataclass(frozen=True)
class Item:
    """A stored item's record."""

    id: int
    key: str
    attributes: dict[str, str]
    content_sha256: str
    models: list[str]
    created_at: float
    """Seconds since the Unix epoch (UTC) when the item was first indexed."""

    @property
    def created(self) -> datetime.datetime:
        """``created_at`` as an aware UTC datetime (``item.created.isoformat()`` for ISO 8601)."""
        return datetime.datetime.fromtimestamp(self.created_at, tz=datetime.UTC)


@dataclass(frozen=True)
class DeleteResult:
    """What a delete removed."""

    id: int
    models: list[str]


@dataclass(frozen=True)
class BatcherStats:
    """One model's micro-batcher counters (see the proto's ``BatcherStats``)."""

    model: str
    batch_size_histogram: dict[int, int]
    batches: int
    items: int
    rejected: int
    expired: int
    cancelled: int
    queue_ms_sum: float
    run_ms_sum: float
    queue_depth: int
    alone_batches: int = 0


@dataclass(frozen=True)
class Stats:
    """Server-side counters."""

    batchers: list[BatcherStats]
    requests_by_status: dict[str, int]
    uptime_s: float


@dataclass(frozen=True)
class NewItem:
    """An item to index: a client key, an image and string attributes."""

    key: str
    image: ImageInput
    attributes: Mapping[str, str] = field(default_factory=dict)


FUSION_METHODS = ("distance", "rrf")
"""Fusion methods by name; see ``docs/fusion.md``."""


@dataclass(frozen=True)
class Fusion:
    """Asks a search for one hit list fused across its models (two or more).

    Attributes:
        method: ``"distance"`` (weighted sum of squared L2 distances), ``"rrf"`` (reciprocal
            rank fusion) or ``None`` for the server's default.
        weights: Weight per model; a model not named weighs 1.
        rrf_k: RRF's k; 0 = the server's default (60).
        candidates: Hits drawn per model; 0 = the server's default (``max(top_k, 50)``).
    """

    method: str | None = None
    weights: Mapping[str, float] = field(default_factory=dict)
    rrf_k: int = 0
    candidates: int = 0

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in FUSION_METHODS:
            raise ValueError(f"fusion method must be one of {FUSION_METHODS} or None, got {self.method!r}")


FusionInput = Fusion | str | bool | None
"""What ``fusion=`` takes: a :class:`Fusion`, a method name, ``True`` (server default) or
``None``/``False`` (no fused list)."""


@dataclass(frozen=True)
class SearchQuery:
    """One query for :meth:`LookalikeClient.search_stream`; give exactly one of image/id/vector.

    Fields left as ``None`` take the values passed to ``search_stream`` itself.
    """

    image: ImageInput | None = None
    id: int | None = None
    vector: Sequence[float] | None = None
    models: Sequence[str] | None = None
    top_k: int | None = None
    key_prefix: str | None = None
    attributes: Mapping[str, str] | None = None
    exclude_self: bool | None = None
    fusion: FusionInput = None


ItemInput = NewItem | tuple[str, ImageInput] | tuple[str, ImageInput, Mapping[str, str]]
"""An item to insert: a :class:`NewItem` or a ``(key, image[, attributes])`` tuple."""

# ------------------------------------------------------------------- converters --


def _preprocessing(p: pb.Preprocessing) -> Preprocessing:
    return Preprocessing(
        preset=p.preset,
        height=p.height,
        width=p.width,
        resize_shorter=p.resize_shorter,
        interpolation=p.interpolation,
        color_order=p.color_order,
        layout=p.layout,
        scale=p.scale,
        mean=tuple(p.mean),
        std=tuple(p.std),
        pooling=p.pooling,
        decode=p.decode,
        jpeg_draft=p.jpeg_draft,
        exif_orientation=p.exif_orientation,
    )


def _model_info(m: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=m.name,
        version=m.version,
        dim=m.dim,
        preprocessing=_preprocessing(m.preprocessing) if m.HasField("preprocessing") else None,
        providers_requested=tuple(m.providers_requested),
        providers=tuple(m.providers),
        batch_buckets=tuple(m.batch_buckets),
        max_batch_size=m.max_batch_size,
        max_delay_ms=m.max_delay_ms,
        collection=m.collection,
        description=m.description,
        onnx_sha256=m.onnx_sha256,
        bucket_costs=tuple(BucketCost(c.batch_size, c.ms_per_run, c.ms_per_image) for c in m.bucket_costs),
        batching_reason=m.batching_reason,
        threads=_thread_budget(m.threads) if m.HasField("threads") else None,
    )


def _thread_budget(t: Any) -> ThreadBudget:
    return ThreadBudget(
        cores=t.cores,
        preprocess_threads=t.preprocess_threads,
        intra_op_threads=t.intra_op_threads,
        inter_op_threads=t.inter_op_threads,
        batch_workers=t.batch_workers,
        reason=t.reason,
        wide_intra_op_threads=t.wide_intra_op_threads,
    )


def _timing(msg: Any) -> ServerTiming | None:
    if not msg.HasField("timing"):
        return None
    t = msg.timing
    return ServerTiming(
        total_ms=t.total_ms,
        preprocess_ms=t.preprocess_ms,
        queue_ms=t.queue_ms,
        inference_ms=t.inference_ms,
        milvus_ms=t.milvus_ms,
        redis_ms=t.redis_ms,
        batch_size=t.batch_size,
    )


_METHOD_NAMES = {pb.FUSION_METHOD_DISTANCE: "distance", pb.FUSION_METHOD_RRF: "rrf"}


def _fusion_pb(fusion: FusionInput) -> pb.Fusion | None:
    """``fusion=`` as the request message, or None for no fusion."""
    if fusion is None or fusion is False:
        return None
    if fusion is True:
        fusion = Fusion()
    elif isinstance(fusion, str):
        fusion = Fusion(method=fusion)
    if not isinstance(fusion, Fusion):
        raise TypeError(f"fusion= takes a Fusion, a method name, True or None, got {fusion!r:.80}")
    by_name = {v: k for k, v in _METHOD_NAMES.items()}
    return pb.Fusion(
        method=by_name[fusion.method] if fusion.method else pb.FUSION_METHOD_UNSPECIFIED,
        weights={k: float(v) for k, v in fusion.weights.items()},
        rrf_k=fusion.rrf_k,
        candidates=fusion.candidates,
    )


def _search_result(r: pb.SearchResponse) -> SearchResult:
    return SearchResult(
        results=[
            ModelHits(
                model=mh.model,
                hits=[Hit(h.id, h.distance, h.key, dict(h.attributes)) for h in mh.hits],
            )
            for mh in r.results
        ],
        timing=_timing(r),
        fused=[
            FusedHit(
                h.id,
                h.score,
                h.key,
                dict(h.attributes),
                tuple(ModelScore(s.model, s.distance, s.rank) for s in h.models),
            )
            for h in r.fused
        ],
        fusion_method=_METHOD_NAMES.get(r.fusion_method),
    )


def _insert_result(r: pb.InsertResult) -> InsertResult:
    return InsertResult(id=r.id, created=r.created, models=list(r.models), content_sha256=r.content_sha256)


def _item(r: pb.Item) -> Item:
    return Item(
        id=r.id,
        key=r.key,
        attributes=dict(r.attributes),
        content_sha256=r.content_sha256,
        models=list(r.models),
        created_at=r.created_at,
    )


def _stats(r: pb.GetStatsResponse) -> Stats:
    return Stats(
        batchers=[
            BatcherStats(
                model=b.model,
                batch_size_histogram=dict(b.batch_size_histogram),
                batches=b.batches,
                items=b.items,
                rejected=b.rejected,
                expired=b.expired,
                cancelled=b.cancelled,
                queue_ms_sum=b.queue_ms_sum,
                run_ms_sum=b.run_ms_sum,
                queue_depth=b.queue_depth,
                alone_batches=b.alone_batches,
            )
            for b in r.batchers
        ],
        requests_by_status=dict(r.requests_by_status),
        uptime_s=r.uptime_s,
    )


def _embeddings(r: pb.EmbedResponse) -> Any:
    rows = [list(e.values) for e in r.embeddings]
    try:
        import numpy as np
    except ImportError:
        return rows
    # Build from the packed fields directly; reshape keeps (0, dim) for an empty answer.
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), r.dim)


def vector_norm(values: Sequence[float]) -> float:
    """Euclidean norm of a vector (list or numpy row), without requiring numpy."""
    return math.sqrt(sum(float(v) * float(v) for v in values))
