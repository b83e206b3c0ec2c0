"""Token authentication: the scope matrix on real gRPC servers, and the token file format.

Every RPC × {no token, wrong token, a malformed header, each single scope, all scopes} must
give exactly the expected status, on a ``grpc.aio`` server (the target architecture) and on the
synchronous server the app runs today; both use :func:`lookalike_server.auth.check`.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike_server import auth
from lookalike_server.config import SecurityConfig
from lookalike_server.config_loading import load_config
from lookalike_server.errors import ConfigError
from tests.security.servers import AioServer, call, sync_server

TOKENS = {
    "read": "read-token-0123456789abcdef",
    "write": "write-token-0123456789abcdef",
    "admin": "admin-token-0123456789abcdef",
    "all": "all-token-0123456789abcdefgh",
}
SCOPE_OF = {
    "ListModels": "read",
    "Embed": "read",
    "Search": "read",
    "SearchStream": "read",
    "Get": "read",
    "Insert": "write",
    "InsertStream": "write",
    "Delete": "write",
    "GetStats": "admin",
}
OK, UNAUTH, DENIED = grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


def token_file(tmp: Path) -> Path:
    path = tmp / "tokens"
    lines = ["# test tokens", ""]
    for scope in ("read", "write", "admin"):
        lines.append(f"{auth.hash_token(TOKENS[scope])} {scope} {scope}-client  # a comment")
    lines.append(f"{TOKENS['all']} read,write,admin everything")  # the plain form is accepted too
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def security_config(tmp: Path, **kw: Any) -> SecurityConfig:
    return SecurityConfig(token_file=str(token_file(tmp)), **kw)


def code_of(target: str, method: str, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        try:
            call(channel, method, metadata)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return OK


def expected(method: str, who: str) -> grpc.StatusCode:
    if who in ("none", "wrong", "malformed"):
        return UNAUTH
    if who == "all":
        return OK
    return OK if SCOPE_OF[method] == who else DENIED


WHO = ("none", "wrong", "malformed", "read", "write", "admin", "all")


def metadata_for(who: str) -> list[tuple[str, str]]:
    if who == "none":
        return []
    if who == "wrong":
        return [("authorization", "Bearer not-a-known-token-123456")]
    if who == "malformed":
        return [("authorization", TOKENS["all"])]  # no "Bearer " scheme
    return [("authorization", f"Bearer {TOKENS[who]}")]


@pytest.fixture(scope="module", params=["aio", "sync"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    security = security_config(tmp_path_factory.mktemp("tokens"))
    if request.param == "aio":
        server = AioServer(auth.interceptors(security))
        yield f"127.0.0.1:{server.port}"
        server.stop()
    else:
        sync, port = sync_server(auth.interceptors(security))
        yield f"127.0.0.1:{port}"
        sync.stop(0)


def test_scope_matrix(target: str) -> None:
    got = {(m, who): code_of(target, m, metadata_for(who)) for m in SCOPE_OF for who in WHO}
    want = {(m, who): expected(m, who) for m in SCOPE_OF for who in WHO}
    wrong = {k: (got[k].name, want[k].name) for k in want if got[k] != want[k]}
    assert not wrong, f"(method, token) -> (got, expected): {wrong}"


def test_denials_say_what_to_do_and_never_echo_the_token(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as missing:
            call(channel, "Insert")
        assert "authorization: Bearer" in missing.value.details()
        with pytest.raises(grpc.RpcError) as bad:
            call(channel, "Insert", [("authorization", "Bearer not-a-known-token-123456")])
        assert bad.value.details() == "invalid token"
        with pytest.raises(grpc.RpcError) as scope:
            call(channel, "Insert", metadata_for("read"))
        assert scope.value.details() == "token 'read-client' lacks the 'write' scope that Insert needs"
        for exc in (missing, bad, scope):
            assert all(t not in exc.value.details() for t in TOKENS.values())


def test_health_and_reflection_open_by_default(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_can_require_a_token(tmp_path: Path) -> None:
    security = security_config(tmp_path, auth_health=True)
    server = AioServer(auth.interceptors(security))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as exc:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert exc.value.code() == UNAUTH
            # Any valid token passes, whatever its scopes.
            stub.Check(health_pb2.HealthCheckRequest(), metadata=metadata_for("write"), timeout=10)
    finally:
        server.stop()


def test_reflection_can_require_a_token(tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def list_services(channel: grpc.Channel, md: list[tuple[str, str]]) -> list[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        (resp,) = list(stub.ServerReflectionInfo(iter([req]), metadata=md, timeout=10))
        return [s.name for s in resp.list_services_response.service]

    for required in (False, True):
        server = AioServer(auth.interceptors(security_config(tmp_path, auth_reflection=required)))
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                if required:
                    with pytest.raises(grpc.RpcError) as exc:
                        list_services(channel, [])
                    assert exc.value.code() == UNAUTH
                    assert "lookalike.v1.Lookalike" in list_services(channel, metadata_for("read"))
                else:
                    assert "lookalike.v1.Lookalike" in list_services(channel, [])
        finally:
            server.stop()


def test_no_tokens_means_no_interceptor() -> None:
    assert auth.interceptors(SecurityConfig()) == []


def test_tokens_from_env_in_the_flag_form(tmp_path: Path) -> None:
    env = {"LOOKALIKE_SECURITY_TOKENS": f"{auth.hash_token(TOKENS['read'])} read ci; {TOKENS['admin']} admin ops"}
    config = load_config([], env)
    store = auth.TokenStore.from_config(config.security)
    assert [(e.name, sorted(e.scopes)) for e in store.entries] == [("ci", ["read"]), ("ops", ["admin"])]
    assert store.lookup(TOKENS["read"]).name == "ci"  # type: ignore[union-attr]
    assert store.lookup(TOKENS["read"] + "x") is None
    # The config dump logged at start masks the tokens.
    from lookalike_server.config_loading import describe

    assert describe(config)["security"]["tokens"] == "***"


def test_digests_only_are_kept(tmp_path: Path) -> None:
    store = auth.TokenStore.from_config(security_config(tmp_path))
    everything = repr(store.entries)
    assert all(t not in everything for t in TOKENS.values())
    assert store.entries[-1].digest == hashlib.sha256(TOKENS["all"].encode()).digest()


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("sha256:abcd read", "64 hex digits"),
        (f"{auth.hash_token('x' * 20)} reed", "scopes must be"),
        ("short read", "at least 16 characters"),
        ("only-one-field-here-xxxxx", "TOKEN SCOPES"),
    ],
)
def test_malformed_token_lines_stop_start_up_without_echoing(line: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as exc:
        auth.parse_tokens(line, "tokens")
    assert complaint in str(exc.value)
    assert "only-one-field" not in str(exc.value) and "short" not in str(exc.value)


def test_hash_token_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lookalike_server", "hash-token"],
        input="my-secret-token-value\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "sha256:" + hashlib.sha256(b"my-secret-token-value").hexdigest()
