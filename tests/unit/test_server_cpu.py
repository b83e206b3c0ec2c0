"""Per-call CPU by thread group (benchmarks/server_cpu.py): names to groups, snapshots to ms per call."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import server_cpu  # noqa: E402


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("grpc-aio", "loop"),
        ("preprocess-0", "decode"),
        ("preprocess-11", "decode"),
        ("batcher-mobilen", "inference"),
        ("event_engine", "grpc"),
        ("grpc_global_tim", "grpc"),
        ("python", "other"),
        ("unary_0", "other"),
    ],
)
def test_threads_are_grouped_by_the_names_the_server_gives_them(name: str, group: str) -> None:
    assert server_cpu.thread_group(name) == group


def test_cpu_per_call_counts_threads_that_started_during_the_window_and_ignores_ended_ones() -> None:
    before = {1: ("grpc-aio", 10.0), 2: ("preprocess-0", 5.0), 3: ("python", 1.0)}
    after = {1: ("grpc-aio", 10.5), 2: ("preprocess-0", 7.0), 4: ("batcher-m-0", 3.0), 5: ("event_engine", 0.1)}
    got = server_cpu.per_call(before, after, calls=100)
    assert got["loop"] == pytest.approx(5.0)
    assert got["decode"] == pytest.approx(20.0)
    assert got["inference"] == pytest.approx(30.0)  # all of a new thread's time is the window's
    assert got["grpc"] == pytest.approx(1.0)
    assert got["other"] == 0.0  # thread 3 ended: its time before the window is not counted
    assert got["total"] == pytest.approx(56.0)


def test_this_process_busy_thread_shows_up_in_its_own_snapshot() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    t = threading.Thread(target=spin)
    before = server_cpu.thread_cpu(os.getpid())
    t.start()
    time.sleep(0.3)
    after = server_cpu.thread_cpu(os.getpid())  # while it runs: a thread that has ended is not listed
    stop.set()
    t.join()
    got = server_cpu.per_call(before, after, calls=1)
    assert got["other"] >= 100.0  # ms of the 300-ms spin, at 10-ms ticks, sharing the GIL with this thread


def test_rounds_are_summarised_by_median_range_and_interval() -> None:
    rounds = [dict.fromkeys((*server_cpu.GROUPS, "total", "images_per_s"), float(v)) for v in (3, 1, 2)]
    got = server_cpu.summarise(rounds)
    assert got["total"]["median"] == 2.0 and got["total"]["min"] == 1.0 and got["total"]["max"] == 3.0
    low, high = got["images_per_s"]["ci90"]
    assert 1.0 <= low <= 2.0 <= high <= 3.0


def test_cores_by_group_finds_a_saturated_loop_among_many_busy_threads() -> None:
    before = {1: ("grpc-aio", 0.0), 2: ("preprocess-0", 0.0), 3: ("preprocess-1", 0.0)}
    after = {1: ("grpc-aio", 9.8), 2: ("preprocess-0", 6.0), 3: ("preprocess-1", 7.0), 4: ("batcher-m-0", 2.0)}
    got = server_cpu.cores_by_group(before, after, seconds=10.0)
    assert got["loop"] == pytest.approx(0.98)
    assert got["decode"] == pytest.approx(1.3)  # more in all, but no one thread near a core
    assert got["inference"] == pytest.approx(0.2)
    assert got["busiest_thread"] == "grpc-aio" and got["busiest_share"] == pytest.approx(0.98)


def test_servers_start_in_the_order_asked_and_come_back_in_the_codes_order(monkeypatch, tmp_path) -> None:
    import contextlib

    started: list[str] = []

    @contextlib.contextmanager
    def fake_running_server(flags, log, pid_out=None, cpus=None, code=None):
        started.append(code)
        pid_out.append(1000 + len(started))
        yield f"target-of-{code}"

    monkeypatch.setattr(server_cpu.compare, "running_server", fake_running_server)
    with server_cpu.servers(["a", "b"], [], tmp_path, {0}, reverse=True) as running:
        assert running == [("target-of-a", 1002), ("target-of-b", 1001)]
    assert started == ["b", "a"]
