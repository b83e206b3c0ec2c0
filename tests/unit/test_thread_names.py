"""The server's threads carry their names to the OS, where top -H, perf and /proc read them."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from lookalike_server.batching import MicroBatcher
from lookalike_server.embedder import FairExecutor
from lookalike_server.thread_names import name_os_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl names are Linux's")


def os_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


def test_a_thread_gets_its_python_name_cut_to_the_kernels_15_bytes() -> None:
    seen: list[str] = []

    def run() -> None:
        before = os_name()
        name_os_thread()
        seen.extend([before, os_name()])

    t = threading.Thread(target=run, name="a-rather-long-thread-name")
    t.start()
    t.join()
    assert seen[0] != "a-rather-long-t"  # not named before the call
    assert seen[1] == "a-rather-long-t"


def test_decoding_and_batch_workers_are_named_as_in_python() -> None:
    pool = FairExecutor(1, "preprocess")
    try:
        assert pool.submit("k", os_name).result(timeout=5) == "preprocess-0"
    finally:
        pool.shutdown()
    batcher = MicroBatcher(
        "m", lambda items: [os_name() for _ in items], max_batch_size=1, max_delay_s=0.0, queue_size=4
    )
    try:
        assert batcher.submit(None).result(timeout=5).value == "batcher-m-0"
    finally:
        batcher.close()
