"""Channel settings shared by the sync and async clients: message sizes, retries, balancing.

Retries are gRPC's own (the channel's service config ``retryPolicy``, see
:class:`RetryPolicy`), not a loop in every method: gRPC core retries the codes listed, with
exponential backoff and full jitter, inside the call's single deadline, and honours the
server's ``grpc-retry-pushback-ms`` trailer (wait that long; a negative value means "do
not retry"). Several replicas add ``loadBalancingConfig`` and ``healthCheckConfig`` to the
same service config (see :mod:`lookalike.targets`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from lookalike.errors import RETRIABLE_CODES

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_OPTIONS",
    "DEFAULT_TARGET",
    "IDEMPOTENT_METHODS",
    "RetryPolicy",
    "channel_options",
]

DEFAULT_TARGET = "127.0.0.1:50051"
"""Where the server listens by default (the ``lookalike-server`` default port, on loopback)."""

# Sized for images: a few multi-megabyte photos per request must fit both ways.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
)

SERVICE = "lookalike.v1.Lookalike"
HEALTH_SERVICE = "grpc.health.v1.Health"

IDEMPOTENT_METHODS: tuple[tuple[str, str], ...] = (
    (SERVICE, "ListModels"),
    (SERVICE, "Embed"),
    (SERVICE, "Search"),
    (SERVICE, "Get"),
    (SERVICE, "GetStats"),
    # Insert is idempotent on the server: the same content returns the existing id.
    (SERVICE, "Insert"),
    (HEALTH_SERVICE, "Check"),
)
"""Unary methods gRPC retries. Not ``Delete`` (a retry after a lost answer says NOT_FOUND for
what was in fact deleted: retry it yourself on ``err.retriable`` if that is fine), and no
stream (a half-consumed request iterator cannot be replayed)."""


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's ``retryPolicy`` for the idempotent methods: exponential backoff, full jitter.

    Before retry ``n`` (1-based) gRPC waits a uniform random time in
    ``[0, min(max_s, base_s * multiplier**(n-1))]``, so that many clients recovering from
    the same outage do not retry in lockstep; a server's ``grpc-retry-pushback-ms`` trailer
    replaces that wait. All attempts share the call's deadline.

    Attributes:
        retries: Extra attempts after the first one; 0 turns retrying off. At most 4
            (gRPC caps a call at 5 attempts).
        base_s: First backoff ceiling in seconds.
        max_s: Largest backoff ceiling in seconds.
        multiplier: Growth of the ceiling per retry.
        codes: Status codes worth retrying (default ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``,
            ``ABORTED``: see :mod:`lookalike.errors`).
    """

    retries: int = 3
    base_s: float = 0.1
    max_s: float = 2.0
    multiplier: float = 2.0
    codes: frozenset[grpc.StatusCode] = RETRIABLE_CODES

    def __post_init__(self) -> None:
        if not 0 <= self.retries <= 4:
            raise ValueError(f"retries must be 0..4 (gRPC allows 5 attempts per call), got {self.retries}")
        if self.base_s <= 0 or self.max_s < self.base_s or self.multiplier < 1:
            raise ValueError("need 0 < base_s <= max_s and multiplier >= 1")

    @property
    def enabled(self) -> bool:
        """Whether any retry happens at all."""
        return self.retries > 0 and bool(self.codes)

    def service_config(self) -> dict[str, Any]:
        """The channel service config (as a dict; ``json.dumps`` it for the channel option)."""
        if not self.enabled:
            return {}
        return {
            "methodConfig": [
                {
                    "name": [{"service": s, "method": m} for s, m in IDEMPOTENT_METHODS],
                    "retryPolicy": {
                        "maxAttempts": self.retries + 1,
                        "initialBackoff": f"{self.base_s:.3f}s",
                        "maxBackoff": f"{self.max_s:.3f}s",
                        "backoffMultiplier": self.multiplier,
                        "retryableStatusCodes": sorted(c.name for c in self.codes),
                    },
                }
            ],
            # gRPC's retry budget: every failed attempt costs a token, every success returns
            # a tenth; below half the tokens nothing is retried. Under overload retries would
            # multiply the load the server is refusing; this stops them until calls succeed.
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }


def channel_options(
    options: Sequence[tuple[str, Any]],
    policy: RetryPolicy,
    balancing_config: Mapping[str, Any] | None = None,
    authority: str | None = None,
) -> list[tuple[str, Any]]:
    """``options`` plus the retry and balancing settings, unless the caller set those keys.

    Args:
        options: The caller's channel options; a key given there is never overridden.
        policy: The retry policy (``methodConfig`` of the service config).
        balancing_config: ``loadBalancingConfig``/``healthCheckConfig`` entries for a
            target naming several replicas (see :mod:`lookalike.targets`).
        authority: ``grpc.default_authority`` for a target built from an address list.
    """
    given = {k for k, _ in options}
    extra: list[tuple[str, Any]] = [("grpc.enable_retries", 1 if policy.enabled else 0)]
    service_config = {**policy.service_config(), **(balancing_config or {})}
    if service_config:
        extra.append(("grpc.service_config", json.dumps(service_config)))
    if authority:
        extra.append(("grpc.default_authority", authority))
    if policy.enabled:
        # gRPC stops retrying a call once its request outgrows this buffer (256 KiB by
        # default): a few photos would silently make Insert and Embed unretriable.
        max_send = dict(options).get("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES)
        extra.append(("grpc.per_rpc_retry_buffer_size", max(int(max_send), 1 << 18)))
    return list(options) + [(k, v) for k, v in extra if k not in given]
