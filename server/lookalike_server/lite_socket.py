"""Milvus Lite on a unix socket instead of a TCP port.

Milvus Lite 3.x (milvus-lite 3.2.2, pymilvus 3.0.2) runs in-process: pymilvus,
given a ``*.db`` path, asks ``milvus_lite.server_manager`` to start a gRPC
server and connects to what it returns. Out of the box that server listens on
``127.0.0.1:<random port>`` with no authentication, so any local process
(any user) can list collections and read every vector and key.

:func:`install` makes the manager bind ``unix:<path>.sock`` instead, next to
the ``.db`` directory inside the 0700 data directory, with the socket itself
0600: only the server's own user can connect, and no TCP port is opened.
pymilvus speaks ``unix:`` URIs natively. If milvus-lite's internals differ
(another version) or the socket path is too long for ``AF_UNIX``, the stock
TCP behaviour stays and a warning says so.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

_MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS


def install() -> bool:
    """Patches milvus-lite's server manager to serve on a unix socket; True when active."""
    try:
        from milvus_lite import server_manager
        from milvus_lite.adapter.grpc.server import DEFAULT_MAX_WORKERS, _build_server
        from milvus_lite.db import MilvusLite
    except ImportError as exc:
        log.warning("Milvus Lite stays on a TCP port on 127.0.0.1 (cannot use a unix socket: %s)", exc)
        return False
    cls: Any = server_manager.ServerManager
    if getattr(cls, "_lookalike_unix_socket", False):
        return True
    tcp_start = cls.start_and_get_uri

    def start_and_get_uri(self: Any, path: str, args: dict[str, Any] | None = None) -> str | None:
        abs_path = os.path.abspath(path)
        sock = abs_path + ".sock"
        if len(sock) > _MAX_UNIX_PATH:
            log.warning("Milvus Lite socket path too long (%s); serving it on 127.0.0.1 TCP instead", sock)
            return tcp_start(self, path, args)  # type: ignore[no-any-return]
        uri = f"unix:{sock}"
        with self._lock:
            if abs_path in self._servers:
                return uri
        db = MilvusLite(abs_path)
        server = _build_server(db, DEFAULT_MAX_WORKERS)
        if os.path.exists(sock):
            os.unlink(sock)  # left by a crash; the .db directory's lock guards real concurrent use
        if not server.add_insecure_port(uri):
            db.close()
            raise OSError(f"cannot bind Milvus Lite to {uri}")
        server.start()
        os.chmod(sock, 0o600)
        with self._lock:
            self._servers[abs_path] = (server, db, 0)
        log.info("Milvus Lite for %s on %s (no TCP port)", abs_path, uri)
        return uri

    cls.start_and_get_uri = start_and_get_uri
    cls._lookalike_unix_socket = True
    return True
