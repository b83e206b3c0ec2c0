"""The load generator's loops against a fake in-process server.

The fake answers after a fixed delay and counts what it served, so the bench's
own counts (sent, completed, by status) and the server's can be checked
against each other exactly, for closed loop, open loop and streams, without
models or stores.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

import grpc
import pytest

from lookalike import bench
from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

DELAY_S = 0.003


class FakeLookalike(pb_grpc.LookalikeServicer):
    """Answers Embed/Search/Insert and streams; fails images equal to b'bad'."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.batches: Counter[int] = Counter()

    def _count(self, method: str, code: str = "OK") -> None:
        self.counts[f"{method}/{code}"] += 1

    async def ListModels(self, request, context):
        info = pb.ModelInfo(name="fake", version="1", dim=4, providers=["CPUExecutionProvider"], max_batch_size=8)
        return pb.ListModelsResponse(models=[info])

    async def Embed(self, request, context):
        await asyncio.sleep(DELAY_S)
        if request.images[0] == b"bad":
            self._count("Embed", "INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad image")
        self._count("Embed")
        self.batches[len(request.images)] += 1
        timing = pb.ServerTiming(total_ms=3.0, queue_ms=1.0, inference_ms=2.0, batch_size=len(request.images))
        return pb.EmbedResponse(
            model=request.model,
            dim=4,
            embeddings=[pb.Embedding(values=[0.5] * 4) for _ in request.images],
            timing=timing,
        )

    async def Search(self, request, context):
        await asyncio.sleep(DELAY_S)
        self._count("Search")
        self.batches[1] += 1
        return pb.SearchResponse(
            results=[pb.ModelHits(model=m) for m in request.models], timing=pb.ServerTiming(milvus_ms=1.5)
        )

    async def Insert(self, request, context):
        await asyncio.sleep(DELAY_S)
        self._count("Insert")
        return pb.InsertResponse(results=[pb.InsertResult(id=i, created=True) for i, _ in enumerate(request.items)])

    async def SearchStream(self, request_iterator, context):
        async for req in request_iterator:
            await asyncio.sleep(DELAY_S)
            self._count("SearchStream.item")
            if req.query.image == b"bad":
                yield pb.SearchStreamResponse(
                    request_id=req.request_id,
                    error=pb.Error(code=3, code_name="INVALID_ARGUMENT", message="bad"),
                )
            else:
                yield pb.SearchStreamResponse(request_id=req.request_id, result=pb.SearchResponse())
        self._count("SearchStream")

    async def GetStats(self, request, context):
        resp = pb.GetStatsResponse(
            batchers=[pb.BatcherStats(model="fake", batch_size_histogram=dict(self.batches))],
            requests_by_status=dict(self.counts),
        )
        if request.reset:
            self.counts.clear()
            self.batches.clear()
        return resp


async def _with_server(fn):
    server = grpc.aio.server()
    fake = FakeLookalike()
    pb_grpc.add_LookalikeServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await fn(f"127.0.0.1:{port}", fake)
    finally:
        await server.stop(None)


def _spec(target: str, **kw) -> bench.BenchSpec:
    defaults = dict(images=[b"\xff\xd8\xffimg"], warmup_s=0.1, duration_s=0.4)
    defaults.update(kw)
    return bench.BenchSpec(target=target, **defaults)


def test_closed_loop_counts_match_server() -> None:
    async def go(target, fake):
        spec = _spec(target, points=[bench.LoadPoint(concurrency=1), bench.LoadPoint(concurrency=4)])
        series, models = await bench.run_series(spec)
        return series, models

    series, models = asyncio.run(_with_server(go))
    assert [m.name for m in models] == ["fake"]
    assert series["models"] == ["fake"]  # embed defaults to the first served model
    c1, c4 = series["points"]
    for p in (c1, c4):
        assert p["requests"] == p["completed"] == p["ok"] > 0
        assert p["errors"] == 0 and p["status"] == {"OK": p["ok"]}
        # GetStats was reset after the warm-up and read after the drain.
        assert p["server"]["method_requests"] == p["requests"]
        assert sum(p["server"]["batch_size_histogram"].values()) == p["requests"]
        assert p["server_timing_ms"]["queue_ms"] == pytest.approx(1.0)
        assert p["latency_ms"]["min"] >= DELAY_S * 1000 * 0.9
    # Four callers against a fixed-delay server: clearly more throughput.
    assert c4["throughput_rps"] > 2 * c1["throughput_rps"]


def test_errors_are_counted_by_status() -> None:
    async def go(target, fake):
        spec = _spec(target, images=[b"bad", b"\xff\xd8\xffok"], points=[bench.LoadPoint(concurrency=2)])
        return await bench.run_series(spec)

    series, _ = asyncio.run(_with_server(go))
    p = series["points"][0]
    assert set(p["status"]) == {"OK", "INVALID_ARGUMENT"}
    assert p["errors"] == p["status"]["INVALID_ARGUMENT"] and p["completed"] == p["requests"]
    assert "bad image" in p["error_samples"]["INVALID_ARGUMENT"]


def test_open_loop_rate_and_latency_from_schedule() -> None:
    async def go(target, fake):
        spec = _spec(target, points=[bench.LoadPoint(rate=200.0)], duration_s=0.8, seed=3)
        return await bench.run_series(spec)

    series, _ = asyncio.run(_with_server(go))
    p = series["points"][0]
    assert p["mode"] == "open" and p["rate"] == 200.0
    # Poisson with mean 160 arrivals in the window: well inside these bounds.
    assert 90 <= p["requests"] <= 240
    assert p["completed"] == p["requests"] == p["server"]["method_requests"]


def test_stream_search_counts_and_item_errors() -> None:
    async def go(target, fake):
        spec = _spec(
            target,
            method="search",
            models=["fake"],
            stream=True,
            images=[b"bad", b"\xff\xd8\xffok", b"\xff\xd8\xffok2"],
            points=[bench.LoadPoint(concurrency=4)],
        )
        return await bench.run_series(spec)

    series, _ = asyncio.run(_with_server(go))
    p = series["points"][0]
    assert p["rpc"] == "SearchStream"
    assert p["completed"] == p["requests"] > 0
    assert p["status"]["INVALID_ARGUMENT"] > 0 and p["status"]["OK"] > 0
    assert p["server"]["requests_by_status"]["SearchStream.item/OK"] == p["requests"]


def test_unknown_model_and_unreachable_server() -> None:
    async def go(target, fake):
        with pytest.raises(bench.BenchError, match="not served"):
            await bench.run_series(_spec(target, models=["nope"]))

    asyncio.run(_with_server(go))
    spec = _spec("127.0.0.1:1", connect_timeout_s=0.5)
    with pytest.raises(bench.BenchError, match="cannot reach"):
        asyncio.run(bench.run_series(spec))


def test_cli_run_writes_report(tmp_path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photos / "a.jpg")

    async def go(target, fake):
        import argparse

        parser = argparse.ArgumentParser()
        bench.add_arguments(parser)
        args = parser.parse_args(
            ["--target", target, "--images", str(photos), "--concurrency", "1,2", "--warmup", "0.1",
             "--duration", "0.3", "--out", str(tmp_path / "out"), "--no-plots"]
        )  # fmt: skip
        # run() owns its event loop; give it a thread so ours keeps serving.
        return await asyncio.to_thread(bench.run, args)

    assert asyncio.run(_with_server(go)) == 0
    assert (tmp_path / "out" / "results.json").exists()
    assert not (tmp_path / "out" / "report.md").exists()  # reports are benchmarks/bench_report.py's job
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_report

    bench_report.render(tmp_path / "out", plots=False)
    assert "| embed | c=2 |" in (tmp_path / "out" / "report.md").read_text()


def test_a_target_list_spreads_the_load_over_every_server() -> None:
    # Two fakes without a health service: gRPC then treats them as healthy (UNIMPLEMENTED).
    async def go():
        servers, fakes, targets = [], [], []
        for _ in range(2):
            server = grpc.aio.server()
            fake = FakeLookalike()
            pb_grpc.add_LookalikeServicer_to_server(fake, server)
            targets.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
            await server.start()
            servers.append(server)
            fakes.append(fake)
        try:
            series, _ = await bench.run_series(_spec(",".join(targets), points=[bench.LoadPoint(concurrency=4)]))
            return series, fakes
        finally:
            for server in servers:
                await server.stop(None)

    series, fakes = asyncio.run(go())
    (point,) = series["points"]
    assert point["requests"] == point["ok"] > 0
    served = [f.counts["Embed/OK"] for f in fakes]  # warm-up calls included
    assert all(n > 0 for n in served) and sum(served) >= point["requests"]


def test_machine_summary_takes_the_wire_message_and_the_clients_model_info() -> None:
    """compare.py passes protobuf ModelInfo, quality.py the client's dataclass: both record the threads."""
    from lookalike.bench.runner import machine_summary
    from lookalike.types import ModelInfo, ThreadBudget

    wire = pb.ModelInfo(name="m", version="2", dim=4, max_batch_size=1)
    wire.threads.cores = 2
    wire.threads.batch_workers = 2
    typed = ModelInfo(
        name="t",
        version="2",
        dim=4,
        preprocessing=None,
        providers_requested=(),
        providers=(),
        max_batch_size=1,
        max_delay_ms=0.0,
        batch_buckets=(1,),
        collection="c",
        description="",
        onnx_sha256="",
        threads=ThreadBudget(
            cores=2, preprocess_threads=1, intra_op_threads=1, inter_op_threads=1, batch_workers=2, reason="r"
        ),
    )
    models = machine_summary([wire, typed])["models"]
    assert models["m"]["threads"]["batch_workers"] == 2
    assert models["t"]["threads"] == {
        "cores": 2,
        "preprocess_threads": 1,
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "batch_workers": 2,
        "wide_intra_op_threads": 0,
        "reason": "r",
    }
    assert machine_summary([pb.ModelInfo(name="old")])["models"]["old"]["threads"] is None


def test_several_load_processes_share_each_point_and_their_windows_merge_exactly() -> None:
    # Two spawned load processes, each with its own channel: the parent resets
    # the server's counters between their warm-ups and their windows, so what the
    # server served in the window is exactly what the merged window counts.
    async def go(target, fake):
        spec = _spec(
            target,
            images=[b"bad", b"\xff\xd8\xffok"],
            points=[bench.LoadPoint(concurrency=1), bench.LoadPoint(concurrency=4)],
            processes=2,
        )
        return await bench.run_series(spec)

    series, _ = asyncio.run(_with_server(go))
    assert series["load_processes"] == 2
    c1, c4 = series["points"]
    assert c1["load_processes"] == 1 and c4["load_processes"] == 2  # one caller needs one process
    for p in (c1, c4):
        assert p["requests"] == p["completed"] == p["server"]["method_requests"] > 0
        assert set(p["status"]) == {"OK", "INVALID_ARGUMENT"} and p["errors"] == p["status"]["INVALID_ARGUMENT"]
        assert p["server_timing_ms"]["queue_ms"] == pytest.approx(1.0)
        assert p["latency_ms"]["min"] >= DELAY_S * 1000 * 0.9
        assert p["client_cores"] > 0
    assert c4["throughput_rps"] > 2 * c1["throughput_rps"]


def test_a_point_splits_into_near_equal_shares_over_the_processes() -> None:
    from lookalike.bench.procs import split_point

    assert [p.concurrency for p in split_point(bench.LoadPoint(concurrency=10), 4)] == [3, 3, 2, 2]
    assert [p.concurrency for p in split_point(bench.LoadPoint(concurrency=2), 4)] == [1, 1]
    assert [p.rate for p in split_point(bench.LoadPoint(rate=90.0), 3)] == [30.0, 30.0, 30.0]


def test_merged_windows_pool_counts_and_latencies_and_span_both_windows() -> None:
    from lookalike.bench.stats import WindowRecorder

    a, b = WindowRecorder(start=10.0, stop=11.0), WindowRecorder(start=10.01, stop=11.0)
    for rec, n in ((a, 3), (b, 5)):
        for i in range(n):
            rec.sent += 1
            rec.record(10.2, 10.2 + 0.001 * (i + 1), "OK", 2)
    b.sent += 1
    b.record(10.3, 10.4, "UNAVAILABLE", 2, message="down")
    m = WindowRecorder.merged([a, b]).summary()
    assert m["requests"] == 9 and m["completed"] == 9 and m["ok"] == 8 and m["errors"] == 1
    assert m["window_s"] == pytest.approx(1.0)
    assert m["images_per_s"] == pytest.approx(16.0)  # 8 OK answers x 2 images in one second
    assert m["latency_ms"]["max"] == pytest.approx(100.0)
    assert m["error_samples"] == {"UNAVAILABLE": "down"}
