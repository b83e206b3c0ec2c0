"""Client-side adaptive throttling: refuse locally what the server would refuse anyway.

Google's SRE book (chapter 21, "Handling Overload") describes it: each client
remembers, over the last couple of minutes, how many calls it made
(``requests``, counted when they end) and how many the server *accepted*
(``accepts``: anything but an overload refusal). While the server is healthy the two are equal and nothing
changes. Once the server starts refusing, the client refuses a new call itself
with probability::

    max(0, (requests - K * accepts) / (requests + 1))

so it sends about ``K`` times what the server has lately been accepting, and
answers the rest at once, without a network round trip and without costing the
server the work of saying no. Locally refused calls still count as requests,
so the rate falls as overload persists and recovers as soon as the server
accepts more. ``K = 2`` (the book's value) keeps probing for returning
capacity at the price of some server-side refusals; a value nearer 1 refuses
more locally and sooner.

Why in this client: a refusal costs the server about half a millisecond of
Python and gRPC work (measured, ``docs/bounded-cost.md``) taken from
inference; at 4x overload three refusals per served call add up. Clients in
other languages get the same server; this is what a well-behaved Python
client adds on top.

This module knows nothing of gRPC: the client shells call :meth:`admit` before
sending and :meth:`record` with the outcome.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AdaptiveThrottle", "ThrottleSettings"]


@dataclass(frozen=True)
class ThrottleSettings:
    """How eagerly the client refuses locally while the server reports overload.

    Args:
        k: Send about ``k`` times the calls the server accepted lately (SRE book: 2). ``0``
            turns throttling off.
        window_s: How far back ``requests`` and ``accepts`` are counted. Shorter reacts faster
            to overload and to recovery; longer is steadier.
    """

    k: float = 2.0
    window_s: float = 10.0

    def __post_init__(self) -> None:
        if not (self.k == 0 or self.k >= 1) or math.isnan(self.k):
            raise ValueError(f"throttle k must be 0 (off) or >= 1, got {self.k}")
        if not self.window_s > 0:
            raise ValueError(f"throttle window_s must be > 0, got {self.window_s}")

    @property
    def enabled(self) -> bool:
        """Whether the client ever refuses locally."""
        return self.k > 0


class AdaptiveThrottle:
    """Requests and accepts over a sliding window; the local refusal probability from them.

    Thread-safe: the blocking client is shared between threads. Counts live in one-second
    buckets, so memory is bounded by the window whatever the call rate.

    Args:
        settings: ``k`` and the window.
        clock: Monotonic seconds (injectable for tests).
        rng: Uniform [0, 1) draws (injectable for tests).
    """

    def __init__(
        self,
        settings: ThrottleSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings or ThrottleSettings()
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._slots = max(1, math.ceil(self.settings.window_s))
        self._requests = [0] * self._slots
        self._accepts = [0] * self._slots
        self._stamp = [-1] * self._slots  # which whole second each bucket holds
        self.local_refusals = 0

    def _bucket(self, now: float) -> int:
        second = int(now)
        i = second % self._slots
        if self._stamp[i] != second:  # a bucket from an earlier lap: start it afresh
            self._stamp[i] = second
            self._requests[i] = 0
            self._accepts[i] = 0
        return i

    def _totals(self, now: float) -> tuple[int, int]:
        oldest = int(now) - self._slots + 1
        req = acc = 0
        for i in range(self._slots):
            if self._stamp[i] >= oldest:
                req += self._requests[i]
                acc += self._accepts[i]
        return req, acc

    def refusal_probability(self) -> float:
        """The chance that the next call is refused locally."""
        if not self.settings.enabled:
            return 0.0
        with self._lock:
            req, acc = self._totals(self._clock())
        return max(0.0, (req - self.settings.k * acc) / (req + 1))

    def admit(self) -> bool:
        """False when the next call should be refused locally instead of sent.

        A call that is sent is counted when it ends (:meth:`record`), not here: calls still in
        flight have no outcome yet, and counting them as requests without accepts would
        throttle a healthy server whose calls are merely slow (at start, before any answer).
        A local refusal is counted now, as a request the server did not accept.
        """
        if not self.settings.enabled:
            return True
        with self._lock:
            now = self._clock()
            req, acc = self._totals(now)
            p = max(0.0, (req - self.settings.k * acc) / (req + 1))
            if p > 0 and self._rng() < p:
                self._requests[self._bucket(now)] += 1
                self.local_refusals += 1
                return False
            return True

    def record(self, accepted: bool) -> None:
        """The outcome of a sent call: ``accepted`` unless the server refused it as overloaded."""
        if self.settings.enabled:
            with self._lock:
                i = self._bucket(self._clock())
                self._requests[i] += 1
                self._accepts[i] += accepted
