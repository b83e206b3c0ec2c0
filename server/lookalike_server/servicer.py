"""The gRPC adapter: protobuf ↔ domain types, deadlines, cancellation, streams.

Every RPC goes through :func:`_rpc`, the one place where a
:class:`~lookalike_server.errors.ServiceError` becomes a gRPC status (via the
table in ``errors.py``) and where anything unexpected becomes INTERNAL with a
logged traceback — never a hang or a half-sent stream.

Streams (``InsertStream``, ``SearchStream``) read requests on a reader thread,
run each on a shared pool with a per-stream window of in-flight items (flow
control: when the window is full the reader stops reading, and gRPC's HTTP/2
flow control pushes back on the client), and yield each answer tagged with
its request id as soon as it is ready. One bad item gets an ``Error`` in its
response; the stream goes on. A client that disappears cancels the stream's
context, which drops its queued work.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import numpy as np

from lookalike.v1 import lookalike_pb2 as pb
from lookalike_server.config import LimitsConfig
from lookalike_server.domain import (
    InsertItem,
    ModelHits,
    RequestContext,
    SearchFilter,
    SearchQuery,
    Timing,
)
from lookalike_server.errors import InternalError, InvalidArgument, ServiceError, grpc_code_for

if TYPE_CHECKING:
    from lookalike_server.service import LookalikeService

log = logging.getLogger(__name__)


def status_code(name: str) -> grpc.StatusCode:
    """``"INVALID_ARGUMENT"`` → ``grpc.StatusCode.INVALID_ARGUMENT``."""
    return grpc.StatusCode[name]


def error_message(exc: BaseException) -> str:
    """The message a client sees for an exception (a reference id for bugs)."""
    if isinstance(exc, ServiceError):
        return exc.message
    ref = uuid.uuid4().hex[:12]
    log.error("internal error ref=%s", ref, exc_info=exc)
    return f"internal error (ref {ref}); the server log has the details"


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


def insert_result_pb(r: Any) -> pb.InsertResult:
    """Domain insert result → proto."""
    return pb.InsertResult(id=r.id, created=r.created, models=list(r.models), content_sha256=r.content_sha256)


class RequestCounter:
    """Requests by method and status code name, for GetStats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._baseline: Counter[str] = Counter()

    def add(self, method: str, code: str) -> None:
        """Counts one finished call."""
        with self._lock:
            self._counts[f"{method}:{code}"] += 1

    def snapshot(self, reset: bool = False) -> dict[str, int]:
        """Counts since the last reset; ``reset`` starts a new window (totals keep counting)."""
        with self._lock:
            out = {k: v - self._baseline[k] for k, v in self._counts.items() if v - self._baseline[k]}
            if reset:
                self._baseline = Counter(self._counts)
        return out

    def totals(self) -> dict[str, int]:
        """Monotonic counts since start, ``"Method:CODE" -> n``."""
        with self._lock:
            return dict(self._counts)


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request whose bytes did not parse as its message.

    Produced by the deserializer wrapper (:func:`safe_deserializer`), so the
    handler answers INVALID_ARGUMENT instead of gRPC's INTERNAL "Exception
    deserializing request!" with a traceback.
    """

    method: str
    reason: str


@dataclass
class _StreamState:
    """What a stream's reader task tells the responding loop."""

    sent: int = 0
    read_error: Exception | None = None
    idle: bool = False
    malformed: Malformed | None = None


def safe_deserializer(method: str, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """Wraps a message's ``FromString``: a parse failure becomes :class:`Malformed`."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, or anything else the parser raises on hostile bytes
            return Malformed(method, str(exc) or type(exc).__name__)

    return deserialize


def _pushback(exc: BaseException, pushback_ms: int) -> tuple[tuple[str, str], ...]:
    """Retry hint for RESOURCE_EXHAUSTED (honoured by gRPC retry policies); none otherwise."""
    if grpc_code_for(exc) == "RESOURCE_EXHAUSTED":
        return (("grpc-retry-pushback-ms", str(pushback_ms)),)
    return ()


def _rpc(method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wraps a unary coroutine handler: malformed input, context, error mapping, counting."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(self: LookalikeServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await self.reject_malformed(request, context)
            ctx = self.request_context(context)
            try:
                response = await fn(self, request, ctx)
            except asyncio.CancelledError:
                # The client cancelled or its deadline passed: drop queued work.
                ctx.cancel()
                self.counter.add(method, "CANCELLED")
                raise
            except Exception as exc:  # the one mapping point: every failure gets a status
                code = grpc_code_for(exc)
                self.counter.add(method, code)
                self.observe(method, time.monotonic() - ctx.started)
                await context.abort(
                    status_code(code), error_message(exc), trailing_metadata=_pushback(exc, self.pushback_ms)
                )
            self.counter.add(method, "OK")
            self.observe(method, time.monotonic() - ctx.started)
            return response

        return wrapper

    return decorate


class LookalikeServicer:
    """Implements ``lookalike.v1.Lookalike`` over a :class:`LookalikeService`, on ``grpc.aio``.

    Handlers are coroutines on the server's event loop. They never block it:
    the synchronous service runs on thread pools (``unary_workers`` threads
    for unary calls, ``stream_workers`` for stream items), so an idle stream
    is a suspended coroutine that costs no thread, and a health check is
    answered on the loop whatever the pools are doing.

    Args:
        get_service: Returns the service, or raises ``Unavailable`` while the
            server is still loading models or draining.
        limits: Request limits (stream window, stream bound and idle timeout,
            retry hint).
        unary_workers: Threads running unary calls' blocking work.
        stream_workers: Threads shared by all streams' items.
    """

    def __init__(
        self,
        get_service: Callable[[], LookalikeService],
        limits: LimitsConfig,
        unary_workers: int = 32,
        stream_workers: int = 64,
    ) -> None:
        self._get_service = get_service
        self.limits = limits
        self.stream_in_flight = limits.stream_in_flight
        self.pushback_ms = limits.retry_pushback_ms
        self.counter = RequestCounter()
        self.started = time.monotonic()
        self.open_streams = 0
        # Latency observer (method, seconds); the app plugs in Prometheus.
        self.observe: Callable[[str, float], None] = lambda method, seconds: None
        self._unary_pool = ThreadPoolExecutor(max_workers=unary_workers, thread_name_prefix="unary")
        self._stream_pool = ThreadPoolExecutor(max_workers=stream_workers, thread_name_prefix="stream-item")

    # ------------------------------------------------------- plumbing --
    def method_handlers(self) -> grpc.GenericRpcHandler:
        """The service's handlers, each request parsed by :func:`safe_deserializer`.

        Built from the service descriptor rather than the generated
        ``add_LookalikeServicer_to_server``, whose deserializers raise on
        malformed bytes (gRPC then answers INTERNAL).
        """
        service = pb.DESCRIPTOR.services_by_name["Lookalike"]
        handlers = {}
        for m in service.methods:
            request_cls = getattr(pb, m.input_type.name)
            response_cls = getattr(pb, m.output_type.name)
            kind = {
                (False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler,
            }[(m.client_streaming, m.server_streaming)]
            handlers[m.name] = kind(
                getattr(self, m.name),
                request_deserializer=safe_deserializer(m.name, request_cls.FromString),
                response_serializer=response_cls.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(service.full_name, handlers)

    async def reject_malformed(self, request: Malformed, context: grpc.aio.ServicerContext) -> NoReturn:
        """INVALID_ARGUMENT for bytes that are not the method's message; one log line, counted."""
        self.counter.add(request.method, "INVALID_ARGUMENT")
        self.counter.add(request.method + ".malformed", "INVALID_ARGUMENT")
        log.warning("malformed %s request from %s: %s", request.method, context.peer(), request.reason)
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid lookalike.v1 {request.method} message ({request.reason}); "
            "check that client and server use the same lookalike.proto",
        )
        raise AssertionError("unreachable")  # abort raises

    @staticmethod
    def request_context(context: grpc.aio.ServicerContext) -> RequestContext:
        """A domain context with the call's deadline, cancelled with the call."""
        remaining = context.time_remaining()
        # grpc reports "no deadline" as None or as a huge number.
        ctx = RequestContext(remaining if remaining is not None and remaining < 1e8 else None)

        def on_done(_call: object) -> None:
            if context.cancelled():
                ctx.cancel()

        context.add_done_callback(on_done)
        return ctx

    @property
    def service(self) -> LookalikeService:
        """The service, or Unavailable while loading."""
        return self._get_service()

    async def _blocking(
        self, pool: ThreadPoolExecutor, ctx: RequestContext, fn: Callable[..., Any], *args: Any, permit: Any = None
    ) -> Any:
        """Runs ``fn(*args)`` on ``pool``; the permit is returned when the work ends, not when the caller leaves."""

        def run() -> Any:
            ctx.check("starting")  # time queued for a thread counts against the deadline
            return fn(*args)

        try:
            fut = pool.submit(run)
        except BaseException:
            if permit is not None:
                permit.release()
            raise
        if permit is not None:
            fut.add_done_callback(lambda _f: permit.release())
        return await asyncio.wrap_future(fut)

    # ---------------------------------------------------------- unary --
    @_rpc("ListModels")
    async def ListModels(self, request: pb.ListModelsRequest, ctx: RequestContext) -> pb.ListModelsResponse:
        infos = []
        for view in self.service.model_views():
            model = view.model
            spec, pre = model.spec, model.spec.preprocess
            infos.append(
                pb.ModelInfo(
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
            )
        return pb.ListModelsResponse(models=infos)

    @_rpc("Embed")
    async def Embed(self, request: pb.EmbedRequest, ctx: RequestContext) -> pb.EmbedResponse:
        svc = self.service
        images = list(request.images)
        permit = svc.admit(images, [request.model], ctx) if request.model else None

        def run() -> pb.EmbedResponse:
            vectors, timing = svc.embed(images, request.model, ctx)
            return pb.EmbedResponse(
                model=request.model,
                dim=vectors.shape[1],
                embeddings=[pb.Embedding(values=row) for row in vectors.tolist()],
                timing=timing_pb(timing),
            )

        return await self._blocking(self._unary_pool, ctx, run, permit=permit)

    @_rpc("Insert")
    async def Insert(self, request: pb.InsertRequest, ctx: RequestContext) -> pb.InsertResponse:
        svc = self.service
        items = [InsertItem(it.key, it.image, dict(it.attributes)) for it in request.items]
        permit = svc.admit([it.image for it in items if it.image], request.models, ctx)

        def run() -> pb.InsertResponse:
            results, timing = svc.insert(items, list(request.models), ctx)
            return pb.InsertResponse(results=[insert_result_pb(r) for r in results], timing=timing_pb(timing))

        return await self._blocking(self._unary_pool, ctx, run, permit=permit)

    @_rpc("Search")
    async def Search(self, request: pb.SearchRequest, ctx: RequestContext) -> pb.SearchResponse:
        svc = self.service
        query = search_query(request)
        permit = svc.admit([query.image], query.models, ctx) if query.image else None

        def run() -> pb.SearchResponse:
            results, timing = svc.search(query, ctx)
            return search_response(results, timing)

        return await self._blocking(self._unary_pool, ctx, run, permit=permit)

    @_rpc("Get")
    async def Get(self, request: pb.GetRequest, ctx: RequestContext) -> pb.Item:
        svc = self.service
        which = request.WhichOneof("item")

        def run() -> pb.Item:
            item = svc.get(item_id=request.id if which == "id" else None, key=request.key or None)
            return pb.Item(
                id=item.id,
                key=item.key,
                attributes=item.attributes,
                content_sha256=item.content_sha256,
                models=list(item.models),
                created_at=item.created_at,
            )

        return await self._blocking(self._unary_pool, ctx, run)

    @_rpc("Delete")
    async def Delete(self, request: pb.DeleteRequest, ctx: RequestContext) -> pb.DeleteResponse:
        svc = self.service

        def run() -> pb.DeleteResponse:
            return pb.DeleteResponse(id=request.id, models=list(svc.delete(request.id)))

        return await self._blocking(self._unary_pool, ctx, run)

    @_rpc("GetStats")
    async def GetStats(self, request: pb.GetStatsRequest, ctx: RequestContext) -> pb.GetStatsResponse:
        svc = self.service
        batchers = []
        for name, st in svc.batcher_stats(reset=request.reset).items():
            batchers.append(
                pb.BatcherStats(
                    model=name,
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
            )
        return pb.GetStatsResponse(
            batchers=batchers,
            requests_by_status=self.counter.snapshot(reset=request.reset),
            uptime_s=time.monotonic() - self.started,
        )

    # -------------------------------------------------------- streams --
    async def InsertStream(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.InsertStreamResponse]:
        def admit(svc: LookalikeService, req: pb.InsertStreamRequest, ctx: RequestContext) -> Any:
            return svc.admit([req.item.image] if req.item.image else [], req.models, ctx)

        def one(svc: LookalikeService, req: pb.InsertStreamRequest, ctx: RequestContext) -> pb.InsertStreamResponse:
            item = InsertItem(req.item.key, req.item.image, dict(req.item.attributes))
            (result,), _ = svc.insert([item], list(req.models), ctx)
            return pb.InsertStreamResponse(request_id=req.request_id, result=insert_result_pb(result))

        def failed(req: pb.InsertStreamRequest, exc: BaseException) -> pb.InsertStreamResponse:
            return pb.InsertStreamResponse(request_id=req.request_id, error=to_error(exc))

        async for answer in self._stream("InsertStream", request_iterator, context, admit, one, failed):
            yield answer

    async def SearchStream(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SearchStreamResponse]:
        def admit(svc: LookalikeService, req: pb.SearchStreamRequest, ctx: RequestContext) -> Any:
            image = req.query.image if req.query.WhichOneof("query") == "image" else b""
            return svc.admit([image] if image else [], req.query.models, ctx)

        def one(svc: LookalikeService, req: pb.SearchStreamRequest, ctx: RequestContext) -> pb.SearchStreamResponse:
            results, timing = svc.search(search_query(req.query), ctx)
            return pb.SearchStreamResponse(request_id=req.request_id, result=search_response(results, timing))

        def failed(req: pb.SearchStreamRequest, exc: BaseException) -> pb.SearchStreamResponse:
            return pb.SearchStreamResponse(request_id=req.request_id, error=to_error(exc))

        async for answer in self._stream("SearchStream", request_iterator, context, admit, one, failed):
            yield answer

    async def _stream(
        self,
        method: str,
        request_iterator: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        admit: Callable[[LookalikeService, Any, RequestContext], Any],
        one: Callable[[LookalikeService, Any, RequestContext], Any],
        failed: Callable[[Any, BaseException], Any],
    ) -> AsyncIterator[Any]:
        """Runs a bidirectional stream with a bounded window of items in flight.

        A reader task reads requests while the window has room (when it is
        full, the reader stops reading and HTTP/2 flow control pushes back on
        the client); each item runs on the stream pool; answers are yielded
        as they complete. A stream with nothing in flight that sends nothing
        for ``limits.stream_idle_s`` is closed; at most ``limits.max_streams``
        are open at once.
        """
        try:
            svc = self.service  # fail the whole stream fast while loading
        except ServiceError as exc:
            self.counter.add(method, exc.code)
            await context.abort(status_code(exc.code), exc.message)
        if self.open_streams >= self.limits.max_streams:
            self.counter.add(method, "RESOURCE_EXHAUSTED")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.open_streams} streams are open (limit {self.limits.max_streams}); retry with backoff",
                trailing_metadata=(("grpc-retry-pushback-ms", str(self.pushback_ms)),),
            )
        self.open_streams += 1
        stream_ctx = self.request_context(context)
        window = asyncio.Semaphore(self.stream_in_flight)
        answers: asyncio.Queue[Any] = asyncio.Queue()
        done = object()
        state = _StreamState()
        tasks: set[asyncio.Task[None]] = set()

        async def run_item(req: Any) -> None:
            ctx = stream_ctx.child()
            try:
                permit = admit(svc, req, ctx)
                answer = await self._blocking(self._stream_pool, ctx, one, svc, req, ctx, permit=permit)
                self.counter.add(method + ".item", "OK")
            except Exception as exc:
                self.counter.add(method + ".item", grpc_code_for(exc))
                answer = failed(req, exc)
            finally:
                stream_ctx.release(ctx)
                window.release()
            await answers.put(answer)

        async def reader() -> None:
            iterator = request_iterator.__aiter__()
            try:
                while True:
                    await window.acquire()
                    next_req = asyncio.ensure_future(iterator.__anext__())
                    # Idle = nothing in flight and nothing sent for stream_idle_s.
                    while not (await asyncio.wait({next_req}, timeout=self.limits.stream_idle_s))[0]:
                        if not tasks:
                            next_req.cancel()
                            window.release()
                            state.idle = True
                            return
                    try:
                        req = next_req.result()
                    except StopAsyncIteration:
                        window.release()
                        return
                    if isinstance(req, Malformed):
                        window.release()
                        state.malformed = req
                        return
                    state.sent += 1
                    task = asyncio.ensure_future(run_item(req))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except grpc.RpcError:
                pass  # the client went away; the stream context is cancelled
            except Exception as exc:
                state.read_error = exc
            finally:
                await answers.put(done)

        reading = asyncio.ensure_future(reader())
        received = 0
        finished_reading = False
        try:
            while not finished_reading or received < state.sent:
                answer = await answers.get()
                if answer is done:
                    finished_reading = True
                    continue
                received += 1
                yield answer
        except asyncio.CancelledError:
            stream_ctx.cancel()
            self.counter.add(method, "CANCELLED")
            raise
        finally:
            self.open_streams -= 1
            reading.cancel()
            for task in list(tasks):
                task.cancel()
        if state.malformed is not None:
            stream_ctx.cancel()
            await self.reject_malformed(state.malformed, context)
        if state.idle:
            self.counter.add(method, "DEADLINE_EXCEEDED")
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"stream idle for {self.limits.stream_idle_s:g}s with nothing in flight; closed by the server "
                "(limits.stream_idle_s); open a new stream when there is work",
            )
        if state.read_error is not None:
            err = state.read_error
            code = grpc_code_for(err if isinstance(err, ServiceError) else InternalError(str(err)))
            self.counter.add(method, code)
            await context.abort(status_code(code), error_message(err))
        self.counter.add(method, "CANCELLED" if stream_ctx.cancelled else "OK")

    def close(self) -> None:
        """Stops the thread pools (queued work is cancelled)."""
        self._stream_pool.shutdown(wait=False, cancel_futures=True)
        self._unary_pool.shutdown(wait=False, cancel_futures=True)
