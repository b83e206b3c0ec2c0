"""TLS and mTLS on real gRPC servers: who gets in, and certificate rotation under load.

Certificates come from :func:`tests.security.certs.make_pki` (the openssl CLI). The servers
use :func:`lookalike_server.tls.server_credentials`, the credentials the app serves with.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from lookalike_server import tls
from lookalike_server.config import SecurityConfig
from lookalike_server.errors import ConfigError
from tests.security.certs import Pair, Pki, make_pki
from tests.security.servers import AioServer, call, sync_server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def channel(port: int, ca: Path, client: Pair | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def outcome(port: int, ca: Path, client: Pair | None) -> grpc.StatusCode:
    with channel(port, ca, client) as ch:
        try:
            call(ch, "ListModels", timeout=5)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture(scope="module", params=["aio", "sync"])
def mtls_port(request: pytest.FixtureRequest, pki: Pki) -> Iterator[int]:
    security = SecurityConfig(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key), tls_client_ca=str(pki.ca))
    creds = tls.server_credentials(security)
    if request.param == "aio":
        server = AioServer(creds=creds)
        yield server.port
        server.stop()
    else:
        sync, port = sync_server(creds=creds)
        yield port
        sync.stop(0)


def test_mtls_accepts_a_good_client_certificate(mtls_port: int, pki: Pki) -> None:
    assert outcome(mtls_port, pki.ca, pki.client) == grpc.StatusCode.OK


@pytest.mark.parametrize("who", ["no certificate", "wrong CA", "expired"])
def test_mtls_refuses(mtls_port: int, pki: Pki, who: str) -> None:
    client = {"no certificate": None, "wrong CA": pki.wrong_ca_client, "expired": pki.expired_client}[who]
    # The handshake fails, so the call never reaches the server: UNAVAILABLE on the client.
    assert outcome(mtls_port, pki.ca, client) == grpc.StatusCode.UNAVAILABLE


def test_tls_without_client_ca_needs_no_client_certificate(pki: Pki) -> None:
    creds = tls.server_credentials(SecurityConfig(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key)))
    server = AioServer(creds=creds)
    try:
        assert outcome(server.port, pki.ca, None) == grpc.StatusCode.OK
        # A client that does not trust the server's CA refuses it.
        assert outcome(server.port, pki.other_ca, None) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_mismatched_key_stops_start_up(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="invalid TLS files"):
        tls.server_credentials(SecurityConfig(tls_cert=str(pki.server.cert), tls_key=str(pki.server2.key)))


def test_client_ca_needs_a_server_certificate(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="tls_client_ca"):
        SecurityConfig(tls_client_ca=str(pki.ca))


def served_certificate(port: int, pki: Pki) -> bytes:
    """The DER certificate a new TLS connection to ``port`` is shown."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(pki.client.cert, pki.client.key)
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(pair: Pair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert.read_text())


def install(pair: Pair, cert: Path, key: Path, atomic: bool) -> None:
    """Puts ``pair`` in place as a deployment tool would: key first, then the certificate.

    ``atomic``: write a temp file and rename (what cert-manager and most tools do);
    otherwise rewrite in place, which lets a handshake see a half-written file.
    """
    for src, dst in ((pair.key, key), (pair.cert, cert)):
        data = src.read_bytes()
        if atomic:
            tmp = dst.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dst)
        else:
            with open(dst, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(0.01)
                f.write(data[len(data) // 2 :])
        time.sleep(0.02)  # a window in which the key and the certificate do not match


def test_rotation_under_load_fails_no_call(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.server.cert.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    creds = tls.server_credentials(SecurityConfig(tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(pki.ca)))
    server = AioServer(creds=creds)
    stop = threading.Event()
    counts: dict[str, int] = {"ok": 0, "failed": 0, "channels": 0}
    errors: list[Any] = []
    lock = threading.Lock()

    def client_loop() -> None:
        # A new channel every few calls: each one is a new TLS handshake, which is
        # where the rotated certificate is picked up.
        while not stop.is_set():
            with channel(server.port, pki.ca, pki.client) as ch:
                with lock:
                    counts["channels"] += 1
                for _ in range(5):
                    try:
                        call(ch, "ListModels", timeout=10)
                        with lock:
                            counts["ok"] += 1
                    except grpc.RpcError as exc:
                        with lock:
                            counts["failed"] += 1
                            errors.append((exc.code(), exc.details()))

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        assert served_certificate(server.port, pki) == der(pki.server)
        for i in range(6):
            new = pki.server2 if i % 2 == 0 else pki.server
            install(new, cert, key, atomic=i < 3)
            time.sleep(0.2)
            # New connections are shown the new certificate, without a restart.
            assert served_certificate(server.port, pki) == der(new)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        server.stop()
    print(f"rotation under load: {counts}")
    assert counts["failed"] == 0, errors[:5]
    assert counts["ok"] > 50 and counts["channels"] > 10


def test_sighup_rereads_files_with_unchanged_mtime(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.server.cert.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    reloader = tls.CertificateReloader(SecurityConfig(tls_cert=str(cert), tls_key=str(key)))
    before = (cert.stat().st_mtime_ns, key.stat().st_mtime_ns)
    cert.write_bytes(pki.server2.cert.read_bytes())
    key.write_bytes(pki.server2.key.read_bytes())
    os.utime(cert, ns=(before[0], before[0]))
    os.utime(key, ns=(before[1], before[1]))
    # Same size and mtime (a copy with preserved times): only SIGHUP notices. Size may differ by
    # a byte between two EC certificates, so compare after the explicit request either way.
    reloader.request_reload()
    assert reloader.fetch() is not None
    assert reloader.current.cert == pki.server2.cert.read_bytes()
    assert reloader.fetch() is None  # nothing changed since
