"""A micro-batching scheduler: many concurrent single items → one batched call.

:class:`MicroBatcher` knows nothing of gRPC, ONNX or Milvus. It is given a
``run_batch(items) -> results`` function and calls it from one worker thread
with lists of queued items. Rules (after Triton's dynamic batcher, TEI's queue
and Ray Serve's ``@serve.batch``):

* A batch runs when ``max_batch_size`` items are queued, or ``max_delay``
  after the *oldest* queued item arrived, whichever is first. Under load the
  queue fills while the previous batch runs, so the next batch leaves at once.
* Waiting only pays when company is on its way. Callers may
  :meth:`~MicroBatcher.announce` items they are still preparing (decoding,
  resizing). With ``adaptive=True`` the worker waits for company only while
  announced items are outstanding, so a lone request at low load runs at once
  instead of paying ``max_delay`` for nothing; with ``adaptive=False`` it
  always waits (Triton's rule).
* Nor does waiting pay while another worker is idle (``adaptive=True``, more
  than one worker): the company, when it comes, can run on that worker at
  once, side by side, instead of after a wait on this one. So a worker waits
  only when it is the last one free; until then items run as they come, and
  batches form from what queues while every worker is busy. Likewise items
  queued while workers are idle are shared among them (``n`` queued, ``f``
  free: a run takes at most ``ceil(n / f)``), not run as one batch on one.
  Under load no worker is idle and batches are as large as the plan allows.
* The queue is bounded: :meth:`MicroBatcher.submit` raises
  :class:`~lookalike_server.errors.Overloaded` at once when it is full, rather
  than letting latency grow without bound.
* Items whose caller cancelled (``Future.cancel()``) or whose deadline passed
  are dropped before running, so dead work never costs inference time.
* One exception from ``run_batch`` fails exactly that batch's futures; a result
  count that does not match the batch is such an exception.
* How many of the queued items one run takes is ``max_batch_size`` or what is
  queued, whichever is less, unless a ``take`` rule says fewer (the model's
  :class:`~lookalike_server.autotune.BatchPlan`: on a CPU, running 4 of 5
  queued items can cost less per image than padding 5 up to 8).
* One worker thread per batcher by default: a CUDA session runs one batch at
  a time anyway. On a CPU with cores to spare, ``workers`` threads take
  batches from the same queue and run them side by side (ONNX Runtime's
  ``run`` is thread-safe); every queue decision is made under one lock, so
  two workers never take the same item.
* A batch is *alone* when, as it is taken, no other worker is running one,
  nothing is left queued and no announced item is on its way. A batcher
  given ``run_alone`` calls it instead of ``run_batch`` for such a batch: a
  model can then run it on every core (a wide ONNX Runtime session), while
  batches that run side by side share the cores. The batcher only reports
  the situation; which resources a batch gets is the caller's choice.

Padding a batch up to a warmed bucket size is the model's business
(:func:`lookalike_server.models.bucket_for`, :meth:`OnnxModel.embed_batch`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lookalike_server.errors import DeadlineExceeded, InternalError, Overloaded, ShuttingDown
from lookalike_server.thread_names import name_os_thread

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Batched(Generic[R]):
    """A result plus where its time went.

    Attributes:
        value: What ``run_batch`` returned for this item.
        queue_s: Seconds from submit until its batch started.
        run_s: Seconds its batch took in ``run_batch``.
        batch_size: Number of real items in its batch.
    """

    value: R
    queue_s: float
    run_s: float
    batch_size: int


@dataclass
class BatcherStats:
    """Counters since start (or the last reset). Read with :meth:`MicroBatcher.stats`."""

    batch_sizes: dict[int, int] = field(default_factory=dict)
    batches: int = 0
    items: int = 0
    rejected: int = 0
    expired: int = 0
    cancelled: int = 0
    failed_batches: int = 0
    alone_batches: int = 0
    queue_s_sum: float = 0.0
    run_s_sum: float = 0.0
    queue_depth: int = 0


@dataclass
class _Request(Generic[T, R]):
    item: T
    future: Future[Batched[R]]
    enqueued: float
    deadline: float | None


class MicroBatcher(Generic[T, R]):
    """Merges concurrent submissions into batched calls of ``run_batch``.

    Args:
        name: For logs and stats (e.g. the model name).
        run_batch: Called from the worker thread with 1..max_batch_size items;
            must return one result per item, in order.
        max_batch_size: Largest batch; 1 turns batching off.
        max_delay_s: How long the oldest item may wait for company.
        queue_size: Items that may wait; more are rejected with ``Overloaded``.
        adaptive: Wait ``max_delay`` only while announced items are on their way.
        clock: Monotonic clock, injectable for tests.
        thread_init: Called first in each worker thread (e.g. to lower its priority).
        take: ``take(n)`` = how many of ``n`` queued items (``n <= max_batch_size``)
            one run takes; None = all of them.
        workers: Worker threads taking batches from the queue.
        run_alone: Called instead of ``run_batch`` for a batch that is alone
            (see the module docstring); None = always ``run_batch``.
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_delay_s: float,
        queue_size: int,
        adaptive: bool = False,
        clock: Callable[[], float] = time.monotonic,
        thread_init: Callable[[], None] | None = None,
        take: Callable[[int], int] | None = None,
        workers: int = 1,
        run_alone: Callable[[list[T]], Sequence[R]] | None = None,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_delay_s < 0 or workers < 1:
            raise ValueError("max_batch_size, queue_size and workers must be >= 1, max_delay_s >= 0")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.queue_size = queue_size
        self.adaptive = adaptive
        self._run_batch = run_batch
        self._run_alone = run_alone
        self._running = 0  # workers between taking a batch and finishing it
        self._clock = clock
        self._queue: collections.deque[_Request[T, R]] = collections.deque()
        self._cond = threading.Condition()
        self._stats = BatcherStats()
        self._baseline = BatcherStats()
        self._announced = 0
        self._closing = False
        self._thread_init = thread_init
        self._take = take
        self._workers = [
            threading.Thread(target=self._loop, name=f"batcher-{name}-{i}", daemon=True) for i in range(workers)
        ]
        for w in self._workers:
            w.start()

    # ------------------------------------------------------------ public --
    def announce(self, n: int = 1) -> None:
        """Says ``n`` items will be submitted soon (e.g. they are being decoded).

        Each announcement must later be matched by a ``submit(...,
        announced=True)`` or a :meth:`withdraw`.
        """
        with self._cond:
            self._announced += n

    def withdraw(self, n: int = 1) -> None:
        """Takes back announcements whose items will not come (failed, cancelled)."""
        with self._cond:
            self._announced = max(0, self._announced - n)
            if self._announced == 0:
                self._cond.notify()

    def submit(self, item: T, *, deadline: float | None = None, announced: bool = False) -> Future[Batched[R]]:
        """Queues one item.

        Args:
            item: What ``run_batch`` will receive in its list.
            deadline: Absolute time on this batcher's clock after which the
                item is not worth running; None = no deadline.
            announced: The item was announced; its announcement is consumed
                (also when the submit is refused).

        Returns:
            A future resolving to a :class:`Batched` result. Cancelling it
            before its batch starts drops the item.

        Raises:
            Overloaded: The queue is full.
            ShuttingDown: The batcher is closing.
        """
        future: Future[Batched[R]] = Future()
        with self._cond:
            if announced:
                self._announced = max(0, self._announced - 1)
            if self._closing:
                raise ShuttingDown(f"model {self.name!r} is shutting down; retry on another replica")
            if len(self._queue) >= self.queue_size:
                self._stats.rejected += 1
                raise Overloaded(
                    f"model {self.name!r} is overloaded: {len(self._queue)} images already queued "
                    f"(limit {self.queue_size}); retry with backoff"
                )
            self._queue.append(_Request(item, future, self._clock(), deadline))
            # Wake the worker only when its decision can change: it sleeps
            # for the first item, for a full batch, or for the last item it
            # was told to expect.
            if len(self._queue) == 1 or len(self._queue) >= self.max_batch_size or self._announced == 0:
                self._cond.notify()
        return future

    def stats(self, reset: bool = False) -> BatcherStats:
        """Counters since the last reset; ``reset`` starts a new window atomically.

        The counters themselves never go down (see :meth:`totals`): a reset
        only moves the window's baseline, so monitoring keeps monotonic values.
        """
        with self._cond:
            totals = self._snapshot()
            window = _minus(totals, self._baseline)
            if reset:
                self._baseline = totals
        return window

    def totals(self) -> BatcherStats:
        """Monotonic counters since start (for Prometheus-style scraping)."""
        with self._cond:
            return self._snapshot()

    def _snapshot(self) -> BatcherStats:
        snap = BatcherStats(**{**vars(self._stats), "batch_sizes": dict(self._stats.batch_sizes)})
        snap.queue_depth = len(self._queue)
        return snap

    @property
    def queue_depth(self) -> int:
        """Items waiting now."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stops taking items, runs what is queued, and joins the worker.

        Args:
            timeout: Seconds to wait for the queue to drain; items still
                queued after that fail with ``ShuttingDown``.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        end = None if timeout is None else time.monotonic() + timeout
        for w in self._workers:
            w.join(None if end is None else max(0.0, end - time.monotonic()))
        with self._cond:
            leftovers = list(self._queue)
            self._queue.clear()
        for req in leftovers:
            if req.future.set_running_or_notify_cancel():
                req.future.set_exception(ShuttingDown(f"model {self.name!r} shut down before this ran"))

    # ------------------------------------------------------------ worker --
    def _next_batch(self) -> tuple[list[_Request[T, R]], bool] | None:
        """Blocks until a batch is due: the batch and whether it is alone; None when closing, queue empty.

        A returned batch counts as running until :meth:`_run` has its results.
        """
        with self._cond:
            while True:
                while not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                # The oldest item sets the clock; under load it has usually
                # waited long enough already and we leave without sleeping.
                # Wait only while announced items are still on their way:
                # with none coming, waiting would add latency and merge nothing.
                # And, adaptive, only as the last free worker: with another
                # idle, the company can run there as soon as it comes.
                if (
                    len(self._queue) < self.max_batch_size
                    and not self._closing
                    and (not self.adaptive or (self._announced > 0 and self._running >= len(self._workers) - 1))
                ):
                    remaining = self._queue[0].enqueued + self.max_delay_s - self._clock()
                    if remaining > 0:
                        self._cond.wait(remaining)
                        # Look again from the top: with several workers,
                        # another may have taken the queue meanwhile.
                        continue
                n = min(self.max_batch_size, len(self._queue))
                free = len(self._workers) - self._running  # this worker included
                if self.adaptive and free > 1:
                    # Share what is queued with the idle workers: side by
                    # side, the items finish sooner than in one batch here.
                    n = min(n, -(-len(self._queue) // free))
                if self._take is not None:
                    n = max(1, min(n, self._take(n)))
                batch = [self._queue.popleft() for _ in range(n)]
                if self._queue:
                    # Items left behind (by the take rule, or past a full
                    # batch) are another worker's next batch, or this one's.
                    self._cond.notify()
                # Decided under the lock that every worker takes batches
                # under, so two workers never both believe they are alone.
                alone = not self._queue and self._running == 0 and self._announced == 0
                self._running += 1
                return batch, alone

    def _loop(self) -> None:
        name_os_thread()
        if self._thread_init is not None:
            self._thread_init()
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            self._run(*taken)

    def _run(self, batch: list[_Request[T, R]], alone: bool = False) -> None:
        """Runs one taken batch; the worker counts as running until its results are known."""
        now = self._clock()
        live: list[_Request[T, R]] = []
        expired = cancelled = 0
        results: Sequence[R] = ()
        error: Exception | None = None
        started, run_s = now, 0.0
        alone = alone and self._run_alone is not None
        released = False
        try:
            for req in batch:
                # set_running_or_notify_cancel() is the race-free hand-off: after
                # it returns True the caller can no longer cancel this future.
                if not req.future.set_running_or_notify_cancel():
                    cancelled += 1
                elif req.deadline is not None and now >= req.deadline:
                    expired += 1
                    req.future.set_exception(
                        DeadlineExceeded(
                            f"deadline passed after {(now - req.enqueued) * 1e3:.1f} ms in the {self.name!r} queue"
                        )
                    )
                else:
                    live.append(req)
            if live:
                started = self._clock()
                run = self._run_alone if alone and self._run_alone is not None else self._run_batch
                try:
                    results = run([r.item for r in live])
                    if len(results) != len(live):
                        raise InternalError(
                            f"batch function of {self.name!r} returned {len(results)} results for {len(live)} items"
                        )
                except Exception as exc:
                    log.exception("batch of %d failed in %s", len(live), self.name)
                    error = exc
                run_s = self._clock() - started
            # The worker is free (and the counters final) before any caller
            # hears of its result: a caller's next request must find it so.
            with self._cond:
                self._running -= 1
                released = True
                st = self._stats
                st.expired += expired
                st.cancelled += cancelled
                if error is not None:
                    st.failed_batches += 1
                elif live:
                    st.batches += 1
                    st.alone_batches += alone
                    st.items += len(live)
                    st.batch_sizes[len(live)] = st.batch_sizes.get(len(live), 0) + 1
                    st.run_s_sum += run_s
                    st.queue_s_sum += sum(started - r.enqueued for r in live)
        finally:
            if not released:  # a BaseException (not an Exception) from run_batch
                with self._cond:
                    self._running -= 1
        if error is not None:
            for req in live:
                req.future.set_exception(error)
            return
        for req, value in zip(live, results, strict=True):
            req.future.set_result(Batched(value, started - req.enqueued, run_s, len(live)))


def _minus(a: BatcherStats, b: BatcherStats) -> BatcherStats:
    """Counters of ``a`` less ``b`` (``queue_depth`` is taken from ``a``)."""
    sizes = {k: v - b.batch_sizes.get(k, 0) for k, v in a.batch_sizes.items()}
    out = BatcherStats(**{k: getattr(a, k) - getattr(b, k) for k in vars(a) if k not in ("batch_sizes", "queue_depth")})
    out.batch_sizes = {k: v for k, v in sizes.items() if v}
    out.queue_depth = a.queue_depth
    return out
