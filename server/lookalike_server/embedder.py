"""Images → L2-normalised embeddings: preprocessing pool → micro-batcher → model.

An image searched or indexed under several models is decoded once; each
model then gets its own resize/normalise (on the pool) and its own batcher.
Every wait is bounded by the request's deadline, and every queued item is
tracked by the request context so a cancelled call drops its items.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, CancelledError, Future, InvalidStateError
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lookalike_server.admission import Admission
from lookalike_server.batching import Batched, BatcherStats, MicroBatcher
from lookalike_server.config import LimitsConfig
from lookalike_server.domain import RequestContext, Timing
from lookalike_server.errors import Cancelled, DeadlineExceeded, InvalidArgument, ModelNotFound, ServiceError
from lookalike_server.models import OnnxModel
from lookalike_server.preprocess import DecodePlan, PreprocessSpec, decode_image, plan_decodes, to_tensor
from lookalike_server.priority import lower_this_thread
from lookalike_server.thread_budget import usable_cores
from lookalike_server.thread_names import name_os_thread

log = logging.getLogger(__name__)


class FairExecutor:
    """A thread pool that serves its callers round robin, not first come first served.

    Each task is submitted under a key (one per request). Workers take the
    head task of the key that has waited longest, then move that key to the
    back of the line: a request with 64 huge images gets one worker turn per
    round, and another client's single small image is decoded after at most
    one task of each other request, not after all 64.

    Args:
        workers: Number of threads.
        name: Thread name prefix.
        thread_init: Called first in each worker thread (e.g. to lower its priority).
    """

    def __init__(self, workers: int, name: str, thread_init: Callable[[], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._queues: collections.OrderedDict[object, collections.deque[tuple[Future[Any], Callable[[], Any]]]] = (
            collections.OrderedDict()
        )
        self._closed = False
        self.tasks_run = 0
        self._thread_init = thread_init
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def submit(self, key: object, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queues ``fn(*args)`` in ``key``'s line; returns its future."""
        fut: Future[Any] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("executor is shut down")
            self._queues.setdefault(key, collections.deque()).append((fut, lambda: fn(*args)))
            self._cond.notify()
        return fut

    def _next(self) -> tuple[Future[Any], Callable[[], Any]] | None:
        with self._cond:
            while not self._queues:
                if self._closed:
                    return None
                self._cond.wait()
            key, line = next(iter(self._queues.items()))
            task = line.popleft()
            if line:
                self._queues.move_to_end(key)  # its next task waits for everyone else's turn
            else:
                del self._queues[key]
            return task

    def _work(self) -> None:
        name_os_thread()
        if self._thread_init is not None:
            self._thread_init()
        while (task := self._next()) is not None:
            fut, call = task
            if not fut.set_running_or_notify_cancel():
                continue  # the request was cancelled before its turn: no work done
            try:
                result = call()
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            finally:
                with self._cond:
                    self.tasks_run += 1
            del fut, call, task  # hold nothing between tasks (large images)

    def shutdown(self) -> None:
        """Cancels what is queued and lets the workers exit."""
        with self._cond:
            self._closed = True
            lines, self._queues = list(self._queues.values()), collections.OrderedDict()
            self._cond.notify_all()
        for line in lines:
            for fut, _ in line:
                fut.cancel()


@dataclass
class _Prepared:
    futures: dict[str, Future[Batched[np.ndarray]]]
    preprocess_s: float


@dataclass
class _Job:
    """One embed call's queued work.

    Attributes:
        outcomes: Per image, per model: a future settled with that embedding
            (or the error, or cancellation) when its batch run ends, or when
            the image fails before reaching the batcher.
        prepared: Per image queued so far: its decoding task.
    """

    outcomes: list[dict[str, Future[Batched[np.ndarray]]]]
    prepared: list[Future[_Prepared]] = field(default_factory=list)

    def outcome_futures(self) -> list[Future[Batched[np.ndarray]]]:
        """Every outcome, image by image."""
        return [f for per_image in self.outcomes for f in per_image.values()]

    def when_settled(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` once: when every outcome is settled, or as soon as one has failed."""
        futures = self.outcome_futures()
        latch = _Latch(len(futures), callback)
        for f in futures:
            f.add_done_callback(lambda f: latch.count(failed=not f.cancelled() and f.exception() is not None))

    def when_work_done(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` once, when every task and batch run this job queued has ended."""
        images = _Latch(len(self.prepared), callback)

        def image_done(prep: Future[_Prepared]) -> None:
            if prep.cancelled() or prep.exception() is not None:
                images.count()
                return
            runs = list(prep.result().futures.values())
            image = _Latch(len(runs), images.count)
            for f in runs:
                f.add_done_callback(lambda _f: image.count())

        for prep in self.prepared:
            prep.add_done_callback(image_done)

    def abort(self) -> None:
        """Leaves nothing queued, including what an image still decoding queues when it is done."""
        for fut in self.prepared:
            fut.cancel()
            fut.add_done_callback(_drop_batches)
        for f in self.outcome_futures():
            _settle(f, CancelledError())


class Embedder:
    """Owns one micro-batcher per model and the preprocessing pool.

    Args:
        models: Loaded models by name.
        limits: Byte/pixel limits applied when decoding.
        preprocess_threads: Pool size; 0 = number of usable cores.
        worker_nice: How much lower than the front door the decoding and
            batching threads run (see :mod:`lookalike_server.priority`).
        batch_workers: Threads running each model's batches side by side
            (see :mod:`lookalike_server.thread_budget`).
    """

    def __init__(
        self,
        models: Mapping[str, OnnxModel],
        limits: LimitsConfig,
        preprocess_threads: int = 0,
        worker_nice: int = 0,
        batch_workers: int = 1,
    ) -> None:
        self.models = dict(models)
        self.limits = limits
        lowered = functools.partial(lower_this_thread, worker_nice) if worker_nice else None
        self._pool = FairExecutor(preprocess_threads or usable_cores(), "preprocess", lowered)
        # Each model's batcher follows the plan its warm-up measured
        # (lookalike_server.autotune): largest batch, delay, how many to take.
        self.batchers: dict[str, MicroBatcher[np.ndarray, np.ndarray]] = {
            name: MicroBatcher(
                name,
                model.embed_batch,
                max_batch_size=model.plan.max_batch_size,
                max_delay_s=model.plan.max_delay_ms / 1000.0,
                queue_size=model.spec.batching.queue_size,
                adaptive=model.spec.batching.adaptive_delay,
                thread_init=lowered,
                take=model.plan.items_to_take,
                workers=batch_workers,
                # A batch with the machine to itself runs on the model's wide
                # session (every core), where the model kept one.
                run_alone=model.embed_batch_alone if model.wide_session is not None else None,
            )
            for name, model in self.models.items()
        }
        self.admission = Admission(
            limits,
            {
                name: limits.model_inflight_images or max(2 * model.max_batch_size, limits.max_images_per_request, 1)
                for name, model in self.models.items()
            },
            {name: model.spec.preprocess for name, model in self.models.items()},
        )

    def require(self, names: Sequence[str]) -> list[str]:
        """Validates model names (empty = all loaded), returning them deduplicated in order."""
        if not names:
            return list(self.models)
        out: list[str] = []
        for name in names:
            if name not in self.models:
                raise ModelNotFound(f"model {name!r} is not loaded; loaded models: {sorted(self.models)}")
            if name not in out:
                out.append(name)
        return out

    def embed(
        self, images: Sequence[bytes], models: Sequence[str], ctx: RequestContext
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """Embeds every image under every named model, waiting on this thread.

        Args:
            images: Encoded images.
            models: Loaded model names (validated by :meth:`require`).
            ctx: The request's deadline and cancellation.

        Returns:
            ``{model: (len(images), dim) float32}`` L2-normalised, and timing.

        Raises:
            InvalidArgument / TooLarge: An image is bad (message names which).
            Overloaded: A model's queue is full.
            DeadlineExceeded / Cancelled: The caller's deadline or cancellation.
        """
        job = self._start(images, models, ctx)
        try:
            remaining = ctx.remaining()
            wait_futures(job.outcome_futures(), timeout=_timeout(remaining), return_when=FIRST_EXCEPTION)
            return self._finish(job, ctx)
        except BaseException:
            job.abort()
            raise

    async def embed_async(
        self,
        images: Sequence[bytes],
        models: Sequence[str],
        ctx: RequestContext,
        work_done: Callable[[], None] | None = None,
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """:meth:`embed` for the event loop: the wait costs no thread.

        The loop is woken once, when every embedding is ready or one has
        failed: no thread hands the call over to another on the way in or
        out (Embed's latency at concurrency 1 is mostly such hand-overs once
        the work itself is done; see docs/performance.md).

        Args:
            images: Encoded images.
            models: Loaded model names (validated by :meth:`require`).
            ctx: The request's deadline and cancellation.
            work_done: Called once, from any thread, when every task and run
                this call queued has ended, even after the call itself has
                failed or been cancelled (admission permits are returned then);
                at once if nothing was queued.

        Returns and raises as :meth:`embed`.
        """
        job = self._start(images, models, ctx, work_done)
        try:
            loop = asyncio.get_running_loop()
            settled: asyncio.Future[None] = loop.create_future()
            job.when_settled(functools.partial(_wake, loop, settled))
            # The deadline settles the same future (_finish then says what is
            # unfinished): one future, one wake-up. asyncio.wait_for would add
            # a second future and an extra turn of the loop to every call.
            remaining = ctx.remaining()
            timer = None if remaining is None else loop.call_later(max(remaining, 0.0), _resolve, settled)
            try:
                await settled
            finally:
                if timer is not None:
                    timer.cancel()
            return self._finish(job, ctx)
        except BaseException:
            job.abort()
            raise

    def _start(
        self,
        images: Sequence[bytes],
        models: Sequence[str],
        ctx: RequestContext,
        work_done: Callable[[], None] | None = None,
    ) -> _Job:
        """Queues one decoding task per image; each queues its tensors on every model's batcher.

        ``work_done`` (if given) is called once when what was queued has
        ended, whether this returns or raises (at once if nothing was queued).
        """
        job: _Job | None = None
        try:
            ctx.check("preprocessing")
            specs = {m: self.models[m].spec.preprocess for m in models}
            # One decode per distinct decode setting (usually one for all models).
            plans = plan_decodes(specs)
            # One future per (image, model), settled when that embedding is
            # ready or has failed, so the caller wakes once, not once when
            # decoding ends and again when inference does: on 2 cores that
            # first wake-up came while a lone batch ran on the wide session,
            # which wants both cores.
            job = _Job([{m: Future() for m in models} for _ in images])
            # Tell each batcher these images are coming, so it holds a batch
            # open for them rather than for nobody (see MicroBatcher.announce).
            for m in models:
                self.batchers[m].announce(len(images))
            try:
                for i, data in enumerate(images):
                    # Keyed by the request: the pool serves requests round robin.
                    fut = self._pool.submit(ctx, self._prepare, i, data, specs, plans, ctx, job.outcomes[i])
                    fut.add_done_callback(functools.partial(self._prepared_done, specs, job.outcomes[i]))
                    job.prepared.append(ctx.track(fut))
            except BaseException:
                # The pool is shutting down: withdraw for the images never queued.
                self._withdraw(specs, len(images) - len(job.prepared))
                job.abort()
                raise
        except BaseException:
            if work_done is not None:
                if job is None:
                    work_done()
                else:
                    job.when_work_done(work_done)
            raise
        if work_done is not None:
            job.when_work_done(work_done)
        return job

    def _finish(self, job: _Job, ctx: RequestContext) -> tuple[dict[str, np.ndarray], Timing]:
        """After the wait: the first failed image's error, the deadline, or the embeddings."""
        errors = [
            exc for f in job.outcome_futures() if f.done() and not f.cancelled() and (exc := f.exception()) is not None
        ]
        # An image's own error first: a cancellation is often what it caused.
        for exc in errors:
            if not isinstance(exc, CancelledError):
                raise exc
        unfinished = sum(1 for per_image in job.outcomes if any(not f.done() for f in per_image.values()))
        if (errors or unfinished) and ctx.cancelled:
            raise Cancelled("the client cancelled the request")
        if unfinished:
            stage = "preprocessing" if any(not p.done() for p in job.prepared) else "inference"
            raise DeadlineExceeded(
                f"deadline exceeded during {stage} ({unfinished} of {len(job.outcomes)} images unfinished)"
            )
        if errors:  # cancelled, but not by the client: the deadline, or the server stopping
            raise DeadlineExceeded("deadline exceeded during inference")
        results = [{m: f.result() for m, f in per_image.items()} for per_image in job.outcomes]
        timing = Timing()
        # Every outcome is settled, so every image's task has queued its
        # tensors; the task's own future is at most a moment behind.
        for prep in job.prepared:
            timing.preprocess_ms = max(timing.preprocess_ms, prep.result().preprocess_s * 1e3)
        models = list(job.outcomes[0]) if job.outcomes else []
        out = {m: np.empty((len(job.outcomes), self.models[m].spec.dim), dtype=np.float32) for m in models}
        for i, image_results in enumerate(results):
            for m, res in image_results.items():
                out[m][i] = res.value
                timing.queue_ms = max(timing.queue_ms, res.queue_s * 1e3)
                timing.inference_ms = max(timing.inference_ms, res.run_s * 1e3)
                timing.batch_size = max(timing.batch_size, res.batch_size)
        return out, timing

    def _prepare(
        self,
        index: int,
        data: bytes,
        specs: Mapping[str, PreprocessSpec],
        plans: Sequence[DecodePlan],
        ctx: RequestContext,
        outcome: Mapping[str, Future[Batched[np.ndarray]]],
    ) -> _Prepared:
        """Pool task: decode once per plan, make each model's tensor, queue it.

        Each model's batch future settles ``outcome[model]`` when it does.
        """
        started = time.perf_counter()
        futures: dict[str, Future[Batched[np.ndarray]]] = {}
        try:
            try:
                tensors: dict[str, np.ndarray] = {}
                for plan in plans:
                    img = decode_image(
                        data,
                        max_bytes=self.limits.max_image_bytes,
                        max_pixels=self.limits.max_pixels,
                        draft_size=plan.draft_size,
                        max_aspect_ratio=self.limits.max_aspect_ratio,
                        exif_orientation=plan.exif_orientation,
                    )
                    tensors.update((m, to_tensor(img, specs[m])) for m in plan.models)
                # Batchers are fed in request order whatever the plans' order.
                tensors = {m: tensors[m] for m in specs}
            except ServiceError as exc:
                # Name the offending image: a request may carry dozens.
                raise type(exc)(f"image {index}: {exc.message}") from None
            elapsed = time.perf_counter() - started
            for m, tensor in tensors.items():
                futures[m] = ctx.track(self.batchers[m].submit(tensor, deadline=ctx.deadline, announced=True))
                futures[m].add_done_callback(functools.partial(_settle_from, outcome[m]))
        except BaseException as exc:
            # The image's own error settles its outcomes before its queued runs
            # are cancelled, so the caller is told the error, not "cancelled".
            for m in specs:
                _settle(outcome[m], exc)
            for f in futures.values():
                f.cancel()
            # Announcements of the models this image never reached.
            self._withdraw([m for m in specs if m not in futures], 1)
            raise
        return _Prepared(futures, elapsed)

    def _prepared_done(
        self,
        specs: Mapping[str, PreprocessSpec],
        outcome: Mapping[str, Future[Batched[np.ndarray]]],
        fut: Future[_Prepared],
    ) -> None:
        """An image's task ended: a failure or cancellation settles its outcomes.

        A task cancelled before it ran never announced-then-submitted, so its
        announcements are withdrawn here.
        """
        if fut.cancelled():
            self._withdraw(specs, 1)
            for f in outcome.values():
                _settle(f, CancelledError())
            return
        exc = fut.exception()
        if exc is not None:
            for f in outcome.values():
                _settle(f, exc)

    def _withdraw(self, models: Iterable[str], n: int) -> None:
        for m in models:
            self.batchers[m].withdraw(n)

    def stats(self, reset: bool = False) -> dict[str, BatcherStats]:
        """Each batcher's counters since the last reset."""
        return {name: b.stats(reset) for name, b in self.batchers.items()}

    def totals(self) -> dict[str, BatcherStats]:
        """Each batcher's monotonic counters since start."""
        return {name: b.totals() for name, b in self.batchers.items()}

    def close(self, timeout: float = 10.0) -> None:
        """Drains the batchers and stops the pool."""
        for b in self.batchers.values():
            b.close(timeout)
        self._pool.shutdown()

    @property
    def preprocessed(self) -> int:
        """Preprocessing tasks run since start (tests: a refused call runs none)."""
        return self._pool.tasks_run


def _timeout(remaining: float | None) -> float | None:
    """A wait's timeout from the deadline's remaining seconds (None: no deadline)."""
    return None if remaining is None else max(remaining, 0.0)


class _Latch:
    """Calls ``callback`` once: after ``n`` calls of :meth:`count` (at once if ``n`` is 0), or at the first failed one.

    Counts arrive from any thread (futures' done callbacks).
    """

    def __init__(self, n: int, callback: Callable[[], None]) -> None:
        self._left = n
        self._fired = n == 0
        self._callback = callback
        self._lock = threading.Lock()
        if self._fired:
            callback()

    def count(self, failed: bool = False) -> None:
        """One of the ``n`` has ended (``failed``: end the wait now)."""
        with self._lock:
            self._left -= 1
            if self._fired or (self._left and not failed):
                return
            self._fired = True
        self._callback()


def _resolve(settled: asyncio.Future[None]) -> None:
    """On the loop: ends the wait on ``settled`` (unless it has already ended)."""
    if not settled.done():
        settled.set_result(None)


def _wake(loop: asyncio.AbstractEventLoop, settled: asyncio.Future[None]) -> None:
    """From any thread: resolves ``settled`` on its loop (unless the wait has already ended)."""
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
        loop.call_soon_threadsafe(_resolve, settled)


def _drop_batches(prep: Future[_Prepared]) -> None:
    """Done callback: cancels what a finished image task queued (its request has failed)."""
    if not prep.cancelled() and prep.exception() is None:
        for f in prep.result().futures.values():
            f.cancel()


def _settle(dst: Future[Any], exc: BaseException | None = None, result: Any = None) -> None:
    """Sets ``dst``'s exception (or result) unless it is already settled.

    Two threads may race to settle one outcome (a batch finishing as its
    image's task fails on another model); the first one wins. Outcomes are
    never ``cancel()``-ed but settled with a ``CancelledError``: a plain
    future's ``cancel()`` does not wake ``concurrent.futures.wait`` (only an
    executor's ``set_running_or_notify_cancel`` does), so a waiter on a
    cancelled outcome would sleep until its deadline, or for ever.
    """
    try:
        if exc is not None:
            dst.set_exception(exc)
        else:
            dst.set_result(result)
    except InvalidStateError:
        pass


def _settle_from(dst: Future[Any], src: Future[Any]) -> None:
    """Done callback: gives ``dst`` what ``src`` ended with (result, error or cancellation)."""
    if src.cancelled():
        _settle(dst, CancelledError())
    elif (exc := src.exception()) is not None:
        _settle(dst, exc)
    else:
        _settle(dst, result=src.result())


def unit_vector(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A query vector scaled to unit L2 norm, safely for any finite values.

    The vector is divided by its largest magnitude before the norm is taken,
    so 1280 values of 3e38 (whose squares overflow float32) normalise to
    1/sqrt(1280) each instead of being called "zero length".

    Raises:
        InvalidArgument: NaN/infinite values, or every value zero.
    """
    vec = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(vec)):
        raise InvalidArgument("vector contains NaN or infinite values")
    peak = float(np.max(np.abs(vec))) if vec.size else 0.0
    if peak == 0.0:
        raise InvalidArgument("vector has zero length (every value is 0); it has no direction to search by")
    scaled = vec / peak
    return (scaled / np.linalg.norm(scaled)).astype(np.float32)
