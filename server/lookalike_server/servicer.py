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

import functools
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server.domain import (
    InsertItem,
    ModelHits,
    RequestContext,
    SearchFilter,
    SearchQuery,
    Timing,
)
from lookalike_server.errors import InternalError, InvalidArgument, ServiceError, Unavailable, grpc_code_for

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


@dataclass
class _StreamState:
    """What a stream's reader thread tells the responding loop."""

    sent: int = 0
    read_error: Exception | None = None


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


def _rpc(method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wraps a unary handler: context, error mapping, counting."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: LookalikeServicer, request: Any, context: grpc.ServicerContext) -> Any:
            ctx = self.request_context(context)
            try:
                response = fn(self, request, ctx)
            except Exception as exc:  # the one mapping point: every failure gets a status
                code = grpc_code_for(exc)
                self.counter.add(method, code)
                self.observe(method, time.monotonic() - ctx.started)
                context.abort(status_code(code), error_message(exc))
            self.counter.add(method, "OK")
            self.observe(method, time.monotonic() - ctx.started)
            return response

        return wrapper

    return decorate


class LookalikeServicer(pb_grpc.LookalikeServicer):
    """Implements ``lookalike.v1.Lookalike`` over a :class:`LookalikeService`.

    Args:
        get_service: Returns the service, or raises ``Unavailable`` while the
            server is still loading models or draining.
        stream_in_flight: Per-stream window of items in flight.
        stream_workers: Threads shared by all streams' items.
    """

    def __init__(
        self,
        get_service: Callable[[], LookalikeService],
        stream_in_flight: int,
        stream_workers: int = 64,
    ) -> None:
        self._get_service = get_service
        self.stream_in_flight = stream_in_flight
        self.counter = RequestCounter()
        self.started = time.monotonic()
        # Latency observer (method, seconds); the app plugs in Prometheus.
        self.observe: Callable[[str, float], None] = lambda method, seconds: None
        self._stream_pool = ThreadPoolExecutor(max_workers=stream_workers, thread_name_prefix="stream-item")

    @staticmethod
    def request_context(context: grpc.ServicerContext) -> RequestContext:
        """A domain context with the call's deadline, cancelled with the call."""
        remaining = context.time_remaining()
        # grpc reports "no deadline" as None or as a huge number.
        ctx = RequestContext(remaining if remaining is not None and remaining < 1e8 else None)

        def on_done() -> None:
            if not context.is_active():
                ctx.cancel()

        context.add_callback(on_done)
        return ctx

    @property
    def service(self) -> LookalikeService:
        """The service, or Unavailable while loading."""
        return self._get_service()

    # ---------------------------------------------------------- unary --
    @_rpc("ListModels")
    def ListModels(self, request: pb.ListModelsRequest, ctx: RequestContext) -> pb.ListModelsResponse:
        svc = self.service
        infos = []
        for name, model in svc.models.items():
            spec, pre = model.spec, model.spec.preprocess
            infos.append(
                pb.ModelInfo(
                    name=name,
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
                    collection=svc.collections.get(name, ""),
                    description=spec.description,
                    onnx_sha256=model.sha256,
                )
            )
        return pb.ListModelsResponse(models=infos)

    @_rpc("Embed")
    def Embed(self, request: pb.EmbedRequest, ctx: RequestContext) -> pb.EmbedResponse:
        vectors, timing = self.service.embed(list(request.images), request.model, ctx)
        return pb.EmbedResponse(
            model=request.model,
            dim=vectors.shape[1],
            embeddings=[pb.Embedding(values=row) for row in vectors.tolist()],
            timing=timing_pb(timing),
        )

    @_rpc("Insert")
    def Insert(self, request: pb.InsertRequest, ctx: RequestContext) -> pb.InsertResponse:
        items = [InsertItem(it.key, it.image, dict(it.attributes)) for it in request.items]
        results, timing = self.service.insert(items, list(request.models), ctx)
        return pb.InsertResponse(results=[insert_result_pb(r) for r in results], timing=timing_pb(timing))

    @_rpc("Search")
    def Search(self, request: pb.SearchRequest, ctx: RequestContext) -> pb.SearchResponse:
        results, timing = self.service.search(search_query(request), ctx)
        return search_response(results, timing)

    @_rpc("Get")
    def Get(self, request: pb.GetRequest, ctx: RequestContext) -> pb.Item:
        which = request.WhichOneof("item")
        item = self.service.get(item_id=request.id if which == "id" else None, key=request.key or None)
        return pb.Item(
            id=item.id,
            key=item.key,
            attributes=item.attributes,
            content_sha256=item.content_sha256,
            models=list(item.models),
            created_at=item.created_at,
        )

    @_rpc("Delete")
    def Delete(self, request: pb.DeleteRequest, ctx: RequestContext) -> pb.DeleteResponse:
        models = self.service.delete(request.id)
        return pb.DeleteResponse(id=request.id, models=list(models))

    @_rpc("GetStats")
    def GetStats(self, request: pb.GetStatsRequest, ctx: RequestContext) -> pb.GetStatsResponse:
        svc = self.service
        batchers = []
        for name, st in svc.embedder.stats(reset=request.reset).items():
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
    def InsertStream(
        self, request_iterator: Iterator[pb.InsertStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.InsertStreamResponse]:
        def one(req: pb.InsertStreamRequest, ctx: RequestContext) -> pb.InsertStreamResponse:
            item = InsertItem(req.item.key, req.item.image, dict(req.item.attributes))
            (result,), _ = self.service.insert([item], list(req.models), ctx)
            return pb.InsertStreamResponse(request_id=req.request_id, result=insert_result_pb(result))

        def failed(req: pb.InsertStreamRequest, exc: BaseException) -> pb.InsertStreamResponse:
            return pb.InsertStreamResponse(request_id=req.request_id, error=to_error(exc))

        yield from self._stream("InsertStream", request_iterator, context, one, failed)

    def SearchStream(
        self, request_iterator: Iterator[pb.SearchStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.SearchStreamResponse]:
        def one(req: pb.SearchStreamRequest, ctx: RequestContext) -> pb.SearchStreamResponse:
            results, timing = self.service.search(search_query(req.query), ctx)
            return pb.SearchStreamResponse(request_id=req.request_id, result=search_response(results, timing))

        def failed(req: pb.SearchStreamRequest, exc: BaseException) -> pb.SearchStreamResponse:
            return pb.SearchStreamResponse(request_id=req.request_id, error=to_error(exc))

        yield from self._stream("SearchStream", request_iterator, context, one, failed)

    def _stream(
        self,
        method: str,
        request_iterator: Iterator[Any],
        context: grpc.ServicerContext,
        one: Callable[[Any, RequestContext], Any],
        failed: Callable[[Any, BaseException], Any],
    ) -> Iterator[Any]:
        """Runs a bidirectional stream with a bounded window of items in flight."""
        try:
            self.service  # noqa: B018 - fail the whole stream fast while loading
        except ServiceError as exc:
            self.counter.add(method, exc.code)
            context.abort(status_code(exc.code), exc.message)
        stream_ctx = self.request_context(context)
        window = threading.Semaphore(self.stream_in_flight)
        answers: queue.Queue[Any] = queue.Queue()
        reader_done = object()
        state = _StreamState()

        def run_item(req: Any) -> None:
            ctx = stream_ctx.child()
            try:
                answers.put(one(req, ctx))
                self.counter.add(method + ".item", "OK")
            except Exception as exc:
                self.counter.add(method + ".item", grpc_code_for(exc))
                answers.put(failed(req, exc))
            finally:
                stream_ctx.release(ctx)
                window.release()

        def reader() -> None:
            try:
                for req in request_iterator:
                    # Flow control: stop reading while the window is full.
                    while not window.acquire(timeout=0.25):
                        if stream_ctx.cancelled:
                            return
                    if stream_ctx.cancelled:
                        window.release()
                        return
                    state.sent += 1
                    try:
                        self._stream_pool.submit(run_item, req)
                    except RuntimeError as exc:  # pool shut down: server stopping
                        window.release()
                        answers.put(failed(req, Unavailable(f"server is shutting down ({exc})")))
            except grpc.RpcError:
                pass  # the client went away; the stream context is cancelled
            except Exception as exc:
                state.read_error = exc
            finally:
                answers.put(reader_done)

        threading.Thread(target=reader, name=f"{method}-reader", daemon=True).start()
        received = 0
        reading = True
        while reading or received < state.sent:
            try:
                answer = answers.get(timeout=0.5)
            except queue.Empty:
                if stream_ctx.cancelled:
                    break
                continue
            if answer is reader_done:
                reading = False
                continue
            received += 1
            yield answer
        if state.read_error is not None:
            err = state.read_error
            code = grpc_code_for(err if isinstance(err, ServiceError) else InternalError(str(err)))
            self.counter.add(method, code)
            context.abort(status_code(code), error_message(err))
        self.counter.add(method, "CANCELLED" if stream_ctx.cancelled else "OK")

    def close(self) -> None:
        """Stops the stream pool."""
        self._stream_pool.shutdown(wait=False, cancel_futures=True)
