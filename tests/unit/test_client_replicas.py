"""The client over several replicas: target parsing, round_robin, client-side health checks.

The replicas are in-process fake servers (``test_client_fakes.FakeServer``) with a real
``grpc.health.v1`` servicer, so what is under test is gRPC's own balancing as the client
configures it: which replica each call reaches, and that a replica whose health is not
``SERVING`` (or that stopped) gets no calls while the others still answer. The same with
real server processes on Milvus and Redis: ``tests/integration/test_replicas.py``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from lookalike import AsyncLookalikeClient, LookalikeClient
from lookalike._core import DEFAULT_OPTIONS, RetryPolicy, channel_options
from lookalike.cli.parser import build_parser
from lookalike.security import is_loopback_target
from lookalike.targets import HEALTH_CHECK_SERVICE, resolve_target, split_targets
from tests.unit.test_client_fakes import FakeServer
from tests.unit.test_client_security import pki  # noqa: F401  (a fixture)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# ------------------------------------------------------------------ parsing


def test_single_host_port_is_unchanged() -> None:
    t = resolve_target("10.0.0.5:50051")
    assert (t.uri, t.balancing, t.authority) == ("10.0.0.5:50051", None, None)
    assert t.service_config() == {}
    # The channel options a single target gets are exactly those of before: retries only.
    policy = RetryPolicy()
    assert channel_options(DEFAULT_OPTIONS, policy, t.service_config(), t.authority) == channel_options(
        DEFAULT_OPTIONS, policy
    )
    config = json.loads(dict(channel_options(DEFAULT_OPTIONS, policy))["grpc.service_config"])
    assert "methodConfig" in config and not {"loadBalancingConfig", "healthCheckConfig"} & set(config)


@pytest.mark.parametrize(
    ("given", "uri"),
    [
        ("127.0.0.1:5001,127.0.0.1:5002", "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        (["127.0.0.1:5001", "127.0.0.1:5002"], "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        (["127.0.0.1:5001, 127.0.0.1:5002", "127.0.0.1:5003"], "ipv4:127.0.0.1:5001,127.0.0.1:5002,127.0.0.1:5003"),
        ("[::1]:5001,[::1]:5002", "ipv6:[::1]:5001,[::1]:5002"),
        # The same replica named twice is dialled once (it would get twice the calls).
        ("127.0.0.1:5001,127.0.0.1:5001,127.0.0.1:5002", "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
    ],
)
def test_an_address_list_becomes_one_balanced_ip_list(given: str | list[str], uri: str) -> None:
    t = resolve_target(given)
    assert t.uri == uri
    assert t.balancing == "round_robin"
    assert t.service_config() == {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": HEALTH_CHECK_SERVICE},
    }


def test_host_names_in_a_list_are_resolved_and_the_first_is_the_authority() -> None:
    t = resolve_target("localhost:5001,localhost:5002")
    assert t.uri in ("ipv4:127.0.0.1:5001,127.0.0.1:5002", "ipv6:[::1]:5001,[::1]:5002")
    assert t.authority == "localhost:5001"
    assert t.addresses == ("localhost:5001", "localhost:5002")


@pytest.mark.parametrize(
    ("given", "balancing"),
    [
        ("dns:///lookalike-headless.search.svc.cluster.local:50051", "round_robin"),
        ("dns:localhost:50051", "round_robin"),
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051", "round_robin"),
        ("ipv4:10.0.0.1:50051", None),
        ("unix:/run/lookalike.sock", None),
    ],
)
def test_a_grpc_uri_is_passed_as_written(given: str, balancing: str | None) -> None:
    t = resolve_target(given)
    assert (t.uri, t.balancing, t.authority) == (given, balancing, None)
    assert split_targets(given) == [given]  # the comma in ipv4:a,b is the URI's own


def test_balancing_can_be_forced_either_way() -> None:
    assert resolve_target("127.0.0.1:1", "round_robin").balancing == "round_robin"
    t = resolve_target("127.0.0.1:1,127.0.0.1:2", "pick_first")
    assert t.service_config() == {"loadBalancingConfig": [{"pick_first": {}}]}
    assert "healthCheckConfig" not in resolve_target("dns:///svc:1").service_config(health_check=False)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "no target given"),
        (" , ", "no target given"),
        ("dns:///svc:50051,127.0.0.1:2", "a dns: target names one host"),
        (["dns:///svc:50051", "127.0.0.1:2"], "cannot be combined"),
        ("127.0.0.1:1,nohostport", "expected host:port"),
        ("127.0.0.1:1,127.0.0.1:http", "expected host:port"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
    ],
)
def test_bad_targets_are_clear_errors(given: str | list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_target(given)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="balancing must be one of"):
        resolve_target("127.0.0.1:1", "least_request")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "loopback"),
    [("ipv4:127.0.0.1:1,127.0.0.1:2", True), ("ipv4:127.0.0.1:1,10.0.0.2:2", False), ("ipv6:[::1]:1,[::1]:2", True)],
)
def test_every_address_of_a_list_must_be_local_for_a_plaintext_token(target: str, loopback: bool) -> None:
    assert is_loopback_target(target) is loopback


def test_a_plaintext_token_to_a_list_with_a_remote_replica_is_refused() -> None:
    with pytest.raises(ValueError, match=r"refusing to send a token in clear text to 10\.0\.0\.2:1"):
        LookalikeClient(["127.0.0.1:1", "10.0.0.2:1"], token="t")


def test_cli_target_repeats_and_comma_lists() -> None:
    parser = build_parser()
    one = parser.parse_args(["stats"])
    assert isinstance(one.target, str)
    many = parser.parse_args(["--target", "127.0.0.1:1,127.0.0.1:2", "--target", "127.0.0.1:3", "stats"])
    assert many.target == ["127.0.0.1:1,127.0.0.1:2", "127.0.0.1:3"]
    assert resolve_target(many.target).uri == "ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"


def test_env_target_may_list_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_TARGET", "127.0.0.1:5001,127.0.0.1:5002")
    with LookalikeClient.from_env() as client:
        assert (client.channel_target, client.balancing) == ("ipv4:127.0.0.1:5001,127.0.0.1:5002", "round_robin")
        assert client.target == "127.0.0.1:5001,127.0.0.1:5002"


def test_cli_bad_target_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from lookalike import cli

    assert cli.main(["--target", "127.0.0.1:1,nohostport", "stats"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected host:port" in err and "Traceback" not in err


def test_cli_stats_over_two_replicas(replicas: list[FakeServer], capsys: pytest.CaptureFixture[str]) -> None:
    from lookalike import cli

    argv = ["--target", replicas[0].target, "--target", replicas[1].target, "--timeout", "5", "stats"]
    for _ in range(4):
        assert cli.main(argv) == 0
    # A fresh channel per command: its first call goes to whichever connection is ready
    # first, so only that every call was answered by one of the two is certain.
    assert _calls(replicas[0]) + _calls(replicas[1]) == 4 and _calls(replicas[2]) == 0


# ---------------------------------------------------------------- balancing


@pytest.fixture
def replicas() -> Iterator[list[FakeServer]]:
    """Three fake replicas reporting SERVING for the lookalike service."""
    with ExitStack() as stack:
        servers = [stack.enter_context(FakeServer()) for _ in range(3)]
        for s in servers:
            s.health.set(HEALTH_CHECK_SERVICE, SERVING)
        yield servers


def _calls(server: FakeServer) -> int:
    return len(server.servicer.seen.requests["GetStats"])


def _until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Polls ``predicate`` (making calls) until it holds; fails with ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")


def _spread(client: LookalikeClient, servers: list[FakeServer], n: int) -> list[int]:
    before = [_calls(s) for s in servers]
    for _ in range(n):
        client.stats()
    return [_calls(s) - b for s, b in zip(servers, before, strict=True)]


def test_round_robin_rotates_over_every_replica(replicas: list[FakeServer]) -> None:
    with LookalikeClient([s.target for s in replicas], timeout=5) as client:
        assert client.balancing == "round_robin"
        # Connections come up one by one; once all are ready the rotation is exact.
        _until(lambda: all(n > 0 for n in _spread(client, replicas, 3)), "every replica answers")
        assert _spread(client, replicas, 30) == [10, 10, 10]


def test_single_target_sticks_to_one_server(replicas: list[FakeServer]) -> None:
    with LookalikeClient(replicas[0].target, timeout=5) as client:
        assert client.balancing is None
        assert _spread(client, replicas, 9) == [9, 0, 0]


def test_a_not_serving_replica_gets_no_calls_until_it_serves_again(replicas: list[FakeServer]) -> None:
    with LookalikeClient(",".join(s.target for s in replicas), timeout=5) as client:
        _until(lambda: all(n > 0 for n in _spread(client, replicas, 3)), "every replica answers")
        replicas[1].health.set(HEALTH_CHECK_SERVICE, NOT_SERVING)
        # The client learns it from its Health/Watch stream: a moment, not a poll interval.
        _until(lambda: _spread(client, replicas, 6)[1] == 0, "the NOT_SERVING replica is skipped")
        spread = _spread(client, replicas, 30)
        assert spread == [15, 0, 15]
        replicas[1].health.set(HEALTH_CHECK_SERVICE, SERVING)
        _until(lambda: _spread(client, replicas, 3) == [1, 1, 1], "the replica is back in the rotation")


def test_without_health_checks_a_not_serving_replica_still_gets_calls(replicas: list[FakeServer]) -> None:
    # The control for the test above: it is the healthCheckConfig that steers calls away.
    replicas[1].health.set(HEALTH_CHECK_SERVICE, NOT_SERVING)
    with LookalikeClient([s.target for s in replicas], timeout=5, health_check=False) as client:
        _until(lambda: all(n > 0 for n in _spread(client, replicas, 3)), "every replica answers")
        assert _spread(client, replicas, 30) == [10, 10, 10]


def test_calls_keep_succeeding_when_a_replica_stops(replicas: list[FakeServer]) -> None:
    with LookalikeClient([s.target for s in replicas], timeout=5) as client:
        _until(lambda: all(n > 0 for n in _spread(client, replicas, 3)), "every replica answers")
        replicas[2].server.stop(grace=None)
        # No call fails: one that meets the dead connection is UNAVAILABLE before it ran,
        # which gRPC retries on another replica (the client's retry policy).
        spread = _spread(client, replicas, 40)  # raises on any failed call
        assert spread[2] == 0 and spread[0] + spread[1] == 40
        assert spread[0] > 0 and spread[1] > 0


def test_async_client_balances_too(replicas: list[FakeServer]) -> None:
    async def main() -> None:
        async with AsyncLookalikeClient([s.target for s in replicas], timeout=5) as client:
            deadline = time.monotonic() + 10
            while not all(_calls(s) > 0 for s in replicas):
                assert time.monotonic() < deadline, "every replica answers"
                await client.stats()
            before = [_calls(s) for s in replicas]
            for _ in range(30):
                await client.stats()
            assert [_calls(s) - b for s, b in zip(replicas, before, strict=True)] == [10, 10, 10]

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_over_a_list_of_host_names_checks_the_first_name(pki: Path) -> None:  # noqa: F811
    creds = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    with FakeServer(credentials=creds) as a, FakeServer(credentials=creds) as b:
        for s in (a, b):
            s.health.set(HEALTH_CHECK_SERVICE, SERVING)
        # The certificate names localhost and 127.0.0.1; the channel dials an ipv4: list.
        names = [s.target.replace("127.0.0.1", "localhost") for s in (a, b)]
        with LookalikeClient(
            names, ca=str(pki / "ca.pem"), cert=str(pki / "client.pem"), key=str(pki / "client.key"), timeout=5
        ) as client:
            _until(lambda: all(n > 0 for n in _spread(client, [a, b], 2)), "both TLS replicas answer")
        # An ipv4: URI as written: the name to check is the caller's to give.
        uri = "ipv4:" + ",".join(s.target for s in (a, b))
        with LookalikeClient(
            uri,
            ca=str(pki / "ca.pem"),
            cert=str(pki / "client.pem"),
            key=str(pki / "client.key"),
            timeout=5,
            options=[*DEFAULT_OPTIONS, ("grpc.default_authority", "localhost")],
        ) as client:
            _until(lambda: all(n > 0 for n in _spread(client, [a, b], 2)), "both TLS replicas answer (ipv4: URI)")
