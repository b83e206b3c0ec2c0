"""Failure injection: inserts that fail midway leave no orphan vector, no dangling record, no duplicate.

The stores are the real ones (Milvus Lite and Redis behind ``live_server``);
a thin wrapper makes chosen calls fail the way an outage would (raising
``Unavailable``), then the test inspects what is really stored.
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from PIL import Image

from lookalike_server.domain import InsertItem, RequestContext, SearchFilter, SearchQuery
from lookalike_server.errors import NotFound, Unavailable

pytestmark = pytest.mark.integration


class Faulty:
    """Delegates to a real store; named methods fail on chosen calls."""

    def __init__(self, real: Any, fail: dict[str, set[int]]) -> None:
        self._real = real
        self._fail = fail
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._real, name)
        if name not in self._fail:
            return target

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            n = self.calls[name] = self.calls.get(name, 0) + 1
            if n in self._fail[name] or 0 in self._fail[name]:  # 0 = every call
                raise Unavailable(f"injected {name} failure #{n}")
            return target(*args, **kwargs)

        return wrapper


@contextmanager
def faulty(
    service: Any, milvus: dict[str, set[int]] | None = None, redis: dict[str, set[int]] | None = None
) -> Iterator[tuple[Faulty, Faulty]]:
    real_m, real_r = service.milvus, service.redis
    service.milvus = fm = Faulty(real_m, milvus or {})
    service.redis = fr = Faulty(real_r, redis or {})
    try:
        yield fm, fr
    finally:
        service.milvus, service.redis = real_m, real_r


@pytest.fixture
def service(live_server):
    return live_server.server.service


def unique_photo(path) -> tuple[bytes, str]:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=93, comment=uuid.uuid4().hex.encode())
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def stored_rows(service, item_id: int) -> dict[str, bool]:
    """Whether each model's collection holds a row for the id."""
    return {m: item_id in service.milvus.get_vectors(c, [item_id]) for m, c in service.collections.items()}


def counts(service) -> dict[str, int]:
    return {m: service.milvus.count(c) for m, c in service.collections.items()}


def ctx() -> RequestContext:
    return RequestContext(60)


@pytest.mark.parametrize(
    ("milvus_fail", "redis_fail"),
    [
        ({"insert": {2}}, {}),  # the second model's write fails after the first succeeded
        ({}, {"mark_complete": {1}}),  # every vector written, the final Redis step fails
    ],
    ids=["milvus-write", "redis-complete"],
)
def test_failed_insert_leaves_nothing_behind_and_a_retry_succeeds(service, photos, milvus_fail, redis_fail):
    data, _sha = unique_photo(photos[0])
    key = f"fault-{uuid.uuid4().hex[:8]}"
    before = counts(service)
    with faulty(service, milvus_fail, redis_fail), pytest.raises(Unavailable, match="injected"):
        service.insert([InsertItem(key, data)], [], ctx())
    assert service.redis.get_by_key(key) is None  # no dangling record
    assert counts(service) == before  # no orphan vector
    (result,), _ = service.insert([InsertItem(key, data)], [], ctx())  # the client's retry
    assert result.created
    assert stored_rows(service, result.id) == {m: True for m in service.collections}
    assert {m: before[m] + 1 for m in before} == counts(service)
    (again,), _ = service.insert([InsertItem(key, data)], [], ctx())
    assert not again.created and again.id == result.id
    assert {m: before[m] + 1 for m in before} == counts(service)  # no duplicate


def test_when_cleanup_also_fails_the_pending_item_is_hidden_then_repaired(service, photos):
    data, _sha = unique_photo(photos[1])
    key = f"fault-{uuid.uuid4().hex[:8]}"
    before = counts(service)
    # Writes reach Milvus, the completion fails, and so do the clean-up deletes.
    with faulty(service, {"delete": {0}}, {"mark_complete": {0}}), pytest.raises(Unavailable):
        service.insert([InsertItem(key, data)], [], ctx())
    pending = service.redis.get_by_key(key)
    # Left "deleting" (never "complete", never revived): hidden, and owed to the sweep.
    assert pending is not None and pending.state == "deleting"
    with pytest.raises(NotFound):
        service.get(key=key)
    assert all(stored_rows(service, pending.id).values())  # rows exist...
    (hits,) = service.search(
        SearchQuery(image=data, models=("mobilenet_v2",), top_k=5, filter=SearchFilter(key_prefix="fault-")), ctx()
    )[0]
    assert pending.id not in [h.id for h in hits.hits]  # ...but search never shows them
    assert service.repair(older_than_s=0.0) >= 1
    assert service.redis.get(pending.id) is None
    assert not any(stored_rows(service, pending.id).values())
    assert counts(service) == before


def test_concurrent_inserts_of_the_same_bytes_make_one_item(service, photos):
    data, _ = unique_photo(photos[2])
    before = counts(service)
    results, errors = [], []

    def go(i: int) -> None:
        try:
            (r,), _ = service.insert([InsertItem(f"race-{i}", data)], [], ctx())
            results.append(r)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len({r.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert counts(service) == {m: n + 1 for m, n in before.items()}
    rec = service.redis.get(results[0].id)
    assert rec.state == "complete" and set(rec.models) == set(service.ingestor.keys.values())  # name:version


def test_delete_that_fails_in_milvus_keeps_the_record_for_a_retry(service, photos):
    data, _ = unique_photo(photos[3])
    (r,), _ = service.insert([InsertItem(f"del-{uuid.uuid4().hex[:6]}", data)], [], ctx())
    with faulty(service, {"delete": {2}}), pytest.raises(Unavailable):
        service.delete(r.id)
    assert service.redis.get(r.id) is not None  # still findable, so the delete can be retried
    service.delete(r.id)
    assert service.redis.get(r.id) is None
    assert not any(stored_rows(service, r.id).values())


def test_embedding_cache_serves_a_repeat_query(service, photos):
    data, sha = unique_photo(photos[4])
    key = service.models["mobilenet_v2"].spec.key
    assert service.redis.cache_get_many(key, [sha]) == [None]
    q = SearchQuery(image=data, models=("mobilenet_v2",), top_k=1)
    _, first = service.search(q, ctx())
    assert first.inference_ms > 0
    cached = service.redis.cache_get_many(key, [sha])[0]
    assert cached is not None and cached.shape == (1280,)
    _, second = service.search(q, ctx())
    assert second.inference_ms == 0  # no model run the second time


def test_a_delete_racing_an_insert_leaves_no_orphan_rows(service, photos):
    from lookalike_server.errors import Aborted

    class DeleteLandsFirst:
        """A racing Delete lands between the vector writes and the completion."""

        def __init__(self, real):
            self._real = real

        def __getattr__(self, name):
            return getattr(self._real, name)

        def mark_complete(self, item_id, models, **kwargs):
            self._real.delete(item_id)
            return self._real.mark_complete(item_id, models, **kwargs)

    data, _ = unique_photo(photos[5])
    key = f"race-del-{uuid.uuid4().hex[:6]}"
    before = counts(service)
    real = service.redis
    service.redis = DeleteLandsFirst(real)
    try:
        with pytest.raises(Aborted, match="deleted while this insert ran"):
            service.insert([InsertItem(key, data)], [], ctx())
    finally:
        service.redis = real
    assert service.redis.get_by_key(key) is None
    assert counts(service) == before
