"""The one error family of the server, and its one mapping to gRPC status codes.

Every layer raises a :class:`ServiceError` subclass; dependencies' own
exceptions (pymilvus, redis, onnxruntime, Pillow) are translated into these at
the edge that calls them. The gRPC adapter turns them into statuses with
:func:`grpc_code_for` and nothing else, so the table below is the whole story
of which failure a client sees as which code.

This module imports nothing from grpc so the core stays usable without it; the
codes are named by their ``grpc.StatusCode`` names.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the server reports to a client.

    Attributes:
        code: Name of the gRPC status code (e.g. ``"INVALID_ARGUMENT"``).
        retriable: Whether the same request may succeed if simply retried.
    """

    code: str = "INTERNAL"
    retriable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """The request itself is wrong (bad image, bad field, unknown attribute...)."""

    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    """A named thing (item id, key, model) does not exist."""

    code = "NOT_FOUND"


class ModelNotFound(NotFound):
    """The request names a model the server has not loaded."""


class Aborted(ServiceError):
    """A concurrent change won a race; retry the call.

    Sent when a Delete (or a sweep) removed an item while an insert of it ran,
    or when another request is still inserting the same item and did not
    finish within this request's wait. Nothing was acknowledged, so a retry
    is safe and returns the item's id once it is stored.
    """

    code = "ABORTED"
    retriable = True


class FailedPrecondition(ServiceError):
    """The system is not in a state for this request (e.g. item lacks that model)."""

    code = "FAILED_PRECONDITION"


class Overloaded(ServiceError):
    """Admission control refused the work: a queue is full. Retry with backoff."""

    code = "RESOURCE_EXHAUSTED"
    retriable = True


class TooLarge(InvalidArgument):
    """The request exceeds a configured size limit (bytes, pixels, images).

    INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: retrying the same request can
    never succeed, and clients treat RESOURCE_EXHAUSTED as "back off and
    retry" (it is what :class:`Overloaded` sends).
    """


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work could be done."""

    code = "DEADLINE_EXCEEDED"


class Cancelled(ServiceError):
    """The caller went away; the work was dropped."""

    code = "CANCELLED"


class Unavailable(ServiceError):
    """A backing service (Milvus, Redis) or the server itself is not reachable/ready."""

    code = "UNAVAILABLE"
    retriable = True


class ShuttingDown(Unavailable):
    """The server is draining and takes no new work."""


class InternalError(ServiceError):
    """A bug or an unexpected failure; logged with a traceback on the server."""

    code = "INTERNAL"


class ConfigError(Exception):
    """Invalid configuration. Raised at start-up, never sent to a client."""


class ModelLoadError(ConfigError):
    """A model could not be loaded (missing/corrupt file, shape disagreement)."""


def grpc_code_for(exc: BaseException) -> str:
    """Returns the gRPC status code name for any exception.

    Args:
        exc: The exception a request ended with.

    Returns:
        A ``grpc.StatusCode`` member name. Anything that is not a
        :class:`ServiceError` is a bug and maps to ``"INTERNAL"``.
    """
    if isinstance(exc, ServiceError):
        return exc.code
    return "INTERNAL"
