"""The contract from Node.js: @grpc/grpc-js with the .proto loaded at run time, against a real server.

``tests/e2e/node/client.js`` calls ListModels (unary) and a bidirectional SearchStream and prints
JSON; this test runs it with ``node`` and checks the answers. The Node dependencies are pinned by
``tests/e2e/node/package-lock.json`` and installed here with ``npm ci`` when ``node_modules`` is
missing or older than the lockfile (``--prefer-offline``: npm's cache answers when it can).

A machine without ``node``/``npm`` skips these tests (it cannot run a Node client at all); a
machine with them where ``npm ci`` fails is a failure with npm's output, since a broken lockfile
or an unreachable registry should be seen, not silently skipped.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lookalike.client import LookalikeClient

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "e2e" / "node"
SCRIPT = NODE_DIR / "client.js"
LOCK_FILE = ROOT / ".cache" / "node-e2e-install.lock"
MODELS = {"mobilenet_v2", "efficientnet_lite0"}
PREFIX = "node-e2e/"


def _needs_install() -> bool:
    # npm writes node_modules/.package-lock.json on every install: older than the committed
    # lockfile means the lockfile changed since, and a missing package means no install at all.
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < (NODE_DIR / "package-lock.json").stat().st_mtime:
        return True
    return not all(
        (NODE_DIR / "node_modules" / "@grpc" / pkg / "package.json").exists() for pkg in ("grpc-js", "proto-loader")
    )


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` executable, with the e2e client's dependencies installed."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm_bin is None:
        pytest.skip("node/npm not on PATH: the Node.js cross-language test needs them")
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    # Two pytest runs in one checkout must not run `npm ci` into the same folder at once.
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _needs_install():
            proc = subprocess.run(
                [npm_bin, "ci", "--prefer-offline", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if proc.returncode != 0:
                pytest.fail(
                    f"npm ci in {NODE_DIR} failed ({proc.returncode}); the registry or npm's cache is needed "
                    f"once:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
                )
    return node_bin


def _own_copies(photos: list[Path], out: Path) -> list[Path]:
    """The photos with a trailer after the image data: same pixels, new content hash.

    ``live_server`` is shared by the session and dedupes inserts by content, so inserting the
    very bytes another test inserted would return that test's item (and key) instead of ours.
    """
    copies = []
    for p in photos:
        copy = out / p.name
        copy.write_bytes(p.read_bytes() + b"\0node-e2e")  # decoders stop at the image's end marker
        copies.append(copy)
    return copies


def test_node_list_models_and_search_stream(  # type: ignore[no-untyped-def]
    node: str, live_server, photos: list[Path], tmp_path: Path
) -> None:
    chosen = _own_copies(photos[:3], tmp_path)
    with LookalikeClient(live_server.target, timeout=120) as client:
        for p in chosen:
            client.insert((PREFIX + p.name, p))

    proc = subprocess.run(
        [node, str(SCRIPT), live_server.target, PREFIX, *map(str, chosen)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"node client failed:\n{proc.stderr}"
    out = json.loads(proc.stdout)

    models = {m["name"]: m for m in out["models"]}
    assert set(models) >= MODELS
    assert all(models[name]["dim"] == 1280 for name in MODELS)

    # One answer per query, matched by the request id the Node client chose.
    answers = {a["requestId"]: a for a in out["answers"]}
    assert len(out["answers"]) == len(chosen)
    assert set(answers) == {f"node-{i}" for i in range(len(chosen))}
    for i, p in enumerate(chosen):
        answer = answers[f"node-{i}"]
        assert answer["error"] is None, answer["error"]
        by_model = {r["model"]: r["hits"] for r in answer["results"]}
        assert set(by_model) >= MODELS  # every model side by side
        for name in MODELS:
            first = by_model[name][0]
            assert first["key"] == PREFIX + p.name  # the photo finds itself first
            assert int(first["id"]) > 0 and first["distance"] < 1e-3
