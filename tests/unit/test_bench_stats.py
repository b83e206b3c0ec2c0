"""Statistics of ``lookalike bench`` and the reports of ``benchmarks/bench_report.py`` (no server needed)."""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lookalike import bench

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_report


def test_percentile_matches_numpy_linear() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(7)
    values = sorted(rng.expovariate(1.0) for _ in range(1001))
    for q in (0, 1, 50, 90, 95, 99, 99.9, 100):
        assert bench.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert bench.percentile([3.0], 99) == 3.0
    assert bench.percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        bench.percentile([], 50)
    with pytest.raises(ValueError):
        bench.percentile([1.0], 101)


def test_latency_summary_in_ms_and_ordered() -> None:
    summary = bench.latency_summary([0.001, 0.002, 0.003, 0.004, 0.100])
    assert summary["min"] == pytest.approx(1.0)
    assert summary["max"] == pytest.approx(100.0)
    assert summary["mean"] == pytest.approx(22.0)
    assert summary["p50"] == pytest.approx(3.0)
    ordered = [summary[k] for k in ("min", "p50", "p90", "p95", "p99", "max")]
    assert ordered == sorted(ordered)
    assert set(summary) == set(bench.LATENCY_KEYS)


def test_latency_summary_empty_is_all_none() -> None:
    assert all(v is None for v in bench.latency_summary([]).values())


def test_merge_histograms_adds_and_accepts_json_keys() -> None:
    merged = bench.merge_histograms({1: 3, 4: 2}, {"4": 1, "32": 5}, {})
    assert merged == {1: 3, 4: 3, 32: 5}
    assert list(merged) == sorted(merged)


def test_histogram_means() -> None:
    hist = {1: 2, 4: 2}  # batches: 1,1,4,4; items: 10
    assert bench.histogram_mean(hist) == pytest.approx(2.5)
    # An item's view: 2 items in size-1 batches, 8 in size-4 batches.
    assert bench.items_weighted_mean(hist) == pytest.approx((2 * 1 + 8 * 4) / 10)
    assert bench.histogram_mean({}) is None
    assert bench.items_weighted_mean({}) is None


def test_timing_accumulator_means() -> None:
    acc = bench.TimingAccumulator()
    assert all(v is None for v in acc.means().values())
    acc.add(SimpleNamespace(total_ms=10.0, queue_ms=2.0, inference_ms=6.0, batch_size=4))
    acc.add(SimpleNamespace(total_ms=20.0, queue_ms=4.0, inference_ms=8.0, batch_size=2))
    means = acc.means()
    assert means["total_ms"] == pytest.approx(15.0)
    assert means["queue_ms"] == pytest.approx(3.0)
    assert means["milvus_ms"] == pytest.approx(0.0)
    assert means["batch_size"] == pytest.approx(3.0)


def test_window_recorder_counts_only_in_window_for_throughput() -> None:
    rec = bench.WindowRecorder(start=100.0, stop=110.0)
    rec.sent = 4
    rec.record(100.0, 100.5, "OK", 1, timing=SimpleNamespace(total_ms=5.0))
    rec.record(101.0, 101.2, "OK", 1, timing=SimpleNamespace(total_ms=7.0))
    rec.record(102.0, 102.1, "UNAVAILABLE", 1, message="boom")
    rec.record(109.9, 110.5, "OK", 1)  # answered during the drain
    s = rec.summary()
    assert (s["requests"], s["completed"], s["ok"], s["errors"]) == (4, 4, 3, 1)
    assert s["throughput_rps"] == pytest.approx(2 / 10)  # 2 OK inside the window
    assert s["images_per_s"] == pytest.approx(2 / 10)
    assert s["status"] == {"OK": 3, "UNAVAILABLE": 1}
    assert s["error_samples"] == {"UNAVAILABLE": "boom"}
    assert s["server_timing_ms"]["total_ms"] == pytest.approx(6.0)
    assert s["latency_ms"]["max"] == pytest.approx(600.0)


def _stats_response() -> SimpleNamespace:
    batcher = SimpleNamespace(
        model="m",
        batch_size_histogram={1: 4, 8: 2},
        batches=6,
        items=20,
        rejected=0,
        expired=1,
        cancelled=0,
        alone_batches=3,
        queue_ms_sum=40.0,
        run_ms_sum=60.0,
    )
    return SimpleNamespace(
        batchers=[batcher],
        requests_by_status={"Embed/OK": 20, "GetStats/OK": 1, "ListModels/OK": 1},
    )


def test_stats_summary() -> None:
    s = bench.stats_summary(_stats_response(), "Embed")
    assert s["batch_size_histogram"] == {1: 4, 8: 2}
    assert s["mean_batch_size"] == pytest.approx(20 / 6)
    assert s["batchers"]["m"]["mean_queue_ms"] == pytest.approx(2.0)
    assert s["batchers"]["m"]["mean_run_ms"] == pytest.approx(10.0)
    assert s["batchers"]["m"]["alone_batches"] == 3
    assert s["method_requests"] == 20


def _point(label: str, rps: float) -> dict:
    rec = bench.WindowRecorder(start=0.0, stop=1.0)
    rec.sent = 3
    for i in range(3):
        rec.record(0.1 * i, 0.1 * i + 0.01 * (i + 1), "OK", 1, timing=SimpleNamespace(queue_ms=1.0))
    point = {"label": label, "mode": "closed", "concurrency": 1, "rate": None, **rec.summary()}
    point["throughput_rps"] = point["images_per_s"] = rps
    point["server"] = bench.stats_summary(_stats_response(), "Embed")
    return point


def test_report_structure_and_files(tmp_path) -> None:
    report = bench.new_report("unit", bench_report.describe_machine(), {"method": "embed"})
    report["series"].append({"name": "embed", "kind": "server", "points": [_point("c=1", 10.0), _point("c=4", 30.0)]})
    out = bench_report.write_report(report, tmp_path / "r")
    data = json.loads((out / "results.json").read_text())
    assert {"name", "created", "machine", "config", "series", "plots"} <= set(data)
    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["cpu"]
    point = data["series"][0]["points"][0]
    for key in ("throughput_rps", "images_per_s", "latency_ms", "status", "server_timing_ms", "server"):
        assert key in point
    assert set(point["latency_ms"]) == set(bench.LATENCY_KEYS)
    md = (out / "report.md").read_text()
    assert "| embed | c=1 |" in md and "| embed | c=4 |" in md
    assert "## Machine" in md
    for png in data["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_plots(tmp_path) -> None:
    report = bench.new_report("unit", {}, {})
    report["series"].append({"name": "x", "points": [_point("c=1", 1.0)]})
    out = bench_report.write_report(report, tmp_path, plots=False)
    assert json.loads((out / "results.json").read_text())["plots"] == []
    assert not list(out.glob("*.png"))


def test_load_point_validation() -> None:
    assert bench.LoadPoint(concurrency=4).label == "c=4"
    assert bench.LoadPoint(rate=12.5).label == "r=12.5/s"
    with pytest.raises(bench.BenchError):
        bench.LoadPoint()
    with pytest.raises(bench.BenchError):
        bench.LoadPoint(concurrency=2, rate=3.0)
    with pytest.raises(bench.BenchError):
        bench.LoadPoint(concurrency=0)


def test_request_factory_insert_payloads_are_unique() -> None:
    f = bench.RequestFactory("insert", [], [b"\xff\xd8\xffJPEG"], images_per_request=2)
    _, r1 = f.unary(1)
    _, r2 = f.unary(2)
    keys = [it.key for it in (*r1.items, *r2.items)]
    images = [it.image for it in (*r1.items, *r2.items)]
    assert len(set(keys)) == 4 and len(set(images)) == 4
    assert all(img.startswith(b"\xff\xd8\xffJPEG") for img in images)


def test_request_factory_methods() -> None:
    f = bench.RequestFactory("embed", ["m"], [b"a", b"b"], images_per_request=3)
    rpc, req = f.unary(0)
    assert rpc == "Embed" and req.model == "m" and list(req.images) == [b"a", b"b", b"a"]
    assert f.images_per_call == 3
    with pytest.raises(bench.BenchError):
        f.stream_rpc()
    s = bench.RequestFactory("search", ["m", "n"], [b"a"], images_per_request=5, top_k=3)
    rpc, req = s.unary(0)
    assert rpc == "Search" and list(req.models) == ["m", "n"] and req.top_k == 3
    assert s.images_per_call == 1
    assert s.stream_item(7).request_id == "7"
    with pytest.raises(bench.BenchError):
        bench.RequestFactory("delete", ["m"], [b"a"])


def test_load_images_resizes(tmp_path) -> None:
    image = pytest.importorskip("PIL.Image")
    image.new("RGBA", (400, 200), (10, 200, 30, 128)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    raw = bench.load_images(tmp_path)  # notes.txt is skipped
    assert len(raw) == 1 and raw[0].startswith(b"\x89PNG")
    resized = bench.load_images(tmp_path, image_size=100)
    with image.open(io.BytesIO(resized[0])) as img:
        assert img.format == "JPEG" and img.size == (100, 50)
    (tmp_path / "empty").mkdir()
    with pytest.raises(bench.BenchError):
        bench.load_images(tmp_path / "empty")


def test_cli_arguments_parse() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--concurrency", "1,2,64", "--method", "search", "--models", "a,b", "--stream"])
    assert args.concurrency == [1, 2, 64] and args.stream and args.models == "a,b"
    args = parser.parse_args(["--rate", "5,10.5"])
    assert args.rate == [5.0, 10.5]
    with pytest.raises(SystemExit):
        parser.parse_args(["--concurrency", "1", "--rate", "5"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--concurrency", "0"])
