"""Thread priorities: the work behind the front door runs below it.

Under full load every core is busy decoding images and running ONNX
Runtime. The gRPC front door (admission, fast RESOURCE_EXHAUSTED answers,
health checks) then waits for a core like any other thread, and its answers
take as long as the scheduler makes it wait. On Linux the nice value is per
thread, and a thread inherits it from the thread that creates it, so raising
it in the decoding and batching threads, and in the thread that creates an
ONNX Runtime session (whose intra-op pool is created with it), lets the front
door take a core first whenever it has something to do. The work still gets
every cycle the front door leaves.

An unprivileged process can raise a nice value but never lower it again, so
this only ever lowers the workers; the front door keeps the process's own.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_NICE = 19


def thread_nice() -> int | None:
    """The calling thread's nice value (None where threads have none of their own)."""
    if not hasattr(os, "getpriority"):
        return None
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except OSError:
        return None


def lower_this_thread(by: int) -> None:
    """Raises the calling thread's nice value by ``by`` (capped at 19); a no-op for 0 or off Linux.

    Args:
        by: How much lower than now this thread should run.
    """
    if by <= 0 or sys.platform != "linux":  # elsewhere the nice value is the whole process's
        return
    current = thread_nice()
    if current is None:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(MAX_NICE, current + by))
    except OSError as exc:  # e.g. a seccomp profile that forbids it: run at the same priority
        log.debug("cannot lower thread %s: %s", threading.current_thread().name, exc)


def run_lowered(by: int, fn: Callable[[], T], name: str = "lowered") -> T:
    """Runs ``fn`` in a short-lived thread lowered by ``by``, so the threads it creates inherit that.

    Used to create ONNX Runtime sessions: their intra-op thread pools are
    started inside the constructor.

    Args:
        by: Nice increment for the thread (0 = run ``fn`` here).
        fn: What to run.
        name: The thread's name.

    Returns:
        What ``fn`` returned; its exception is re-raised here.
    """
    if by <= 0:
        return fn()
    box: dict[str, object] = {}

    def target() -> None:
        lower_this_thread(by)
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    t = threading.Thread(target=target, name=name)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


__all__ = ["lower_this_thread", "run_lowered", "thread_nice"]
