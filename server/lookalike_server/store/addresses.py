"""Store addresses as messages and logs may show them: without credentials."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


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
