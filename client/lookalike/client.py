"""A thin, typed Python client over the generated ``lookalike.v1`` gRPC stub.

What it adds over the raw stub, and nothing more:

* images as paths, bytes or PIL images (see :mod:`lookalike.images`);
* a deadline on every unary call (``timeout``, shared by all retries of that call);
* retries by gRPC itself, from the channel's service config (:class:`RetryPolicy`): on
  ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED`` (a full queue: back off and retry; a request over
  a size limit is ``INVALID_ARGUMENT``) and ``ABORTED`` (a lost race), for the idempotent
  methods, with exponential backoff and full jitter, honouring the server's
  ``grpc-retry-pushback-ms``. Every write is idempotent on the server (inserting the same
  content returns the existing id), so retrying ``Insert`` creates nothing twice.
  ``retries=0`` turns retrying off;
* TLS, client certificates and a bearer token (see :mod:`lookalike.security`);
* typed results (dataclasses) instead of protobuf messages, and embeddings as a numpy
  ``float32`` array of shape ``(n, dim)`` when numpy is importable (lists of lists
  otherwise: numpy is not a dependency of the thin client);
* errors as :class:`LookalikeError` subclasses carrying the status code and the server's
  message (the original ``grpc.RpcError`` is chained as ``__cause__``).

Streams (``insert_stream``, ``search_stream``) are not retried (a half-consumed iterator
cannot be replayed) and have no deadline unless one is given, since they run as long as their
input; a failed item inside a stream is reported in its result, not raised.

The code is split by concern: :mod:`lookalike.errors`, :mod:`lookalike.types`,
:mod:`lookalike.security`, :mod:`lookalike._core` (everything both clients share) and the
two I/O shells, this module and :mod:`lookalike.aio`. Every public name stays importable
from here.

Example:
    >>> with LookalikeClient("127.0.0.1:50051") as client:
    ...     vectors = client.embed(["cat.jpg"], model="mobilenet_v2")
    ...     result = client.search(image="cat.jpg", top_k=5)
    ...     for model_hits in result:
    ...         print(model_hits.model, [h.key for h in model_hits.hits])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import grpc

from lookalike._core import (
    _USE_DEFAULT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_OPTIONS,
    DEFAULT_TARGET,
    BaseClient,
    PreparedCall,
    RetryPolicy,
    _insert_item_pb,
    _stream_search_request,
    _to_item,
)
from lookalike._streams import windowed_stream
from lookalike.dupes import DuplicateGroup, DuplicateMember, DuplicatesSummary
from lookalike.errors import (
    RETRIABLE_CODES,
    AbortedError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    LookalikeError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
    from_stream_error,
    make_error,
)
from lookalike.images import ImageInput
from lookalike.security import ChannelSecurity
from lookalike.types import (
    BatcherStats,
    DeleteResult,
    FusedHit,
    Fusion,
    FusionInput,
    Hit,
    InsertResult,
    InsertStreamResult,
    Item,
    ItemInput,
    ModelHits,
    ModelInfo,
    ModelScore,
    NewItem,
    Preprocessing,
    SearchQuery,
    SearchResult,
    SearchStreamResult,
    ServerTiming,
    Stats,
    _insert_result,
    _search_result,
    vector_norm,
)
from lookalike.v1 import lookalike_pb2 as pb

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_OPTIONS",
    "DEFAULT_TARGET",
    "RETRIABLE_CODES",
    "AbortedError",
    "AsyncLookalikeClient",
    "BatcherStats",
    "ChannelSecurity",
    "DeadlineExceededError",
    "DeleteResult",
    "DuplicateGroup",
    "DuplicateMember",
    "DuplicatesSummary",
    "FailedPreconditionError",
    "FusedHit",
    "Fusion",
    "Hit",
    "InsertResult",
    "InsertStreamResult",
    "InvalidArgumentError",
    "Item",
    "ItemInput",
    "LookalikeClient",
    "LookalikeError",
    "ModelHits",
    "ModelInfo",
    "ModelScore",
    "NewItem",
    "NotFoundError",
    "PermissionDeniedError",
    "Preprocessing",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SearchQuery",
    "SearchResult",
    "SearchStreamResult",
    "ServerTiming",
    "Stats",
    "UnauthenticatedError",
    "UnavailableError",
    "make_error",
    "vector_norm",
]


class LookalikeClient(BaseClient):
    """Blocking client for a lookalike server.

    Takes the arguments of :class:`~lookalike._core.BaseClient`: ``target``, ``timeout``,
    ``retries``/``retry_codes``/``retry_policy``, ``tls``/``ca``/``cert``/``key``/``token``
    /``insecure_token`` (or ``security``), ``options``, and ``balancing``/``health_check`` for
    several replicas (``target`` may be a list). :meth:`from_env` reads them from
    ``LOOKALIKE_*`` variables.

    The client owns its channel: use it as a context manager or call :meth:`close`.
    """

    _grpc = grpc

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel (for custom stubs or interceptors)."""
        return self._channel  # type: ignore[no-any-return]

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> LookalikeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: PreparedCall, timeout: float | None) -> Any:
        """Runs one unary call under its deadline; gRPC does the retrying."""
        self._admit(call)
        try:
            response = call.rpc(call.request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as err:
            exc = from_rpc_error(err)
            self._record(call, exc)
            raise exc from err
        self._record(call, None)
        return call.convert(response)

    # -- RPCs --

    def list_models(self, *, timeout: float | None = _USE_DEFAULT) -> list[ModelInfo]:
        """Lists the models the server has loaded (one :class:`ModelInfo` each).

        Args:
            timeout: Deadline in seconds; the client default when omitted, ``None`` for none.
        """
        return self._send(self._list_models(), timeout)  # type: ignore[no-any-return]

    def embed(
        self, images: ImageInput | Sequence[ImageInput], model: str, *, timeout: float | None = _USE_DEFAULT
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
        return self._send(self._embed(images, model), timeout)

    @overload
    def insert(
        self, items: ItemInput, models: Sequence[str] | None = ..., *, timeout: float | None = ...
    ) -> InsertResult: ...

    @overload
    def insert(
        self, items: Iterable[ItemInput], models: Sequence[str] | None = ..., *, timeout: float | None = ...
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
        return self._send(self._insert(items, models), timeout)  # type: ignore[no-any-return]

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
        fusion: FusionInput = None,
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
            fusion: Also return one list fused across the models (two or more): a
                :class:`Fusion`, ``"distance"``, ``"rrf"`` or ``True`` for the server's default.
            timeout: Deadline in seconds; the client default when omitted.

        Returns:
            A :class:`SearchResult`: one :class:`ModelHits` per model, in request order (and
            ``fused`` when asked).
        """
        call = self._search(image, id, vector, models, top_k, key_prefix, attributes, exclude_self, fusion)
        return self._send(call, timeout)  # type: ignore[no-any-return]

    def get(self, id: int | None = None, *, key: str | None = None, timeout: float | None = _USE_DEFAULT) -> Item:
        """Returns a stored item's record, by id or by key.

        Raises:
            NotFoundError: No such item.
        """
        return self._send(self._get(id, key), timeout)  # type: ignore[no-any-return]

    def delete(self, id: int, *, timeout: float | None = _USE_DEFAULT) -> DeleteResult:
        """Removes an item from every model's collection and from the metadata store.

        Not retried automatically (see :data:`lookalike.channel.IDEMPOTENT_METHODS`).

        Raises:
            NotFoundError: No such item.
        """
        return self._send(self._delete(id), timeout)  # type: ignore[no-any-return]

    def stats(self, reset: bool = False, *, timeout: float | None = _USE_DEFAULT) -> Stats:
        """Reads the server's counters, optionally zeroing them after the read."""
        return self._send(self._stats(reset), timeout)  # type: ignore[no-any-return]

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
        return self._send(self._health(service), timeout)  # type: ignore[no-any-return]

    # -- streams --

    def find_duplicates(
        self,
        model: str | Sequence[str] | None = None,
        *,
        threshold: float | None = None,
        key_prefix: str | None = None,
        attributes: Mapping[str, str] | None = None,
        page_size: int = 0,
        exact_only: bool = False,
        timeout: float | None = None,
    ) -> Iterator[DuplicateGroup | DuplicatesSummary]:
        """Near-duplicate groups of one model's index (or several's), each as soon as the server has it.

        The server walks the whole index (or what the filter keeps), so this takes a while
        on a large one; groups stream in order of their representative, a large group in
        several messages that are joined here. The last item yielded is the
        :class:`DuplicatesSummary` (threshold applied, items scanned...). Not retried.

        Args:
            model: Model to compare under; ``None`` on a one-model server only. Several
                names: two items are near when any of those models puts them within its
                own calibrated threshold (only items indexed under all of them are
                compared; ``threshold`` must be ``None``).
            threshold: Squared L2 distance to the representative; ``None`` = the model's
                calibrated default (the summary says which was used).
            key_prefix: Only items whose key starts with this.
            attributes: Only items whose attributes equal all of these.
            page_size: Members per message (0 = server default); any value gives whole groups.
            exact_only: Only groups with at least one exact copy.
            timeout: Deadline for the whole walk in seconds; ``None`` (default) for none.

        Yields:
            :class:`DuplicateGroup` objects, then one :class:`DuplicatesSummary`.

        Raises:
            InvalidArgumentError: A bad threshold, page size or filter (the message says which).
            NotFoundError: No such model.
            ResourceExhaustedError: Another walk is running; retry later.
        """
        call, _ = self._find_duplicates(model, threshold, key_prefix, attributes, page_size, exact_only)
        stream = call.rpc(call.request, timeout=timeout, metadata=self._metadata)
        try:
            for msg in stream:
                out = call.convert(msg)
                if out is not None:
                    yield out
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            stream.cancel()  # a consumer that stops early ends the server's walk too

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

        yield from windowed_stream(
            self._stub.InsertStream,
            ((i, _to_item(it)) for i, it in enumerate(items)),
            build,
            lambda i, it, resp: InsertStreamResult(
                index=i,
                key=it.key,
                result=_insert_result(resp.result) if resp.HasField("result") else None,
                error=None if resp.HasField("result") else from_stream_error(resp.error),
            ),
            lambda i, it, exc: InsertStreamResult(index=i, key=it.key, error=exc),
            window=window,
            timeout=timeout,
            metadata=self._metadata,
        )

    def search_stream(
        self,
        queries: Iterable[SearchQuery | ImageInput],
        *,
        models: Sequence[str] | None = None,
        top_k: int = 10,
        key_prefix: str | None = None,
        attributes: Mapping[str, str] | None = None,
        exclude_self: bool = False,
        fusion: FusionInput = None,
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
            fusion: Default fusion (see :meth:`search`).
            window: Maximum queries in flight.
            timeout: Deadline for the whole stream in seconds; ``None`` (default) for none.

        Yields:
            One :class:`SearchStreamResult` per query, in completion order (``index`` is the
            query's position in ``queries``).
        """
        defaults = {
            "models": models,
            "top_k": top_k,
            "key_prefix": key_prefix,
            "attributes": attributes,
            "exclude_self": exclude_self,
            "fusion": fusion,
        }
        yield from windowed_stream(
            self._stub.SearchStream,
            ((i, q if isinstance(q, SearchQuery) else SearchQuery(image=q)) for i, q in enumerate(queries)),
            lambda i, q: _stream_search_request(i, q, defaults),
            lambda i, q, resp: SearchStreamResult(
                index=i,
                result=_search_result(resp.result) if resp.HasField("result") else None,
                error=None if resp.HasField("result") else from_stream_error(resp.error),
            ),
            lambda i, q, exc: SearchStreamResult(index=i, error=exc),
            window=window,
            timeout=timeout,
            metadata=self._metadata,
        )


# Imported last: lookalike.aio subclasses BaseClient and is re-exported here for the old path.
from lookalike.aio import AsyncLookalikeClient  # noqa: E402
