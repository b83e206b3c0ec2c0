#!/usr/bin/env python3
"""Starts and stops a local Milvus standalone server (the PyPI ``milvus`` package).

Used by benchmarks and by the integration tests (``tests/integration/conftest.py``
imports :func:`start` and :func:`stop` from here), so both run the same setup:

* every listen port (proxy, coordinators, nodes, embedded etcd, metrics) is a
  free port the OS hands out, so a second server or a developer's own Milvus on
  19530 never collides;
* every component advertises 127.0.0.1, so nothing is announced on another
  interface (Milvus 2.3 itself binds its gRPC ports on all interfaces; it has no
  bind-address setting, so run it on a host whose firewall you trust);
* all data, logs and the config live under one directory.

Usage::

    python scripts/milvus_server.py start --dir D   # prints the URI, e.g. http://127.0.0.1:41234
    python scripts/milvus_server.py stop --dir D
    python scripts/milvus_server.py status --dir D

``start`` leaves the server running in its own session and writes ``D/milvus.pid``
and ``D/milvus.uri``; ``stop`` terminates it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Components whose advertised address would otherwise be "the first unicastable
# address" of the host; pinning them keeps all traffic on loopback.
_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
_PID_FILE = "milvus.pid"
_URI_FILE = "milvus.uri"


@dataclass
class RunningServer:
    """A started Milvus standalone process.

    Attributes:
        uri: ``http://127.0.0.1:<proxy port>`` for ``MilvusClient``.
        pid: Process id of the ``milvus run standalone`` process.
        base_dir: Directory holding its data, logs and config.
        boot_s: Seconds from launch until its health check said OK.
    """

    uri: str
    pid: int
    base_dir: Path
    boot_s: float


def _free_port() -> int:
    """Returns a port the OS considers free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(base_dir: str | os.PathLike[str], timeout_s: float = 180.0, debug: bool = False) -> RunningServer:
    """Starts a Milvus standalone server and waits until it is healthy.

    Args:
        base_dir: Directory for binaries, config, data and logs (created).
        timeout_s: How long to wait for the health check.
        debug: Let Milvus log to this process' stdout/stderr instead of files.

    Returns:
        The running server. The process is detached from this Python object:
        call :func:`stop` to end it.

    Raises:
        RuntimeError: The server exited or did not become healthy in time
            (the message names the log directory).
    """
    # Imported here so `stop` works without the package (and the import is slow).
    from milvus import MilvusServer, MilvusServerConfig

    base = Path(base_dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    config = MilvusServerConfig(data_dir=str(base), debug=debug)
    # Explicit ports: the package would otherwise probe upwards from the well-known
    # defaults (19530, 2379...) and take them when free.
    port_keys = [key for key in config.configurable_items if key.endswith("_port")]
    config.update(**{key: _free_port() for key in port_keys})
    for component in _COMPONENTS:
        config.set(f"{component}.ip", "127.0.0.1")
    # The embedded etcd ignores `etcd.endpoints` and listens on 2379/2380 unless it
    # gets its own config file (`etcd.config.path`, which the template lacks).
    etcd_client, etcd_peer = config.configs["etcd_port"], _free_port()
    etcd_yaml = base / "configs" / "embed-etcd.yaml"
    etcd_yaml.parent.mkdir(parents=True, exist_ok=True)
    etcd_yaml.write_text(
        f"listen-client-urls: http://127.0.0.1:{etcd_client}\n"
        f"advertise-client-urls: http://127.0.0.1:{etcd_client}\n"
        f"listen-peer-urls: http://127.0.0.1:{etcd_peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{etcd_peer}\n"
    )
    config.template_text = config.template_text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_yaml}\n", 1)
    server = MilvusServer(config, wait_for_started=False, debug=debug)
    server.webservice_port = _free_port()

    started = time.monotonic()
    server.start()
    proc = server.server_proc
    assert proc is not None
    try:
        server.wait_started(timeout=int(timeout_s * 1000))
    except (TimeoutError, RuntimeError) as exc:
        server.stop()
        raise RuntimeError(f"Milvus standalone did not start: {exc}; logs in {base / 'logs'}") from exc
    boot_s = time.monotonic() - started
    # Detach: MilvusServer.__del__ would otherwise kill the process when the
    # object is collected (e.g. when this script exits after `start`).
    server.server_proc = None
    for fd in server.proc_fds.values():
        fd.close()
    server.proc_fds.clear()

    uri = f"http://127.0.0.1:{server.listen_port}"
    (base / _PID_FILE).write_text(f"{proc.pid}\n")
    (base / _URI_FILE).write_text(f"{uri}\n")
    return RunningServer(uri=uri, pid=proc.pid, base_dir=base, boot_s=boot_s)


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our own exited child, so a zombie does not look alive.
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(base_dir: str | os.PathLike[str], grace_s: float = 10.0) -> bool:
    """Stops the server recorded in ``base_dir/milvus.pid``.

    Args:
        base_dir: The directory given to :func:`start`.
        grace_s: Seconds SIGTERM gets before SIGKILL.

    Returns:
        Whether a running server was found and stopped.
    """
    pid_file = Path(base_dir) / _PID_FILE
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip())
    stopped = False
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        stopped = True
    pid_file.unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--dir", required=True, help="data/log directory of the server")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for start-up")
    args = parser.parse_args(argv)
    base = Path(args.dir)
    if args.command == "start":
        pid_file = base / _PID_FILE
        if pid_file.exists() and _alive(int(pid_file.read_text().strip())):
            sys.stdout.write((base / _URI_FILE).read_text())
            return 0
        server = start(base, timeout_s=args.timeout)
        sys.stderr.write(f"milvus standalone pid {server.pid} healthy after {server.boot_s:.1f} s\n")
        sys.stdout.write(server.uri + "\n")
        return 0
    if args.command == "stop":
        return 0 if stop(base) else 1
    pid_file = base / _PID_FILE
    running = pid_file.exists() and _alive(int(pid_file.read_text().strip()))
    sys.stdout.write(((base / _URI_FILE).read_text().strip() if running else "stopped") + "\n")
    return 0 if running else 1


if __name__ == "__main__":
    sys.exit(main())
