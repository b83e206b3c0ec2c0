"""The client's error family: one :class:`LookalikeError` subclass per common status code.

gRPC errors are translated here, at the boundary (httpx ``_exceptions.py`` style): callers
catch :class:`LookalikeError` (or a subclass) and never need ``grpc.RpcError``; the original
error stays chained as ``__cause__``.

Which codes are worth retrying follows what the server means by them
(``server/lookalike_server/errors.py``):

* ``UNAVAILABLE``: the server (or its Milvus/Redis) could not do the work now; nothing ran.
* ``RESOURCE_EXHAUSTED``: admission control refused the work (a queue is full); back off and
  retry. It never means "too large": the server reports a request over a size limit as
  ``INVALID_ARGUMENT``, which no retry can fix.
* ``ABORTED``: a concurrent change won a race (e.g. a delete during an insert); retry the call.
"""

from __future__ import annotations

import grpc

from lookalike.v1 import lookalike_pb2 as pb

__all__ = [
    "RETRIABLE_CODES",
    "AbortedError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "LookalikeError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "is_overload",
    "make_error",
]

RETRIABLE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
)
"""Codes for which sending the same request again, after a pause, may succeed."""

_GRPC_SIZE_LIMIT = "message larger than max"


class LookalikeError(Exception):
    """An RPC failed. Subclasses exist per common status code; catch this one for all.

    Attributes:
        code: The gRPC status code.
        message: The server's (or gRPC's) message.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def retriable(self) -> bool:
        """Whether sending the same request again, after a pause, may succeed.

        gRPC's own message-size limit (client or server side) also reports
        ``RESOURCE_EXHAUSTED`` ("... message larger than max ..."); that one never succeeds
        on retry, so it is not retriable here. The channel's retry policy cannot tell the
        two apart by code alone, so such a call costs up to ``retries`` quick extra attempts
        before it fails.
        """
        if self.code == grpc.StatusCode.RESOURCE_EXHAUSTED and _GRPC_SIZE_LIMIT in self.message:
            return False
        return self.code in RETRIABLE_CODES


class InvalidArgumentError(LookalikeError):
    """The request was wrong: bad image, unknown attribute, bad top_k, over a size limit..."""


class NotFoundError(LookalikeError):
    """The item id, key or model named does not exist."""


class UnavailableError(LookalikeError):
    """The server (or its Milvus/Redis) could not be reached; retriable."""


class ResourceExhaustedError(LookalikeError):
    """The server is overloaded (a queue is full); back off and retry.

    A request over a size limit is an :class:`InvalidArgumentError`, not this.

    Attributes:
        retry_after_s: The server's hint (its ``grpc-retry-pushback-ms`` trailer) of how long to
            wait before trying again, in seconds; ``None`` when it sent none.
        local: True when this client refused the call itself, without sending it, because the
            server had been refusing most calls (:mod:`lookalike.throttle`).
    """

    retry_after_s: float | None = None
    local: bool = False


class AbortedError(LookalikeError):
    """A concurrent change won a race on the server; retriable."""


class DeadlineExceededError(LookalikeError):
    """The call's deadline passed."""


class FailedPreconditionError(LookalikeError):
    """The system is not in a state for this request (e.g. item lacks that model)."""


class UnauthenticatedError(LookalikeError):
    """The server wants a token (or a client certificate) and got none or a bad one."""


class PermissionDeniedError(LookalikeError):
    """The token is valid but lacks the scope this call needs (read, write or admin)."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[LookalikeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}

_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def make_error(code: grpc.StatusCode, message: str) -> LookalikeError:
    """Builds the :class:`LookalikeError` subclass matching ``code``."""
    return _ERROR_CLASSES.get(code, LookalikeError)(code, message)


def from_rpc_error(err: grpc.RpcError) -> LookalikeError:
    """Translates a ``grpc.RpcError`` (sync or aio), chaining it as ``__cause__``."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    exc = make_error(code or grpc.StatusCode.UNKNOWN, details or "")
    if isinstance(exc, ResourceExhaustedError):
        exc.retry_after_s = _pushback_s(err)
    exc.__cause__ = err
    return exc


def _pushback_s(err: grpc.RpcError) -> float | None:
    """The ``grpc-retry-pushback-ms`` trailer in seconds (None if absent or malformed)."""
    try:
        trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    except Exception:  # an aio error before the call ended has none to give
        return None
    for key, value in trailers or ():
        if key == "grpc-retry-pushback-ms":
            try:
                ms = int(value)
            except (TypeError, ValueError):
                return None
            return ms / 1000 if ms >= 0 else None
    return None


def is_overload(exc: LookalikeError) -> bool:
    """Whether ``exc`` is the server refusing work because it is busy (not a size limit)."""
    return isinstance(exc, ResourceExhaustedError) and exc.retriable


def from_stream_error(err: pb.Error) -> LookalikeError:
    """Translates the per-item ``Error`` message a stream response carries."""
    return make_error(_CODES_BY_NUMBER.get(err.code, grpc.StatusCode.UNKNOWN), err.message)
