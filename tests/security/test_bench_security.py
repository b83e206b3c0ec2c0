"""``lookalike bench`` against a server that needs TLS and a token, from one process and from several.

The server is the bench tests' fake servicer (tests/unit/test_bench_driver.py) behind the
server's own token interceptor and TLS credentials, so the bench's counts can be checked
against what the server served, exactly as without security.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from lookalike import bench
from lookalike.security import ChannelSecurity
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server import auth, tls
from lookalike_server.config import SecurityConfig
from tests.security.certs import Pki, make_pki
from tests.unit.test_bench_driver import FakeLookalike

READ = "bench-read-token-0123456789"
ALL = "bench-all-token-0123456789ab"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _security(pki: Pki, tokens_dir: Path, tls_on: bool) -> SecurityConfig:
    tokens = tokens_dir / "tokens"
    tokens.write_text(f"{auth.hash_token(READ)} read reader\n{auth.hash_token(ALL)} read,write,admin ops\n")
    tokens.chmod(0o600)
    if not tls_on:
        return SecurityConfig(token_file=str(tokens))
    return SecurityConfig(token_file=str(tokens), tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))


async def _with_server(config: SecurityConfig, fn: Callable[[str, FakeLookalike], Awaitable[Any]]) -> Any:
    server = grpc.aio.server(interceptors=auth.interceptors(config))
    fake = FakeLookalike()
    pb_grpc.add_LookalikeServicer_to_server(fake, server)
    creds = tls.server_credentials(config) if config.tls_cert else None
    port = server.add_secure_port("127.0.0.1:0", creds) if creds else server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await fn(f"127.0.0.1:{port}", fake)
    finally:
        await server.stop(None)


def _spec(target: str, security: ChannelSecurity, **kw: Any) -> bench.BenchSpec:
    return bench.BenchSpec(
        target=target,
        images=[b"\xff\xd8\xffimg"],
        warmup_s=0.1,
        duration_s=0.4,
        points=[bench.LoadPoint(concurrency=4)],
        security=security,
        **kw,
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_over_tls_with_a_token_the_counts_match_the_servers(pki: Pki, tmp_path: Path, processes: int) -> None:
    security = ChannelSecurity(ca=str(pki.ca), token=ALL)

    async def go(target: str, fake: FakeLookalike) -> Any:
        return await bench.run_series(_spec(target, security, processes=processes))

    series, _ = asyncio.run(_with_server(_security(pki, tmp_path, tls_on=True), go))
    (p,) = series["points"]
    assert p["ok"] == p["requests"] == p["server"]["method_requests"] > 0 and p["errors"] == 0
    assert p["load_processes"] == processes


def test_a_read_only_token_loads_embed_without_the_servers_counters(pki: Pki, tmp_path: Path) -> None:
    # GetStats needs the admin scope: the bench goes on without it rather than failing.
    async def go(target: str, fake: FakeLookalike) -> Any:
        return await bench.run_series(_spec(target, ChannelSecurity(token=READ)))

    series, _ = asyncio.run(_with_server(_security(pki, tmp_path, tls_on=False), go))
    (p,) = series["points"]
    assert p["ok"] == p["requests"] > 0 and p["errors"] == 0 and p["server"] is None


def test_without_a_token_the_bench_stops_with_the_servers_answer(pki: Pki, tmp_path: Path) -> None:
    async def go(target: str, fake: FakeLookalike) -> Any:
        return await bench.run_series(_spec(target, ChannelSecurity(), connect_timeout_s=5))

    with pytest.raises(bench.BenchError, match="UNAUTHENTICATED"):
        asyncio.run(_with_server(_security(pki, tmp_path, tls_on=False), go))


def test_a_token_is_not_sent_in_clear_text_to_another_machine() -> None:
    with pytest.raises(bench.BenchError, match="clear text"):
        asyncio.run(bench.run_series(_spec("10.255.255.1:50051", ChannelSecurity(token=READ))))
