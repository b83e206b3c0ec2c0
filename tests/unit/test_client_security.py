"""TLS, mTLS and bearer tokens from the client side, against real in-process servers.

Certificates are made with the ``openssl`` command line in a fixture: a CA, a server
certificate for 127.0.0.1 and a client certificate, all signed by that CA.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lookalike import AsyncLookalikeClient, ChannelSecurity, LookalikeClient, UnavailableError
from lookalike.security import is_loopback_target
from tests.unit.test_client_fakes import FakeServer

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(pki: Path, name: str, subject: str, ext: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", subject,
             "-out", f"{name}.csr", cwd=pki)  # fmt: skip
    (pki / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=pki)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=lookalike test CA", cwd=d)  # fmt: skip
    _issue(d, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _issue(d, "client", "/CN=test client", "extendedKeyUsage=clientAuth\n")
    # A second CA, to show a server certificate it did not sign is refused.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem",
             "-days", "2", "-subj", "/CN=other CA", cwd=d)  # fmt: skip
    return d


@pytest.fixture
def mtls_server(pki: Path) -> Iterator[FakeServer]:
    creds = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    with FakeServer(credentials=creds) as s:
        yield s


def test_mtls_with_ca_and_client_cert(mtls_server: FakeServer, pki: Path) -> None:
    with LookalikeClient(
        mtls_server.target, ca=str(pki / "ca.pem"), cert=str(pki / "client.pem"), key=str(pki / "client.key")
    ) as c:
        assert [m.name for m in c.list_models()] == ["alpha", "beta"]


def test_mtls_async_client(mtls_server: FakeServer, pki: Path) -> None:
    async def main() -> list[str]:
        sec = ChannelSecurity(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key", token="t0k")
        async with AsyncLookalikeClient(mtls_server.target, security=sec) as c:
            return [m.name for m in await c.list_models()]

    assert asyncio.run(main()) == ["alpha", "beta"]
    assert mtls_server.servicer.seen.metadata["ListModels"][-1]["authorization"] == "Bearer t0k"


def test_mtls_without_client_cert_is_refused(mtls_server: FakeServer, pki: Path) -> None:
    no_cert = LookalikeClient(mtls_server.target, ca=str(pki / "ca.pem"), timeout=5, retries=0)
    with no_cert as c, pytest.raises(UnavailableError):
        c.list_models()
    assert not mtls_server.servicer.seen.requests["ListModels"]


def test_server_signed_by_another_ca_is_refused(mtls_server: FakeServer, pki: Path) -> None:
    with (
        LookalikeClient(
            mtls_server.target,
            ca=(pki / "other.pem").read_bytes(),
            cert=(pki / "client.pem").read_bytes(),
            key=(pki / "client.key").read_bytes(),
            timeout=5,
            retries=0,
        ) as c,
        pytest.raises(UnavailableError),
    ):
        c.list_models()
    assert not mtls_server.servicer.seen.requests["ListModels"]


def test_token_over_tls_travels_as_call_credentials(mtls_server: FakeServer, pki: Path) -> None:
    sec = ChannelSecurity(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key", token="s3cret")
    with LookalikeClient(mtls_server.target, security=sec) as c:
        assert sec.call_metadata == ()  # not added by hand: the channel credentials carry it
        c.list_models()
        # Even a raw stub call on the channel carries it.
        from lookalike.v1 import lookalike_pb2 as pb

        c.stub.GetStats(pb.GetStatsRequest(), timeout=5)
    assert mtls_server.servicer.seen.metadata["ListModels"][-1]["authorization"] == "Bearer s3cret"
    assert mtls_server.servicer.seen.metadata["GetStats"][-1]["authorization"] == "Bearer s3cret"


def test_token_over_loopback_plaintext_sent_per_call() -> None:
    with FakeServer() as server, LookalikeClient(server.target, token="abc") as c:
        c.list_models()
        list(c.insert_stream([("k", b"img")]))
    assert server.servicer.seen.metadata["ListModels"][-1]["authorization"] == "Bearer abc"
    assert server.servicer.seen.metadata["InsertStream"][-1]["authorization"] == "Bearer abc"


def test_no_token_no_header() -> None:
    with FakeServer() as server, LookalikeClient(server.target) as c:
        c.list_models()
    assert "authorization" not in server.servicer.seen.metadata["ListModels"][-1]


def test_token_in_clear_to_a_remote_host_is_refused() -> None:
    with pytest.raises(ValueError, match="clear text"):
        LookalikeClient("search.example.com:50051", token="abc")
    # The user can accept it explicitly (no connection is made until the first call).
    LookalikeClient("search.example.com:50051", token="abc", insecure_token=True).close()
    # Over TLS it is fine.
    LookalikeClient("search.example.com:50051", token="abc", tls=True).close()


def test_cert_without_key_refused(pki: Path) -> None:
    with pytest.raises(ValueError, match="both cert and key"):
        LookalikeClient("127.0.0.1:1", cert=str(pki / "client.pem"))


def test_unreadable_ca_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the CA file"):
        LookalikeClient("127.0.0.1:1", ca=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:1", True),
        ("[::1]:50051", True),
        ("dns:///localhost:50051", True),
        ("ipv4:127.0.0.2:80", True),
        ("unix:/tmp/s.sock", True),
        ("10.0.0.5:50051", False),
        ("search.example.com:443", False),
        ("[2001:db8::1]:50051", False),
    ],
)
def test_loopback_detection(target: str, loopback: bool) -> None:
    assert is_loopback_target(target) is loopback


def test_security_from_env(pki: Path) -> None:
    env = {"LOOKALIKE_TOKEN": "e", "LOOKALIKE_CA": str(pki / "ca.pem"), "LOOKALIKE_TLS": "0"}
    sec = ChannelSecurity.from_env(env)
    assert sec.token == "e" and sec.uses_tls and sec.ca == str(pki / "ca.pem")
    assert ChannelSecurity.from_env(env, token="flag").token == "flag"
    assert ChannelSecurity.from_env({"LOOKALIKE_TLS": "yes"}).uses_tls


def test_async_client_sends_token_on_plaintext_loopback() -> None:
    async def main(target: str) -> None:
        async with AsyncLookalikeClient(target, token="aio-tok") as c:
            await c.list_models()
            assert await c.health() == "SERVING"

    with FakeServer() as server:
        asyncio.run(main(server.target))
    assert server.servicer.seen.metadata["ListModels"][-1]["authorization"] == "Bearer aio-tok"


def test_client_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as server:
        monkeypatch.setenv("LOOKALIKE_TARGET", server.target)
        monkeypatch.setenv("LOOKALIKE_TOKEN", "env-tok")
        monkeypatch.setenv("LOOKALIKE_TIMEOUT", "7")
        with LookalikeClient.from_env() as c:
            assert c.timeout == 7.0 and c.target == server.target
            c.list_models()
        with LookalikeClient.from_env(token="explicit") as c:
            c.list_models()
    tokens = [m["authorization"] for m in server.servicer.seen.metadata["ListModels"]]
    assert tokens == ["Bearer env-tok", "Bearer explicit"]
