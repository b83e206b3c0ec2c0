"""``lookalike-server``: run the server from flags, env vars and an optional TOML file.

Every setting is a flag and an env var (``lookalike-server --help`` lists them);
see ``config.py`` (the settings) and ``config_loading.py`` (their sources).
SIGTERM and SIGINT shut down gracefully: health goes NOT_SERVING, in-flight
calls get ``--grace-s`` seconds, then the process exits.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from lookalike_server.config_loading import add_arguments, describe, load_config
from lookalike_server.errors import ConfigError, ServiceError
from lookalike_server.logging_setup import install_redaction
from lookalike_server.logs import configure_logging


def port_problem(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on, or "" (port 0 always can).

    Checked with a plain socket before gRPC tries, so a busy port is one line
    that says what to do, not gRPC's core error and a traceback.
    """
    if port == 0:
        return ""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve --host {host!r}: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # gRPC sets SO_REUSEADDR too: a port in TIME_WAIT is free for it, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            why = "already in use (another server is listening)" if exc.errno == errno.EADDRINUSE else exc.strerror
            return f"cannot listen on {host}:{port}: {why}; choose another --port (or LOOKALIKE_PORT)"
    return ""


def freeze_startup_objects() -> None:
    """Moves what start-up made (modules, models, stores) out of the garbage collector's sight.

    Those objects live as long as the process, yet every full collection
    walked them all: about 55,000 of them, a 23-44 ms pause of every Python
    thread (MobileNetV2 server, 2-core EPYC), on the event loop too. Frozen,
    they are still freed by reference counting; only cycles among them would
    stay, and start-up's cycles are collected first. The pattern is CPython's
    own advice for long-running servers (``gc.freeze`` documentation).
    """
    gc.collect()
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    """Parses settings, starts the server, and blocks until it is stopped.

    Returns:
        Process exit status: 0 after a clean shutdown, 2 for a bad setting or
        a model that cannot load, 1 for a store that cannot be reached.
    """
    parser = argparse.ArgumentParser(
        prog="lookalike-server",
        description="gRPC image-similarity search server (ONNX Runtime + Milvus + Redis).",
        epilog="`lookalike-server hash-token` prints a new bearer token and its token-file line (docs/security.md).",
    )
    add_arguments(parser)
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["hash-token"]:
        from lookalike_server.auth import hash_token_main

        return hash_token_main(args[1:])
    try:
        config = load_config(args, parser=parser)
    except ConfigError as exc:
        print(f"lookalike-server: {exc}", file=sys.stderr)
        return 2
    problem = port_problem(config.host, config.port)
    if problem:
        print(f"lookalike-server: {problem}", file=sys.stderr)
        return 2
    # Everything the server creates (data dir, redis files, Milvus Lite files)
    # is private to its user: 0700 dirs, 0600 files.
    os.umask(0o077)
    configure_logging(config.log_level)
    install_redaction(config)  # no credential in any log line, ours or a library's
    log = logging.getLogger("lookalike_server")
    log.info("config: %s", json.dumps(describe(config)))

    from lookalike_server.app import build_server  # heavy imports after arg parsing
    from lookalike_server.tls import install_sighup

    try:
        server, port = build_server(config, load=False)
    except (OSError, RuntimeError) as exc:  # grpc reports a failed bind as RuntimeError
        if "bind" not in str(exc):
            raise
        print(f"lookalike-server: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("%s received: draining for up to %.0fs", signal.Signals(signum).name, config.grace_s)
        threading.Thread(target=server.stop, name="shutdown").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    install_sighup()  # SIGHUP: re-read TLS certificates and keys now
    server.start()
    log.info("listening on %s:%d (NOT_SERVING until models are warm)", config.host, port)
    try:
        server.load()
    except ConfigError as exc:
        log.error("start-up failed: %s", exc)
        server.stop(0)
        return 2
    except ServiceError as exc:
        log.error("start-up failed: %s", exc.message)
        server.stop(0)
        return 1
    freeze_startup_objects()
    # Prints the bound port on its own line, for scripts that start with --port 0.
    print(f"lookalike-server ready on {config.host}:{port}", flush=True)
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
