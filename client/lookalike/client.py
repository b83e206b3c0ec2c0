"""A thin, typed Python client over the generated ``lookalike.v1`` gRPC stub.

What it adds over the raw stub, and nothing more:

* images as paths, bytes or PIL images (see :mod:`lookalike.images`);
* a deadline on every unary call (``timeout``, shared by all retries of that call);
* retries with exponential backoff and full jitter on ``UNAVAILABLE`` only. ``UNAVAILABLE``
  means the request did not run or the server says it may simply be retried; every write is
  idempotent on the server (inserting the same content returns the existing id), so retrying
  ``Insert`` after a lost response creates nothing twice. ``RESOURCE_EXHAUSTED`` is *not*
  retried by default: the server uses it both for a full queue (worth retrying) and for a
  request over a size limit (never worth retrying), and the code alone cannot tell them apart.
  Pass ``retry_codes`` to opt in when you know your requests are within the limits;
* typed results (dataclasses) instead of protobuf messages, and embeddings as a numpy
  ``float32`` array of shape ``(n, dim)`` when numpy is importable (lists of lists otherwise);
* errors as :class:`LookalikeError` subclasses carrying the status code and the server's
  message (the original ``grpc.RpcError`` is chained as ``__cause__``).

Streams (``insert_stream``, ``search_stream``) are not retried (a half-consumed iterator
cannot be replayed) and have no deadline unless one is given, since they run as long as their
input; a failed item inside a stream is reported in its result, not raised.

Example:
    >>> with LookalikeClient("127.0.0.1:50051") as client:
    ...     vectors = client.embed(["cat.jpg"], model="mobilenet_v2")
    ...     result = client.search(image="cat.jpg", top_k=5)
    ...     for model_hits in result:
    ...         print(model_hits.model, [h.key for h in model_hits.hits])
"""

from __future__ import annotations

import asyncio
import itertools
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast, overload

import grpc

from lookalike.images import ImageInput, encode_image, is_image_input
from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_TARGET",
    "AsyncLookalikeClient",
    "BatcherStats",
    "DeadlineExceededError",
    "DeleteResult",
    "FailedPreconditionError",
    "Hit",
    "InsertResult",
    "InsertStreamResult",
    "InvalidArgumentError",
    "Item",
    "LookalikeClient",
    "LookalikeError",
    "ModelHits",
    "ModelInfo",
    "NewItem",
    "NotFoundError",
    "Preprocessing",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SearchQuery",
    "SearchResult",
    "SearchStreamResult",
    "ServerTiming",
    "Stats",
    "UnavailableError",
]

DEFAULT_TARGET = "127.0.0.1:50051"
"""Where the server listens by default (the ``lookalike-server`` default port, on loopback)."""


def _open_channel(
    module: Any, target: str, secure: bool, root_certificates: bytes | None, options: Sequence[tuple[str, Any]]
) -> Any:
    """A channel from ``grpc`` or ``grpc.aio`` (same function names in both)."""
    if secure:
        creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return module.secure_channel(target, creds, options=list(options))
    return module.insecure_channel(target, options=list(options))


# Sized for images: a few multi-megabyte photos per request must fit both ways.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
)

_T = TypeVar("_T")

# --------------------------------------------------------------------------- errors --


class LookalikeError(Exception):
    """An RPC failed. Subclasses exist per common status code; catch this one for all.

    Attributes:
        code: The gRPC status code.
        message: The server's (or gRPC's) message.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def retriable(self) -> bool:
        """Whether simply sending the same request again may succeed."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class InvalidArgumentError(LookalikeError):
    """The request was wrong: bad image, unknown attribute, bad top_k..."""


class NotFoundError(LookalikeError):
    """The item id, key or model named does not exist."""


class UnavailableError(LookalikeError):
    """The server (or its Milvus/Redis) could not be reached; retriable."""


class ResourceExhaustedError(LookalikeError):
    """The server is overloaded, or the request exceeds a size limit."""


class DeadlineExceededError(LookalikeError):
    """The call's deadline passed."""


class FailedPreconditionError(LookalikeError):
    """The system is not in a state for this request (e.g. item lacks that model)."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[LookalikeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
}

_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def make_error(code: grpc.StatusCode, message: str) -> LookalikeError:
    """Builds the :class:`LookalikeError` subclass matching ``code``."""
    return _ERROR_CLASSES.get(code, LookalikeError)(code, message)


def _from_rpc_error(err: grpc.RpcError) -> LookalikeError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    exc = make_error(code or grpc.StatusCode.UNKNOWN, details or "")
    exc.__cause__ = err
    return exc


def _from_stream_error(err: pb.Error) -> LookalikeError:
    code = _CODES_BY_NUMBER.get(err.code, grpc.StatusCode.UNKNOWN)
    return make_error(code, err.message)


# ---------------------------------------------------------------------- results --


@dataclass(frozen=True)
class Preprocessing:
    """How a model turns decoded pixels into its input tensor (see the proto for each field)."""

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
class SearchResult:
    """The answer to one search: a hit list per model, in request order.

    Iterating yields the :class:`ModelHits`; ``result["mobilenet_v2"]`` picks one model's.
    """

    results: list[ModelHits]
    timing: ServerTiming | None = None

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


def _image_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    # A str or bytes is itself a Sequence, so "one image" must be decided before iterating.
    if is_image_input(images):
        return [cast(ImageInput, images)]
    return list(cast(Sequence[ImageInput], images))


def _to_item(item: ItemInput) -> NewItem:
    if isinstance(item, NewItem):
        return item
    if isinstance(item, tuple) and len(item) in (2, 3) and isinstance(item[0], str):
        attrs = item[2] if len(item) == 3 else {}  # type: ignore[misc]
        return NewItem(key=item[0], image=item[1], attributes=attrs)
    raise TypeError(f"expected NewItem or (key, image[, attributes]) tuple, got {item!r:.80}")


def _is_single_item(items: Any) -> bool:
    # A single (key, image[, attrs]) tuple vs. a collection of them: a single one starts with
    # its key, a collection's first element is itself an item.
    return isinstance(items, NewItem) or (
        isinstance(items, tuple) and len(items) in (2, 3) and isinstance(items[0], str)
    )


def _insert_item_pb(item: NewItem) -> pb.InsertItem:
    return pb.InsertItem(key=item.key, image=encode_image(item.image), attributes=dict(item.attributes or {}))


def _search_request(
    *,
    image: ImageInput | None,
    id: int | None,
    vector: Sequence[float] | None,
    models: Sequence[str] | None,
    top_k: int,
    key_prefix: str | None,
    attributes: Mapping[str, str] | None,
    exclude_self: bool,
) -> pb.SearchRequest:
    given = sum(x is not None for x in (image, id, vector))
    if given != 1:
        raise ValueError("give exactly one of image=, id= or vector=")
    req = pb.SearchRequest(
        models=list(models or []),
        top_k=top_k,
        exclude_self=exclude_self,
        filter=pb.Filter(key_prefix=key_prefix or "", attributes=dict(attributes or {})),
    )
    if image is not None:
        req.image = encode_image(image)
    elif id is not None:
        req.id = int(id)
    else:
        assert vector is not None
        if not models or len(models) != 1:
            raise ValueError("a vector query needs exactly one model: models=['name']")
        values = vector.tolist() if hasattr(vector, "tolist") else list(vector)
        req.vector.CopyFrom(pb.QueryVector(model=models[0], values=values))
    return req


# ---------------------------------------------------------------------- retries --


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter.

    Attempt ``n`` (0-based) sleeps a uniform random time in ``[0, min(max, base * 2**n)]``,
    so that many clients recovering from the same outage do not retry in lockstep.

    Attributes:
        retries: Extra attempts after the first one.
        base_s: First backoff ceiling.
        max_s: Largest backoff ceiling.
        codes: Status codes worth retrying.
    """

    retries: int = 3
    base_s: float = 0.1
    max_s: float = 2.0
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def backoff(self, attempt: int) -> float:
        """Seconds to sleep before retry number ``attempt`` (0-based)."""
        return random.uniform(0.0, min(self.max_s, self.base_s * (2**attempt)))


_USE_DEFAULT: Any = object()


def _health_modules() -> tuple[Any, Any]:
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError as exc:  # the health stub is not part of the thin client install
        raise ImportError(
            "health checks need the grpc.health.v1 stub: pip install grpcio-health-checking "
            "(it comes with the 'server' extra)"
        ) from exc
    return health_pb2, health_pb2_grpc


# ------------------------------------------------------------------ sync client --


class LookalikeClient:
    """Blocking client for a lookalike server.

    Args:
        target: ``host:port`` of the server.
        timeout: Default deadline in seconds for each unary call, all retries included.
        retries: Extra attempts after a retriable failure (0 disables retrying).
        secure: Use TLS.
        root_certificates: PEM root certificates for TLS (system roots when ``None``).
        options: gRPC channel options; defaults raise the message size limits to 64 MiB.
        retry_codes: Status codes to retry; default ``{UNAVAILABLE}`` (see the module doc).

    The client owns its channel: use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        retries: int = 3,
        secure: bool = False,
        root_certificates: bytes | None = None,
        options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
        retry_codes: Iterable[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE,),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries=retries, codes=frozenset(retry_codes))
        self._channel = _open_channel(grpc, target, secure, root_certificates, options)
        self._stub = pb_grpc.LookalikeStub(self._channel)
        # Tests and tooling may swap the sleep out; production uses time.sleep.
        self._sleep: Callable[[float], None] = time.sleep

    # -- lifecycle --

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel (for custom stubs or interceptors)."""
        return self._channel

    @property
    def stub(self) -> pb_grpc.LookalikeStub:
        """The generated stub, for anything this wrapper does not cover."""
        return self._stub

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> LookalikeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --

    def _call(self, method: Callable[..., _T], request: Any, timeout: float | None) -> _T:
        """Runs one unary call under the deadline, retrying the retriable codes."""
        timeout = self.timeout if timeout is _USE_DEFAULT else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return method(request, timeout=remaining)
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                if code not in self.retry_policy.codes or attempt >= self.retry_policy.retries:
                    raise _from_rpc_error(err) from err
                pause = self.retry_policy.backoff(attempt)
                # Never sleep past the deadline: the last error is more useful than a timeout.
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise _from_rpc_error(err) from err
                self._sleep(pause)
                attempt += 1

    # -- RPCs --

    def list_models(self, *, timeout: float | None = _USE_DEFAULT) -> list[ModelInfo]:
        """Lists the models the server has loaded.

        Args:
            timeout: Deadline in seconds; the client default when omitted, ``None`` for none.

        Returns:
            One :class:`ModelInfo` per loaded model.
        """
        resp = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [_model_info(m) for m in resp.models]

    def embed(
        self,
        images: ImageInput | Sequence[ImageInput],
        model: str,
        *,
        timeout: float | None = _USE_DEFAULT,
    ) -> Any:
        """Embeds images with one model; nothing is stored.

        Args:
            images: One image or a sequence of them (paths, bytes or PIL images).
            model: Model name (see :meth:`list_models`).
            timeout: Deadline in seconds; the client default when omitted.

        Returns:
            L2-normalised embeddings, one row per image in order: a numpy ``float32`` array of
            shape ``(n, dim)`` when numpy is importable, else a list of lists of floats.
        """
        batch = _image_list(images)
        req = pb.EmbedRequest(model=model, images=[encode_image(i) for i in batch])
        return _embeddings(self._call(self._stub.Embed, req, timeout))

    @overload
    def insert(
        self,
        items: ItemInput,
        models: Sequence[str] | None = ...,
        *,
        timeout: float | None = ...,
    ) -> InsertResult: ...

    @overload
    def insert(
        self,
        items: Iterable[ItemInput],
        models: Sequence[str] | None = ...,
        *,
        timeout: float | None = ...,
    ) -> list[InsertResult]: ...

    def insert(
        self,
        items: ItemInput | Iterable[ItemInput],
        models: Sequence[str] | None = None,
        *,
        timeout: float | None = _USE_DEFAULT,
    ) -> InsertResult | list[InsertResult]:
        """Indexes items in one request. Idempotent: known content returns its existing id.

        Args:
            items: One item or several: :class:`NewItem` or ``(key, image[, attributes])``.
            models: Models to index under; ``None`` = every loaded model.
            timeout: Deadline in seconds; the client default when omitted.

        Returns:
            An :class:`InsertResult` for a single item, else a list in request order.
        """
        single = _is_single_item(items)
        batch = [_to_item(items)] if single else [_to_item(i) for i in items]  # type: ignore[arg-type, union-attr]
        req = pb.InsertRequest(items=[_insert_item_pb(i) for i in batch], models=list(models or []))
        results = [_insert_result(r) for r in self._call(self._stub.Insert, req, timeout).results]
        return results[0] if single else results

    def insert_stream(
        self,
        items: Iterable[ItemInput],
        models: Sequence[str] | None = None,
        *,
        window: int = 32,
        timeout: float | None = None,
    ) -> Iterator[InsertStreamResult]:
        """Bulk-indexes items over one InsertStream call, yielding each outcome as it comes.

        At most ``window`` items are in flight (sent and not yet answered); images are read
        lazily, so an iterator over a large directory never sits in memory at once. Results
        come in completion order; ``index`` is the item's position in ``items``. An item that
        fails (on the server, or because its file cannot be read) yields a result with
        ``error`` set and the stream goes on.

        Args:
            items: :class:`NewItem` or ``(key, image[, attributes])`` tuples.
            models: Models to index under; ``None`` = every loaded model.
            window: Maximum items in flight.
            timeout: Deadline for the whole stream in seconds; ``None`` (default) for none.

        Yields:
            One :class:`InsertStreamResult` per item.

        Raises:
            LookalikeError: The stream itself failed (e.g. the server went away).
        """
        model_list = list(models or [])

        def build(index: int, item: NewItem) -> pb.InsertStreamRequest:
            return pb.InsertStreamRequest(request_id=str(index), item=_insert_item_pb(item), models=model_list)

        yield from self._windowed_stream(
            self._stub.InsertStream,
            ((i, _to_item(it)) for i, it in enumerate(items)),
            build,
            lambda i, it, resp: InsertStreamResult(
                index=i,
                key=it.key,
                result=_insert_result(resp.result) if resp.HasField("result") else None,
                error=None if resp.HasField("result") else _from_stream_error(resp.error),
            ),
            lambda i, it, exc: InsertStreamResult(index=i, key=it.key, error=exc),
            window=window,
            timeout=timeout,
        )

    def search(
        self,
        image: ImageInput | None = None,
        *,
        id: int | None = None,
        vector: Sequence[float] | None = None,
        models: Sequence[str] | None = None,
        top_k: int = 10,
        key_prefix: str | None = None,
        attributes: Mapping[str, str] | None = None,
        exclude_self: bool = False,
        timeout: float | None = _USE_DEFAULT,
    ) -> SearchResult:
        """Finds the stored items nearest to a query, per model, side by side.

        Give exactly one query: ``image`` (path, bytes or PIL image), ``id`` (a stored item's
        vectors) or ``vector`` (raw values; then ``models`` must name exactly its one model).

        Args:
            image: Query image.
            id: Id of a stored item.
            vector: Raw query vector (list or numpy array).
            models: Models to search; ``None`` = every loaded model.
            top_k: Hits per model.
            key_prefix: Only items whose key starts with this.
            attributes: Only items whose attributes equal all of these.
            exclude_self: For an id query, leave the item itself out.
            timeout: Deadline in seconds; the client default when omitted.

        Returns:
            A :class:`SearchResult`: one :class:`ModelHits` per model, in request order.
        """
        req = _search_request(
            image=image,
            id=id,
            vector=vector,
            models=models,
            top_k=top_k,
            key_prefix=key_prefix,
            attributes=attributes,
            exclude_self=exclude_self,
        )
        return _search_result(self._call(self._stub.Search, req, timeout))

    def search_stream(
        self,
        queries: Iterable[SearchQuery | ImageInput],
        *,
        models: Sequence[str] | None = None,
        top_k: int = 10,
        key_prefix: str | None = None,
        attributes: Mapping[str, str] | None = None,
        exclude_self: bool = False,
        window: int = 32,
        timeout: float | None = None,
    ) -> Iterator[SearchStreamResult]:
        """Runs many searches over one SearchStream call, yielding each answer as it is ready.

        Args:
            queries: :class:`SearchQuery` objects, or plain images (searched with the defaults
                below). A query's own non-``None`` fields override the defaults.
            models: Default models.
            top_k: Default hits per model.
            key_prefix: Default key-prefix filter.
            attributes: Default attribute filter.
            exclude_self: Default for id queries.
            window: Maximum queries in flight.
            timeout: Deadline for the whole stream in seconds; ``None`` (default) for none.

        Yields:
            One :class:`SearchStreamResult` per query, in completion order (``index`` is the
            query's position in ``queries``).
        """

        def to_query(q: SearchQuery | ImageInput) -> SearchQuery:
            return q if isinstance(q, SearchQuery) else SearchQuery(image=q)

        def build(index: int, q: SearchQuery) -> pb.SearchStreamRequest:
            req = _search_request(
                image=q.image,
                id=q.id,
                vector=q.vector,
                models=q.models if q.models is not None else models,
                top_k=q.top_k if q.top_k is not None else top_k,
                key_prefix=q.key_prefix if q.key_prefix is not None else key_prefix,
                attributes=q.attributes if q.attributes is not None else attributes,
                exclude_self=q.exclude_self if q.exclude_self is not None else exclude_self,
            )
            return pb.SearchStreamRequest(request_id=str(index), query=req)

        yield from self._windowed_stream(
            self._stub.SearchStream,
            ((i, to_query(q)) for i, q in enumerate(queries)),
            build,
            lambda i, q, resp: SearchStreamResult(
                index=i,
                result=_search_result(resp.result) if resp.HasField("result") else None,
                error=None if resp.HasField("result") else _from_stream_error(resp.error),
            ),
            lambda i, q, exc: SearchStreamResult(index=i, error=exc),
            window=window,
            timeout=timeout,
        )

    def _windowed_stream(
        self,
        method: Callable[..., Any],
        inputs: Iterator[tuple[int, _T]],
        build: Callable[[int, _T], Any],
        on_response: Callable[[int, _T, Any], Any],
        on_local_error: Callable[[int, _T, Exception], Any],
        *,
        window: int,
        timeout: float | None,
    ) -> Iterator[Any]:
        """Drives a bidirectional stream with at most ``window`` requests unanswered.

        gRPC pulls the request iterator on its own thread; a semaphore acquired per request
        sent and released per response received bounds what is in flight, which is the flow
        control the server expects of a polite client. Inputs that fail to build locally (an
        unreadable file, an invalid query) never go on the wire; they are handed to the
        consuming thread through a queue and reported between responses.
        """
        if window < 1:
            raise ValueError("window must be >= 1")
        slots = threading.Semaphore(window)
        pending: dict[str, tuple[int, _T]] = {}
        local_failures: queue.SimpleQueue[Any] = queue.SimpleQueue()
        done_sending = threading.Event()
        stop = threading.Event()

        def requests() -> Iterator[Any]:
            try:
                for index, value in inputs:
                    try:
                        req = build(index, value)
                    except (OSError, ValueError, TypeError) as exc:
                        local_failures.put(on_local_error(index, value, exc))
                        continue
                    # Wait for a free slot, but notice when the consumer has gone away.
                    while not slots.acquire(timeout=0.1):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    pending[req.request_id] = (index, value)
                    yield req
            finally:
                done_sending.set()

        call = method(requests(), timeout=timeout)
        try:
            for resp in call:
                slots.release()
                while not local_failures.empty():
                    yield local_failures.get()
                entry = pending.pop(resp.request_id, None)
                if entry is None:  # a server bug; better loud than a result filed under the wrong input
                    raise LookalikeError(
                        grpc.StatusCode.INTERNAL, f"server answered unknown request_id {resp.request_id!r}"
                    )
                index, value = entry
                yield on_response(index, value, resp)
        except grpc.RpcError as err:
            raise _from_rpc_error(err) from err
        finally:
            stop.set()
            if not done_sending.is_set() or pending:
                call.cancel()
        while not local_failures.empty():
            yield local_failures.get()

    def get(self, id: int | None = None, *, key: str | None = None, timeout: float | None = _USE_DEFAULT) -> Item:
        """Returns a stored item's record, by id or by key.

        Raises:
            NotFoundError: No such item.
        """
        if (id is None) == (key is None):
            raise ValueError("give exactly one of id or key=")
        req = pb.GetRequest(id=int(id)) if id is not None else pb.GetRequest(key=key)
        return _item(self._call(self._stub.Get, req, timeout))

    def delete(self, id: int, *, timeout: float | None = _USE_DEFAULT) -> DeleteResult:
        """Removes an item from every model's collection and from the metadata store.

        Raises:
            NotFoundError: No such item.
        """
        resp = self._call(self._stub.Delete, pb.DeleteRequest(id=int(id)), timeout)
        return DeleteResult(id=resp.id, models=list(resp.models))

    def stats(self, reset: bool = False, *, timeout: float | None = _USE_DEFAULT) -> Stats:
        """Reads the server's counters, optionally zeroing them after the read."""
        return _stats(self._call(self._stub.GetStats, pb.GetStatsRequest(reset=reset), timeout))

    def health(self, service: str = "", *, timeout: float | None = _USE_DEFAULT) -> str:
        """Asks the standard ``grpc.health.v1`` service for the serving status.

        Args:
            service: Service name; ``""`` for the server as a whole.
            timeout: Deadline in seconds; the client default when omitted.

        Returns:
            The status name: ``"SERVING"``, ``"NOT_SERVING"``, ``"UNKNOWN"``...

        Raises:
            ImportError: ``grpcio-health-checking`` is not installed.
        """
        health_pb2, health_pb2_grpc = _health_modules()
        stub = health_pb2_grpc.HealthStub(self._channel)
        resp = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


# ----------------------------------------------------------------- async client --


class AsyncLookalikeClient:
    """``asyncio`` client over ``grpc.aio``, with the unary methods of :class:`LookalikeClient`.

    Same arguments, same results, same retry rules; methods are coroutines. Use with
    ``async with`` or ``await client.close()``. Streams are not wrapped here: use
    ``client.stub`` (a ``grpc.aio`` stub) for them.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        retries: int = 3,
        secure: bool = False,
        root_certificates: bytes | None = None,
        options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
        retry_codes: Iterable[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE,),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries=retries, codes=frozenset(retry_codes))
        self._channel = _open_channel(grpc.aio, target, secure, root_certificates, options)
        self._stub = pb_grpc.LookalikeStub(self._channel)

    @property
    def stub(self) -> pb_grpc.LookalikeStub:
        """The generated ``grpc.aio`` stub."""
        return self._stub

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncLookalikeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        timeout = self.timeout if timeout is _USE_DEFAULT else timeout
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        for attempt in itertools.count():
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                return await method(request, timeout=remaining)
            except grpc.aio.AioRpcError as err:
                if err.code() not in self.retry_policy.codes or attempt >= self.retry_policy.retries:
                    raise _from_rpc_error(err) from err
                pause = self.retry_policy.backoff(attempt)
                if deadline is not None and loop.time() + pause >= deadline:
                    raise _from_rpc_error(err) from err
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    async def list_models(self, *, timeout: float | None = _USE_DEFAULT) -> list[ModelInfo]:
        """See :meth:`LookalikeClient.list_models`."""
        resp = await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [_model_info(m) for m in resp.models]

    async def embed(
        self, images: ImageInput | Sequence[ImageInput], model: str, *, timeout: float | None = _USE_DEFAULT
    ) -> Any:
        """See :meth:`LookalikeClient.embed`."""
        batch = _image_list(images)
        req = pb.EmbedRequest(model=model, images=[encode_image(i) for i in batch])
        return _embeddings(await self._call(self._stub.Embed, req, timeout))

    async def insert(
        self,
        items: ItemInput | Iterable[ItemInput],
        models: Sequence[str] | None = None,
        *,
        timeout: float | None = _USE_DEFAULT,
    ) -> InsertResult | list[InsertResult]:
        """See :meth:`LookalikeClient.insert`."""
        single = _is_single_item(items)
        batch = [_to_item(items)] if single else [_to_item(i) for i in items]  # type: ignore[arg-type, union-attr]
        req = pb.InsertRequest(items=[_insert_item_pb(i) for i in batch], models=list(models or []))
        resp = await self._call(self._stub.Insert, req, timeout)
        results = [_insert_result(r) for r in resp.results]
        return results[0] if single else results

    async def search(
        self,
        image: ImageInput | None = None,
        *,
        id: int | None = None,
        vector: Sequence[float] | None = None,
        models: Sequence[str] | None = None,
        top_k: int = 10,
        key_prefix: str | None = None,
        attributes: Mapping[str, str] | None = None,
        exclude_self: bool = False,
        timeout: float | None = _USE_DEFAULT,
    ) -> SearchResult:
        """See :meth:`LookalikeClient.search`."""
        req = _search_request(
            image=image,
            id=id,
            vector=vector,
            models=models,
            top_k=top_k,
            key_prefix=key_prefix,
            attributes=attributes,
            exclude_self=exclude_self,
        )
        return _search_result(await self._call(self._stub.Search, req, timeout))

    async def get(self, id: int | None = None, *, key: str | None = None, timeout: float | None = _USE_DEFAULT) -> Item:
        """See :meth:`LookalikeClient.get`."""
        if (id is None) == (key is None):
            raise ValueError("give exactly one of id or key=")
        req = pb.GetRequest(id=int(id)) if id is not None else pb.GetRequest(key=key)
        return _item(await self._call(self._stub.Get, req, timeout))

    async def delete(self, id: int, *, timeout: float | None = _USE_DEFAULT) -> DeleteResult:
        """See :meth:`LookalikeClient.delete`."""
        resp = await self._call(self._stub.Delete, pb.DeleteRequest(id=int(id)), timeout)
        return DeleteResult(id=resp.id, models=list(resp.models))

    async def stats(self, reset: bool = False, *, timeout: float | None = _USE_DEFAULT) -> Stats:
        """See :meth:`LookalikeClient.stats`."""
        return _stats(await self._call(self._stub.GetStats, pb.GetStatsRequest(reset=reset), timeout))

    async def health(self, service: str = "", *, timeout: float | None = _USE_DEFAULT) -> str:
        """See :meth:`LookalikeClient.health`."""
        health_pb2, health_pb2_grpc = _health_modules()
        stub = health_pb2_grpc.HealthStub(self._channel)
        resp = await self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def vector_norm(values: Sequence[float]) -> float:
    """Euclidean norm of a vector (list or numpy row), without requiring numpy."""
    return math.sqrt(sum(float(v) * float(v) for v in values))
