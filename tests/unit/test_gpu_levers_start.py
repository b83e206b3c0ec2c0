"""The GPU sweep's replicas start side by side (benchmarks/gpu_levers.py ``_enter_together``)."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_levers  # noqa: E402


def test_replicas_warm_up_side_by_side_and_all_stop_when_one_fails() -> None:
    started: list[str] = []
    stopped: list[str] = []
    both_waiting = threading.Barrier(2, timeout=5)  # each start waits for the other: only concurrent entry passes

    @contextlib.contextmanager
    def server(name: str, fail: bool = False) -> Iterator[str]:
        both_waiting.wait()
        if fail:
            raise RuntimeError(f"{name} exited during warm-up")
        started.append(name)
        try:
            yield f"127.0.0.1:{name}"
        finally:
            stopped.append(name)

    with contextlib.ExitStack() as stack:
        assert gpu_levers._enter_together(stack, [server("1"), server("2")]) == ["127.0.0.1:1", "127.0.0.1:2"]
        assert stopped == []
    assert sorted(stopped) == ["1", "2"]

    started.clear()
    stopped.clear()
    with pytest.raises(RuntimeError, match="2 exited"), contextlib.ExitStack() as stack:
        gpu_levers._enter_together(stack, [server("1"), server("2", fail=True)])
    assert started == ["1"] and stopped == ["1"]  # the one that came up is stopped, not leaked
