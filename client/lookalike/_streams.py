"""Flow-controlled bidirectional streams for the blocking client (InsertStream, SearchStream)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from lookalike.errors import LookalikeError, from_rpc_error

__all__ = ["windowed_stream"]

_T = TypeVar("_T")


def windowed_stream(
    method: Callable[..., Any],
    inputs: Iterator[tuple[int, _T]],
    build: Callable[[int, _T], Any],
    on_response: Callable[[int, _T, Any], Any],
    on_local_error: Callable[[int, _T, Exception], Any],
    *,
    window: int,
    timeout: float | None,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> Iterator[Any]:
    """Drives a bidirectional stream with at most ``window`` requests unanswered.

    gRPC pulls the request iterator on its own thread; a semaphore acquired per request
    sent and released per response received bounds what is in flight, which is the flow
    control the server expects of a polite client. Inputs that fail to build locally (an
    unreadable file, an invalid query) never go on the wire; they are handed to the
    consuming thread through a queue and reported between responses.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    slots = threading.Semaphore(window)
    pending: dict[str, tuple[int, _T]] = {}
    local_failures: queue.SimpleQueue[Any] = queue.SimpleQueue()
    done_sending = threading.Event()
    stop = threading.Event()

    def requests() -> Iterator[Any]:
        try:
            for index, value in inputs:
                try:
                    req = build(index, value)
                except (OSError, ValueError, TypeError) as exc:
                    local_failures.put(on_local_error(index, value, exc))
                    continue
                # Wait for a free slot, but notice when the consumer has gone away.
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                pending[req.request_id] = (index, value)
                yield req
        finally:
            done_sending.set()

    call = method(requests(), timeout=timeout, metadata=metadata)
    try:
        for resp in call:
            slots.release()
            while not local_failures.empty():
                yield local_failures.get()
            entry = pending.pop(resp.request_id, None)
            if entry is None:  # a server bug; better loud than a result filed under the wrong input
                raise LookalikeError(
                    grpc.StatusCode.INTERNAL, f"server answered unknown request_id {resp.request_id!r}"
                )
            index, value = entry
            yield on_response(index, value, resp)
    except grpc.RpcError as err:
        raise from_rpc_error(err) from err
    finally:
        stop.set()
        if not done_sending.is_set() or pending:
            call.cancel()
    while not local_failures.empty():
        yield local_failures.get()
