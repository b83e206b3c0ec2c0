"""The bidirectional streams, ``InsertStream`` and ``SearchStream``.

A stream is read on a reader task and each item runs on a pool shared by all
streams, with a per-stream window of items in flight (flow control: when the
window is full the reader stops reading, and gRPC's HTTP/2 flow control
pushes back on the client). Each answer is yielded, tagged with its request
id, as soon as it is ready. One bad item gets an ``Error`` in its response;
the stream goes on. A client that disappears cancels the stream's context,
which drops its queued work. Bounds: at most ``limits.max_streams`` open at
once, and a stream idle for ``limits.stream_idle_s`` with nothing in flight
is closed.

Unary calls are :mod:`lookalike_server.servicer`'s; what both share (context,
threads, status, counting) is :mod:`lookalike_server.rpc_calls`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from lookalike.v1 import lookalike_pb2 as pb
from lookalike_server.config import LimitsConfig
from lookalike_server.domain import RequestContext
from lookalike_server.errors import InternalError, ServiceError, grpc_code_for
from lookalike_server.proto_convert import insert_item, insert_result_pb, search_query, search_response, to_error
from lookalike_server.rpc_calls import (
    Malformed,
    RequestCounter,
    error_message,
    reject_malformed,
    request_context,
    run_blocking,
    status_code,
)
from lookalike_server.thread_names import name_os_thread

if TYPE_CHECKING:
    from lookalike_server.admission import Permit
    from lookalike_server.service import LookalikeService


@dataclass
class _StreamState:
    """What a stream's reader task tells the responding loop."""

    sent: int = 0
    read_error: Exception | None = None
    idle: bool = False
    malformed: Malformed | None = None


class StreamRunner:
    """Runs the servicer's streams: the two stream methods, and the bounded window under them.

    Args:
        get_service: Returns the service, or raises ``Unavailable`` while the
            server is still loading models or draining.
        limits: Request limits (stream window, stream bound and idle timeout,
            retry hint).
        counter: Where finished streams and stream items are counted (shared
            with the unary calls).
        workers: Threads shared by all streams' items.
    """

    def __init__(
        self,
        get_service: Callable[[], LookalikeService],
        limits: LimitsConfig,
        counter: RequestCounter,
        workers: int,
    ) -> None:
        self._get_service = get_service
        self.limits = limits
        self.counter = counter
        # Read and written only on the event loop, so no lock.
        self.open_streams = 0
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="stream-item", initializer=name_os_thread
        )

    async def insert_stream(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.InsertStreamResponse]:
        """``InsertStream``: each item inserted as a one-item Insert, answered with its request id."""

        def admit(svc: LookalikeService, req: pb.InsertStreamRequest, ctx: RequestContext) -> Permit | None:
            return svc.admit([req.item.image] if req.item.image else [], req.models, ctx)

        def one(svc: LookalikeService, req: pb.InsertStreamRequest, ctx: RequestContext) -> pb.InsertStreamResponse:
            (result,), _ = svc.insert([insert_item(req.item)], list(req.models), ctx)
            return pb.InsertStreamResponse(request_id=req.request_id, result=insert_result_pb(result))

        def failed(req: pb.InsertStreamRequest, exc: BaseException) -> pb.InsertStreamResponse:
            return pb.InsertStreamResponse(request_id=req.request_id, error=to_error(exc))

        async for answer in self.run("InsertStream", request_iterator, context, admit, one, failed):
            yield answer

    async def search_stream(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SearchStreamResponse]:
        """``SearchStream``: each query searched as a Search, answered with its request id."""

        def admit(svc: LookalikeService, req: pb.SearchStreamRequest, ctx: RequestContext) -> Permit | None:
            image = req.query.image if req.query.WhichOneof("query") == "image" else b""
            return svc.admit([image] if image else [], req.query.models, ctx)

        def one(svc: LookalikeService, req: pb.SearchStreamRequest, ctx: RequestContext) -> pb.SearchStreamResponse:
            outcome = svc.search_outcome(search_query(req.query), ctx)
            return pb.SearchStreamResponse(request_id=req.request_id, result=search_response(outcome))

        def failed(req: pb.SearchStreamRequest, exc: BaseException) -> pb.SearchStreamResponse:
            return pb.SearchStreamResponse(request_id=req.request_id, error=to_error(exc))

        async for answer in self.run("SearchStream", request_iterator, context, admit, one, failed):
            yield answer

    async def run(
        self,
        method: str,
        request_iterator: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        admit: Callable[[LookalikeService, Any, RequestContext], Permit | None],
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

        Args:
            method: The RPC's name, for counting.
            request_iterator: The client's requests.
            context: The call.
            admit: Takes an item's admission permit on the loop (None: no images).
            one: Runs one item on the stream pool and returns its answer.
            failed: The answer for an item that raised.

        Yields:
            Answers, in the order they complete.
        """
        try:
            svc = self._get_service()  # fail the whole stream fast while loading
        except ServiceError as exc:
            self.counter.add(method, exc.code)
            await context.abort(status_code(exc.code), exc.message)
        if self.open_streams >= self.limits.max_streams:
            self.counter.add(method, "RESOURCE_EXHAUSTED")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.open_streams} streams are open (limit {self.limits.max_streams}); retry with backoff",
                trailing_metadata=(("grpc-retry-pushback-ms", str(self.limits.retry_pushback_ms)),),
            )
        self.open_streams += 1
        stream_ctx = request_context(context)
        window = asyncio.Semaphore(self.limits.stream_in_flight)
        answers: asyncio.Queue[Any] = asyncio.Queue()
        done = object()
        state = _StreamState()
        tasks: set[asyncio.Task[None]] = set()

        async def run_item(req: Any) -> None:
            ctx = stream_ctx.child()
            try:
                permit = admit(svc, req, ctx)
                answer = await run_blocking(self._pool, ctx, one, svc, req, ctx, permit=permit)
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
            await reject_malformed(self.counter, state.malformed, context)
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
        """Stops the stream pool (queued items are cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
