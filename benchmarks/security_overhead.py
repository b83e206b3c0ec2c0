"""What token checks and TLS cost per call, on the stub server (no models, no stores).

Runs ``--calls`` sequential unary ListModels calls on one channel against a ``grpc.aio``
server with the stub servicer, in four set-ups: plaintext, plaintext + token interceptor,
mTLS (reloading credentials), mTLS + token; and times ``--handshakes`` new TLS connections
(each one makes the server stat the certificate files). Prints one line per set-up.

    PYTHONPATH=client:server python benchmarks/security_overhead.py --calls 2000 --handshakes 100
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from lookalike_server import auth, tls
from lookalike_server.config import SecurityConfig
from tests.security.certs import make_pki
from tests.security.servers import AioServer, call

TOKEN = "bench-token-0123456789abcdef"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--handshakes", type=int, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    pki = make_pki(tmp / "pki")
    (tmp / "tokens").write_text(f"{auth.hash_token(TOKEN)} read bench\n" + "".join(
        f"{auth.hash_token(f'other-{i:04d}-0123456789abcdef')} read t{i}\n" for i in range(9)
    ))  # fmt: skip
    (tmp / "tokens").chmod(0o600)
    tls_kw = {"tls_cert": str(pki.server.cert), "tls_key": str(pki.server.key), "tls_client_ca": str(pki.ca)}
    client_creds = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client.key.read_bytes(), pki.client.cert.read_bytes()
    )
    md = [("authorization", f"Bearer {TOKEN}")]
    for name, kw, token in [
        ("plaintext", {}, False),
        ("plaintext + token (10 tokens)", {"token_file": str(tmp / "tokens")}, True),
        ("mTLS", tls_kw, False),
        ("mTLS + token (10 tokens)", {**tls_kw, "token_file": str(tmp / "tokens")}, True),
    ]:
        security = SecurityConfig(**kw)
        server = AioServer(auth.interceptors(security), tls.server_credentials(security))
        target = f"127.0.0.1:{server.port}"

        def open_channel(target: str = target, secure: bool = "tls_cert" in kw) -> grpc.Channel:
            return grpc.secure_channel(target, client_creds) if secure else grpc.insecure_channel(target)

        with open_channel() as ch:
            for _ in range(50):
                call(ch, "ListModels", md if token else [])
            lat = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                call(ch, "ListModels", md if token else [])
                lat.append(time.perf_counter() - t0)
        line = f"{name:32s} calls={args.calls} p50={statistics.median(lat) * 1e6:.0f}us"
        line += f" p99={sorted(lat)[int(0.99 * len(lat))] * 1e6:.0f}us"
        if "tls_cert" in kw:
            t0 = time.perf_counter()
            for _ in range(args.handshakes):
                with open_channel() as ch:
                    call(ch, "ListModels", md if token else [])
            line += f" new-connection+call={(time.perf_counter() - t0) / args.handshakes * 1e3:.1f}ms"
        print(line, flush=True)
        server.stop()


if __name__ == "__main__":
    main()
