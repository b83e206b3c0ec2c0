"""The interleaved server-against-ceiling rounds (benchmarks/ceiling_ab.py): per-round ratios and overheads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ceiling_ab  # noqa: E402


def _round(server: float, ceiling: float, c1: float, b1: float) -> dict[str, float]:
    return {
        "server_images_per_s": server,
        "ceiling_images_per_s": ceiling,
        "server_c1_p50_ms": c1,
        "ceiling_b1_p50_ms": b1,
    }


def test_each_round_is_judged_against_the_ceiling_measured_beside_it() -> None:
    # The machine halves its speed in round 2: both sides with it. A ratio of
    # medians would mix rounds; per-round ratios stay at 1.1.
    rounds = [_round(110, 100, 10.5, 10.0), _round(55, 50, 21.0, 20.0), _round(110, 100, 10.5, 10.0)]
    got = ceiling_ab.summary(rounds)
    assert got["ratio"]["median"] == pytest.approx(1.1)
    assert got["ratio"]["rounds"] == pytest.approx([1.1, 1.1, 1.1])
    assert got["ratio"]["met"] is True
    assert got["overhead_ms"]["rounds"] == pytest.approx([0.5, 1.0, 0.5])
    assert got["overhead_ms"]["median"] == pytest.approx(0.5) and got["overhead_ms"]["met"] is True


def test_targets_missed_are_reported_missed_with_an_interval_around_the_median() -> None:
    rounds = [_round(90, 100, 13.0, 10.0), _round(95, 100, 12.5, 10.0), _round(99, 100, 11.0, 10.0)]
    got = ceiling_ab.summary(rounds)
    assert got["ratio"]["median"] == pytest.approx(0.95) and got["ratio"]["met"] is False
    assert got["overhead_ms"]["median"] == pytest.approx(2.5) and got["overhead_ms"]["met"] is False
    low, high = got["ratio"]["ci90"]
    assert 0.9 <= low <= 0.95 <= high <= 0.99


def test_the_intra_op_profile_holds_the_servers_sessions_to_that_many_threads_and_drops_the_wide_one() -> None:
    from lookalike_server.config_loading import load_config

    assert ceiling_ab.profile_flags(0) == []
    config = load_config(ceiling_ab.profile_flags(1), {})
    assert config.models.intra_op_threads == 1
    assert config.models.wide_session == "off"


def test_the_paired_c1_reading_alternates_lone_server_and_ceiling_calls(embed_server) -> None:
    import baselines

    from lookalike.bench import load_images

    images = load_images(ROOT / "tests" / "data" / "photos", 320)[:3]
    lone = baselines.load_lone_model("mobilenet_v2", threads=1)
    got = ceiling_ab.paired_c1(embed_server.target, lone, images, pairs=8)
    assert got["pairs"] == 8
    assert got["server_p50_ms"] > 0 and got["ceiling_p50_ms"] > 0
    low, high = got["ci90"]
    assert low <= got["median_ms"] <= high
    assert got["met"] is (got["median_ms"] <= ceiling_ab.TARGET_OVERHEAD_MS)
