"""Admission at the front door: a budget of images and decoded pixels in flight.

A request is admitted or refused *before* any of its images is decoded (TEI's
rule: take the permit first). Its cost is read from the image headers alone
(:func:`~lookalike_server.preprocess.probe_image`): the number of images and
the pixels the decoder will allocate, per the requested models' decode
settings: a JPEG counts at its draft scale when every model allows reduced-size
decoding, at full size for a model with ``jpeg_draft = false``, and once per
distinct decode (:func:`~lookalike_server.preprocess.plan_decodes`) when
models disagree. Three budgets apply at once:

* per request: more decoded pixels than ``limits.request_pixels`` can never
  be served, so the request gets INVALID_ARGUMENT (retrying cannot help);
* per server: ``limits.inflight_images`` and ``limits.inflight_pixels``;
* per model: ``limits.model_inflight_images`` (auto: 2 x the model's batch),
  and an estimated wait: images in flight for the model divided by its
  measured throughput (images finished per busy second, over the last few
  seconds) must stay under ``limits.max_queue_wait_ms`` and under the
  call's remaining deadline, so a queue wait never outlives the request.

Calls that walk a whole index (FindDuplicates) carry no image but cost
minutes of Milvus time: :meth:`Admission.admit_walk` gives them a budget of
their own (``limits.max_dupes_walks`` at once), counted under ``"walks"``.

Beyond a server or model budget the call gets RESOURCE_EXHAUSTED at once,
with a retry hint, instead of waiting behind work it cannot overtake. A
permit is returned when the work it paid for has finished (not when the
caller gave up: abandoned work still occupies the pool until it notices).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from lookalike_server.config import LimitsConfig
from lookalike_server.errors import Overloaded, ServiceError, TooLarge
from lookalike_server.preprocess import ImageHeader, PreprocessSpec, plan_decodes, probe_image

log = logging.getLogger(__name__)


_WINDOW_S = 5.0  # throughput is measured over this many recent seconds
_MIN_SPAN_S = 0.5  # and only once the model has been busy this long
_MIN_SAMPLES = 8  # images finished in the window before the estimate is trusted
_ALWAYS_ADMIT = 4  # images in flight below which the wait estimate is not applied
# A model admission has no spec for is counted as decoded at full size (the safe side).
_FULL_DECODE = PreprocessSpec(jpeg_draft=False)


@dataclass
class AdmissionStats:
    """Monotonic counters and current levels."""

    admitted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # by budget: "images", "pixels", "model:<name>"
    probed_images: int = 0
    inflight_images: int = 0
    inflight_pixels: int = 0
    inflight_walks: int = 0


class Permit:
    """What one admitted call holds; :meth:`release` is idempotent."""

    def __init__(self, admission: Admission, images: int, pixels: int, models: tuple[str, ...], walks: int = 0) -> None:
        self._admission = admission
        self.images = images
        self.pixels = pixels
        self.models = models
        self.walks = walks
        self._released = False

    def release(self) -> None:
        """Returns the budget (once)."""
        if not self._released:
            self._released = True
            self._admission._release(self)


class Admission:
    """Image and pixel budgets per server and per model.

    Args:
        limits: The limits section of the config.
        model_budgets: Images each model may have in flight.
        specs: Each model's preprocessing, whose decode settings say what a
            decode costs; a model without one counts at full size.
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        limits: LimitsConfig,
        model_budgets: Mapping[str, int],
        specs: Mapping[str, PreprocessSpec] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.model_budgets = dict(model_budgets)
        self.specs = dict(specs or {})
        self._lock = threading.Lock()
        self._stats = AdmissionStats()
        self._model_inflight = dict.fromkeys(self.model_budgets, 0)
        # Throughput estimate per model: releases in the last _WINDOW_S while
        # busy, each as (time, images released so far, busy seconds so far).
        # Running totals, so the estimate is O(1) per call however many
        # releases the window holds (15,000 at 3,000 img/s).
        self._done: dict[str, collections.deque[tuple[float, int, float]]] = {
            m: collections.deque() for m in model_budgets
        }
        self._released = dict.fromkeys(self.model_budgets, 0)
        self._busy_since: dict[str, float | None] = dict.fromkeys(self.model_budgets)
        self._busy_acc = dict.fromkeys(self.model_budgets, 0.0)
        self._clock = clock

    def _busy(self, model: str, now: float) -> float:
        """Seconds the model has had images in flight, since start."""
        since = self._busy_since[model]
        return self._busy_acc[model] + (0.0 if since is None else now - since)

    def throughput(self, model: str, now: float | None = None) -> float | None:
        """Images per busy second the model finished lately (the last few seconds); None until measured.

        Busy time, not wall time: idle gaps between requests do not dilute
        the estimate, so it approaches what the model can do when it matters.
        """
        now = self._clock() if now is None else now
        done = self._done[model]
        while done and done[0][0] < now - _WINDOW_S:
            done.popleft()
        if len(done) < 2:
            return None
        busy = self._busy(model, now) - done[0][2]
        count = done[-1][1] - done[0][1]  # images released after the window's first release
        if busy < _MIN_SPAN_S or count < _MIN_SAMPLES:
            return None
        return count / busy

    def expected_wait(self, model: str, images: int) -> float | None:
        """Seconds ``images`` more would wait for ``model``; None until measured."""
        with self._lock:
            rate = self.throughput(model)
            return None if rate is None else (self._model_inflight[model] + images) / rate

    def draft_sizes(self, models: Sequence[str]) -> list[tuple[int, int] | None]:
        """The JPEG draft hint of each decode ``models`` need (None: full size)."""
        return [p.draft_size for p in plan_decodes({m: self.specs.get(m, _FULL_DECODE) for m in models})]

    def probe(self, images: Sequence[bytes]) -> list[ImageHeader]:
        """Headers of every image, each limit a header decides applied.

        Raises:
            InvalidArgument / TooLarge: Names the offending image's index.
        """
        limits = self.limits
        out = []
        for i, data in enumerate(images):
            try:
                out.append(
                    probe_image(
                        data,
                        max_bytes=limits.max_image_bytes,
                        max_pixels=limits.max_pixels,
                        max_aspect_ratio=limits.max_aspect_ratio,
                    )
                )
            except ServiceError as exc:
                raise type(exc)(f"image {i}: {exc.message}") from None
        with self._lock:
            self._stats.probed_images += len(images)
        return out

    def admit(
        self,
        images: Sequence[bytes],
        models: Sequence[str],
        *,
        prefix: str = "",
        remaining_s: float | None = None,
    ) -> Permit:
        """Probes the images' headers and takes their cost from the budgets, or refuses.

        Args:
            images: Encoded images of one call (or one stream item).
            models: Models each image will run through (validated names).
            prefix: Prepended to messages (e.g. ``"item 3: "``).
            remaining_s: Seconds left before the call's deadline (None: none).

        Returns:
            A permit to release when the work has finished.

        Raises:
            InvalidArgument / TooLarge: A bad image, or more pixels than one
                request may ever carry.
            Overloaded: Over a server or model budget; retry later.
        """
        limits = self.limits
        if len(images) > limits.max_images_per_request:
            raise TooLarge(
                f"{prefix}{len(images)} images in one request; the limit is {limits.max_images_per_request} "
                "(use the stream RPC)"
            )
        headers = self.probe(images)
        drafts = self.draft_sizes(models)
        pixels = sum(h.pixels_at(d) for h in headers for d in drafts or [None])
        if pixels > limits.request_pixels:
            raise TooLarge(
                f"{prefix}the request's images decode to {pixels} pixels in all; the limit per request is "
                f"{limits.request_pixels}: send fewer or smaller images per request"
            )
        n = len(images)
        with self._lock:
            st = self._stats
            refused = ""
            if st.inflight_images + n > limits.inflight_images:
                refused = "images"
                why = f"{st.inflight_images} images in flight (server limit {limits.inflight_images})"
            elif st.inflight_pixels + pixels > limits.inflight_pixels:
                refused = "pixels"
                why = f"{st.inflight_pixels} pixels in flight (server limit {limits.inflight_pixels})"
            else:
                now = self._clock()
                max_wait = limits.max_queue_wait_ms / 1000 if limits.max_queue_wait_ms else float("inf")
                if remaining_s is not None:
                    max_wait = min(max_wait, remaining_s)
                for m in models:
                    if self._model_inflight[m] + n > self.model_budgets[m]:
                        refused = f"model:{m}"
                        why = (
                            f"model {m!r} has {self._model_inflight[m]} images in flight "
                            f"(limit {self.model_budgets[m]})"
                        )
                        break
                    rate = self.throughput(m, now)
                    # A little work is always admitted: the estimate needs traffic to exist.
                    if rate is not None and self._model_inflight[m] >= _ALWAYS_ADMIT:
                        wait = (self._model_inflight[m] + n) / rate
                        if wait > max_wait:
                            refused = f"wait:{m}"
                            why = (
                                f"model {m!r} would make these images wait about {wait * 1e3:.0f} ms "
                                f"({self._model_inflight[m]} in flight at {rate:.0f} images/s; "
                                f"limit {max_wait * 1e3:.0f} ms)"
                            )
                            break
            if refused:
                st.rejected[refused] = st.rejected.get(refused, 0) + 1
            else:
                st.admitted += 1
                st.inflight_images += n
                st.inflight_pixels += pixels
                for m in models:
                    if self._model_inflight[m] == 0:
                        self._busy_since[m] = now
                    self._model_inflight[m] += n
        if refused:
            raise Overloaded(f"{prefix}server is overloaded: {why}; retry with backoff")
        return Permit(self, n, pixels, tuple(models))

    def admit_walk(self, what: str) -> Permit:
        """Takes one of ``limits.max_dupes_walks`` slots for a call that walks a whole index.

        Args:
            what: The call, for the refusal message (e.g. ``"FindDuplicates"``).

        Returns:
            A permit to release when the walk ends (finished, failed or cancelled).

        Raises:
            Overloaded: Every slot is taken; retry when one ends.
        """
        limit = self.limits.max_dupes_walks
        with self._lock:
            st = self._stats
            if st.inflight_walks >= limit:
                st.rejected["walks"] = st.rejected.get("walks", 0) + 1
                refused = True
            else:
                st.admitted += 1
                st.inflight_walks += 1
                refused = False
        if refused:
            raise Overloaded(
                f"server is overloaded: {limit} index walk(s) already running (limit limits.max_dupes_walks); "
                f"retry {what} when it ends"
            )
        return Permit(self, 0, 0, (), walks=1)

    def _release(self, permit: Permit) -> None:
        with self._lock:
            self._stats.inflight_walks -= permit.walks
            self._stats.inflight_images -= permit.images
            self._stats.inflight_pixels -= permit.pixels
            now = self._clock()
            for m in permit.models:
                self._model_inflight[m] -= permit.images
                self._released[m] += permit.images
                self._done[m].append((now, self._released[m], self._busy(m, now)))
                if self._model_inflight[m] == 0:
                    self._busy_acc[m] = self._busy(m, now)
                    self._busy_since[m] = None

    def stats(self) -> AdmissionStats:
        """A copy of the counters and levels."""
        with self._lock:
            st = self._stats
            return AdmissionStats(
                st.admitted,
                dict(st.rejected),
                st.probed_images,
                st.inflight_images,
                st.inflight_pixels,
                st.inflight_walks,
            )
