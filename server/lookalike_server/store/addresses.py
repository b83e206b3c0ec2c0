"""Store addresses: as messages and logs may show them (without credentials), and cluster URLs parsed."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

#: URL schemes of a Redis Cluster: ``redis+cluster://`` (plain) and ``rediss+cluster://`` (TLS).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def redact_uri(uri: str) -> str:
    """Returns ``uri`` without user/password, safe for messages and logs.

    Args:
        uri: A Milvus or Redis URI, or a local path.

    Returns:
        The URI with any ``user:password@`` removed.
    """
    parts = urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


@dataclass(frozen=True)
class ClusterURL:
    """A ``redis+cluster://`` URL split into what redis-py's ``RedisCluster`` takes.

    Attributes:
        url: A ``redis://`` or ``rediss://`` URL of the first seed node, with
            the credentials and query options of the original (redis-py
            parses those: ``?ssl_ca_certs=...``, ``?protocol=3``...).
        seeds: Every seed node as ``(host, port)``, the first included.
    """

    url: str
    seeds: tuple[tuple[str, int], ...]


def parse_cluster_url(url: str) -> ClusterURL:
    """Parses ``redis+cluster://[user:password@]host:port[,host:port...][/0][?options]``.

    Any one seed that answers is enough: the client learns every master and
    replica from it (``CLUSTER SLOTS``) and follows the cluster as it changes.

    Args:
        url: The cluster URL.

    Returns:
        The first seed as a plain redis-py URL, and all seeds.

    Raises:
        ValueError: Not a cluster URL, no host, a port that is not a number,
            or a database other than 0 (a cluster has only database 0).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"a Redis Cluster URL starts with {' or '.join(s + '://' for s in CLUSTER_SCHEMES)}")
    plain = "rediss" if scheme.lower() == "rediss+cluster" else "redis"
    # The host list ends at the first '/', '?' or '#'; credentials end at the last '@' before it.
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    auth, _, hosts = netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        if not colon:
            host, port = part.strip(), "6379"
        host = host.strip("[]")  # an IPv6 literal in brackets
        if not host:
            raise ValueError(f"a Redis Cluster URL needs host:port seeds separated by commas, got {hosts!r}")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"port {port!r} of seed {host} is not a port number")
        seeds.append((host, int(port)))
    path = urlsplit("x://h" + tail).path.strip("/")
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, the URL names database {path!r}")
    first_host, first_port = seeds[0]
    shown = f"[{first_host}]" if ":" in first_host else first_host
    at = auth + "@" if auth else ""
    return ClusterURL(f"{plain}://{at}{shown}:{first_port}{tail}", tuple(seeds))
