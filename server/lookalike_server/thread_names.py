"""OS names for the server's threads, so ``top -H``, ``perf`` and ``/proc`` tell them apart.

Python 3.11 names a thread for Python only: to the kernel every one of the
server's threads is "python". Named, an operator sees at once whether the
decoding threads, a model's batch workers or the event loop take the CPU, and
``benchmarks/server_cpu.py`` splits a call's CPU time the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

_PR_SET_NAME = 15  # prctl(2); the kernel keeps 15 bytes of the name
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def name_os_thread(name: str | None = None) -> None:
    """Gives the calling thread's OS name: ``name``, or its Python name; cut to 15 bytes.

    A no-op off Linux, and where the C library cannot be loaded or refuses.
    """
    if _libc is None:
        return
    raw = (name or threading.current_thread().name).encode("utf-8", "replace")[:15]
    try:
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)
    except (AttributeError, OSError):  # a libc without prctl: names are a nicety
        return


__all__ = ["name_os_thread"]
