"""``lookalike bench`` against a real server: the report's structure and its counts.

Short windows (about 3 s of load in all), concurrency 1 and 4. The counts the
bench reports must agree with each other and with what the server says it
served over the same window (``GetStats`` is reset after the warm-up and read
after the drain).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from lookalike import bench

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_report

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _args(target: str, photos, out, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(
        ["--target", target, "--images", str(photos[0].parent), "--warmup", "0.3", "--duration", "1.2",
         "--out", str(out), *extra]
    )  # fmt: skip


def _check_point(p: dict, rpc: str) -> None:
    assert p["requests"] == p["completed"] == sum(p["status"].values()) > 0
    assert p["ok"] == p["status"].get("OK", 0) == p["requests"], p["error_samples"]
    assert p["throughput_rps"] > 0 and p["images_per_s"] >= p["throughput_rps"]
    lat = p["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    server = p["server"]
    # The server served exactly the requests the bench sent in the window.
    assert server["method_requests"] == p["requests"]
    assert server["requests_by_status"].get(f"{rpc}:OK") == p["requests"]
    timing = p["server_timing_ms"]
    assert timing["inference_ms"] > 0 and timing["total_ms"] >= timing["inference_ms"]


def test_bench_embed_closed_loop_report(live_server, photos, tmp_path) -> None:
    out = tmp_path / "embed"
    args = _args(live_server.target, photos, out, "--concurrency", "1,4", "--image-size", "320")
    assert bench.run(args) == 0

    bench_report.render(out)  # report.md and plots come from benchmarks/, not the thin client
    report = json.loads((out / "results.json").read_text())
    assert {"name", "created", "machine", "config", "series", "plots"} <= set(report)
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu"]
    assert "CPUExecutionProvider" in next(iter(machine["models"].values()))["providers"]
    (series,) = report["series"]
    assert series["method"] == "embed" and len(series["points"]) == 2
    for p in series["points"]:
        _check_point(p, "Embed")
        hist = p["server"]["batch_size_histogram"]
        # Every image ran in exactly one batch.
        assert sum(int(k) * v for k, v in hist.items()) == p["requests"]
    c1, c4 = series["points"]
    assert (c1["label"], c4["label"]) == ("c=1", "c=4")
    assert set(c1["server"]["batch_size_histogram"]) == {"1"}  # alone, nothing to batch with

    md = (out / "report.md").read_text()
    assert "| embed | c=1 |" in md and "| embed | c=4 |" in md and "## Machine" in md
    for png in report["plots"]:
        assert (out / png).stat().st_size > 1000


def test_bench_search_stream_and_open_loop(live_server, photos, tmp_path) -> None:
    # Something to find first: index a few photos through the server.
    args = _args(live_server.target, photos, tmp_path / "insert", "--method", "insert", "--concurrency", "2",
                 "--no-plots")  # fmt: skip
    assert bench.run(args) == 0
    inserted = json.loads((tmp_path / "insert" / "results.json").read_text())["series"][0]["points"][0]
    _check_point(inserted, "Insert")

    args = _args(live_server.target, photos, tmp_path / "stream", "--method", "search", "--stream",
                 "--concurrency", "4", "--unique", "--no-plots")  # fmt: skip
    assert bench.run(args) == 0
    p = json.loads((tmp_path / "stream" / "results.json").read_text())["series"][0]["points"][0]
    assert p["rpc"] == "SearchStream"
    assert p["requests"] == p["completed"] == p["ok"] > 0, p["error_samples"]
    assert p["server_timing_ms"]["milvus_ms"] > 0

    args = _args(live_server.target, photos, tmp_path / "open", "--method", "search", "--rate", "15",
                 "--no-plots")  # fmt: skip
    assert bench.run(args) == 0
    p = json.loads((tmp_path / "open" / "results.json").read_text())["series"][0]["points"][0]
    assert p["mode"] == "open" and p["rate"] == 15.0
    _check_point(p, "Search")
