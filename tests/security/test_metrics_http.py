"""/metrics: its own bind address, an admin token when tokens are configured, HTTPS."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike_server import auth
from lookalike_server.config import Config, SecurityConfig
from lookalike_server.metrics import PrometheusExporter
from tests.security.certs import Pki, make_pki

ADMIN, READ = "admin-token-0123456789abcdef", "read-token-0123456789abcdef"


def token_file(tmp: Path) -> str:
    path = tmp / "tokens"
    path.write_text(f"{auth.hash_token(ADMIN)} admin ops\n{auth.hash_token(READ)} read,write app\n")
    return str(path)


def exporter() -> PrometheusExporter:
    return PrometheusExporter(lambda: {}, lambda: {"Search:OK": 3}, lambda: True)


def get(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_bind_loopback_by_default() -> None:
    assert Config().metrics_host == "127.0.0.1"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[str]:
    exp = exporter()
    port = exp.start("127.0.0.1", 0, SecurityConfig(token_file=token_file(tmp_path)))
    yield f"http://127.0.0.1:{port}/metrics"
    exp.stop()


def test_metrics_refuse_a_missing_or_wrong_token(guarded: str) -> None:
    status, body = get(guarded)
    assert status == 401 and "Authorization: Bearer" in body
    assert get(guarded, "not-a-token-0123456789")[0] == 401


def test_metrics_need_the_admin_scope(guarded: str) -> None:
    status, body = get(guarded, READ)
    assert status == 403 and "'admin'" in body


def test_metrics_with_an_admin_token_never_show_tokens(guarded: str) -> None:
    status, body = get(guarded, ADMIN)
    assert status == 200
    assert 'lookalike_requests_total{code="OK",method="Search"} 3.0' in body
    assert ADMIN not in body and READ not in body and "sha256" not in body


def test_metrics_auth_can_be_turned_off(tmp_path: Path) -> None:
    exp = exporter()
    port = exp.start("127.0.0.1", 0, SecurityConfig(token_file=token_file(tmp_path), metrics_auth=False))
    try:
        assert get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    finally:
        exp.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_metrics_over_https_with_client_certificates(pki: Pki, tmp_path: Path) -> None:
    security = SecurityConfig(
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        tls_client_ca=str(pki.ca),
        metrics_tls=True,
        token_file=token_file(tmp_path),
    )
    exp = exporter()
    port = exp.start("127.0.0.1", 0, security)
    url = f"https://127.0.0.1:{port}/metrics"
    try:
        with_cert = ssl.create_default_context(cafile=str(pki.ca))
        with_cert.load_cert_chain(pki.client.cert, pki.client.key)
        assert get(url, ADMIN, with_cert)[0] == 200
        assert get(url, None, with_cert)[0] == 401  # TLS and the token are both checked
        without_cert = ssl.create_default_context(cafile=str(pki.ca))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(url, ADMIN, without_cert)
        # Plain HTTP to the HTTPS port gets nothing.
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            get(f"http://127.0.0.1:{port}/metrics", ADMIN)
    finally:
        exp.stop()
