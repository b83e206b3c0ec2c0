"""The lone-call breakdown (benchmarks/c1_overhead.py): the overhead beyond the work, and paired rounds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import c1_overhead  # noqa: E402


def _call(client: float, total: float, pre: float, infer: float, queue: float = 0.1) -> dict[str, float]:
    return {"client_ms": client, "total_ms": total, "preprocess_ms": pre, "queue_ms": queue, "inference_ms": infer}


def test_the_overhead_is_taken_call_by_call_so_the_work_drifting_does_not_move_it() -> None:
    # Decoding slows by 3 ms half way through the round; each call still
    # costs 2 ms beyond its own decode and inference.
    calls = [_call(12.0, 11.0, 4.0, 6.0)] * 3 + [_call(15.0, 14.0, 7.0, 6.0)] * 4
    got = c1_overhead.round_summary(calls, skip=0)
    assert got["overhead_ms"] == pytest.approx(2.0)
    assert got["outside_server_ms"] == pytest.approx(1.0)
    assert got["client_ms"] == pytest.approx(15.0)  # the median call is a slow one


def test_the_first_calls_of_a_round_are_dropped() -> None:
    calls = [_call(50.0, 49.0, 20.0, 20.0)] * 2 + [_call(12.0, 11.0, 4.0, 6.0)] * 3
    assert c1_overhead.round_summary(calls, skip=2)["client_ms"] == pytest.approx(12.0)
    assert c1_overhead.round_summary(calls, skip=0)["client_ms"] == pytest.approx(12.0)  # median of 5
    assert c1_overhead.round_summary(calls[:2], skip=5)["client_ms"] == pytest.approx(50.0)  # nothing left: all


def test_checkouts_are_compared_round_by_round() -> None:
    # The machine is 1 ms slower in round 2 for both; the change saves 0.2 ms in every round.
    first = [2.8, 3.8, 2.9]
    other = [2.6, 3.6, 2.7]
    got = c1_overhead.paired(first, other)
    assert got["median"] == pytest.approx(-0.2)
    assert got["lower"] == 3
    assert got["rounds"] == pytest.approx([-0.2, -0.2, -0.2])
    with pytest.raises(ValueError):
        c1_overhead.paired(first, other[:2])


def test_rounds_are_spread_over_fresh_server_starts() -> None:
    assert c1_overhead.start_groups(8, 1) == [8]
    assert c1_overhead.start_groups(8, 2) == [4, 4]
    assert c1_overhead.start_groups(7, 3) == [3, 2, 2]
    assert c1_overhead.start_groups(2, 5) == [1, 1]  # never a start without a round
    assert sum(c1_overhead.start_groups(9, 4)) == 9


def test_servers_start_in_the_order_asked_and_come_back_in_the_codes_order(monkeypatch, tmp_path) -> None:
    import contextlib

    started: list[str] = []

    @contextlib.contextmanager
    def fake_running_server(flags, log, code=None):
        started.append(code)
        yield f"target-of-{code}"

    monkeypatch.setattr(c1_overhead.compare, "running_server", fake_running_server)
    with c1_overhead.servers(["a", "b", "c"], [], tmp_path, reverse=True) as targets:
        assert targets == ["target-of-a", "target-of-b", "target-of-c"]
    assert started == ["c", "b", "a"]
