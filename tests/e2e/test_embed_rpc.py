"""A real server on port 0 with the real models: Embed, ListModels, health, errors, batching."""

from __future__ import annotations

import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server.config import BatchingConfig, LimitsConfig, ModelsConfig
from lookalike_server.preprocess import preprocess
from lookalike_server.registry_reader import load_registry
from tests.conftest import ROOT, start_server

MODELS = ("mobilenet_v2", "efficientnet_lite0")


def stub_for(target: str) -> pb_grpc.LookalikeStub:
    return pb_grpc.LookalikeStub(grpc.insecure_channel(target))


def embed(stub: pb_grpc.LookalikeStub, model: str, *images: bytes, timeout: float = 30) -> np.ndarray:
    resp = stub.Embed(pb.EmbedRequest(model=model, images=list(images)), timeout=timeout)
    assert resp.model == model and len(resp.embeddings) == len(images)
    return np.array([e.values for e in resp.embeddings], dtype=np.float32)


def jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_list_models_reports_what_was_loaded(embed_server):
    models = {m.name: m for m in stub_for(embed_server.target).ListModels(pb.ListModelsRequest()).models}
    assert set(MODELS) <= set(models)
    for m in models.values():
        assert m.dim == 1280
        assert m.providers == ["CPUExecutionProvider"]  # no GPU here; the truth, not the wish
        assert list(m.providers_requested)[-1] == "CPUExecutionProvider"
        assert m.preprocessing.height == 224 and m.preprocessing.layout == "NCHW"
        pre = m.preprocessing
        assert (pre.decode, pre.jpeg_draft, pre.exif_orientation) == ("fast", True, True)  # the documented default
        assert len(m.onnx_sha256) == 64
        # Batching was tuned at warm-up: every candidate was measured, the
        # buckets kept are a subset starting at 1, and the reason is given.
        candidates = list(embed_server.config.batching.resolved_buckets())  # powers of two to auto_max_batch_size
        assert candidates == [2**i for i in range(len(candidates))] and len(candidates) >= 4
        assert [c.batch_size for c in m.bucket_costs] == candidates
        assert all(
            c.ms_per_run > 0 and c.ms_per_image == pytest.approx(c.ms_per_run / c.batch_size) for c in m.bucket_costs
        )
        assert m.batch_buckets[0] == 1 and set(m.batch_buckets) <= set(candidates)
        assert m.max_batch_size == max(m.batch_buckets)
        assert (m.max_delay_ms == 0) == (m.max_batch_size == 1)
        assert m.batching_reason
        assert m.threads.cores == len(os.sched_getaffinity(0))
        assert m.threads.preprocess_threads >= 1 and m.threads.intra_op_threads >= 1 and m.threads.batch_workers >= 1
        assert m.threads.reason


@pytest.fixture(scope="module")
def explicit_server():
    """MobileNetV2 with batching and threads set by config (not tuned)."""
    live = start_server(
        stores=False,
        batching=BatchingConfig(max_batch_size=4, max_delay_ms=3.0),
        models=replace(ModelsConfig(), only=("mobilenet_v2",), intra_op_threads=1, preprocess_threads=2),
    )
    yield live
    live.server.stop(0)  # type: ignore[attr-defined]


def test_list_models_reports_explicit_batching_and_threads_as_set(explicit_server):
    (m,) = stub_for(explicit_server.target).ListModels(pb.ListModelsRequest()).models
    assert list(m.batch_buckets) == [1, 2, 4] and m.max_batch_size == 4 and m.max_delay_ms == 3.0
    assert [c.batch_size for c in m.bucket_costs] == [1, 2, 4]
    assert "max batch 4 set by config" in m.batching_reason and "delay 3 ms set by config" in m.batching_reason
    assert (m.threads.intra_op_threads, m.threads.preprocess_threads) == (1, 2)
    assert "set by config: preprocess_threads=2, intra_op_threads=1" in m.threads.reason


@pytest.fixture(scope="module")
def wide_server():
    """MobileNetV2, no batching, 2 narrow workers and a wide session kept whatever warm-up measures."""
    live = start_server(
        stores=False,
        batching=BatchingConfig(max_batch_size=1),
        models=replace(
            ModelsConfig(),
            only=("mobilenet_v2",),
            intra_op_threads=1,
            batch_workers=2,
            preprocess_threads=1,
            wide_session="on",
            wide_intra_op_threads=2,
        ),
    )
    yield live
    live.server.stop(0)  # type: ignore[attr-defined]


def test_list_models_reports_the_wide_session(wide_server):
    (m,) = stub_for(wide_server.target).ListModels(pb.ListModelsRequest()).models
    assert (m.threads.intra_op_threads, m.threads.batch_workers, m.threads.wide_intra_op_threads) == (1, 2, 2)
    assert "wide session kept (batch 1: " in m.threads.reason


def test_a_lone_request_runs_on_the_wide_session_and_a_crowd_on_the_narrow_ones(wide_server, photos):
    stub = stub_for(wide_server.target)
    data = [p.read_bytes() for p in photos]
    stub.GetStats(pb.GetStatsRequest(reset=True))
    for d in data[:3]:  # one at a time: each finds the batcher idle
        embed(stub, "mobilenet_v2", d)
    (st,) = stub.GetStats(pb.GetStatsRequest(reset=True)).batchers
    assert (st.batches, st.alone_batches) == (3, 3)
    # Eight images in one request: while any is still decoding or queued, a
    # batch is not alone, so at most the last one taken runs wide.
    eight = (data * 8)[:8]
    embed(stub, "mobilenet_v2", *eight)
    (st,) = stub.GetStats(pb.GetStatsRequest()).batchers
    assert st.batches == 8 and st.alone_batches <= 1


@pytest.mark.parametrize("model", MODELS)
def test_server_embeddings_equal_in_process_onnx_runtime(embed_server, photos, model):
    (spec,) = [s for s in load_registry(ROOT / "models" / "models.toml", BatchingConfig()) if s.name == model]
    session = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    datas = [p.read_bytes() for p in photos[:3]]
    x = np.stack([preprocess(d, spec.preprocess, max_bytes=1 << 26, max_pixels=1 << 28) for d in datas])
    (ref,) = session.run(["embedding"], {"input": x})
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    got = embed(stub_for(embed_server.target), model, *datas)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_two_crops_of_one_photo_are_nearer_than_different_photos(embed_server, photos, model):
    stub = stub_for(embed_server.target)
    a = Image.open(photos[0])
    w, h = a.size
    crop1 = jpeg(a.crop((0, 0, int(w * 0.85), int(h * 0.85))))
    crop2 = jpeg(a.crop((int(w * 0.15), int(h * 0.15), w, h)))
    others = [p.read_bytes() for p in photos[1:]]
    v = embed(stub, model, crop1, crop2, *others)
    same = np.sum((v[0] - v[1]) ** 2)
    different = [np.sum((v[0] - o) ** 2) for o in v[2:]]
    assert same < min(different), (same, different)


def test_concurrent_requests_are_merged_into_batches(explicit_server, photos):
    # An explicit max batch: the tuned default may turn batching off on this machine.
    stub = stub_for(explicit_server.target)
    data = photos[0].read_bytes()
    stub.GetStats(pb.GetStatsRequest(reset=True))
    with ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(embed, stub, "mobilenet_v2", data) for _ in range(48)]
        vectors = [f.result() for f in futures]
    np.testing.assert_allclose(vectors[0], vectors[-1], atol=1e-5)  # batching changes nothing
    stats = {b.model: b for b in stub.GetStats(pb.GetStatsRequest()).batchers}["mobilenet_v2"]
    hist = dict(stats.batch_size_histogram)
    assert sum(size * n for size, n in hist.items()) == 48
    assert max(hist) > 1, f"no request was merged: {hist}"
    assert stats.batches < 48


def png_header_only(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BAD_INPUTS = {
    "empty": (b"", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    "text": (b"Hello, this is a text file.\n", grpc.StatusCode.INVALID_ARGUMENT, "look like text"),
    "png bomb": (png_header_only(20000, 20000), grpc.StatusCode.INVALID_ARGUMENT, "20000x20000"),
    "zero pixels": (png_header_only(0, 0), grpc.StatusCode.INVALID_ARGUMENT, "PNG"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_images_get_clear_statuses_and_the_server_keeps_serving(embed_server, photos, case):
    data, code, words = BAD_INPUTS[case]
    stub = stub_for(embed_server.target)
    good = photos[0].read_bytes()
    with pytest.raises(grpc.RpcError) as info:
        embed(stub, "mobilenet_v2", good, data)
    assert info.value.code() == code
    assert words in info.value.details() and "image 1" in info.value.details()
    assert embed(stub, "mobilenet_v2", good).shape == (1, 1280)


def test_truncated_jpeg(embed_server, photos):
    stub = stub_for(embed_server.target)
    data = jpeg(Image.open(photos[0]))
    with pytest.raises(grpc.RpcError) as info:
        embed(stub, "mobilenet_v2", data[: len(data) // 2])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot decode JPEG" in info.value.details()


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (pb.EmbedRequest(model="resnet9000", images=[b"x"]), grpc.StatusCode.NOT_FOUND, "not loaded"),
        # The name is quoted back clipped: whole, its trailer broke the client's metadata limit.
        (pb.EmbedRequest(model="x" * 100_000, images=[b"x"]), grpc.StatusCode.NOT_FOUND, "is not loaded; loaded"),
        (pb.EmbedRequest(images=[b"x"]), grpc.StatusCode.INVALID_ARGUMENT, "model is required"),
        (pb.EmbedRequest(model="mobilenet_v2"), grpc.StatusCode.INVALID_ARGUMENT, "at least one"),
        (pb.EmbedRequest(model="mobilenet_v2", images=[b"x"] * 65), grpc.StatusCode.INVALID_ARGUMENT, "limit is 64"),
    ],
)
def test_bad_requests(embed_server, request_, code, words):
    with pytest.raises(grpc.RpcError) as info:
        stub_for(embed_server.target).Embed(request_, timeout=10)
    assert info.value.code() == code
    assert words in info.value.details()


def test_store_rpcs_on_an_embed_only_server_fail_clearly(embed_server):
    with pytest.raises(grpc.RpcError) as info:
        stub_for(embed_server.target).Get(pb.GetRequest(id=1), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "without Milvus/Redis" in info.value.details()


def test_health_and_reflection(embed_server):
    channel = grpc.insecure_channel(embed_server.target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lookalike.v1.Lookalike"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(channel)
    assert "lookalike.v1.Lookalike" in set(db.get_services())


@pytest.fixture(scope="module")
def slow_server():
    """One model whose batcher always holds items for 3 s (Triton's rule), with a queue of 4."""
    live = start_server(
        stores=False,
        models=ModelsConfig(only=("mobilenet_v2",)),
        batching=BatchingConfig(max_batch_size=32, max_delay_ms=3000, queue_size=4, adaptive_delay=False),
    )
    yield live
    live.server.stop(0)


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_overload_is_refused_at_once_with_resource_exhausted(slow_server, photos):
    stub = stub_for(slow_server.target)
    data = photos[0].read_bytes()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        embed(stub, "mobilenet_v2", *[data] * 6, timeout=20)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in info.value.details() and "retry" in info.value.details()
    assert time.monotonic() - started < 2.5  # refused, not left to wait for the 3 s flush
    stats = {b.model: b for b in stub.GetStats(pb.GetStatsRequest()).batchers}["mobilenet_v2"]
    assert stats.rejected >= 1
    # The failed request's queued images are dropped, never run.
    assert _wait_for(lambda: stub.GetStats(pb.GetStatsRequest()).batchers[0].queue_depth == 0)


def test_deadline_and_cancellation_drop_queued_work(slow_server, photos):
    stub = stub_for(slow_server.target)
    data = photos[0].read_bytes()
    # Let drops left by an earlier test land in the counters before the reset.
    assert _wait_for(lambda: stub.GetStats(pb.GetStatsRequest()).batchers[0].queue_depth == 0)
    time.sleep(0.3)
    stub.GetStats(pb.GetStatsRequest(reset=True))
    with pytest.raises(grpc.RpcError) as info:
        embed(stub, "mobilenet_v2", data, timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    call = stub.Embed.future(pb.EmbedRequest(model="mobilenet_v2", images=[data]), timeout=30)
    time.sleep(0.3)
    assert call.cancel()

    def dropped() -> bool:
        st = stub.GetStats(pb.GetStatsRequest()).batchers[0]
        return st.cancelled + st.expired == 2 and st.queue_depth == 0

    assert _wait_for(dropped, timeout=8), stub.GetStats(pb.GetStatsRequest())
    st = stub.GetStats(pb.GetStatsRequest()).batchers[0]
    assert st.batches == 0 and st.items == 0  # nothing ran for callers who left


def test_graceful_shutdown_finishes_in_flight_calls_and_refuses_new_ones(photos):
    live = start_server(
        stores=False,
        shutdown_delay_s=1.0,
        models=ModelsConfig(only=("mobilenet_v2",)),
        batching=BatchingConfig(max_batch_size=8, max_delay_ms=4000, queue_size=16, adaptive_delay=False),
    )
    stub = stub_for(live.target)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(live.target))
    data = photos[0].read_bytes()
    in_flight = stub.Embed.future(pb.EmbedRequest(model="mobilenet_v2", images=[data]), timeout=30)
    time.sleep(0.3)  # the call is now waiting in the batcher
    stopper = threading.Thread(target=live.server.stop, kwargs={"grace": 10})
    stopper.start()
    # First health turns NOT_SERVING while calls are still accepted...
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING

    # ...then new calls are refused while the in-flight one finishes.
    def refused() -> bool:
        try:
            stub.ListModels(pb.ListModelsRequest(), timeout=2)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            return True
        return False

    assert _wait_for(refused, timeout=5)
    assert not in_flight.done()
    resp = in_flight.result(timeout=20)
    assert len(resp.embeddings[0].values) == 1280
    stopper.join(20)
    assert not stopper.is_alive()


def test_calls_queued_in_grpc_when_shutdown_begins_are_refused_unavailable_not_cancelled():
    # gRPC's stop resets calls that reached the transport but not yet the
    # servicer; clients see CANCELLED, which retry policies do not retry. Hold
    # the event loop so that calls queue there, then stop as it frees.
    live = start_server(stores=False, models=ModelsConfig(only=("mobilenet_v2",)))
    stub = stub_for(live.target)
    stub.ListModels(pb.ListModelsRequest(), timeout=10)
    live.server._loop.call_soon_threadsafe(time.sleep, 0.5)
    time.sleep(0.05)
    calls = [stub.ListModels.future(pb.ListModelsRequest(), timeout=10) for _ in range(8)]
    time.sleep(0.1)  # they have reached the server, whose loop is still held
    stopper = threading.Thread(target=live.server.stop, kwargs={"grace": 5})
    stopper.start()
    codes = []
    for call in calls:
        try:
            call.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                assert "shutting down" in exc.details()
    stopper.join(20)
    assert not stopper.is_alive()
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert grpc.StatusCode.UNAVAILABLE in codes  # the stop did overlap the queued calls


def test_health_is_not_serving_until_models_are_warm():
    from lookalike_server.app import build_server
    from lookalike_server.config_loading import load_config

    config = replace(load_config(["--port", "0"], {}), stores=False, models=ModelsConfig(only=("mobilenet_v2",)))
    server, port = build_server(config, load=False)
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.LookalikeStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in info.value.details()
        server.load()
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
    finally:
        server.stop(0)


def test_request_limits_from_config(photos):
    live = start_server(
        stores=False,
        models=ModelsConfig(only=("mobilenet_v2",)),
        limits=LimitsConfig(max_image_bytes=4096, max_pixels=100 * 100, max_images_per_request=2),
    )
    try:
        stub = stub_for(live.target)
        small = jpeg(Image.new("RGB", (50, 50), (200, 10, 10)))
        assert embed(stub, "mobilenet_v2", small).shape == (1, 1280)
        big = jpeg(Image.open(photos[0]).resize((200, 200)))
        with pytest.raises(grpc.RpcError) as info:
            embed(stub, "mobilenet_v2", big)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            embed(stub, "mobilenet_v2", small, small, small)
        assert "limit is 2" in info.value.details()
    finally:
        live.server.stop(0)


def test_photos_fixture_is_real(photos):
    # Guards the other tests: they must run on real photos, not blank images.
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in photos]
    assert all(a.std() > 20 for a in arrays)
    assert len({Path(p).stem for p in photos}) == len(photos)


def test_prometheus_metrics_are_monotonic_and_count_real_work(photos):
    import urllib.request

    live = start_server(stores=False, metrics_port=0, models=ModelsConfig(only=("mobilenet_v2",)))
    try:
        stub = stub_for(live.target)
        data = photos[0].read_bytes()
        for _ in range(3):
            embed(stub, "mobilenet_v2", data)
        with pytest.raises(grpc.RpcError):
            embed(stub, "mobilenet_v2", b"not an image")
        stub.GetStats(pb.GetStatsRequest(reset=True))  # must not reset what Prometheus sees

        url = f"http://127.0.0.1:{live.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'lookalike_requests_total{code="OK",method="Embed"} 3.0' in text
        assert 'lookalike_requests_total{code="INVALID_ARGUMENT",method="Embed"} 1.0' in text
        assert 'lookalike_batch_items_total{model="mobilenet_v2"} 3.0' in text
        assert 'lookalike_request_duration_seconds_count{method="Embed"} 4.0' in text
        assert 'lookalike_queue_depth{model="mobilenet_v2"} 0.0' in text
        # Three calls one after another each ran alone: on the wide session where warm-up kept one.
        (m,) = stub.ListModels(pb.ListModelsRequest()).models
        alone = 3.0 if m.threads.wide_intra_op_threads else 0.0
        assert f'lookalike_alone_batches_total{{model="mobilenet_v2"}} {alone}' in text
    finally:
        live.server.stop(0)
