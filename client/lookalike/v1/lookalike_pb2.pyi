from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FusionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_METHOD_UNSPECIFIED: _ClassVar[FusionMethod]
    FUSION_METHOD_DISTANCE: _ClassVar[FusionMethod]
    FUSION_METHOD_RRF: _ClassVar[FusionMethod]
FUSION_METHOD_UNSPECIFIED: FusionMethod
FUSION_METHOD_DISTANCE: FusionMethod
FUSION_METHOD_RRF: FusionMethod

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("preset", "height", "width", "resize_shorter", "interpolation", "color_order", "layout", "scale", "mean", "std", "pooling", "decode", "jpeg_draft", "exif_orientation")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    RESIZE_SHORTER_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATION_FIELD_NUMBER: _ClassVar[int]
    COLOR_ORDER_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    JPEG_DRAFT_FIELD_NUMBER: _ClassVar[int]
    EXIF_ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    preset: str
    height: int
    width: int
    resize_shorter: int
    interpolation: str
    color_order: str
    layout: str
    scale: float
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    pooling: str
    decode: str
    jpeg_draft: bool
    exif_orientation: bool
    def __init__(self, preset: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., resize_shorter: _Optional[int] = ..., interpolation: _Optional[str] = ..., color_order: _Optional[str] = ..., layout: _Optional[str] = ..., scale: _Optional[float] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., pooling: _Optional[str] = ..., decode: _Optional[str] = ..., jpeg_draft: _Optional[bool] = ..., exif_orientation: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "dim", "preprocessing", "providers_requested", "providers", "batch_buckets", "max_batch_size", "max_delay_ms", "collection", "description", "onnx_sha256", "bucket_costs", "batching_reason", "threads")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    BATCH_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ONNX_SHA256_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COSTS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_REASON_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    dim: int
    preprocessing: Preprocessing
    providers_requested: _containers.RepeatedScalarFieldContainer[str]
    providers: _containers.RepeatedScalarFieldContainer[str]
    batch_buckets: _containers.RepeatedScalarFieldContainer[int]
    max_batch_size: int
    max_delay_ms: float
    collection: str
    description: str
    onnx_sha256: str
    bucket_costs: _containers.RepeatedCompositeFieldContainer[BucketCost]
    batching_reason: str
    threads: ThreadBudget
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., dim: _Optional[int] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., providers_requested: _Optional[_Iterable[str]] = ..., providers: _Optional[_Iterable[str]] = ..., batch_buckets: _Optional[_Iterable[int]] = ..., max_batch_size: _Optional[int] = ..., max_delay_ms: _Optional[float] = ..., collection: _Optional[str] = ..., description: _Optional[str] = ..., onnx_sha256: _Optional[str] = ..., bucket_costs: _Optional[_Iterable[_Union[BucketCost, _Mapping]]] = ..., batching_reason: _Optional[str] = ..., threads: _Optional[_Union[ThreadBudget, _Mapping]] = ...) -> None: ...

class BucketCost(_message.Message):
    __slots__ = ("batch_size", "ms_per_run", "ms_per_image")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MS_PER_RUN_FIELD_NUMBER: _ClassVar[int]
    MS_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    ms_per_run: float
    ms_per_image: float
    def __init__(self, batch_size: _Optional[int] = ..., ms_per_run: _Optional[float] = ..., ms_per_image: _Optional[float] = ...) -> None: ...

class ThreadBudget(_message.Message):
    __slots__ = ("cores", "preprocess_threads", "intra_op_threads", "inter_op_threads", "batch_workers", "reason", "wide_intra_op_threads")
    CORES_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_THREADS_FIELD_NUMBER: _ClassVar[int]
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    INTER_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    BATCH_WORKERS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WIDE_INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    cores: int
    preprocess_threads: int
    intra_op_threads: int
    inter_op_threads: int
    batch_workers: int
    reason: str
    wide_intra_op_threads: int
    def __init__(self, cores: _Optional[int] = ..., preprocess_threads: _Optional[int] = ..., intra_op_threads: _Optional[int] = ..., inter_op_threads: _Optional[int] = ..., batch_workers: _Optional[int] = ..., reason: _Optional[str] = ..., wide_intra_op_threads: _Optional[int] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "dim", "embeddings", "timing")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    model: str
    dim: int
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    timing: ServerTiming
    def __init__(self, model: _Optional[str] = ..., dim: _Optional[int] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., timing: _Optional[_Union[ServerTiming, _Mapping]] = ...) -> None: ...

class InsertItem(_message.Message):
    __slots__ = ("key", "image", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    key: str
    image: bytes
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, key: _Optional[str] = ..., image: _Optional[bytes] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class InsertRequest(_message.Message):
    __slots__ = ("items", "models")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InsertItem]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[InsertItem, _Mapping]]] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class InsertResult(_message.Message):
    __slots__ = ("id", "created", "models", "content_sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    id: int
    created: bool
    models: _containers.RepeatedScalarFieldContainer[str]
    content_sha256: str
    def __init__(self, id: _Optional[int] = ..., created: _Optional[bool] = ..., models: _Optional[_Iterable[str]] = ..., content_sha256: _Optional[str] = ...) -> None: ...

class InsertResponse(_message.Message):
    __slots__ = ("results", "timing")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[InsertResult]
    timing: ServerTiming
    def __init__(self, results: _Optional[_Iterable[_Union[InsertResult, _Mapping]]] = ..., timing: _Optional[_Union[ServerTiming, _Mapping]] = ...) -> None: ...

class InsertStreamRequest(_message.Message):
    __slots__ = ("request_id", "item", "models")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    item: InsertItem
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., item: _Optional[_Union[InsertItem, _Mapping]] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class InsertStreamResponse(_message.Message):
    __slots__ = ("request_id", "result", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    result: InsertResult
    error: Error
    def __init__(self, request_id: _Optional[str] = ..., result: _Optional[_Union[InsertResult, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class QueryVector(_message.Message):
    __slots__ = ("model", "values")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    model: str
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("key_prefix", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    key_prefix: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, key_prefix: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("image", "id", "vector", "models", "top_k", "filter", "exclude_self", "fusion")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SELF_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    id: int
    vector: QueryVector
    models: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    filter: Filter
    exclude_self: bool
    fusion: Fusion
    def __init__(self, image: _Optional[bytes] = ..., id: _Optional[int] = ..., vector: _Optional[_Union[QueryVector, _Mapping]] = ..., models: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., exclude_self: _Optional[bool] = ..., fusion: _Optional[_Union[Fusion, _Mapping]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "distance", "key", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: int
    distance: float
    key: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[int] = ..., distance: _Optional[float] = ..., key: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelHits(_message.Message):
    __slots__ = ("model", "hits")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    model: str
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, model: _Optional[str] = ..., hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "timing", "fused", "fusion_method")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    FUSED_FIELD_NUMBER: _ClassVar[int]
    FUSION_METHOD_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ModelHits]
    timing: ServerTiming
    fused: _containers.RepeatedCompositeFieldContainer[FusedHit]
    fusion_method: FusionMethod
    def __init__(self, results: _Optional[_Iterable[_Union[ModelHits, _Mapping]]] = ..., timing: _Optional[_Union[ServerTiming, _Mapping]] = ..., fused: _Optional[_Iterable[_Union[FusedHit, _Mapping]]] = ..., fusion_method: _Optional[_Union[FusionMethod, str]] = ...) -> None: ...

class Fusion(_message.Message):
    __slots__ = ("method", "weights", "rrf_k", "candidates")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    method: FusionMethod
    weights: _containers.ScalarMap[str, float]
    rrf_k: int
    candidates: int
    def __init__(self, method: _Optional[_Union[FusionMethod, str]] = ..., weights: _Optional[_Mapping[str, float]] = ..., rrf_k: _Optional[int] = ..., candidates: _Optional[int] = ...) -> None: ...

class ModelScore(_message.Message):
    __slots__ = ("model", "distance", "rank")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    model: str
    distance: float
    rank: int
    def __init__(self, model: _Optional[str] = ..., distance: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class FusedHit(_message.Message):
    __slots__ = ("id", "key", "attributes", "score", "models")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    id: int
    key: str
    attributes: _containers.ScalarMap[str, str]
    score: float
    models: _containers.RepeatedCompositeFieldContainer[ModelScore]
    def __init__(self, id: _Optional[int] = ..., key: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., score: _Optional[float] = ..., models: _Optional[_Iterable[_Union[ModelScore, _Mapping]]] = ...) -> None: ...

class SearchStreamRequest(_message.Message):
    __slots__ = ("request_id", "query")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    query: SearchRequest
    def __init__(self, request_id: _Optional[str] = ..., query: _Optional[_Union[SearchRequest, _Mapping]] = ...) -> None: ...

class SearchStreamResponse(_message.Message):
    __slots__ = ("request_id", "result", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    result: SearchResponse
    error: Error
    def __init__(self, request_id: _Optional[str] = ..., result: _Optional[_Union[SearchResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("id", "key")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    id: int
    key: str
    def __init__(self, id: _Optional[int] = ..., key: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "key", "attributes", "content_sha256", "models", "created_at")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    key: str
    attributes: _containers.ScalarMap[str, str]
    content_sha256: str
    models: _containers.RepeatedScalarFieldContainer[str]
    created_at: float
    def __init__(self, id: _Optional[int] = ..., key: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., content_sha256: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., created_at: _Optional[float] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("id", "models")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    id: int
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("reset",)
    RESET_FIELD_NUMBER: _ClassVar[int]
    reset: bool
    def __init__(self, reset: _Optional[bool] = ...) -> None: ...

class BatcherStats(_message.Message):
    __slots__ = ("model", "batch_size_histogram", "batches", "items", "rejected", "expired", "cancelled", "queue_ms_sum", "run_ms_sum", "queue_depth", "alone_batches")
    class BatchSizeHistogramEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_SUM_FIELD_NUMBER: _ClassVar[int]
    RUN_MS_SUM_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    ALONE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    model: str
    batch_size_histogram: _containers.ScalarMap[int, int]
    batches: int
    items: int
    rejected: int
    expired: int
    cancelled: int
    queue_ms_sum: float
    run_ms_sum: float
    queue_depth: int
    alone_batches: int
    def __init__(self, model: _Optional[str] = ..., batch_size_histogram: _Optional[_Mapping[int, int]] = ..., batches: _Optional[int] = ..., items: _Optional[int] = ..., rejected: _Optional[int] = ..., expired: _Optional[int] = ..., cancelled: _Optional[int] = ..., queue_ms_sum: _Optional[float] = ..., run_ms_sum: _Optional[float] = ..., queue_depth: _Optional[int] = ..., alone_batches: _Optional[int] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("batchers", "requests_by_status", "uptime_s")
    class RequestsByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BATCHERS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    batchers: _containers.RepeatedCompositeFieldContainer[BatcherStats]
    requests_by_status: _containers.ScalarMap[str, int]
    uptime_s: float
    def __init__(self, batchers: _Optional[_Iterable[_Union[BatcherStats, _Mapping]]] = ..., requests_by_status: _Optional[_Mapping[str, int]] = ..., uptime_s: _Optional[float] = ...) -> None: ...

class FindDuplicatesRequest(_message.Message):
    __slots__ = ("model", "threshold", "filter", "page_size", "exact_only", "models")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXACT_ONLY_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    threshold: float
    filter: Filter
    page_size: int
    exact_only: bool
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., threshold: _Optional[float] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., page_size: _Optional[int] = ..., exact_only: _Optional[bool] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class DuplicateMember(_message.Message):
    __slots__ = ("id", "key", "distance", "exact", "content_sha256", "attributes", "distances")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class DistancesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    id: int
    key: str
    distance: float
    exact: bool
    content_sha256: str
    attributes: _containers.ScalarMap[str, str]
    distances: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[int] = ..., key: _Optional[str] = ..., distance: _Optional[float] = ..., exact: _Optional[bool] = ..., content_sha256: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., distances: _Optional[_Mapping[str, float]] = ...) -> None: ...

class DuplicateGroup(_message.Message):
    __slots__ = ("representative_id", "size", "offset", "more", "members", "exact_count")
    REPRESENTATIVE_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    EXACT_COUNT_FIELD_NUMBER: _ClassVar[int]
    representative_id: int
    size: int
    offset: int
    more: bool
    members: _containers.RepeatedCompositeFieldContainer[DuplicateMember]
    exact_count: int
    def __init__(self, representative_id: _Optional[int] = ..., size: _Optional[int] = ..., offset: _Optional[int] = ..., more: _Optional[bool] = ..., members: _Optional[_Iterable[_Union[DuplicateMember, _Mapping]]] = ..., exact_count: _Optional[int] = ...) -> None: ...

class DuplicatesSummary(_message.Message):
    __slots__ = ("model", "threshold", "default_threshold", "exact_distance", "items_scanned", "groups", "grouped_items", "pairs", "search_mode", "capped_items", "elapsed_ms", "models", "thresholds")
    class ThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EXACT_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    GROUPED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MODE_FIELD_NUMBER: _ClassVar[int]
    CAPPED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    threshold: float
    default_threshold: bool
    exact_distance: float
    items_scanned: int
    groups: int
    grouped_items: int
    pairs: int
    search_mode: str
    capped_items: int
    elapsed_ms: float
    models: _containers.RepeatedScalarFieldContainer[str]
    thresholds: _containers.ScalarMap[str, float]
    def __init__(self, model: _Optional[str] = ..., threshold: _Optional[float] = ..., default_threshold: _Optional[bool] = ..., exact_distance: _Optional[float] = ..., items_scanned: _Optional[int] = ..., groups: _Optional[int] = ..., grouped_items: _Optional[int] = ..., pairs: _Optional[int] = ..., search_mode: _Optional[str] = ..., capped_items: _Optional[int] = ..., elapsed_ms: _Optional[float] = ..., models: _Optional[_Iterable[str]] = ..., thresholds: _Optional[_Mapping[str, float]] = ...) -> None: ...

class FindDuplicatesResponse(_message.Message):
    __slots__ = ("group", "summary")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    group: DuplicateGroup
    summary: DuplicatesSummary
    def __init__(self, group: _Optional[_Union[DuplicateGroup, _Mapping]] = ..., summary: _Optional[_Union[DuplicatesSummary, _Mapping]] = ...) -> None: ...

class ServerTiming(_message.Message):
    __slots__ = ("total_ms", "preprocess_ms", "queue_ms", "inference_ms", "milvus_ms", "redis_ms", "batch_size")
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    MILVUS_MS_FIELD_NUMBER: _ClassVar[int]
    REDIS_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    total_ms: float
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    milvus_ms: float
    redis_ms: float
    batch_size: int
    def __init__(self, total_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., milvus_ms: _Optional[float] = ..., redis_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "code_name", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    code_name: str
    message: str
    def __init__(self, code: _Optional[int] = ..., code_name: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
