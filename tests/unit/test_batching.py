"""MicroBatcher: merging, flushing, admission control, cancellation, failures."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from lookalike_server.batching import MicroBatcher
from lookalike_server.errors import DeadlineExceeded, InternalError, Overloaded, ShuttingDown


class GatedRunner:
    """A batch function that records batches and can be held closed."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(list(items))
        return [i * 10 for i in items]


def make(runner, **kw) -> MicroBatcher[int, int]:
    opts = {"max_batch_size": 8, "max_delay_s": 0.05, "queue_size": 100} | kw
    return MicroBatcher("test", runner, **opts)


def test_single_item_runs_alone_after_the_delay():
    runner = GatedRunner()
    b = make(runner)
    try:
        res = b.submit(4).result(5)
        assert res.value == 40
        assert res.batch_size == 1
        assert runner.batches == [[4]]
    finally:
        b.close()


def test_items_queued_while_a_batch_runs_are_merged_into_the_next():
    runner = GatedRunner()
    runner.gate.clear()
    b = make(runner, max_batch_size=8, max_delay_s=0.0)
    try:
        first = b.submit(0)
        assert runner.entered.wait(5)  # worker is inside batch [0], blocked
        futures = [b.submit(i) for i in range(1, 6)]
        runner.gate.set()
        assert first.result(5).value == 0
        results = [f.result(5) for f in futures]
        assert [r.value for r in results] == [10, 20, 30, 40, 50]
        assert runner.batches == [[0], [1, 2, 3, 4, 5]]
        assert {r.batch_size for r in results} == {5}
        stats = b.stats()
        assert stats.batch_sizes == {1: 1, 5: 1}
        assert stats.items == 6 and stats.batches == 2
    finally:
        b.close()


def test_full_batch_leaves_without_waiting_for_the_delay():
    runner = GatedRunner()
    runner.gate.clear()
    # A delay far longer than the test's timeout: only the size rule can flush.
    b = make(runner, max_batch_size=4, max_delay_s=60.0)
    try:
        futures = [b.submit(i) for i in range(4)]
        runner.gate.set()
        assert [f.result(5).value for f in futures] == [0, 10, 20, 30]
        assert runner.batches == [[0, 1, 2, 3]]
    finally:
        b.close()


def test_batches_never_exceed_max_batch_size():
    runner = GatedRunner()
    runner.gate.clear()
    b = make(runner, max_batch_size=3, max_delay_s=0.0)
    try:
        futures = [b.submit(i) for i in range(10)]
        runner.gate.set()
        assert [f.result(5).value for f in futures] == [i * 10 for i in range(10)]
        assert all(1 <= len(batch) <= 3 for batch in runner.batches)
        assert sorted(i for batch in runner.batches for i in batch) == list(range(10))
    finally:
        b.close()


def test_full_queue_rejects_at_once():
    runner = GatedRunner()
    runner.gate.clear()
    b = make(runner, max_batch_size=1, max_delay_s=0.0, queue_size=2)
    try:
        b.submit(0)
        assert runner.entered.wait(5)  # item 0 is running, queue empty
        b.submit(1)
        b.submit(2)
        with pytest.raises(Overloaded, match="overloaded"):
            b.submit(3)
        assert b.stats().rejected == 1
    finally:
        runner.gate.set()
        b.close()


def test_cancelled_items_are_dropped_before_running():
    runner = GatedRunner()
    runner.gate.clear()
    b = make(runner, max_batch_size=8, max_delay_s=0.0)
    try:
        b.submit(0)
        assert runner.entered.wait(5)
        keep = b.submit(1)
        dropped = b.submit(2)
        assert dropped.cancel()
        runner.gate.set()
        assert keep.result(5).value == 10
        with pytest.raises(CancelledError):
            dropped.result(5)
        assert [2] not in runner.batches and all(2 not in batch for batch in runner.batches)
        assert b.stats().cancelled == 1
    finally:
        b.close()


def test_expired_items_fail_with_deadline_exceeded_and_do_not_run():
    runner = GatedRunner()
    runner.gate.clear()
    b = make(runner, max_batch_size=8, max_delay_s=0.0)
    try:
        b.submit(0)
        assert runner.entered.wait(5)
        late = b.submit(7, deadline=time.monotonic() + 0.01)
        ok = b.submit(8, deadline=time.monotonic() + 60)
        time.sleep(0.05)
        runner.gate.set()
        with pytest.raises(DeadlineExceeded, match="deadline"):
            late.result(5)
        assert ok.result(5).value == 80
        assert all(7 not in batch for batch in runner.batches)
        assert b.stats().expired == 1
    finally:
        b.close()


def test_an_exception_fails_exactly_its_batch():
    calls = []

    def flaky(items: list[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise ValueError("boom")
        return items

    b = MicroBatcher("flaky", flaky, max_batch_size=1, max_delay_s=0.0, queue_size=10)
    try:
        bad = b.submit(13)
        good = b.submit(2)
        with pytest.raises(ValueError, match="boom"):
            bad.result(5)
        assert good.result(5).value == 2
        assert b.stats().failed_batches == 1
    finally:
        b.close()


def test_result_count_mismatch_fails_the_batch():
    b = MicroBatcher("short", lambda items: items[:-1], max_batch_size=4, max_delay_s=0.0, queue_size=10)
    try:
        with pytest.raises(InternalError, match="returned 0 results for 1 items"):
            b.submit(1).result(5)
    finally:
        b.close()


def test_close_drains_queued_work_then_refuses_new_items():
    runner = GatedRunner()
    runner.gate.clear()
    b = make(runner, max_batch_size=2, max_delay_s=0.0)
    first = b.submit(0)
    assert runner.entered.wait(5)
    queued = [b.submit(i) for i in (1, 2, 3)]
    closer = threading.Thread(target=b.close, kwargs={"timeout": 10})
    closer.start()
    time.sleep(0.05)
    with pytest.raises(ShuttingDown):
        b.submit(9)
    runner.gate.set()
    closer.join(10)
    assert first.result(1).value == 0
    assert [f.result(1).value for f in queued] == [10, 20, 30]


def test_batching_off_runs_one_at_a_time():
    runner = GatedRunner()
    b = make(runner, max_batch_size=1)
    try:
        futures = [b.submit(i) for i in range(5)]
        assert [f.result(5).batch_size for f in futures] == [1] * 5
        assert runner.batches == [[0], [1], [2], [3], [4]]
    finally:
        b.close()


def test_stats_reset_zeroes_counters():
    b = make(GatedRunner())
    try:
        b.submit(1).result(5)
        assert b.stats(reset=True).items == 1
        assert b.stats().items == 0
    finally:
        b.close()


def test_adaptive_lone_item_does_not_wait_for_company():
    runner = GatedRunner()
    # A delay far beyond the test's timeout: only "nobody is coming" can flush.
    b = make(runner, max_delay_s=60.0, adaptive=True)
    try:
        assert b.submit(1).result(5).value == 10
    finally:
        b.close()


def test_adaptive_batch_is_held_open_for_announced_items():
    runner = GatedRunner()
    b = make(runner, max_delay_s=60.0, adaptive=True)
    try:
        b.announce(2)
        first = b.submit(1, announced=True)
        time.sleep(0.1)
        assert not first.done()  # the second announced item is still coming
        second = b.submit(2, announced=True)
        assert first.result(5).batch_size == 2 and second.result(5).value == 20
        assert runner.batches == [[1, 2]]
    finally:
        b.close()


def test_adaptive_withdrawn_announcement_releases_the_batch():
    runner = GatedRunner()
    b = make(runner, max_delay_s=60.0, adaptive=True)
    try:
        b.announce(2)
        first = b.submit(1, announced=True)
        time.sleep(0.05)
        assert not first.done()
        b.withdraw(1)  # the other image failed to decode
        assert first.result(5).batch_size == 1
    finally:
        b.close()


def test_non_adaptive_waits_for_the_delay_even_alone():
    runner = GatedRunner()
    b = make(runner, max_delay_s=0.3, adaptive=False)
    try:
        started = time.monotonic()
        b.submit(1).result(5)
        assert time.monotonic() - started >= 0.3
    finally:
        b.close()


def test_stats_reset_moves_the_window_but_totals_stay_monotonic():
    b = make(GatedRunner(), max_batch_size=1)
    try:
        for i in range(3):
            b.submit(i).result(5)
        assert b.stats(reset=True).batch_sizes == {1: 3}
        b.submit(9).result(5)
        window, totals = b.stats(), b.totals()
        assert window.items == 1 and window.batch_sizes == {1: 1}
        assert totals.items == 4 and totals.batch_sizes == {1: 4}
    finally:
        b.close()


def test_take_rule_runs_fewer_than_queued_and_the_rest_next():
    runner = GatedRunner()
    runner.gate.clear()
    # As a CPU plan with buckets (1, 4): of 5 queued, run 4, then 1.
    b = make(runner, max_batch_size=4, max_delay_s=0.0, take=lambda n: 4 if n >= 4 else 1)
    try:
        first = b.submit(0)
        assert runner.entered.wait(5)
        futures = [b.submit(i) for i in range(1, 6)]
        runner.gate.set()
        assert first.result(5).value == 0
        assert [f.result(5).value for f in futures] == [10, 20, 30, 40, 50]
        assert runner.batches == [[0], [1, 2, 3, 4], [5]]
    finally:
        b.close()


def test_two_workers_run_batches_side_by_side():
    both_inside = threading.Barrier(2, timeout=10)
    seen: list[list[int]] = []
    lock = threading.Lock()

    def run(items: list[int]) -> list[int]:
        # Returns only once two batches are inside at the same time: with a
        # single worker this would time out and fail the batch.
        both_inside.wait()
        with lock:
            seen.append(list(items))
        return items

    b = MicroBatcher("test", run, max_batch_size=1, max_delay_s=0.0, queue_size=10, workers=2)
    try:
        futures = [b.submit(i) for i in range(2)]
        assert sorted(f.result(10).value for f in futures) == [0, 1]
        assert sorted(seen) == [[0], [1]]
        assert b.stats().batches == 2
    finally:
        b.close()


def test_adaptive_item_does_not_wait_for_company_while_another_worker_is_idle():
    runner = GatedRunner()
    # Company is announced, but the other worker is free to run it when it
    # comes: waiting (60 s here) would only delay this item.
    b = make(runner, max_delay_s=60.0, adaptive=True, workers=2)
    try:
        b.announce(1)
        first = b.submit(1)
        assert first.result(5).batch_size == 1
        second = b.submit(2, announced=True)
        assert second.result(5).batch_size == 1
        assert sorted(runner.batches) == [[1], [2]]
    finally:
        b.close()


def test_adaptive_last_free_worker_waits_for_announced_company():
    runner = GatedRunner()
    runner.gate.clear()
    b = make(runner, max_delay_s=60.0, adaptive=True, workers=2)
    try:
        busy = b.submit(0)
        assert runner.entered.wait(5)  # worker 1 holds [0]
        b.announce(2)
        first = b.submit(1, announced=True)
        time.sleep(0.1)
        # Worker 2 is the last one free: it holds [1] open for the company
        # instead of taking it (the runner's closed gate would hide a take).
        assert b.queue_depth == 1
        second = b.submit(2, announced=True)
        # The pair is taken before worker 1 is let go: a free worker 1 would
        # (rightly) share the queue with worker 2 instead.
        deadline = time.monotonic() + 5
        while b.queue_depth and time.monotonic() < deadline:
            time.sleep(0.001)
        runner.gate.set()
        assert first.result(5).batch_size == 2 and second.result(5).value == 20
        assert busy.result(5).value == 0
        assert sorted(runner.batches) == [[0], [1, 2]]
    finally:
        b.close()


def test_adaptive_items_queued_while_workers_are_idle_are_shared_among_them():
    both_inside = threading.Barrier(2, timeout=10)
    seen: list[list[int]] = []
    lock = threading.Lock()
    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        with lock:
            seen.append(list(items))
        if items[0] == 0:
            release.wait(10)  # [0] keeps worker 1 busy while 1..4 queue up
            return items
        both_inside.wait()  # fails unless two batches of the four run at once
        return items

    b = MicroBatcher("test", run, max_batch_size=8, max_delay_s=0.0, queue_size=10, workers=3, adaptive=True)
    try:
        first = b.submit(0)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.001)
        # Queue four at once, as if decoded together: no worker can take
        # one while the batcher's lock is held (it is reentrant).
        with b._cond:
            futures = [b.submit(i) for i in range(1, 5)]
        assert sorted(f.result(10).value for f in futures) == [1, 2, 3, 4]
        release.set()
        assert first.result(5).value == 0
        # Two free workers, four queued: two each, not one batch of four.
        assert sorted(len(s) for s in seen[1:]) == [2, 2]
    finally:
        release.set()
        b.close()


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers"):
        MicroBatcher("test", lambda items: items, max_batch_size=1, max_delay_s=0.0, queue_size=1, workers=0)


def test_workers_waiting_for_the_same_batch_do_not_trip_over_each_other():
    # Both workers wait out the delay for the same lone item; the one that
    # loses the race must go back to waiting, not take from an empty queue.
    b = MicroBatcher(
        "test",
        lambda items: items,
        max_batch_size=8,
        max_delay_s=0.02,
        queue_size=10,
        workers=2,
        adaptive=False,
        take=lambda n: n,
    )
    try:
        for i in range(5):
            # The second submit wakes the second worker into the same wait.
            pair = [b.submit(2 * i), b.submit(2 * i + 1)]
            assert [f.result(5).value for f in pair] == [2 * i, 2 * i + 1]
        assert all(w.is_alive() for w in b._workers)
        assert b.stats().items == 10
    finally:
        b.close()


# ------------------------------------------------------------- alone rule --


class TwoWayRunner:
    """A fake model: records which function ran each batch; the first batch can be held."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def _record(self, how: str, items: list[int]) -> list[int]:
        with self._lock:
            first = not self.calls
            self.calls.append((how, list(items)))
        if first:
            self.entered.set()
            self.gate.wait(10)
        return [i * 10 for i in items]

    def narrow(self, items: list[int]) -> list[int]:
        return self._record("narrow", items)

    def alone(self, items: list[int]) -> list[int]:
        return self._record("alone", items)


def make_two_way(runner: TwoWayRunner, **kw) -> MicroBatcher[int, int]:
    opts = {"max_batch_size": 1, "max_delay_s": 0.0, "queue_size": 100, "run_alone": runner.alone} | kw
    return MicroBatcher("test", runner.narrow, **opts)


def test_a_lone_item_runs_alone_and_is_counted():
    runner = TwoWayRunner()
    b = make_two_way(runner)
    try:
        for i in range(3):  # one after another: each finds the batcher idle
            assert b.submit(i).result(5).value == i * 10
        assert runner.calls == [("alone", [0]), ("alone", [1]), ("alone", [2])]
        st = b.stats()
        assert (st.batches, st.alone_batches) == (3, 3)
    finally:
        b.close()


def test_a_batch_leaving_items_queued_is_not_alone_and_the_last_one_is():
    runner = TwoWayRunner()
    runner.gate.clear()
    b = make_two_way(runner)
    try:
        first = b.submit(0)
        assert runner.entered.wait(5)  # [0] runs alone, held
        later = [b.submit(1), b.submit(2)]
        runner.gate.set()
        assert [f.result(5).value for f in (first, *later)] == [0, 10, 20]
        # [1] was taken with [2] still queued; [2] with nothing left and nobody running.
        assert runner.calls == [("alone", [0]), ("narrow", [1]), ("alone", [2])]
        assert b.stats().alone_batches == 2
    finally:
        b.close()


def test_a_batch_taken_while_another_worker_runs_is_not_alone():
    runner = TwoWayRunner()
    runner.gate.clear()
    b = make_two_way(runner, workers=2)
    try:
        first = b.submit(0)
        assert runner.entered.wait(5)  # worker 1 holds [0]
        second = b.submit(1)
        assert second.result(5).value == 10  # worker 2 ran it beside [0]
        runner.gate.set()
        assert first.result(5).value == 0
        assert runner.calls == [("alone", [0]), ("narrow", [1])]
    finally:
        b.close()


def test_a_batch_is_not_alone_while_announced_items_are_on_their_way():
    runner = TwoWayRunner()
    b = make_two_way(runner)
    try:
        b.announce(2)
        assert b.submit(0, announced=True).result(5).value == 0  # one more is coming
        b.withdraw(1)  # it will not come after all
        assert b.submit(1).result(5).value == 10
        assert runner.calls == [("narrow", [0]), ("alone", [1])]
    finally:
        b.close()


def test_without_run_alone_every_batch_runs_on_run_batch_and_none_counts_alone():
    runner = TwoWayRunner()
    b = make_two_way(runner, run_alone=None)
    try:
        assert b.submit(3).result(5).value == 30
        assert runner.calls == [("narrow", [3])]
        assert b.stats().alone_batches == 0
    finally:
        b.close()


def test_counters_are_final_before_the_caller_hears_of_its_result():
    runner = TwoWayRunner()
    b = make_two_way(runner)
    try:
        for i in range(20):
            b.submit(i).result(5)
            st = b.totals()
            # Read at once after each result: never one batch behind.
            assert (st.batches, st.alone_batches) == (i + 1, i + 1)
    finally:
        b.close()
