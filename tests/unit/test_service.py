"""The service's write protocol and read paths against in-memory stores.

Each race of issue 8 is replayed step by step: a client cancel while another
insert of the same content waits, a completion whose outcome is unknown (a
stall longer than the timeout), a clean-up that fails, a replica's sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from typing import Any

import numpy as np
import pytest

from lookalike_server.config import Config
from lookalike_server.domain import InsertItem, RequestContext, SearchFilter, SearchQuery
from lookalike_server.errors import (
    Cancelled,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from lookalike_server.service import LookalikeService
from tests.unit.fake_stores import FakeEmbedder, FakeMilvus, FakeRedis


def make(
    redis: FakeRedis | None = None, milvus: FakeMilvus | None = None, versions: dict[str, str] | None = None
) -> tuple[LookalikeService, FakeRedis, FakeMilvus, FakeEmbedder]:
    redis = redis or FakeRedis()
    milvus = milvus or FakeMilvus()
    emb = FakeEmbedder(versions)
    svc = LookalikeService(Config(), emb, milvus, redis)  # type: ignore[arg-type]
    return svc, redis, milvus, emb


@pytest.fixture
def svc() -> Any:
    s, redis, milvus, emb = make()
    yield s, redis, milvus, emb
    s.close()


def ctx(timeout: float = 10) -> RequestContext:
    return RequestContext(timeout)


def rows_of(svc: LookalikeService, milvus: FakeMilvus, item_id: int) -> dict[str, bool]:
    return {m: item_id in milvus.rows[c] for m, c in svc.collections.items()}


def test_insert_is_idempotent_and_lists_model_keys(svc: Any) -> None:
    s, redis, milvus, _ = svc
    (r,), _ = s.insert([InsertItem("k/1", b"img-1", {"c": "red"})], [], ctx())
    assert r.created and r.models == ("a", "b")
    assert redis.items[r.id].models == ["a:1", "b:1"]  # name:version in the record
    assert rows_of(s, milvus, r.id) == {"a": True, "b": True}
    (again,), _ = s.insert([InsertItem("k/other", b"img-1")], [], ctx())
    assert again.id == r.id and not again.created
    assert s.get(key="k/1").models == ("a", "b")
    (hits,) = s.search(SearchQuery(item_id=r.id, models=("a",), top_k=1), ctx())[0]
    assert hits.hits[0].id == r.id and hits.hits[0].distance == 0.0


def test_the_same_content_twice_in_one_request_is_one_item(svc: Any) -> None:
    s, _, milvus, _ = svc
    results, _ = s.insert([InsertItem("x", b"same"), InsertItem("y", b"same")], ["a"], ctx())
    assert results[0].id == results[1].id and [r.created for r in results] == [True, False]
    assert len(milvus.rows[s.collections["a"]]) == 1


def test_a_failed_write_leaves_nothing_and_a_retry_succeeds(svc: Any) -> None:
    s, redis, milvus, _ = svc
    milvus.fail = {"insert"}
    with pytest.raises(Unavailable):
        s.insert([InsertItem("k", b"img")], [], ctx())
    assert redis.items == {} and all(not r for r in milvus.rows.values())
    milvus.fail = set()
    (r,), _ = s.insert([InsertItem("k", b"img")], [], ctx())
    assert r.created and rows_of(s, milvus, r.id) == {"a": True, "b": True}


def test_a_cancelled_insert_never_removes_what_a_concurrent_re_run_relies_on(svc: Any) -> None:
    """Issue 8 item 1: SIGINT of `lookalike index`, then an immediate re-run of the same files."""
    s, redis, milvus, emb = svc
    emb.gate = threading.Event()
    first = ctx()
    errors: list[BaseException] = []

    def interrupted() -> None:
        try:
            s.insert([InsertItem("p.jpg", b"photo")], [], first)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=interrupted)
    t.start()
    while not redis.items:  # the first attempt holds a pending record
        time.sleep(0.01)
    rerun: list[Any] = []
    t2 = threading.Thread(target=lambda: rerun.append(s.insert([InsertItem("p.jpg", b"photo")], [], ctx())[0][0]))
    t2.start()
    time.sleep(0.1)  # the re-run is waiting for the live owner, not racing it
    assert not rerun
    first.cancel()
    emb.gate.set()
    t.join(10)
    t2.join(10)
    assert isinstance(errors[0], Cancelled)
    (r,) = rerun
    assert s.get(key="p.jpg").id == r.id  # stored, and what the re-run reported is what is there
    assert rows_of(s, milvus, r.id) == {"a": True, "b": True}
    assert s.redis.list_unfinished() == []


def test_a_completion_with_an_unknown_outcome_never_becomes_a_ghost(svc: Any) -> None:
    """Issue 8 item 2: the completion lands, but its reply times out (a stall past the timeout)."""
    s, redis, milvus, _ = svc
    real = redis.mark_complete

    def lands_then_times_out(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise Unavailable("Timeout reading from socket; retriable")

    redis.mark_complete = lands_then_times_out  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        s.insert([InsertItem("g", b"ghost?")], [], ctx())
    redis.mark_complete = real  # type: ignore[method-assign]
    (item_id,) = redis.items
    # The clean-up saw a complete record it no longer owns and left it alone: rows intact.
    assert redis.items[item_id].state == "complete"
    assert rows_of(s, milvus, item_id) == {"a": True, "b": True}
    (again,), _ = s.insert([InsertItem("g", b"ghost?")], [], ctx())  # the client's retry
    assert again.id == item_id and not again.created
    (hits,) = s.search(SearchQuery(item_id=item_id, models=("b",), top_k=1), ctx())[0]
    assert hits.hits[0].id == item_id


def test_a_failed_clean_up_is_finished_by_the_next_insert_or_the_sweep(svc: Any) -> None:
    s, redis, milvus, _ = svc
    milvus.fail = {"insert", "delete"}
    with pytest.raises(Unavailable):
        s.insert([InsertItem("c", b"cleanup")], [], ctx())
    (stale_id,) = redis.items
    assert redis.items[stale_id].state == "deleting"  # hidden, never revived
    with pytest.raises(NotFound):
        s.get(key="c")
    milvus.fail = set()
    (r,), _ = s.insert([InsertItem("c", b"cleanup")], [], ctx())
    assert r.created and r.id != stale_id  # a new id: the dead one is never reused
    assert s.repair(verify=False) == 1
    assert stale_id not in redis.items and s.redis.list_unfinished() == []


def test_the_sweep_spares_a_live_replicas_work_and_removes_a_dead_ones(svc: Any) -> None:
    s, redis, _, _ = svc
    redis.leases.add("replica-2")
    _, live = redis.claim("live", "sha-live", {}, "content", owner="replica-2", token="replica-2.t")
    _, _dead = redis.claim("dead", "sha-dead", {}, "content", owner="replica-3", token="replica-3.t")
    _, legacy = redis.claim("old", "sha-old", {}, "content", owner="", token="")  # first-release record
    assert s.repair(verify=False) == 2
    assert set(redis.items) == {live.id}
    # An insert of the live replica's item waits for it; of a dead one's, takes it over.
    assert legacy.id not in redis.items
    # An insert of the live replica's item waits for it, then gives up retriably.
    with pytest.raises(ServiceError, match="being inserted by another request") as info:
        s.ingestor._claim(InsertItem("live", b"x"), "sha-live", "content", RequestContext(0.3))
    assert info.value.code == "ABORTED" and info.value.retriable


def test_an_insert_takes_over_a_dead_owners_record_with_its_id(svc: Any) -> None:
    s, redis, milvus, _ = svc
    import hashlib

    sha = hashlib.sha256(b"crashed").hexdigest()
    _, dead = redis.claim("k", sha, {}, "content", owner="crashed", token="crashed.1")
    (r,), _ = s.insert([InsertItem("k", b"crashed")], [], ctx())
    assert r.id == dead.id and rows_of(s, milvus, r.id) == {"a": True, "b": True}


def test_the_verify_sweep_un_lists_a_missing_row_and_a_re_insert_writes_it(svc: Any) -> None:
    s, _redis, milvus, _emb = svc
    (r,), _ = s.insert([InsertItem("v", b"verify")], [], ctx())
    del milvus.rows[s.collections["b"]][r.id]
    assert s.repair(verify=True) == 1
    assert s.get(r.id).models == ("a",)
    (again,), _ = s.insert([InsertItem("v", b"verify")], [], ctx())
    assert again.models == ("a", "b") and rows_of(s, milvus, r.id) == {"a": True, "b": True}


def test_first_release_records_with_bare_names_are_read_and_migrated(svc: Any) -> None:
    s, redis, milvus, emb = svc
    import hashlib

    sha = hashlib.sha256(b"old").hexdigest()
    _, rec = redis.claim("old", sha, {}, "content", owner="", token="")
    redis.items[rec.id].state, redis.items[rec.id].models = "complete", ["a", "b"]
    for m, c in s.collections.items():
        milvus.rows[c][rec.id] = emb.embed([b"old"], [m], ctx())[0][m][0]
    assert s.get(rec.id).models == ("a", "b")
    calls = emb.calls
    (again,), _ = s.insert([InsertItem("old", b"old")], [], ctx())
    assert again.id == rec.id and not again.created and emb.calls == calls  # nothing re-embedded
    s.repair(verify=True)
    assert redis.items[rec.id].models == ["a:1", "b:1"]


def test_a_version_bump_re_indexes_only_that_model(svc: Any) -> None:
    s, redis, milvus, _emb = svc
    (r,), _ = s.insert([InsertItem("bump", b"bump")], [], ctx())
    bumped, _, _, emb2 = make(redis, milvus, {"a": "2", "b": "1"})
    try:
        with pytest.raises(FailedPrecondition, match="not indexed under"):
            bumped.search(SearchQuery(item_id=r.id, models=("a",), top_k=1), ctx())
        (again,), _ = bumped.insert([InsertItem("bump", b"bump")], [], ctx())
        assert again.id == r.id and not again.created
        assert redis.items[r.id].models == ["a:1", "b:1", "a:2"]
        assert r.id in milvus.rows[bumped.collections["a"]]
        assert emb2.calls == 1
    finally:
        bumped.close()


def test_delete_hides_first_and_a_failed_delete_can_be_retried(svc: Any) -> None:
    s, redis, milvus, _ = svc
    (r,), _ = s.insert([InsertItem("d", b"del")], [], ctx())
    milvus.fail = {"delete"}
    with pytest.raises(Unavailable):
        s.delete(r.id)
    with pytest.raises(NotFound):
        s.get(r.id)  # out of reach at once
    (new,), _ = s.insert([InsertItem("d", b"del")], [], ctx())
    assert new.created and new.id != r.id
    milvus.fail = set()
    assert s.delete(r.id) == ("a", "b")
    assert r.id not in redis.items and rows_of(s, milvus, new.id) == {"a": True, "b": True}
    with pytest.raises(NotFound):
        s.delete(r.id)


def test_search_returns_only_complete_items_listing_the_model(svc: Any) -> None:
    s, redis, milvus, _emb = svc
    (r,), _ = s.insert([InsertItem("s/1", b"one", {"c": "x"})], ["a"], ctx())
    # A half-written item: rows but a pending record.
    _, pend = redis.claim("s/2", "sha-2", {}, "content", owner="other", token="other.1")
    milvus.rows[s.collections["a"]][pend.id] = np.ones(4, dtype=np.float32) / 2
    (hits,) = s.search(SearchQuery(image=b"one", models=("a",), top_k=5), ctx())[0]
    assert [h.id for h in hits.hits] == [r.id]
    with pytest.raises(InvalidArgument, match="unknown attribute"):
        s.search(SearchQuery(image=b"one", filter=SearchFilter(attributes={"nope": "1"})), ctx())


def test_limits_come_from_one_place(svc: Any) -> None:
    from lookalike_server import validation
    from lookalike_server.store import milvus as milvus_store

    s, *_ = svc
    assert milvus_store.KEY_MAX_BYTES == validation.MAX_KEY_BYTES
    assert milvus_store.ATTRIBUTE_NAME is validation.ATTRIBUTE_NAME
    with pytest.raises(InvalidArgument, match="key is 1025 bytes"):
        s.insert([InsertItem("k" * 1025, b"x")], [], ctx())
    with pytest.raises(InvalidArgument, match="must match"):
        s.insert([InsertItem("k", b"x", {"bad-name": "v"})], [], ctx())
    with pytest.raises(InvalidArgument, match="over the limit"):
        s.search(SearchQuery(image=b"x", top_k=s.config.limits.max_top_k + 1), ctx())


def test_an_embed_only_server_embeds_and_refuses_the_data_plane_in_one_place() -> None:
    s = LookalikeService(Config(), FakeEmbedder(), None, None)  # type: ignore[arg-type]
    assert s.embed_only and s.milvus is None and s.redis is None
    vectors, _ = s.embed([b"x"], "a", ctx())
    assert vectors.shape == (1, 4)
    assert [(v.name, v.collection) for v in s.model_views()] == [("a", ""), ("b", "")]
    for call in (
        lambda: s.insert([InsertItem("k", b"x")], [], ctx()),
        lambda: s.search(SearchQuery(image=b"x"), ctx()),
        lambda: s.get(1),
        lambda: s.delete(1),
    ):
        with pytest.raises(FailedPrecondition, match="stores = false"):
            call()
    assert s.repair() == 0
    s.check_stores()
    s.close()


def test_delete_drops_the_items_cached_embeddings(svc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Insert-and-delete traffic must not fill Redis with embeddings of items that are gone.
    s, redis, _, _ = svc
    sha = hashlib.sha256(b"gone").hexdigest()
    keep = hashlib.sha256(b"kept").hexdigest()
    (r,), _ = s.insert([InsertItem("g", b"gone")], [], ctx())
    s.insert([InsertItem("k", b"kept")], [], ctx())
    assert {k for k in redis.cache} == {("a@1", sha), ("b@1", sha), ("a@1", keep), ("b@1", keep)}
    s.delete(r.id)
    assert {k for k in redis.cache} == {("a@1", keep), ("b@1", keep)}
    # Dropping the cache is best effort: the item is already gone, so a failure there is not the caller's.
    (r2,), _ = s.insert([InsertItem("g", b"gone")], [], ctx())

    def broken(*_: Any) -> None:
        raise InternalError("Redis failed (cache_drop); the server log has the details")

    monkeypatch.setattr(redis, "cache_drop", broken)
    assert s.delete(r2.id) == ("a", "b")
    with pytest.raises(NotFound):
        s.get(r2.id)


def test_query_images_are_cached_briefly_and_stored_items_for_the_configured_ttl() -> None:
    for query_ttl in (600, 0):
        cfg = Config()
        cfg = dataclasses.replace(cfg, redis=dataclasses.replace(cfg.redis, query_cache_ttl_s=query_ttl))
        redis, emb = FakeRedis(), FakeEmbedder()
        s = LookalikeService(cfg, emb, FakeMilvus(), redis)  # type: ignore[arg-type]
        try:
            s.insert([InsertItem("i", b"stored")], ["a"], ctx())
            s.search(SearchQuery(image=b"query", models=("a",), top_k=1), ctx())
            stored, query = hashlib.sha256(b"stored").hexdigest(), hashlib.sha256(b"query").hexdigest()
            assert redis.cache_ttls[("a@1", stored)] is None  # None = redis.cache_ttl_s
            if query_ttl:
                assert redis.cache_ttls[("a@1", query)] == query_ttl
            else:
                assert ("a@1", query) not in redis.cache
        finally:
            s.close()
