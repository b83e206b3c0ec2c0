"""Health probes as the deployment files ask for them, against a real server.

* ``liveness`` is SERVING while the process answers, whatever its readiness: a Kubernetes
  liveness probe on ``""`` or ``lookalike.v1.Lookalike`` would restart every replica while
  Milvus or Redis is away (both say NOT_SERVING then).
* The probe names in ``deploy/k8s/deployment.yaml`` and the health check command of
  ``docker-compose.yml`` work on a server that is up (``tests/unit/test_deploy_files.py``
  checks the files themselves).
* ``max_connection_age_s``, which both files set so that clients reconnect and re-resolve
  the replicas' DNS name, recycles connections without failing a call.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike_server.app import LIVENESS_SERVICE, SERVICE_NAME, build_server
from lookalike_server.config import ModelsConfig
from lookalike_server.config_loading import load_config
from tests.conftest import ROOT

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def unloaded_server() -> Iterator[tuple[Any, int]]:
    """A server started but not loaded: health answers, models not warm yet."""
    config = replace(load_config(["--port", "0"], {}), stores=False, models=ModelsConfig(only=("mobilenet_v2",)))
    server, port = build_server(config, load=False)
    server.start()
    yield server, port
    server.stop(0)


def _status(port: int, name: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        return int(health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status)


def test_liveness_serves_before_readiness_and_during_a_store_outage(unloaded_server: tuple[Any, int]) -> None:
    server, port = unloaded_server
    # Models not loaded yet: not ready, but alive.
    assert [_status(port, n) for n in ("", SERVICE_NAME, LIVENESS_SERVICE)] == [NOT_SERVING, NOT_SERVING, SERVING]
    server.load()
    assert [_status(port, n) for n in ("", SERVICE_NAME, LIVENESS_SERVICE)] == [SERVING, SERVING, SERVING]
    server._set_health(NOT_SERVING)  # what the store monitor does while a store is away
    try:
        assert [_status(port, n) for n in (SERVICE_NAME, LIVENESS_SERVICE)] == [NOT_SERVING, SERVING]
    finally:
        server._set_health(SERVING)


def test_deployment_probe_names_and_compose_healthcheck_on_a_serving_server(
    unloaded_server: tuple[Any, int],
) -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with yamllint (the dev extra)")
    server, port = unloaded_server
    if server.service is None:  # the test above loads it; this one may run alone
        server.load()
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text()))
    (container,) = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert _status(port, container[probe]["grpc"]["service"]) == SERVING, probe

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    test = services["lookalike-1"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "lookalike"]
    # The same command, run with this interpreter and aimed at this server's port.
    argv = [sys.executable, "-m", "lookalike.cli", *(a.replace(":50051", f":{port}") for a in test[2:])]
    assert subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
    server._set_health(NOT_SERVING)
    try:
        assert subprocess.run(argv, capture_output=True, timeout=60).returncode != 0
    finally:
        server._set_health(SERVING)


def test_max_connection_age_recycles_connections_without_failing_calls() -> None:
    """The server closes each connection after ``max_connection_age_s`` (GOAWAY): the client
    reconnects, which is when gRPC re-resolves a ``dns:`` target and finds new replicas."""
    from lookalike import LookalikeClient

    config = replace(
        load_config(["--port", "0", "--max-connection-age-s", "0.5"], {}),
        stores=False,
        models=ModelsConfig(only=("mobilenet_v2",)),
    )
    server, port = build_server(config)
    server.start()
    states: list[grpc.ChannelConnectivity] = []
    try:
        with LookalikeClient(f"127.0.0.1:{port}", timeout=10, retries=0) as client:
            client.channel.subscribe(states.append)
            deadline = time.monotonic() + 3.0
            calls = 0
            while time.monotonic() < deadline:
                assert client.list_models()  # raises on any failure: none may fail
                calls += 1
                time.sleep(0.05)
        # READY, then back to IDLE each time the server closed the connection by age.
        reconnects = sum(
            1
            for a, b in itertools.pairwise(states)
            if (a, b) == (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE)
        )
        assert calls > 20 and reconnects >= 2, states
    finally:
        server.stop(0)
