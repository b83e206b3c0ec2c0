"""Small gRPC servers for the security tests: every RPC of the contract, no models.

The stub servicers answer each RPC with an empty response, so a test sees
exactly what the interceptor and the transport decide. :class:`AioServer`
runs a ``grpc.aio`` server (the server's target architecture) on its own
event-loop thread so tests drive it with the ordinary sync client;
:func:`sync_server` builds a classic ``grpc.server``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

SERVICE = "lookalike.v1.Lookalike"
NAMES = (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)


class AioStub(pb_grpc.LookalikeServicer):
    """Every RPC answers an empty response (streams: one per request)."""

    async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse()

    async def Embed(self, request: Any, context: Any) -> pb.EmbedResponse:
        return pb.EmbedResponse()

    async def Insert(self, request: Any, context: Any) -> pb.InsertResponse:
        return pb.InsertResponse()

    async def Search(self, request: Any, context: Any) -> pb.SearchResponse:
        return pb.SearchResponse()

    async def Get(self, request: Any, context: Any) -> pb.Item:
        return pb.Item()

    async def Delete(self, request: Any, context: Any) -> pb.DeleteResponse:
        return pb.DeleteResponse()

    async def GetStats(self, request: Any, context: Any) -> pb.GetStatsResponse:
        return pb.GetStatsResponse()

    async def InsertStream(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.InsertStreamResponse]:
        async for req in request_iterator:
            yield pb.InsertStreamResponse(request_id=req.request_id)

    async def SearchStream(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.SearchStreamResponse]:
        async for req in request_iterator:
            yield pb.SearchStreamResponse(request_id=req.request_id)


class SyncStub(pb_grpc.LookalikeServicer):
    """The same answers for a synchronous ``grpc.server``."""

    def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse()

    def Embed(self, request: Any, context: Any) -> pb.EmbedResponse:
        return pb.EmbedResponse()

    def Insert(self, request: Any, context: Any) -> pb.InsertResponse:
        return pb.InsertResponse()

    def Search(self, request: Any, context: Any) -> pb.SearchResponse:
        return pb.SearchResponse()

    def Get(self, request: Any, context: Any) -> pb.Item:
        return pb.Item()

    def Delete(self, request: Any, context: Any) -> pb.DeleteResponse:
        return pb.DeleteResponse()

    def GetStats(self, request: Any, context: Any) -> pb.GetStatsResponse:
        return pb.GetStatsResponse()

    def InsertStream(self, request_iterator: Any, context: Any) -> Iterator[pb.InsertStreamResponse]:
        for req in request_iterator:
            yield pb.InsertStreamResponse(request_id=req.request_id)

    def SearchStream(self, request_iterator: Any, context: Any) -> Iterator[pb.SearchStreamResponse]:
        for req in request_iterator:
            yield pb.SearchStreamResponse(request_id=req.request_id)


def _bind(server: Any, creds: grpc.ServerCredentials | None) -> int:
    if creds is None:
        return server.add_insecure_port("127.0.0.1:0")
    return server.add_secure_port("127.0.0.1:0", creds)


class AioServer:
    """A ``grpc.aio`` server with the stub servicer, health and reflection, on a loop thread.

    Args:
        interceptors: Server interceptors (``grpc.aio.ServerInterceptor``).
        creds: Server credentials, or None for plaintext.
    """

    def __init__(self, interceptors: Sequence[Any] = (), creds: grpc.ServerCredentials | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="aio-test-server", daemon=True)
        self._thread.start()
        self.port = self._call(self._start(list(interceptors), creds))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _start(self, interceptors: list[Any], creds: grpc.ServerCredentials | None) -> int:
        self.server = grpc.aio.server(interceptors=interceptors)
        pb_grpc.add_LookalikeServicer_to_server(AioStub(), self.server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        reflection.enable_server_reflection(NAMES, self.server)
        port = _bind(self.server, creds)
        await self.server.start()
        return port

    def stop(self) -> None:
        """Stops the server and its loop."""
        self._call(self.server.stop(0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def sync_server(interceptors: Sequence[Any] = (), creds: grpc.ServerCredentials | None = None) -> tuple[Any, int]:
    """A started synchronous server with the stub servicer, health and reflection."""
    server = grpc.server(ThreadPoolExecutor(max_workers=8), interceptors=list(interceptors))
    pb_grpc.add_LookalikeServicer_to_server(SyncStub(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    reflection.enable_server_reflection(NAMES, server)
    port = _bind(server, creds)
    server.start()
    return server, port


def call(channel: grpc.Channel, method: str, metadata: Sequence[tuple[str, str]] = (), timeout: float = 10) -> None:
    """Calls one RPC of the contract with an empty request (streams: one request, all answers read).

    Raises:
        grpc.RpcError: The call failed.
    """
    stub = pb_grpc.LookalikeStub(channel)
    fn = getattr(stub, method)
    md = list(metadata)
    if method == "InsertStream":
        list(fn(iter([pb.InsertStreamRequest(request_id="a")]), metadata=md, timeout=timeout))
    elif method == "SearchStream":
        list(fn(iter([pb.SearchStreamRequest(request_id="a")]), metadata=md, timeout=timeout))
    else:
        request_type = {
            "ListModels": pb.ListModelsRequest,
            "Embed": pb.EmbedRequest,
            "Insert": pb.InsertRequest,
            "Search": pb.SearchRequest,
            "Get": pb.GetRequest,
            "Delete": pb.DeleteRequest,
            "GetStats": pb.GetStatsRequest,
        }[method]
        fn(request_type(), metadata=md, timeout=timeout)
