"""``lookalike-server``: run the server from flags, env vars and an optional TOML file.

Every setting is a flag and an env var (``lookalike-server --help`` lists them);
see ``config.py``. SIGTERM and SIGINT shut down gracefully: health goes
NOT_SERVING, in-flight calls get ``--grace-s`` seconds, then the process exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from lookalike_server.config import add_arguments, describe, load_config
from lookalike_server.errors import ConfigError, ServiceError
from lookalike_server.logging_setup import install_redaction


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
    # Everything the server creates (data dir, redis.db, Milvus Lite files, logs
    # it may write) is private to its user: 0700 dirs, 0600 files.
    os.umask(0o077)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_redaction(config)  # no credential in any log line, ours or a library's
    log = logging.getLogger("lookalike_server")
    log.info("config: %s", json.dumps(describe(config)))

    from lookalike_server.app import build_server  # heavy imports after arg parsing
    from lookalike_server.tls import install_sighup

    server, port = build_server(config, load=False)
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
    # Prints the bound port on its own line, for scripts that start with --port 0.
    print(f"lookalike-server ready on {config.host}:{port}", flush=True)
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
