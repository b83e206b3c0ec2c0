"""The interleaved batching A/B's summary (benchmarks/batching_ab.py): medians of per-round ratios."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import batching_ab  # noqa: E402


def _round(on: float, off: float) -> dict[str, float]:
    return {"on_images_per_s": on, "off_images_per_s": off, "on_p50_ms": 1000 / on, "off_p50_ms": 1000 / off}


def test_the_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians() -> None:
    # Per-round ratios 0.5, 1.11, 1.2: median 1.11. The medians of each side are 100 and 100,
    # whose ratio (1.0) would hide that the middle round favoured batching.
    rounds = [_round(50, 100), _round(100, 90), _round(120, 100)]
    got = batching_ab._summary(rounds)
    assert got["ratio_median"] == pytest.approx(100 / 90)
    assert (got["ratio_min"], got["ratio_max"]) == (pytest.approx(0.5), pytest.approx(1.2))
    assert got["on_images_per_s"] == 100 and got["off_images_per_s"] == 100
    assert got["met"] is True


def test_below_the_target_is_not_met() -> None:
    got = batching_ab._summary([_round(96, 100), _round(95, 100), _round(99, 100)])
    assert got["ratio_median"] == pytest.approx(0.96)
    assert got["met"] is False
