"""An in-process fake lookalike server for testing the client and CLI alone.

The fake implements the generated ``LookalikeServicer`` with canned, deterministic answers
so client behaviour (encoding, retries, deadlines, result types, stream windows) can be
checked without models, Milvus or Redis. It is not a model of the real server's semantics
beyond what the client relies on. Imported by the ``test_client*``/``test_cli*`` modules.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

DIM = 4
MODELS = ("alpha", "beta")
CREATED_AT = 1_764_000_000.0  # 2025-11-24T16:00:00+00:00


@dataclass
class Recorded:
    """What the fake saw: requests per method and the deadline left when each arrived."""

    requests: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    time_remaining: dict[str, list[float | None]] = field(default_factory=lambda: defaultdict(list))
    arrived_at: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    metadata: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    max_in_flight: int = 0


class FakeServicer(pb_grpc.LookalikeServicer):
    """Canned answers; ``fail[method]`` is a list of status codes to abort with first.

    ``pushback_ms[method]``, when set, goes out as the ``grpc-retry-pushback-ms`` trailer
    with each of those failures (the server's "retry after this long" hint).
    """

    def __init__(self) -> None:
        self.fail: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        self.pushback_ms: dict[str, int] = {}
        self.hit_keys: list[str] | None = None  # keys Search answers with, instead of model/hitN.png
        self.seen = Recorded()
        self.items: dict[int, pb.Item] = {}
        self.by_hash: dict[str, int] = {}
        # InsertStream: keys whose next item(s) fail with these code names, in turn.
        self.item_fail: dict[str, list[str]] = defaultdict(list)
        self._lock = threading.Lock()
        self._in_flight = 0

    def _enter(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        self.seen.requests[name].append(request)
        self.seen.time_remaining[name].append(context.time_remaining())
        self.seen.arrived_at[name].append(time.monotonic())
        self.seen.metadata[name].append({k: str(v) for k, v in context.invocation_metadata()})
        if self.fail[name]:
            code = self.fail[name].pop(0)
            if name in self.pushback_ms:
                context.set_trailing_metadata((("grpc-retry-pushback-ms", str(self.pushback_ms[name])),))
            context.abort(code, f"fake {code.name.lower()}")

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        self._enter("ListModels", request, context)
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=m,
                    version="1",
                    dim=DIM,
                    providers=["CPUExecutionProvider"],
                    batch_buckets=[1, 2, 4],
                    max_batch_size=4,
                    collection=f"lookalike_{m}",
                    preprocessing=pb.Preprocessing(height=224, width=224, mean=[0.5] * 3, std=[0.5] * 3),
                    bucket_costs=[pb.BucketCost(batch_size=b, ms_per_run=4.0 * b, ms_per_image=4.0) for b in (1, 2, 4)],
                    batching_reason="no batch size beat 1 by 10%: batching off",
                    threads=pb.ThreadBudget(
                        cores=2, preprocess_threads=1, intra_op_threads=1, inter_op_threads=1, batch_workers=1
                    ),
                )
                for m in MODELS
            ]
        )

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        self._enter("Embed", request, context)
        if request.model not in MODELS:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model!r}")
        if any(not img for img in request.images):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "image 0 is empty")
        return pb.EmbedResponse(
            model=request.model,
            dim=DIM,
            embeddings=[pb.Embedding(values=[0.5, 0.5, 0.5, 0.5]) for _ in request.images],
        )

    def _insert_one(self, item: pb.InsertItem, models: list[str]) -> pb.InsertResult:
        digest = hashlib.sha256(item.image).hexdigest()
        with self._lock:
            if digest in self.by_hash:
                iid = self.by_hash[digest]
                return pb.InsertResult(id=iid, created=False, models=models, content_sha256=digest)
            iid = len(self.items) + 1
            self.by_hash[digest] = iid
            self.items[iid] = pb.Item(
                id=iid,
                key=item.key,
                attributes=item.attributes,
                content_sha256=digest,
                models=models,
                created_at=CREATED_AT,
            )
        return pb.InsertResult(id=iid, created=True, models=models, content_sha256=digest)

    def Insert(self, request: pb.InsertRequest, context: grpc.ServicerContext) -> pb.InsertResponse:
        self._enter("Insert", request, context)
        models = list(request.models) or list(MODELS)
        return pb.InsertResponse(results=[self._insert_one(i, models) for i in request.items])

    def InsertStream(
        self, request_iterator: Iterator[pb.InsertStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.InsertStreamResponse]:
        self._enter("InsertStream", None, context)
        for req in request_iterator:
            self.seen.requests["InsertStream.item"].append(req)
            if req.item.image == b"bad":
                yield pb.InsertStreamResponse(
                    request_id=req.request_id,
                    error=pb.Error(code=3, code_name="INVALID_ARGUMENT", message="cannot decode image"),
                )
                continue
            if self.item_fail.get(req.item.key):
                name = self.item_fail[req.item.key].pop(0)
                code = grpc.StatusCode[name].value[0]
                yield pb.InsertStreamResponse(
                    request_id=req.request_id, error=pb.Error(code=code, code_name=name, message=f"injected {name}")
                )
                continue
            models = list(req.models) or list(MODELS)
            result = self._insert_one(req.item, models)
            yield pb.InsertStreamResponse(request_id=req.request_id, result=result)

    def _search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        if request.top_k < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "top_k must be >= 0")
        models = list(request.models) or list(MODELS)
        k = request.top_k or 10
        results = []
        for mi, m in enumerate(models):
            hits = [
                pb.Hit(id=i + 1, distance=0.1 * (i + mi), key=key, attributes={"rank": str(i)})
                for i, key in enumerate(self.hit_keys or [f"{m}/hit{j}.png" for j in range(min(k, 3))])
            ]
            results.append(pb.ModelHits(model=m, hits=hits))
        return pb.SearchResponse(results=results, timing=pb.ServerTiming(total_ms=1.5))

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        self._enter("Search", request, context)
        return self._search(request, context)

    def SearchStream(
        self, request_iterator: Iterator[pb.SearchStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.SearchStreamResponse]:
        self._enter("SearchStream", None, context)
        for req in request_iterator:
            if req.query.top_k < 0:
                yield pb.SearchStreamResponse(
                    request_id=req.request_id,
                    error=pb.Error(code=3, code_name="INVALID_ARGUMENT", message="top_k must be >= 0"),
                )
                continue
            yield pb.SearchStreamResponse(request_id=req.request_id, result=self._search(req.query, context))

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.Item:
        self._enter("Get", request, context)
        for item in self.items.values():
            if (request.HasField("id") and item.id == request.id) or (
                request.HasField("key") and item.key == request.key
            ):
                return item
        context.abort(grpc.StatusCode.NOT_FOUND, "no such item")
        raise AssertionError  # abort raises

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        self._enter("Delete", request, context)
        item = self.items.pop(request.id, None)
        if item is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no item with id {request.id}")
        return pb.DeleteResponse(id=request.id, models=list(item.models))

    def GetStats(self, request: pb.GetStatsRequest, context: grpc.ServicerContext) -> pb.GetStatsResponse:
        self._enter("GetStats", request, context)
        return pb.GetStatsResponse(
            batchers=[pb.BatcherStats(model="alpha", batch_size_histogram={1: 3, 4: 2}, batches=5, items=11)],
            requests_by_status={"Embed/OK": 7},
            uptime_s=12.5,
        )


class FakeServer:
    """Runs a :class:`FakeServicer` on a loopback port; a context manager.

    Attributes:
        servicer: The fake, for setting failures and reading what it saw.
        target: ``127.0.0.1:PORT``.
    """

    def __init__(self, with_health: bool = True, credentials: grpc.ServerCredentials | None = None) -> None:
        self.servicer = FakeServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_LookalikeServicer_to_server(self.servicer, self.server)
        if with_health:
            from grpc_health.v1 import health, health_pb2, health_pb2_grpc

            self.health = health.HealthServicer()
            self.health.set("", health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if credentials is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.target = f"127.0.0.1:{port}"

    def __enter__(self) -> FakeServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)
