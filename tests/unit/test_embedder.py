"""The Embedder's orchestration: order, failures, deadlines and the single wait, with a stand-in model.

The stand-in runs no network: each "embedding" is the image's mean pixel value
repeated, so a test can tell which image a vector belongs to, and its runs
wait on a gate the test opens, so a test can hold inference while it looks.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

import lookalike_server.embedder as embedder_module
from lookalike_server.autotune import BatchPlan
from lookalike_server.config import LimitsConfig
from lookalike_server.domain import RequestContext
from lookalike_server.embedder import Embedder
from lookalike_server.errors import Cancelled, DeadlineExceeded, InvalidArgument
from lookalike_server.preprocess_spec import PreprocessSpec


class GatedModel:
    """What the Embedder uses of an ``OnnxModel``; every run waits for ``gate``."""

    def __init__(self, name: str, dim: int) -> None:
        # No mean/std: the tensor holds the pixels scaled to 0..1.
        pre = PreprocessSpec(height=8, width=8, resize_shorter=0, mean=(0, 0, 0), std=(1, 1, 1))
        self.spec = SimpleNamespace(
            name=name, dim=dim, preprocess=pre, batching=SimpleNamespace(queue_size=64, adaptive_delay=False)
        )
        self.plan = BatchPlan(costs_ms={}, buckets=(1,), max_batch_size=1, max_delay_ms=0.0, take=(1,), reason="")
        self.max_batch_size = 1
        self.wide_session = None
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.images_run = 0

    def embed_batch(self, tensors: Sequence[np.ndarray]) -> np.ndarray:
        self.started.release()
        assert self.gate.wait(10), "the test never opened the gate"
        self.images_run += len(tensors)
        return np.stack([np.full(self.spec.dim, float(t.mean()), np.float32) for t in tensors])

    def embed_batch_alone(self, tensors: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_batch(tensors)


def grey(level: int) -> bytes:
    """A 16x16 PNG of one grey level."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (level, level, level)).save(buf, "PNG")
    return buf.getvalue()


def hold_the_worker(embedder: Embedder, model: GatedModel) -> threading.Thread:
    """Closes the model's gate and starts another request whose run then holds the only worker."""
    model.gate.clear()
    holder = threading.Thread(target=embedder.embed, args=([grey(5)], [model.spec.name], RequestContext(30)))
    holder.start()
    assert model.started.acquire(timeout=10)
    return holder


@pytest.fixture
def models() -> dict[str, GatedModel]:
    return {"four": GatedModel("four", 4), "three": GatedModel("three", 3)}


@pytest.fixture
def embedder(models: dict[str, GatedModel]) -> Any:
    emb = Embedder(models, LimitsConfig(), preprocess_threads=2)  # type: ignore[arg-type]
    yield emb
    for m in models.values():
        m.gate.set()
    emb.close()


def test_every_model_gets_every_image_in_request_order(embedder: Embedder) -> None:
    levels = [51, 102, 204]
    out, timing = embedder.embed([grey(v) for v in levels], ["four", "three"], RequestContext(30))
    for name, dim in (("four", 4), ("three", 3)):
        assert out[name].shape == (3, dim)
        np.testing.assert_allclose(out[name][:, 0], [v / 255 for v in levels], atol=1e-2)
    assert timing.batch_size == 1 and timing.preprocess_ms > 0


def test_the_caller_waits_once_for_decoding_and_inference(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[int] = []
    real_wait = embedder_module.wait_futures

    def counting_wait(futures: Any, *args: Any, **kw: Any) -> Any:
        waits.append(len(futures))
        return real_wait(futures, *args, **kw)

    monkeypatch.setattr(embedder_module, "wait_futures", counting_wait)
    embedder.embed([grey(10), grey(20)], ["four", "three"], RequestContext(30))
    # One wait, on the four outcomes (2 images x 2 models): not one for the
    # decoding and another for the inference.
    assert waits == [4]


def test_a_bad_image_fails_the_request_and_drops_its_other_images(
    embedder: Embedder, models: dict[str, GatedModel]
) -> None:
    model = models["four"]
    # Another request's image holds the model's only worker...
    holder = hold_the_worker(embedder, model)
    # ...while this one fails on its third image, without waiting for the run.
    with pytest.raises(InvalidArgument, match="image 2"):
        embedder.embed([grey(10), grey(20), b"not an image at all", grey(30)], ["four"], RequestContext(30))
    model.gate.set()
    holder.join(10)
    time.sleep(0.2)  # an image still decoding when the request failed is dropped when it is queued
    assert model.images_run == 1  # the holder's image only
    assert embedder.batchers["four"].stats().queue_depth == 0


def test_a_deadline_in_inference_says_so_and_drops_the_queued_images(
    embedder: Embedder, models: dict[str, GatedModel]
) -> None:
    model = models["four"]
    model.gate.clear()
    with pytest.raises(DeadlineExceeded, match=r"during inference \(2 of 2 images unfinished\)"):
        embedder.embed([grey(10), grey(20)], ["four"], RequestContext(0.5))
    model.gate.set()
    time.sleep(0.2)
    assert model.images_run == 1  # the held run finished; the queued image never ran


def test_the_event_loop_path_gives_the_same_embeddings(embedder: Embedder) -> None:
    levels = [51, 204]
    images = [grey(v) for v in levels]
    done = threading.Event()
    out, _ = asyncio.run(embedder.embed_async(images, ["four", "three"], RequestContext(30), work_done=done.set))
    sync_out, _ = embedder.embed(images, ["four", "three"], RequestContext(30))
    for name in ("four", "three"):
        np.testing.assert_array_equal(out[name], sync_out[name])
    assert done.wait(5)


def test_a_cancelled_call_returns_its_budget_only_when_its_work_has_ended(
    embedder: Embedder, models: dict[str, GatedModel]
) -> None:
    """Admission permits come back when the decoding and runs end, not when the caller leaves."""
    model = models["four"]
    model.gate.clear()
    calls: list[str] = []

    async def call_then_cancel() -> None:
        task = asyncio.ensure_future(
            embedder.embed_async([grey(10), grey(20)], ["four"], RequestContext(30), lambda: calls.append("done"))
        )
        await asyncio.get_running_loop().run_in_executor(None, model.started.acquire, True, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(call_then_cancel())
    assert calls == []  # image 0's run is still held
    model.gate.set()
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == ["done"]
    assert model.images_run == 1  # image 1 was dropped, not run


def test_a_refused_call_returns_its_budget_at_once(embedder: Embedder) -> None:
    calls: list[str] = []
    ctx = RequestContext(0)  # already past its deadline: nothing is queued
    with pytest.raises(DeadlineExceeded):
        asyncio.run(embedder.embed_async([grey(10)], ["four"], ctx, lambda: calls.append("done")))
    assert calls == ["done"]


def test_a_deadline_on_the_event_loop_path_says_where(embedder: Embedder, models: dict[str, GatedModel]) -> None:
    models["four"].gate.clear()
    with pytest.raises(DeadlineExceeded, match=r"during inference \(1 of 1 images unfinished\)"):
        asyncio.run(embedder.embed_async([grey(10)], ["four"], RequestContext(0.3)))


@pytest.mark.parametrize("on_loop", [False, True])
def test_a_client_cancel_ends_the_wait_at_once_even_while_the_model_is_busy(
    embedder: Embedder, models: dict[str, GatedModel], on_loop: bool
) -> None:
    """A waiter is woken by its queued image's cancellation; it does not sleep until a deadline (or for ever)."""
    model = models["four"]
    holder = hold_the_worker(embedder, model)
    ctx = RequestContext(None)  # no deadline: only the cancellation can end the wait
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            if on_loop:
                asyncio.run(embedder.embed_async([grey(10)], ["four"], ctx))
            else:
                embedder.embed([grey(10)], ["four"], ctx)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 10
    while embedder.batchers["four"].stats().queue_depth == 0 and time.monotonic() < deadline:
        time.sleep(0.005)  # the image is decoded and queued behind the held run
    ctx.cancel()
    caller.join(5)
    assert not caller.is_alive(), "the cancelled call still waits"
    assert isinstance(outcome[0], Cancelled)
    model.gate.set()
    holder.join(10)
