"""Worker threads run below the front door: per-thread nice values on Linux."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lookalike_server.batching import MicroBatcher
from lookalike_server.config import BatchingConfig
from lookalike_server.embedder import FairExecutor
from lookalike_server.models import OnnxModel
from lookalike_server.priority import lower_this_thread, run_lowered, thread_nice
from lookalike_server.registry_reader import load_registry
from tests.unit.test_models import CPU, entry, write_registry

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")


def task_nices() -> dict[int, int]:
    """Nice value of every thread of this process, by thread id (/proc stat field 19)."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            out[int(task.name)] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
        except (OSError, ValueError, IndexError):
            continue
    return out


def in_thread(fn):
    box = []
    t = threading.Thread(target=lambda: box.append(fn()))
    t.start()
    t.join()
    return box[0]


def test_lowering_one_thread_leaves_the_others() -> None:
    base = thread_nice()
    assert base is not None

    def lowered() -> int | None:
        lower_this_thread(3)
        return thread_nice()

    assert in_thread(lowered) == min(19, base + 3)
    assert thread_nice() == base  # the caller (the front door) keeps its priority
    assert os.getpriority(os.PRIO_PROCESS, 0) == base


def test_threads_created_under_run_lowered_inherit_it_and_errors_come_back() -> None:
    base = thread_nice()
    assert base is not None
    assert run_lowered(4, lambda: in_thread(thread_nice)) == min(19, base + 4)
    assert thread_nice() == base
    with pytest.raises(ZeroDivisionError):
        run_lowered(4, lambda: 1 / 0)
    assert run_lowered(0, thread_nice) == base  # 0: runs right here


def test_decoding_and_batching_threads_run_lowered() -> None:
    base = thread_nice()
    assert base is not None

    def init() -> None:
        lower_this_thread(5)

    pool = FairExecutor(2, "test-preprocess", init)
    try:
        assert {pool.submit(i, thread_nice).result(5) for i in range(4)} == {min(19, base + 5)}
    finally:
        pool.shutdown()
    batcher: MicroBatcher[int, int | None] = MicroBatcher(
        "t", lambda xs: [thread_nice() for _ in xs], max_batch_size=2, max_delay_s=0.0, queue_size=4, thread_init=init
    )
    try:
        assert batcher.submit(1).result(5).value == min(19, base + 5)
    finally:
        batcher.close()


def test_onnx_runtime_pool_threads_inherit_the_session_creators_priority(tmp_path: Path) -> None:
    base = thread_nice()
    assert base is not None
    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(max_batch_size=2))
    OnnxModel(spec, CPU, intra_op_threads=1)  # ORT's own process-wide threads start on first use
    before = set(task_nices())
    model = OnnxModel(spec, CPU, intra_op_threads=2, worker_nice=6)
    new = {tid: nice for tid, nice in task_nices().items() if tid not in before}
    assert new, "ONNX Runtime started no intra-op thread"
    assert set(new.values()) == {min(19, base + 6)}
    out = model.embed_batch([np.zeros((3, 224, 224), np.float32)])
    assert len(out) == 1
