"""The gRPC adapter: the ``lookalike.v1.Lookalike`` service on ``grpc.aio``, over the domain service.

Every unary RPC goes through :func:`_rpc`, the one place where a
:class:`~lookalike_server.errors.ServiceError` becomes a gRPC status (via the
table in ``errors.py``) and where anything unexpected becomes INTERNAL with a
logged traceback — never a hang or a half-sent stream. The two streams are
:mod:`lookalike_server.streams`' (a bounded window of items in flight, one
error per bad item); messages are converted by
:mod:`lookalike_server.proto_convert`; what every call shares (deadline
context, thread pools, status mapping, counting, malformed input) is
:mod:`lookalike_server.rpc_calls`. The servicer talks only to the service.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc

from lookalike.v1 import lookalike_pb2 as pb
from lookalike_server.config import LimitsConfig
from lookalike_server.domain import RequestContext
from lookalike_server.errors import grpc_code_for
from lookalike_server.proto_convert import (
    batcher_stats_pb,
    dupes_query,
    dupes_response,
    embed_response,
    insert_item,
    insert_result_pb,
    item_pb,
    model_info_pb,
    search_query,
    search_response,
    timing_pb,
)
from lookalike_server.rpc_calls import (
    Malformed,
    RequestCounter,
    error_message,
    reject_malformed,
    request_context,
    retry_pushback,
    run_blocking,
    safe_deserializer,
    status_code,
)
from lookalike_server.streams import StreamRunner
from lookalike_server.thread_names import name_os_thread

if TYPE_CHECKING:
    from lookalike_server.service import LookalikeService


# Embed responses up to this many floats are built on the event loop (about
# 1 ns a float, from packed bytes: 256k is a quarter of a millisecond); larger
# ones, which only a raised limits.max_images_per_request allows, on a unary thread.
LOOP_RESPONSE_FLOATS = 262_144


def _rpc(method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wraps a unary coroutine handler: malformed input, context, error mapping, counting."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(self: LookalikeServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await reject_malformed(self.counter, request, context)
            ctx = request_context(context)
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
                    status_code(code), error_message(exc), trailing_metadata=retry_pushback(exc, self.pushback_ms)
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
    answered on the loop whatever the pools are doing. Embed needs no stores,
    so it skips the unary pool: the loop queues its images and awaits them
    (:meth:`.Embedder.embed_async`), two thread hand-overs fewer per call.

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
        self.pushback_ms = limits.retry_pushback_ms
        self.counter = RequestCounter()
        self.started = time.monotonic()
        # Latency observer (method, seconds); the app plugs in Prometheus.
        self.observe: Callable[[str, float], None] = lambda method, seconds: None
        self._unary_pool = ThreadPoolExecutor(
            max_workers=unary_workers, thread_name_prefix="unary", initializer=name_os_thread
        )
        self.streams = StreamRunner(get_service, limits, self.counter, stream_workers)

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

    @property
    def service(self) -> LookalikeService:
        """The service, or Unavailable while loading."""
        return self._get_service()

    @property
    def open_streams(self) -> int:
        """InsertStream/SearchStream calls open now (metrics, tests)."""
        return self.streams.open_streams

    # ---------------------------------------------------------- unary --
    @_rpc("ListModels")
    async def ListModels(self, request: pb.ListModelsRequest, ctx: RequestContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info_pb(view) for view in self.service.model_views()])

    @_rpc("Embed")
    async def Embed(self, request: pb.EmbedRequest, ctx: RequestContext) -> pb.EmbedResponse:
        svc = self.service
        images = list(request.images)
        permit = svc.admit(images, [request.model], ctx) if request.model else None
        # Awaited on the loop, not run on a unary thread: the call is handed
        # to no thread on the way in or out (see Embedder.embed_async).
        vectors, timing = await svc.embed_async(
            images, request.model, ctx, work_done=permit.release if permit is not None else None
        )
        if vectors.size <= LOOP_RESPONSE_FLOATS:
            return embed_response(request.model, vectors, timing)
        # A very large response would hold the loop for milliseconds, which it
        # owes to other calls.
        return await asyncio.get_running_loop().run_in_executor(
            self._unary_pool, embed_response, request.model, vectors, timing
        )

    @_rpc("Insert")
    async def Insert(self, request: pb.InsertRequest, ctx: RequestContext) -> pb.InsertResponse:
        svc = self.service
        items = [insert_item(it) for it in request.items]
        permit = svc.admit([it.image for it in items if it.image], request.models, ctx)

        def run() -> pb.InsertResponse:
            results, timing = svc.insert(items, list(request.models), ctx)
            return pb.InsertResponse(results=[insert_result_pb(r) for r in results], timing=timing_pb(timing))

        return await run_blocking(self._unary_pool, ctx, run, permit=permit)

    @_rpc("Search")
    async def Search(self, request: pb.SearchRequest, ctx: RequestContext) -> pb.SearchResponse:
        svc = self.service
        query = search_query(request)
        permit = svc.admit([query.image], query.models, ctx) if query.image else None

        def run() -> pb.SearchResponse:
            return search_response(svc.search_outcome(query, ctx))

        return await run_blocking(self._unary_pool, ctx, run, permit=permit)

    @_rpc("Get")
    async def Get(self, request: pb.GetRequest, ctx: RequestContext) -> pb.Item:
        svc = self.service
        which = request.WhichOneof("item")

        def run() -> pb.Item:
            return item_pb(svc.get(item_id=request.id if which == "id" else None, key=request.key or None))

        return await run_blocking(self._unary_pool, ctx, run)

    @_rpc("Delete")
    async def Delete(self, request: pb.DeleteRequest, ctx: RequestContext) -> pb.DeleteResponse:
        svc = self.service

        def run() -> pb.DeleteResponse:
            return pb.DeleteResponse(id=request.id, models=list(svc.delete(request.id)))

        return await run_blocking(self._unary_pool, ctx, run)

    @_rpc("GetStats")
    async def GetStats(self, request: pb.GetStatsRequest, ctx: RequestContext) -> pb.GetStatsResponse:
        svc = self.service
        batchers = [batcher_stats_pb(name, st) for name, st in svc.batcher_stats(reset=request.reset).items()]
        return pb.GetStatsResponse(
            batchers=batchers,
            requests_by_status=self.counter.snapshot(reset=request.reset),
            uptime_s=time.monotonic() - self.started,
        )

    # -------------------------------------------------------- streams --
    # Async generator functions, not functions returning an async iterator:
    # grpc.aio treats any other kind of stream handler as synchronous.
    async def InsertStream(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.InsertStreamResponse]:
        async for answer in self.streams.insert_stream(request_iterator, context):
            yield answer

    async def SearchStream(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SearchStreamResponse]:
        async for answer in self.streams.search_stream(request_iterator, context):
            yield answer

    async def FindDuplicates(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FindDuplicatesResponse]:
        """Server stream: near-duplicate group pages, then a summary (see :mod:`lookalike_server.dupes`).

        Validation and the walk slot come first, on the loop, so a bad or
        refused call costs no thread. Each message is produced by one step of
        the service's generator on the unary pool; the walk's slot is returned
        when the last step finishes, not when the caller leaves.
        """
        method = "FindDuplicates"
        if isinstance(request, Malformed):
            await reject_malformed(self.counter, request, context)
        ctx = request_context(context)
        permit = None
        step: Any = None
        try:
            svc = self.service
            query = dupes_query(request)
            permit = svc.admit_walk(query)
            parts = svc.find_duplicates(query, ctx)

            def advance() -> Any:
                ctx.check("the next group")
                return next(parts, None)

            while True:
                step = self._unary_pool.submit(advance)
                part = await asyncio.wrap_future(step)
                if part is None:
                    break
                yield dupes_response(part)
        except (asyncio.CancelledError, GeneratorExit):
            # A client's cancel reaches a server-streaming handler either as CancelledError
            # or, when gRPC closes the generator at a yield, as GeneratorExit.
            ctx.cancel()  # the running step notices at its next check
            self.counter.add(method, "CANCELLED")
            raise
        except Exception as exc:  # the one mapping point, as for unary calls
            code = grpc_code_for(exc)
            self.counter.add(method, code)
            self.observe(method, time.monotonic() - ctx.started)
            await context.abort(
                status_code(code), error_message(exc), trailing_metadata=retry_pushback(exc, self.pushback_ms)
            )
        finally:
            if permit is not None:
                if step is not None and not step.done():
                    step.add_done_callback(lambda _f, p=permit: p.release())
                else:
                    permit.release()
        self.counter.add(method, "OK")
        self.observe(method, time.monotonic() - ctx.started)

    def close(self) -> None:
        """Stops the thread pools (queued work is cancelled)."""
        self.streams.close()
        self._unary_pool.shutdown(wait=False, cancel_futures=True)
