"""Plain-Python request and result types shared by the service and its adapter.

Nothing here knows gRPC: proto_convert.py converts protobuf messages into these
and back, so the service can be tested and reused without a network.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lookalike_server.errors import Cancelled, DeadlineExceeded
from lookalike_server.fusion import FusionMethod, FusionRequest, ModelScore


class RequestContext:
    """A request's deadline and cancellation, independent of the transport.

    The gRPC adapter creates one per call and calls :meth:`cancel` from the
    call's termination callback; everything that waits on behalf of the
    request checks or registers with it. Futures registered with
    :meth:`track` are cancelled on :meth:`cancel`, which drops their items
    from micro-batcher queues before they cost inference time.

    Args:
        timeout_s: Seconds the caller allows; None = no deadline.
        clock: Monotonic clock.
    """

    def __init__(self, timeout_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.deadline: float | None = None if timeout_s is None else self.started + timeout_s
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[Future[Any]] = []
        self._children: set[RequestContext] = set()

    @property
    def cancelled(self) -> bool:
        """True once the caller went away."""
        return self._cancelled.is_set()

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative); None = no deadline."""
        return None if self.deadline is None else self.deadline - self._clock()

    def check(self, stage: str = "") -> None:
        """Raises if the request is cancelled or past its deadline.

        Args:
            stage: What was about to happen, for the message.
        """
        if self._cancelled.is_set():
            raise Cancelled("the client cancelled the request")
        left = self.remaining()
        if left is not None and left <= 0:
            waited = (self._clock() - self.started) * 1e3
            where = f" before {stage}" if stage else ""
            raise DeadlineExceeded(f"deadline exceeded after {waited:.0f} ms{where}")

    def track(self, future: Future[Any]) -> Future[Any]:
        """Cancels ``future`` when the request is cancelled; returns it."""
        with self._lock:
            if self._cancelled.is_set():
                future.cancel()
            else:
                self._futures.append(future)
        return future

    def child(self) -> RequestContext:
        """A context for one item of a stream: same deadline, cancelled with this one.

        Call :meth:`release` with it when the item is done.
        """
        c = RequestContext(None, self._clock)
        c.deadline = self.deadline
        with self._lock:
            if not self._cancelled.is_set():
                self._children.add(c)
                return c
        c.cancel()
        return c

    def release(self, child: RequestContext) -> None:
        """Forgets a finished child (keeps long streams from growing memory)."""
        with self._lock:
            self._children.discard(child)

    def cancel(self) -> None:
        """Marks the request cancelled and cancels every tracked future and child."""
        with self._lock:
            self._cancelled.set()
            futures, self._futures = self._futures, []
            children, self._children = self._children, set()
        for f in futures:
            f.cancel()
        for c in children:
            c.cancel()


@dataclass
class Timing:
    """Where a request's time went, milliseconds (see ``ServerTiming`` in the proto)."""

    total_ms: float = 0.0
    preprocess_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    milvus_ms: float = 0.0
    redis_ms: float = 0.0
    batch_size: int = 0

    def merge_max(self, other: Timing) -> None:
        """Folds in a parallel stage: the slowest of each field counts."""
        self.preprocess_ms = max(self.preprocess_ms, other.preprocess_ms)
        self.queue_ms = max(self.queue_ms, other.queue_ms)
        self.inference_ms = max(self.inference_ms, other.inference_ms)
        self.milvus_ms = max(self.milvus_ms, other.milvus_ms)
        self.redis_ms = max(self.redis_ms, other.redis_ms)
        self.batch_size = max(self.batch_size, other.batch_size)


@dataclass(frozen=True)
class InsertItem:
    """One item to index."""

    key: str
    image: bytes
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InsertResult:
    """What an insert did for one item."""

    id: int
    created: bool
    models: tuple[str, ...]
    content_sha256: str


@dataclass(frozen=True)
class SearchFilter:
    """Typed search restrictions; the store builds the expression."""

    key_prefix: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchQuery:
    """Exactly one of image, item_id or vector is set."""

    image: bytes | None = None
    item_id: int | None = None
    vector: np.ndarray | None = None
    vector_model: str = ""
    models: tuple[str, ...] = ()
    top_k: int = 0
    filter: SearchFilter = field(default_factory=SearchFilter)
    exclude_self: bool = False
    fusion: FusionRequest | None = None


@dataclass(frozen=True)
class Hit:
    """One search hit joined with its record."""

    id: int
    distance: float
    key: str
    attributes: dict[str, str]


@dataclass(frozen=True)
class ModelHits:
    """One model's hit list."""

    model: str
    hits: list[Hit]


@dataclass(frozen=True)
class FusedHit:
    """One hit of the fused list, joined with its record (see :mod:`lookalike_server.fusion`)."""

    id: int
    score: float
    key: str
    attributes: dict[str, str]
    models: tuple[ModelScore, ...]


@dataclass
class SearchOutcome:
    """Everything one search returns.

    Attributes:
        results: One hit list per model, in request order.
        timing: Where the time went.
        fused: The fused list, when the query asked for fusion.
        fusion_method: The method it was built by (None without fusion).
    """

    results: list[ModelHits]
    timing: Timing
    fused: list[FusedHit] = field(default_factory=list)
    fusion_method: FusionMethod | None = None


@dataclass(frozen=True)
class ItemView:
    """A stored item as clients see it."""

    id: int
    key: str
    attributes: dict[str, str]
    content_sha256: str
    models: tuple[str, ...]
    created_at: float


@dataclass(frozen=True)
class DupesQuery:
    """A FindDuplicates request in domain types (0 = default for the numbers)."""

    model: str = ""
    threshold: float = 0.0
    filter: SearchFilter = field(default_factory=SearchFilter)
    page_size: int = 0
    exact_only: bool = False
    # Several models: a pair is near when any of them accepts it (see lookalike_server.dupes).
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class DupeMember:
    """One member of a group (``distance`` is under the first model; ``distances`` under each)."""

    id: int
    key: str
    distance: float
    exact: bool
    content_sha256: str
    attributes: dict[str, str]
    distances: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupPage:
    """A page of one group's members (the first page starts with the representative)."""

    representative_id: int
    size: int
    offset: int
    more: bool
    members: list[DupeMember]
    exact_count: int


@dataclass
class DupesSummary:
    """What the walk did; sent last."""

    model: str
    threshold: float
    default_threshold: bool
    exact_distance: float = 0.0
    items_scanned: int = 0
    groups: int = 0
    grouped_items: int = 0
    pairs: int = 0
    search_mode: str = "range"
    capped_items: int = 0
    elapsed_ms: float = 0.0
    models: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)


def model_key(name: str, version: str) -> str:
    """The key a record lists for a model: ``name:version`` (one embedding space)."""
    return f"{name}:{version}"


def normalise_model_keys(listed: tuple[str, ...] | list[str], current: dict[str, str]) -> tuple[str, ...]:
    """A record's model list in ``name:version`` form.

    The first release stored bare model names; such a name is read as the
    version loaded now (the collection it wrote to is the one the same
    configuration opens). If that guess is wrong (the version changed in the
    same upgrade), the verify sweep finds no row there and un-lists it, and a
    re-insert writes it.

    Args:
        listed: Entries as stored.
        current: Loaded model name -> its key.

    Returns:
        The keys, duplicates dropped, order kept.
    """
    out: dict[str, None] = {}
    for entry in listed:
        out[current.get(entry, entry) if ":" not in entry else entry] = None
    return tuple(out)
