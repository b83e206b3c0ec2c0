"""`lookalike-server` as a process: ready line, SIGTERM drains and exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from tests.conftest import ROOT


def test_sigterm_drains_and_exits_cleanly(tmp_path, photos):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lookalike_server",
            "--port",
            "0",
            "--stores",
            "false",
            "--models-only",
            "mobilenet_v2",
            "--grace-s",
            "5",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        target = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            m = re.match(r"lookalike-server ready on (\S+)", line)
            if m:
                target = m.group(1)
                break
            assert proc.poll() is None, proc.stderr.read()
        assert target, "server never printed its ready line"
        channel = grpc.insecure_channel(target)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        resp = pb_grpc.LookalikeStub(channel).Embed(
            pb.EmbedRequest(model="mobilenet_v2", images=[photos[0].read_bytes()]), timeout=30
        )
        assert len(resp.embeddings[0].values) == 1280
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "SIGTERM received" in err and "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
