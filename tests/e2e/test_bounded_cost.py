"""Issue 9, short versions: idle streams, bombs, malformed messages, front-door rejection.

Counts, not timings: what is asserted is that calls succeed within their
deadline, get the right status, are counted, and that a refused call
decoded nothing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server.config import BatchingConfig, LimitsConfig, ModelsConfig
from tests.conftest import ROOT, start_server

BOMBS = sorted(p for p in (ROOT / "tests" / "data" / "bombs").iterdir() if p.suffix != ".py")
IDLE_STREAMS = int(os.environ.get("LOOKALIKE_TEST_IDLE_STREAMS", "300"))


def stub_for(target: str) -> pb_grpc.LookalikeStub:
    return pb_grpc.LookalikeStub(grpc.insecure_channel(target))


def test_idle_streams_leave_health_and_embed_served(embed_server, photos):
    """Hundreds of streams that never send: health and a one-image Embed still answer in time."""
    image = photos[0].read_bytes()
    servicer = embed_server.server.servicer

    async def scenario() -> tuple[int, int, int]:
        channel = grpc.aio.insecure_channel(embed_server.target)
        stub = pb_grpc.LookalikeStub(channel)
        calls = [stub.InsertStream() for _ in range(IDLE_STREAMS // 2)]
        calls += [stub.SearchStream() for _ in range(IDLE_STREAMS - len(calls))]
        for _ in range(200):  # wait until the server runs a handler for each
            if servicer.open_streams >= IDLE_STREAMS:
                break
            await asyncio.sleep(0.05)
        open_now = servicer.open_streams
        other = grpc.aio.insecure_channel(embed_server.target)
        health = health_pb2_grpc.HealthStub(other)
        checks = await asyncio.gather(*(health.Check(health_pb2.HealthCheckRequest(), timeout=5) for _ in range(10)))
        embeds = await asyncio.gather(
            *(
                pb_grpc.LookalikeStub(other).Embed(pb.EmbedRequest(model="mobilenet_v2", images=[image]), timeout=10)
                for _ in range(4)
            )
        )
        for call in calls:
            call.cancel()
        await other.close()
        await channel.close()
        serving = sum(c.status == health_pb2.HealthCheckResponse.SERVING for c in checks)
        return open_now, serving, sum(len(e.embeddings) for e in embeds)

    open_now, serving, embedded = asyncio.run(scenario())
    assert open_now >= IDLE_STREAMS
    assert serving == 10
    assert embedded == 4
    deadline = time.monotonic() + 10
    while servicer.open_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert servicer.open_streams == 0


def test_stream_bound_and_idle_timeout(photos):
    live = start_server(
        stores=False,
        models=ModelsConfig(only=("mobilenet_v2",)),
        limits=LimitsConfig(max_streams=3, stream_idle_s=0.5),
    )
    try:

        async def scenario() -> tuple[list[grpc.StatusCode], grpc.StatusCode, str]:
            channel = grpc.aio.insecure_channel(live.target)
            stub = pb_grpc.LookalikeStub(channel)
            idle = [stub.SearchStream() for _ in range(3)]
            while live.server.servicer.open_streams < 3:
                await asyncio.sleep(0.02)
            extra = stub.SearchStream()
            codes = []
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in extra:
                    pass
            extra_code, extra_details = info.value.code(), info.value.details()
            for call in idle:  # closed by the server after stream_idle_s
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in call:
                        pass
                codes.append(info.value.code())
            await channel.close()
            return codes, extra_code, extra_details

        codes, extra_code, extra_details = asyncio.run(scenario())
        assert extra_code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit 3" in extra_details
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3
    finally:
        live.server.stop(0)


MALFORMED = b"\x0a\x05ab"  # field 1, length 5, but only 2 bytes follow


def test_malformed_messages_get_invalid_argument_and_are_counted(photos):
    live = start_server(stores=False, models=ModelsConfig(only=("mobilenet_v2",)), metrics_port=0)
    try:
        channel = grpc.insecure_channel(live.target)
        raw = channel.unary_unary("/lookalike.v1.Lookalike/Embed")
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                raw(MALFORMED, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid lookalike.v1 Embed message" in info.value.details()
        stream = channel.stream_stream("/lookalike.v1.Lookalike/SearchStream")
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([MALFORMED]), timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stats = pb_grpc.LookalikeStub(channel).GetStats(pb.GetStatsRequest(), timeout=5).requests_by_status
        assert stats["Embed.malformed:INVALID_ARGUMENT"] == 3
        assert stats["Embed:INVALID_ARGUMENT"] == 3
        assert stats["SearchStream.malformed:INVALID_ARGUMENT"] == 1
        page = urllib.request.urlopen(f"http://127.0.0.1:{live.server.metrics_port}/metrics", timeout=5).read()
        assert b'lookalike_requests_total{code="INVALID_ARGUMENT",method="Embed.malformed"} 3.0' in page
    finally:
        live.server.stop(0)


def test_front_door_refuses_before_decoding(photos):
    """Over the model's image budget: RESOURCE_EXHAUSTED with a retry hint, and nothing decoded."""
    live = start_server(
        stores=False,
        models=ModelsConfig(only=("mobilenet_v2",)),
        batching=BatchingConfig(max_batch_size=32, max_delay_ms=3000, queue_size=64, adaptive_delay=False),
        limits=LimitsConfig(model_inflight_images=2, max_images_per_request=2),
    )
    try:
        stub = stub_for(live.target)
        embedder = live.server.service.embedder
        data = photos[0].read_bytes()
        held = stub.Embed.future(pb.EmbedRequest(model="mobilenet_v2", images=[data, data]), timeout=30)
        deadline = time.monotonic() + 10
        while embedder.preprocessed < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert embedder.preprocessed == 2  # both images decoded; they now wait in the batcher
        refused = 0
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as info:
                stub.Embed(pb.EmbedRequest(model="mobilenet_v2", images=[data]), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "retry" in info.value.details()
            assert ("grpc-retry-pushback-ms", "100") in tuple(info.value.trailing_metadata())
            refused += 1
        assert refused == 5
        assert embedder.preprocessed == 2  # the refused calls decoded nothing
        assert embedder.admission.stats().rejected == {"model:mobilenet_v2": 5}
        assert len(held.result(timeout=20).embeddings) == 2
        # The budget came back with the finished call.
        assert len(stub.Embed(pb.EmbedRequest(model="mobilenet_v2", images=[data]), timeout=30).embeddings) == 1
    finally:
        live.server.stop(0)


def test_request_pixel_budget_is_invalid_argument(photos):
    live = start_server(
        stores=False,
        models=ModelsConfig(only=("mobilenet_v2",)),
        limits=LimitsConfig(max_pixels=1_000_000, request_pixels=1_000_000),
    )
    try:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (1000, 600), (10, 200, 30)).save(buf, "PNG")
        stub = stub_for(live.target)
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(model="mobilenet_v2", images=[buf.getvalue()] * 2), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit per request is 1000000" in info.value.details()
        assert live.server.service.embedder.preprocessed == 0
    finally:
        live.server.stop(0)


def test_huge_vector_normalises(embed_server):
    from lookalike_server.embedder import unit_vector

    v = unit_vector(np.full(1280, 3e38, dtype=np.float32))
    np.testing.assert_allclose(v, 1 / np.sqrt(1280), rtol=1e-6)


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    raise KeyError(key)


@pytest.fixture(scope="module")
def subprocess_server():
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'client'}:{ROOT / 'server'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookalike_server", "--port", "0", "--stores", "false", "--models-only", "mobilenet_v2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    port = 0
    for line in proc.stdout:
        if line.startswith("lookalike-server ready on"):
            port = int(line.rsplit(":", 1)[1])
            break
    assert port, f"server exited with {proc.poll()}"
    yield proc, f"127.0.0.1:{port}"
    proc.terminate()
    assert proc.wait(30) == 0


def test_bomb_corpus_is_refused_with_bounded_memory(subprocess_server, photos):
    proc, target = subprocess_server
    stub = stub_for(target)
    good = photos[0].read_bytes()
    for _ in range(4):  # warm: buffers and threads a normal call uses count in the baseline
        stub.Embed(pb.EmbedRequest(model="mobilenet_v2", images=[good] * 4), timeout=30)
    before = _vm(proc.pid, "VmHWM")
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def send(data: bytes) -> None:
        try:
            stub.Embed(pb.EmbedRequest(model="mobilenet_v2", images=[data]), timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=send, args=(p.read_bytes(),)) for p in BOMBS for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = _vm(proc.pid, "VmHWM")
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * len(threads)
    assert after - before <= 100, f"peak RSS grew {after - before} MB"
    assert len(stub.Embed(pb.EmbedRequest(model="mobilenet_v2", images=[good]), timeout=30).embeddings) == 1
