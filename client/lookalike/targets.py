"""Where a client connects: one server, a list of replicas, or any gRPC target string.

The server keeps no state of its own (Milvus and Redis hold it), so N replicas can serve
one deployment. This module turns what a user writes into the channel's target and the
service config that spreads calls over the replicas:

* ``"host:port"`` (one address, no scheme): one server. Unchanged from before: gRPC's
  default ``pick_first`` policy and no client-side health checking.
* ``"host1:port,host2:port"`` or ``["host1:port", "host2:port"]``: several replicas. Each
  host is resolved once, now, and the channel dials the ``ipv4:``/``ipv6:`` address list
  (gRPC has no resolver for a list of host *names*). For a set of replicas that changes,
  use a DNS name instead.
* A gRPC target with a scheme (``dns:///svc:50051``, ``ipv4:10.0.0.1:50051,10.0.0.2:50051``,
  ``ipv6:[::1]:5001,[::1]:5002``, ``unix:/path``, ...): passed to gRPC as written.
  ``dns:`` and comma lists are balanced; ``dns:`` re-resolves when a connection fails,
  so a Kubernetes headless Service's endpoints are followed as pods come and go.

A balanced channel uses gRPC's client-side ``round_robin`` (one connection per address,
calls rotated over the ready ones) with client-side health checking (``healthCheckConfig``):
each connection watches ``grpc.health.v1.Health/Watch`` for the ``lookalike.v1.Lookalike``
service and takes no new calls while its server reports anything but ``SERVING``, e.g.
while it warms up or drains on SIGTERM.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["HEALTH_CHECK_SERVICE", "Balancing", "ResolvedTarget", "resolve_target", "split_targets"]

HEALTH_CHECK_SERVICE = "lookalike.v1.Lookalike"
"""The service name the server reports in ``grpc.health.v1`` (``SERVING`` once warm)."""

# Target schemes gRPC Python resolves itself; anything else without "//" is host:port.
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:", "google-c2p:")

Balancing = Literal["round_robin", "pick_first"]
"""A gRPC client-side load-balancing policy the client can set."""
_POLICIES = ("round_robin", "pick_first")


@dataclass(frozen=True)
class ResolvedTarget:
    """What the channel is built from.

    Attributes:
        uri: The target string handed to gRPC.
        addresses: The ``host:port`` entries as the user gave them (for display and the
            plaintext-token check), or ``(uri,)`` for a scheme target.
        balancing: The load-balancing policy to set in the service config, or ``None`` to
            leave gRPC's default (``pick_first``, no client-side health checks).
        authority: The ``:authority`` (TLS server name) to use when gRPC's own default
            would be an address list; ``None`` to keep gRPC's.
    """

    uri: str
    addresses: tuple[str, ...]
    balancing: Balancing | None
    authority: str | None = None

    def service_config(self, health_check: bool = True) -> dict[str, Any]:
        """The ``loadBalancingConfig`` and ``healthCheckConfig`` parts of the service config.

        Args:
            health_check: Whether round_robin should skip replicas whose health is not
                ``SERVING``.
        """
        if self.balancing is None:
            return {}
        config: dict[str, Any] = {"loadBalancingConfig": [{self.balancing: {}}]}
        if health_check and self.balancing == "round_robin":
            config["healthCheckConfig"] = {"serviceName": HEALTH_CHECK_SERVICE}
        return config


def has_scheme(target: str) -> bool:
    """Whether ``target`` is a gRPC URI with a scheme gRPC resolves (``dns:``, ``ipv4:``…)."""
    return target.strip().lower().startswith(_SCHEMES)


def split_targets(target: str | Sequence[str]) -> list[str]:
    """Splits what a user gave into entries: a scheme target is one entry, commas split the rest.

    Args:
        target: One string (maybe comma-separated) or a sequence of them.

    Returns:
        The non-empty entries, stripped, in order.
    """
    parts = [target] if isinstance(target, str) else list(target)
    out: list[str] = []
    for part in parts:
        if has_scheme(part):
            out.append(part.strip())  # a comma inside ipv4:a,b belongs to the URI
        else:
            out.extend(p.strip() for p in part.split(",") if p.strip())
    return out


def _host_port(address: str) -> tuple[str, int]:
    if address.startswith("["):  # [v6]:port
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port (or [ipv6]:port) in a target list, got {address!r}")
    return host, int(port)


def _resolve(address: str) -> list[tuple[int, str]]:
    """``(family, "ip:port" or "[ip]:port")`` for each address ``host`` resolves to."""
    host, port = _host_port(address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        return [(family, f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(f"cannot resolve {host!r} in the target list: {exc}") from exc
    found: list[tuple[int, str]] = []
    for family, _, _, _, sockaddr in infos:
        entry = f"{sockaddr[0]}:{port}" if family == socket.AF_INET else f"[{sockaddr[0]}]:{port}"
        if family in (socket.AF_INET, socket.AF_INET6) and (family, entry) not in found:
            found.append((family, entry))
    # gRPC's ipv4: and ipv6: lists take one family each: prefer IPv4 where a name has both.
    v4 = [f for f in found if f[0] == socket.AF_INET]
    return v4 or found


def resolve_target(target: str | Sequence[str], balancing: Balancing | None = None) -> ResolvedTarget:
    """Turns a target (or several) into the channel's target and balancing policy.

    Args:
        target: ``"host:port"``, ``"h1:p1,h2:p2"``, a sequence of such, or one gRPC target
            with a scheme (``dns:///svc:50051``, ``ipv4:a:p,b:p``...).
        balancing: ``"round_robin"`` or ``"pick_first"`` to force a policy; ``None`` picks
            ``round_robin`` for several addresses, a comma list or a ``dns:`` target, and
            leaves a single ``host:port`` as it always was.

    Returns:
        The resolved target.

    Raises:
        ValueError: Nothing given, a malformed entry, a host that does not resolve, a scheme
            target mixed with others, a comma in a ``dns:`` target, IPv4 and IPv6 hosts in
            one list, or an unknown policy.
    """
    if balancing is not None and balancing not in _POLICIES:
        raise ValueError(f"balancing must be one of {', '.join(_POLICIES)}, got {balancing!r}")
    entries = split_targets(target)
    if not entries:
        raise ValueError("no target given: expected host:port, a comma-separated list, or a gRPC target URI")
    if any(has_scheme(e) for e in entries):
        if len(entries) > 1:
            raise ValueError(
                f"a gRPC target URI ({entries[0]!r}...) cannot be combined with other targets: "
                "write one URI (e.g. ipv4:10.0.0.1:50051,10.0.0.2:50051) or a list of host:port"
            )
        uri = entries[0]
        scheme = uri.split(":", 1)[0].lower()
        if scheme == "dns" and "," in uri:
            raise ValueError(
                f"a dns: target names one host ({uri!r}); for several replicas give a name that "
                "resolves to all of them, a list of host:port, or an ipv4:/ipv6: address list"
            )
        several = scheme in ("dns", "ipv4", "ipv6") and ("," in uri or scheme == "dns")
        policy: Balancing | None = balancing or ("round_robin" if several else None)
        return ResolvedTarget(uri, (uri,), policy)
    if len(entries) == 1:
        return ResolvedTarget(entries[0], (entries[0],), balancing)
    resolved = [r for e in entries for r in _resolve(e)]
    families = {f for f, _ in resolved}
    if len(families) > 1:
        raise ValueError(
            f"the target list {','.join(entries)} mixes IPv4 and IPv6 addresses; gRPC dials one "
            "family per list: give IPv4 addresses (or names) only, or IPv6 only"
        )
    scheme = "ipv4" if families == {socket.AF_INET} else "ipv6"
    # Deduplicated in order: two names for one replica would give it twice the load.
    unique = list(dict.fromkeys(a for _, a in resolved))
    return ResolvedTarget(
        f"{scheme}:{','.join(unique)}",
        tuple(entries),
        balancing or "round_robin",
        # TLS checks the server's certificate against the authority; gRPC's default for an
        # address list is the list itself. The first name given is the natural choice.
        authority=entries[0],
    )
