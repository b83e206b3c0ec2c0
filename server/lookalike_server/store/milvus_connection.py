"""The Milvus client, and the translation of its exceptions into the server's errors.

Every pymilvus / gRPC exception is translated here into the server's error
family (:mod:`lookalike_server.errors`), so nothing above the store ever sees
a dependency's exception. Callers learn which dependency failed, never where
it lives; the address (credentials redacted) goes to the operator's log.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NoReturn

import grpc
from pymilvus import MilvusClient
from pymilvus.exceptions import (
    DataNotMatchException,
    DataTypeNotMatchException,
    MilvusException,
    MilvusUnavailableException,
    ParamError,
)

from lookalike_server import errors
from lookalike_server.config import MilvusConfig
from lookalike_server.store.addresses import redact_uri

log = logging.getLogger(__name__)

# gRPC codes that mean "the service is not there right now", as opposed to "you
# asked for something wrong".
_UNAVAILABLE_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Milvus status codes with the same meaning: rate limited, force-denied by quota.
_UNAVAILABLE_MILVUS = {8, 9}
_UNAVAILABLE_TEXT = (
    "fail connecting",
    "server unavailable",
    "connection refused",
    "failed to connect",
    "not ready",
    "is stopping",
    "server closed",
    "deadline exceeded",
    "timeout",
)
_COLLECTION_NOT_FOUND = 100
# Exceptions pymilvus raises for a request it (or Milvus) finds malformed.
_INVALID = (ParamError, DataTypeNotMatchException, DataNotMatchException)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Milvus is unreachable or refusing work for now."""
    if isinstance(exc, (MilvusUnavailableException, ConnectionError, TimeoutError, grpc.FutureTimeoutError)):
        return True
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in _UNAVAILABLE_GRPC
    if isinstance(exc, MilvusException):
        code = exc.code
        if isinstance(code, grpc.StatusCode):  # a gRPC error that outlived pymilvus' retries
            return code in _UNAVAILABLE_GRPC
        if code in _UNAVAILABLE_MILVUS:
            return True
        # Connection failures arrive as generic codes; only the text tells them apart.
        text = str(exc.message).lower()
        return any(t in text for t in _UNAVAILABLE_TEXT)
    return False


def short_error(exc: BaseException, limit: int = 300) -> str:
    """One line of an exception, bounded, for messages sent to clients."""
    text = f"code={exc.code}: {exc.message}" if isinstance(exc, MilvusException) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MilvusConnection:
    """One pymilvus client on one Milvus, with its exceptions translated.

    The base of :class:`~lookalike_server.store.milvus.MilvusStore`: it owns
    the client, the locks and the closed flag, and nothing about collections.

    Args:
        config: Milvus settings (token, database, timeout).
        uri: ``http://host:port`` (``https://`` for TLS) for a Milvus server, or
            a local ``*.db`` path for Milvus Lite.

    Raises:
        errors.Unavailable: Milvus cannot be reached.
    """

    def __init__(self, config: MilvusConfig, uri: str) -> None:
        self._config = config
        self._uri = uri
        self._safe_uri = redact_uri(uri)
        self._is_lite = not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))
        # Guards the subclasses' caches (dimensions, unflushed-row counters).
        self._lock = threading.Lock()
        # Milvus Lite is one embedded process whose writes are not safe to
        # overlap: concurrent flushes fail with "current_seq is monotonic;
        # tried to set 338 < 339". It executes them one at a time anyway, so
        # serialising writes here costs nothing. A server needs no such lock.
        self._write_lock: AbstractContextManager[Any] = threading.Lock() if self._is_lite else nullcontext()
        self._closed = False
        kwargs: dict[str, Any] = {"uri": uri, "timeout": config.timeout_s}
        if config.token:
            kwargs["token"] = config.token
        if config.db_name:
            kwargs["db_name"] = config.db_name
        try:
            self._client = MilvusClient(**kwargs)
        except Exception as exc:
            self._raise(exc, "connect")

    @property
    def uri(self) -> str:
        """The URI this store talks to, without credentials."""
        return self._safe_uri

    @property
    def is_lite(self) -> bool:
        """Whether the backend is Milvus Lite (a local file) rather than a server."""
        return self._is_lite

    def _raise(self, exc: BaseException, action: str, collection: str | None = None) -> NoReturn:
        """Translates a dependency exception into the server's error family.

        Args:
            exc: What pymilvus/gRPC raised.
            action: What we were doing, for the message.
            collection: The collection concerned, if any.

        Raises:
            errors.ServiceError: Always; the original is chained as ``__cause__``.
        """
        where = f"{action} on collection {collection!r}" if collection else action
        if isinstance(exc, errors.ServiceError):
            raise exc
        if is_unavailable(exc) or not isinstance(exc, _INVALID):
            # Callers learn which dependency failed, not where it lives: gRPC's
            # text names ipv4:host:port. The operator's log keeps the detail.
            log.warning("Milvus at %s: %s: %s", self._safe_uri, where, short_error(exc))
        if is_unavailable(exc):
            raise errors.Unavailable(f"Milvus is unavailable ({where}); retriable") from exc
        if isinstance(exc, _INVALID):
            raise errors.InvalidArgument(f"Milvus rejected {where}: {short_error(exc)}") from exc
        if isinstance(exc, MilvusException) and exc.code == _COLLECTION_NOT_FOUND:
            raise errors.FailedPrecondition(
                f"Milvus collection {collection!r} does not exist ({where}); it is created at start-up"
            ) from exc
        raise errors.InternalError(f"Milvus failed ({where}); the server log has the details") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise errors.Unavailable("Milvus store is closed; retriable after restart")

    def ping(self) -> None:
        """Checks that Milvus answers a cheap call.

        Raises:
            errors.Unavailable: Milvus is unreachable or this store is closed.
        """
        self._check_open()
        try:
            self._client.list_collections(timeout=min(self._config.timeout_s, 5.0))
        except Exception as exc:
            if isinstance(exc, MilvusException) and not is_unavailable(exc):
                # Whatever went wrong, for a health check Milvus is not serving.
                raise errors.Unavailable(
                    f"Milvus at {self._safe_uri} failed a health check: {short_error(exc)}; retriable"
                ) from exc
            self._raise(exc, "ping")

    def close(self) -> None:
        """Closes the client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        except Exception as exc:
            log.warning("closing Milvus client for %s failed: %s", self._safe_uri, short_error(exc))
