"""Store adapters: Milvus for vectors, Redis for item records. Dependency errors are translated here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the adapters import their clients; this package's own import stays light
    from lookalike_server.store.milvus import MilvusStore
    from lookalike_server.store.redis import RedisStore


@dataclass
class Stores:
    """Both stores of a server that has them (an embed-only server has none).

    Mutable so a test can wrap a store with a fault injector in one place.
    """

    milvus: MilvusStore
    redis: RedisStore


__all__ = ["Stores"]
