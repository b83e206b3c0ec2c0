"""The ``liveness`` health name: SERVING while the process answers, whatever its readiness.

A Kubernetes liveness probe on ``""`` or ``lookalike.v1.Lookalike`` would restart every
replica while Milvus or Redis is away (both say NOT_SERVING then); ``deploy/k8s`` probes
``liveness`` instead, and readiness on the service name.
"""

from __future__ import annotations

from dataclasses import replace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike_server.app import LIVENESS_SERVICE, SERVICE_NAME, build_server
from lookalike_server.config import ModelsConfig
from lookalike_server.config_loading import load_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_liveness_serves_before_readiness_and_stops_at_shutdown() -> None:
    config = replace(load_config(["--port", "0"], {}), stores=False, models=ModelsConfig(only=("mobilenet_v2",)))
    server, port = build_server(config, load=False)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)

    def status(name: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status

    try:
        # Models not loaded yet: not ready, but alive.
        assert (status(""), status(SERVICE_NAME), status(LIVENESS_SERVICE)) == (NOT_SERVING, NOT_SERVING, SERVING)
        server.load()
        assert (status(""), status(SERVICE_NAME), status(LIVENESS_SERVICE)) == (SERVING, SERVING, SERVING)
        server._set_health(NOT_SERVING)  # what the store monitor does when a store is away
        assert (status(SERVICE_NAME), status(LIVENESS_SERVICE)) == (NOT_SERVING, SERVING)
    finally:
        server.stop(0)
        channel.close()
