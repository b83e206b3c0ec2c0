"""Statistics of ``lookalike bench``: percentiles, histograms, per-window recorders, GetStats summaries."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lookalike._core import DEFAULT_MAX_MESSAGE_BYTES

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
LATENCY_KEYS: tuple[str, ...] = ("min", "mean", *(f"p{q}" for q in PERCENTILES), "max")
# ServerTiming fields averaged over a window's successful responses.
TIMING_FIELDS: tuple[str, ...] = (
    "total_ms",
    "queue_ms",
    "preprocess_ms",
    "inference_ms",
    "milvus_ms",
    "redis_ms",
    "batch_size",
)
METHODS: tuple[str, ...] = ("embed", "search", "insert")
DEFAULT_IMAGE_DIRS: tuple[str, ...] = ("tests/data/photos", ".cache/photos")
MAX_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_BYTES  # one home: the client core's limit
# Largest number of requests an open-loop point keeps in flight; arrivals past
# it are counted as CLIENT_OVERLOAD instead of growing memory without bound.
DEFAULT_MAX_IN_FLIGHT = 4096


class BenchError(Exception):
    """A benchmark cannot run as asked (bad arguments, no images, no server)."""


# --------------------------------------------------------------- statistics --


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default method).

    Args:
        sorted_values: Values in ascending order; at least one.
        q: Percentile in 0..100.

    Returns:
        The interpolated value.

    Raises:
        ValueError: No values, or q out of range.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} out of 0..100")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float | None]:
    """min/mean/p50/p90/p95/p99/max in milliseconds; all None when empty."""
    values = sorted(x * 1000.0 for x in latencies_s)
    if not values:
        return dict.fromkeys(LATENCY_KEYS)
    out: dict[str, float | None] = {"min": values[0], "mean": math.fsum(values) / len(values)}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    out["max"] = values[-1]
    return out


def merge_histograms(*hists: Mapping[Any, int]) -> dict[int, int]:
    """Adds batch-size histograms (keys may be ints or their JSON strings)."""
    total: Counter[int] = Counter()
    for hist in hists:
        for size, count in hist.items():
            total[int(size)] += int(count)
    return dict(sorted(total.items()))


def histogram_mean(hist: Mapping[Any, int]) -> float | None:
    """Mean batch size of a histogram (batches weighted by count); None if empty."""
    batches = sum(int(c) for c in hist.values())
    if not batches:
        return None
    return sum(int(s) * int(c) for s, c in hist.items()) / batches


def items_weighted_mean(hist: Mapping[Any, int]) -> float | None:
    """Mean batch size as seen by an item (batches weighted by size x count)."""
    items = sum(int(s) * int(c) for s, c in hist.items())
    if not items:
        return None
    return sum(int(s) ** 2 * int(c) for s, c in hist.items()) / items


@dataclass
class TimingAccumulator:
    """Running means of ``ServerTiming`` fields over successful responses."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_FIELDS, 0.0))
    count: int = 0

    def add(self, timing: Any) -> None:
        """Adds one response's ``ServerTiming`` (or any object with those fields)."""
        for name in TIMING_FIELDS:
            self.sums[name] += float(getattr(timing, name, 0.0) or 0.0)
        self.count += 1

    def merge(self, other: TimingAccumulator) -> None:
        """Adds another accumulator's responses (a window measured in another process)."""
        for name in TIMING_FIELDS:
            self.sums[name] += other.sums[name]
        self.count += other.count

    def means(self) -> dict[str, float | None]:
        """Field means, or all None when no response carried timing."""
        if not self.count:
            return dict.fromkeys(TIMING_FIELDS)
        return {name: self.sums[name] / self.count for name in TIMING_FIELDS}


@dataclass
class WindowRecorder:
    """What one measurement window saw, from the client's side.

    Attributes:
        start: Monotonic time the window opened.
        stop: Monotonic time it closed (set by the driver).
        latencies: Seconds, one per answered request (OK or not).
        statuses: gRPC status code name -> count.
        errors: One sample message per non-OK status code.
        timing: Server timing of OK responses.
        sent: Requests sent (or, open loop, scheduled) in the window.
        completed_in_window: Answers that arrived before ``stop``; the
            throughput numerator, so the drain after the window (when the
            concurrency tails off) does not bias it.
        images_in_window: Images carried by those answers' requests.
    """

    start: float = 0.0
    stop: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)
    timing: TimingAccumulator = field(default_factory=TimingAccumulator)
    sent: int = 0
    completed_in_window: int = 0
    ok_in_window: int = 0
    images_in_window: int = 0

    def record(
        self, started: float, finished: float, code: str, images: int, timing: Any = None, message: str = ""
    ) -> None:
        """Records one answered request."""
        self.latencies.append(finished - started)
        self.statuses[code] += 1
        if code != "OK" and code not in self.errors:
            self.errors[code] = message[:300]
        if code == "OK" and timing is not None:
            self.timing.add(timing)
        if finished <= self.stop or not self.stop:
            self.completed_in_window += 1
            if code == "OK":
                self.ok_in_window += 1
                self.images_in_window += images

    @classmethod
    def merged(cls, windows: Sequence[WindowRecorder]) -> WindowRecorder:
        """One window from several measured side by side (one per load process).

        The window spans the earliest start to the latest stop; counts, status
        codes, server timing and latencies are pooled, so throughput is the sum
        of the processes' and percentiles are those of every answer.
        """
        out = cls(start=min(w.start for w in windows), stop=max(w.stop for w in windows))
        for w in windows:
            out.latencies.extend(w.latencies)
            out.statuses.update(w.statuses)
            for code, message in w.errors.items():
                out.errors.setdefault(code, message)
            out.timing.merge(w.timing)
            out.sent += w.sent
            out.completed_in_window += w.completed_in_window
            out.ok_in_window += w.ok_in_window
            out.images_in_window += w.images_in_window
        return out

    def summary(self) -> dict[str, Any]:
        """The client-side part of a load point."""
        window = max(self.stop - self.start, 1e-9)
        completed = sum(self.statuses.values())
        ok = self.statuses.get("OK", 0)
        return {
            "window_s": round(window, 3),
            "requests": self.sent,
            "completed": completed,
            "ok": ok,
            "errors": completed - ok,
            "throughput_rps": self.ok_in_window / window,
            "images_per_s": self.images_in_window / window,
            "attempted_rps": self.completed_in_window / window,
            "latency_ms": latency_summary(self.latencies),
            "status": dict(sorted(self.statuses.items())),
            "error_samples": dict(self.errors),
            "server_timing_ms": self.timing.means(),
        }


def stats_summary(resp: Any, method: str | None = None) -> dict[str, Any]:
    """Turns a ``GetStatsResponse`` into plain JSON-able data.

    Args:
        resp: The ``GetStatsResponse`` read after a window.
        method: RPC name (``"Embed"``...) whose requests to count separately.

    Returns:
        Per-model batcher counters, the merged batch-size histogram and its
        means, and requests by status.
    """
    batchers: dict[str, Any] = {}
    for b in resp.batchers:
        hist = {int(k): int(v) for k, v in sorted(b.batch_size_histogram.items())}
        batchers[b.model] = {
            "batch_size_histogram": hist,
            "batches": b.batches,
            "items": b.items,
            "rejected": b.rejected,
            "expired": b.expired,
            "cancelled": b.cancelled,
            # Batches run alone on the model's wide session (all cores).
            "alone_batches": b.alone_batches,
            "mean_queue_ms": b.queue_ms_sum / b.items if b.items else None,
            "mean_run_ms": b.run_ms_sum / b.batches if b.batches else None,
        }
    merged = merge_histograms(*(b["batch_size_histogram"] for b in batchers.values()))
    by_status = dict(sorted(resp.requests_by_status.items()))
    out: dict[str, Any] = {
        "batchers": batchers,
        "batch_size_histogram": merged,
        "mean_batch_size": histogram_mean(merged),
        "item_mean_batch_size": items_weighted_mean(merged),
        "requests_by_status": by_status,
    }
    if method:
        # Keys are "<Method>:<CODE>"; match the method exactly (Search is not SearchStream).
        out["method_requests"] = sum(v for k, v in by_status.items() if re.split(r"[:/]", k, maxsplit=1)[0] == method)
    return out
