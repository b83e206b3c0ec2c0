"""What every gRPC call goes through at the edge, unary or stream.

* parsing: :func:`safe_deserializer` turns bytes that are not the method's
  message into a :class:`Malformed` stand-in, answered INVALID_ARGUMENT by
  :func:`reject_malformed` instead of gRPC's INTERNAL with a traceback;
* context: :func:`request_context` gives the service a domain context with
  the call's deadline, cancelled when the call is;
* threads: :func:`run_blocking` runs the synchronous service on a pool
  without blocking the event loop, and returns an admission permit when the
  work ends;
* status: :func:`status_code`, :func:`error_message` and
  :func:`retry_pushback` turn an exception into what the client sees (the
  code itself comes from the one table in ``errors.py``);
* counting: :class:`RequestCounter`, requests by method and status, for
  GetStats and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from lookalike_server.domain import RequestContext
from lookalike_server.errors import ServiceError, grpc_code_for

if TYPE_CHECKING:
    from lookalike_server.admission import Permit

log = logging.getLogger(__name__)


def status_code(name: str) -> grpc.StatusCode:
    """``"INVALID_ARGUMENT"`` → ``grpc.StatusCode.INVALID_ARGUMENT``."""
    return grpc.StatusCode[name]


#: Longest status message sent, in characters. Messages quote what the client
#: sent (a key, a model name); gRPC carries the message in a trailer, and a
#: trailer over the client's metadata limit (8-16 KiB by default, and a
#: non-ASCII character is percent-encoded to up to 12 bytes) replaced the whole
#: status with RESOURCE_EXHAUSTED "received metadata size exceeds hard limit".
MAX_MESSAGE_CHARS = 512


def error_message(exc: BaseException) -> str:
    """The message a client sees for an exception (a reference id for bugs), at most :data:`MAX_MESSAGE_CHARS`."""
    if isinstance(exc, ServiceError):
        return clip_message(exc.message)
    ref = uuid.uuid4().hex[:12]
    log.error("internal error ref=%s", ref, exc_info=exc)
    return f"internal error (ref {ref}); the server log has the details"


def clip_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message``, or its start and end around a note of its length when it is longer than ``limit``.

    Both ends stay: a message usually quotes the client's value in the middle
    and says what to do at the end ("model '…' is not loaded; loaded models: …").
    """
    if len(message) <= limit:
        return message
    marker = f" … ({len(message)} characters) … "
    keep = max(limit - len(marker), 0)
    head = keep * 2 // 5
    return message[:head] + marker + message[len(message) - (keep - head) :]


def retry_pushback(exc: BaseException, pushback_ms: int) -> tuple[tuple[str, str], ...]:
    """Retry hint for RESOURCE_EXHAUSTED (honoured by gRPC retry policies); none otherwise."""
    if grpc_code_for(exc) == "RESOURCE_EXHAUSTED":
        return (("grpc-retry-pushback-ms", str(pushback_ms)),)
    return ()


class RequestCounter:
    """Requests by method and status code name, for GetStats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._baseline: Counter[str] = Counter()

    def add(self, method: str, code: str) -> None:
        """Counts one finished call."""
        with self._lock:
            self._counts[f"{method}:{code}"] += 1

    def snapshot(self, reset: bool = False) -> dict[str, int]:
        """Counts since the last reset; ``reset`` starts a new window (totals keep counting)."""
        with self._lock:
            out = {k: v - self._baseline[k] for k, v in self._counts.items() if v - self._baseline[k]}
            if reset:
                self._baseline = Counter(self._counts)
        return out

    def totals(self) -> dict[str, int]:
        """Monotonic counts since start, ``"Method:CODE" -> n``."""
        with self._lock:
            return dict(self._counts)


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request whose bytes did not parse as its message.

    Produced by the deserializer wrapper (:func:`safe_deserializer`), so the
    handler answers INVALID_ARGUMENT instead of gRPC's INTERNAL "Exception
    deserializing request!" with a traceback.
    """

    method: str
    reason: str


def safe_deserializer(method: str, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """Wraps a message's ``FromString``: a parse failure becomes :class:`Malformed`."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, or anything else the parser raises on hostile bytes
            return Malformed(method, str(exc) or type(exc).__name__)

    return deserialize


async def reject_malformed(counter: RequestCounter, request: Malformed, context: grpc.aio.ServicerContext) -> NoReturn:
    """INVALID_ARGUMENT for bytes that are not the method's message; one log line, counted."""
    counter.add(request.method, "INVALID_ARGUMENT")
    counter.add(request.method + ".malformed", "INVALID_ARGUMENT")
    log.warning("malformed %s request from %s: %s", request.method, context.peer(), request.reason)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request is not a valid lookalike.v1 {request.method} message ({request.reason}); "
        "check that client and server use the same lookalike.proto",
    )
    raise AssertionError("unreachable")  # abort raises


def request_context(context: grpc.aio.ServicerContext) -> RequestContext:
    """A domain context with the call's deadline, cancelled with the call."""
    remaining = context.time_remaining()
    # grpc reports "no deadline" as None or as a huge number.
    ctx = RequestContext(remaining if remaining is not None and remaining < 1e8 else None)

    def on_done(_call: object) -> None:
        if context.cancelled():
            ctx.cancel()

    context.add_done_callback(on_done)
    return ctx


async def run_blocking(
    pool: ThreadPoolExecutor,
    ctx: RequestContext,
    fn: Callable[..., Any],
    *args: Any,
    permit: Permit | None = None,
) -> Any:
    """Runs ``fn(*args)`` on ``pool`` and awaits it without blocking the event loop.

    Args:
        pool: The threads to run on (unary calls and stream items have their own).
        ctx: The call's context: time spent queued for a thread counts against its deadline.
        fn: The blocking work.
        *args: Its arguments.
        permit: An admission permit, returned when the work ends, not when the
            caller leaves (a cancelled call's work may still be running).

    Returns:
        What ``fn`` returns.
    """

    def run() -> Any:
        ctx.check("starting")  # time queued for a thread counts against the deadline
        return fn(*args)

    try:
        fut = pool.submit(run)
    except BaseException:
        if permit is not None:
            permit.release()
        raise
    if permit is not None:
        fut.add_done_callback(lambda _f: permit.release())
    return await asyncio.wrap_future(fut)
