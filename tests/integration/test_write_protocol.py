"""The write protocol on real stores: leases, the sweep, model keys, ghost repair.

Runs on the session ``live_server`` (Milvus Lite + Redis). A second
:class:`LookalikeService` on the same stores plays a second replica; records
of the first release are written into Redis by hand, as that release did.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import uuid
from typing import Any

import pytest

from lookalike_server.domain import InsertItem, RequestContext, SearchQuery
from lookalike_server.errors import NotFound
from lookalike_server.service import LookalikeService
from lookalike_server.store.redis_records import BUSY
from tests.integration.test_insert_faults import counts, stored_rows, unique_photo

pytestmark = pytest.mark.integration


@pytest.fixture
def service(live_server: Any) -> LookalikeService:
    return live_server.server.service


@pytest.fixture
def replica(live_server: Any, service: LookalikeService):
    """A second server instance on the same stores (its own lease)."""
    other = LookalikeService(live_server.config, live_server.server._embedder, service.milvus, service.redis)
    yield other
    other.close()


def ctx() -> RequestContext:
    return RequestContext(60)


def test_a_replicas_startup_sweep_spares_live_pending_work_and_removes_a_dead_owners(
    service: LookalikeService, replica: LookalikeService, photos
) -> None:
    _data, sha = unique_photo(photos[0])
    key = f"lease-{uuid.uuid4().hex[:8]}"
    ing = service.ingestor
    token = ing.lease.begin()  # an insert of the first instance, in flight
    _outcome, rec = service.redis.claim(key, sha, {}, "content", owner=ing.lease.owner, token=token)
    assert rec.state == "pending"
    try:
        replica.repair(verify=False)  # the start-up sweep of the second instance
        assert service.redis.get(rec.id).state == "pending"  # untouched: its owner lives
        # The same content sent to the replica waits for the live owner rather than racing it.
        outcome2, _ = replica.redis.claim(key, sha, {}, "content", owner=replica.ingestor.lease.owner, token="probe")
        assert outcome2 == BUSY
    finally:
        ing.lease.end(token)
    # The owner dies (lease gone, never renewed): the replica's sweep removes it.
    fake_owner = uuid.uuid4().hex
    other_token = f"{fake_owner}.x"
    _data2, sha2 = unique_photo(photos[1])
    _, dead = service.redis.claim(f"{key}-dead", sha2, {}, "content", owner=fake_owner, token=other_token)
    assert replica.repair(verify=False) >= 1
    assert service.redis.get(dead.id) is None
    # And the first instance's own abandoned record (no attempt in flight) goes too.
    assert service.repair(verify=False) >= 1
    assert service.redis.get(rec.id) is None


def test_an_insert_takes_over_a_dead_owners_pending_record_keeping_its_id(service: LookalikeService, photos) -> None:
    data, sha = unique_photo(photos[2])
    key = f"takeover-{uuid.uuid4().hex[:8]}"
    _, dead = service.redis.claim(key, sha, {}, "content", owner="crashed-instance", token="crashed-instance.1")
    (result,), _ = service.insert([InsertItem(key, data)], [], ctx())
    assert result.id == dead.id and not result.created  # same id: the crashed attempt is finished
    assert stored_rows(service, result.id) == {m: True for m in service.collections}
    assert service.get(key=key).models == tuple(service.collections)


def _old_release_record(service: LookalikeService, key: str, sha: str, models: list[str]) -> int:
    """Writes an item the way the first release did: bare model names, no owner."""
    r = service.redis.client
    prefix = service.redis._keys.prefix
    item_id = int(r.incr(prefix + "next_id"))
    r.hset(
        f"{prefix}item:{item_id}",
        mapping={
            "key": key,
            "attrs": "{}",
            "sha": sha,
            "models": json.dumps(models),
            "created_at": repr(time.time()),
            "state": "complete",
        },
    )
    r.hset(prefix + "idx:sha", sha, item_id)
    r.hset(prefix + "idx:key", key, item_id)
    return item_id


def test_records_of_the_first_release_are_read_and_migrated(service: LookalikeService, photos) -> None:
    data, sha = unique_photo(photos[3])
    key = f"old-{uuid.uuid4().hex[:8]}"
    names = list(service.collections)
    # Rows written as the first release did (same collections), then its record.
    vectors, _ = service.embedder.embed([data], names, ctx())
    item_id = _old_release_record(service, key, sha, names)
    for name, collection in service.collections.items():
        service.milvus.insert(collection, [item_id], vectors[name], [key], [{}])
    assert service.get(key=key).models == tuple(names)  # read correctly before any migration
    (hits,) = service.search(SearchQuery(item_id=item_id, models=(names[0],), top_k=1), ctx())[0]
    assert hits.hits[0].id == item_id
    (again,), _ = service.insert([InsertItem(key, data)], [], ctx())
    assert again.id == item_id and not again.created
    service.repair(verify=True)
    assert set(service.redis.get(item_id).models) == set(service.ingestor.keys.values())


def test_a_ghost_is_repaired_by_the_sweep_and_fixed_by_a_re_insert(service: LookalikeService, photos) -> None:
    data, _ = unique_photo(photos[4])
    key = f"ghost-{uuid.uuid4().hex[:8]}"
    (r,), _ = service.insert([InsertItem(key, data)], [], ctx())
    lost = next(iter(service.collections))
    service.milvus.delete(service.collections[lost], [r.id])  # rows gone behind the record's back
    assert service.repair(verify=True) >= 1
    assert lost not in service.get(r.id).models  # un-listed, not a ghost any more
    (again,), _ = service.insert([InsertItem(key, data)], [], ctx())
    assert again.id == r.id and lost in again.models
    assert stored_rows(service, r.id) == {m: True for m in service.collections}
    (hits,) = service.search(SearchQuery(item_id=r.id, models=(lost,), top_k=1), ctx())[0]
    assert hits.hits[0].id == r.id


class _Bumped:
    """The loaded models with one version bumped (a new export of the same model)."""

    def __init__(self, embedder: Any, name: str, version: str) -> None:
        self._embedder = embedder
        self.models = dict(embedder.models)
        model = copy.copy(self.models[name])
        model.spec = dataclasses.replace(model.spec, version=version)
        self.models[name] = model

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._embedder, attr)


def test_a_version_bump_re_indexes_on_re_insert(live_server: Any, service: LookalikeService, photos) -> None:
    data, _ = unique_photo(photos[5])
    key = f"bump-{uuid.uuid4().hex[:8]}"
    (r,), _ = service.insert([InsertItem(key, data)], [], ctx())
    name = next(iter(service.collections))
    version = live_server.server._embedder.models[name].spec.version
    new_version = f"{version}1"  # any other version string
    bumped = LookalikeService(
        live_server.config,
        _Bumped(live_server.server._embedder, name, new_version),
        service.milvus,
        service.redis,
    )
    try:
        assert bumped.collections[name] != service.collections[name]  # a new collection
        with pytest.raises(Exception, match="not indexed under"):
            bumped.search(SearchQuery(item_id=r.id, models=(name,), top_k=1), ctx())
        (again,), _ = bumped.insert([InsertItem(key, data)], [], ctx())
        assert again.id == r.id and not again.created and name in again.models
        assert r.id in bumped.milvus.get_vectors(bumped.collections[name], [r.id])
        (hits,) = bumped.search(SearchQuery(item_id=r.id, models=(name,), top_k=1), ctx())[0]
        assert hits.hits[0].id == r.id
        models = service.redis.get(r.id).models
        assert f"{name}:{version}" in models and f"{name}:{new_version}" in models
    finally:
        bumped.close()


def test_delete_moves_the_record_out_of_reach_first(service: LookalikeService, photos) -> None:
    data, _ = unique_photo(photos[6 % len(photos)])
    key = f"del-{uuid.uuid4().hex[:8]}"
    before = counts(service)
    (r,), _ = service.insert([InsertItem(key, data)], [], ctx())
    service.delete(r.id)
    with pytest.raises(NotFound):
        service.get(r.id)
    assert counts(service) == before
    # The same bytes again: a new id (ids are never reused).
    (again,), _ = service.insert([InsertItem(key, data)], [], ctx())
    assert again.created and again.id != r.id
