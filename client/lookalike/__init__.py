"""lookalike: a thin typed client and CLI for the lookalike image-similarity gRPC server.

``pip install lookalike`` gives this package only (grpcio, protobuf, tqdm); the server lives
in ``lookalike_server`` and comes with the ``server`` extra. The generated stubs are in
:mod:`lookalike.v1` for anything the typed client does not cover.
"""

from lookalike.client import (
    DEFAULT_TARGET,
    AbortedError,
    AsyncLookalikeClient,
    BatcherStats,
    ChannelSecurity,
    DeadlineExceededError,
    DeleteResult,
    FailedPreconditionError,
    FusedHit,
    Fusion,
    Hit,
    InsertResult,
    InsertStreamResult,
    InvalidArgumentError,
    Item,
    LookalikeClient,
    LookalikeError,
    ModelHits,
    ModelInfo,
    NewItem,
    NotFoundError,
    PermissionDeniedError,
    Preprocessing,
    ResourceExhaustedError,
    RetryPolicy,
    SearchQuery,
    SearchResult,
    SearchStreamResult,
    ServerTiming,
    Stats,
    UnauthenticatedError,
    UnavailableError,
)
from lookalike.images import ImageInput
from lookalike.throttle import ThrottleSettings

__all__ = [
    "DEFAULT_TARGET",
    "AbortedError",
    "AsyncLookalikeClient",
    "BatcherStats",
    "ChannelSecurity",
    "DeadlineExceededError",
    "DeleteResult",
    "FailedPreconditionError",
    "FusedHit",
    "Fusion",
    "Hit",
    "ImageInput",
    "InsertResult",
    "InsertStreamResult",
    "InvalidArgumentError",
    "Item",
    "LookalikeClient",
    "LookalikeError",
    "ModelHits",
    "ModelInfo",
    "NewItem",
    "NotFoundError",
    "PermissionDeniedError",
    "Preprocessing",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SearchQuery",
    "SearchResult",
    "SearchStreamResult",
    "ServerTiming",
    "Stats",
    "ThrottleSettings",
    "UnauthenticatedError",
    "UnavailableError",
]

__version__ = "0.1.0"
