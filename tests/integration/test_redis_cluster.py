"""The server on a real Redis Cluster: the key layout, the gRPC stack, a master killed and one failed over mid-insert.

The cluster (three masters with a replica each, AOF fsynced on every write,
replicas that never promote themselves) and the server (mobilenet_v2, Milvus
Lite in a temp dir, a ``redis+cluster://`` URL naming every node as a seed)
are this module's own, so killing a master cannot disturb another test. The
layout test and the store's own tests (``redis_store[cluster]`` in
``test_redis_store.py``) use the session's three-master cluster.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server import errors
from lookalike_server.config import MilvusConfig, ModelsConfig, RedisConfig
from lookalike_server.store.redis import RedisStore
from lookalike_server.store.redis_records import STATE_COMPLETE
from tests.conftest import LiveServer, start_server
from tests.integration import redis_cluster as cluster_processes
from tests.integration.conftest import drop_prefix, redis_config
from tests.integration.test_insert_faults import unique_photo

pytestmark = pytest.mark.integration

MODEL = "mobilenet_v2"


def distinct_image(seed: int) -> bytes:
    """A small PNG of a random gradient plus noise: its embedding is distinct, so its own vector finds it first."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    base = np.stack([(yy * rng.uniform(0, 4) + xx * rng.uniform(0, 4) + rng.uniform(0, 255)) % 255] * 3, -1)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + rng.normal(0, 40, (64, 64, 3)), 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster_processes.RedisClusterProcesses]:
    """This module's own cluster: three masters, a replica each (a test kills a master, another fails one over)."""
    if cluster_processes.binaries() is None:
        pytest.skip("redis-server and redis-cli are needed for a Redis Cluster")
    running = cluster_processes.start_cluster(tmp_path_factory.mktemp("own-redis-cluster"), replicas=1)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def live(
    cluster: cluster_processes.RedisClusterProcesses, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server whose metadata store is the cluster."""
    data_dir = tmp_path_factory.mktemp("cluster-server")
    server = start_server(
        data_dir=str(data_dir),
        health_interval_s=0.3,
        models=ModelsConfig(only=(MODEL,)),
        redis=RedisConfig(url=cluster.url, key_prefix=f"lookalike-cluster-{uuid.uuid4().hex[:8]}:", timeout_s=2.0),
        milvus=MilvusConfig(uri=str(data_dir / "milvus.db"), consistency_level="Strong"),
    )
    yield server
    server.server.stop(0)  # type: ignore[attr-defined]


@pytest.fixture
def stub(live: LiveServer) -> Iterator[pb_grpc.LookalikeStub]:
    with grpc.insecure_channel(live.target) as channel:
        yield pb_grpc.LookalikeStub(channel)


def test_record_keys_share_one_slot_and_cache_keys_spread_over_every_master(
    redis_cluster: cluster_processes.RedisClusterProcesses, tmp_path: Path
) -> None:
    config = redis_config(redis_cluster.url)
    store = RedisStore(config, str(tmp_path))
    client = store.client
    try:
        assert store.cluster and isinstance(client, redis.RedisCluster)
        owner = uuid.uuid4().hex
        store.renew_lease(owner, 30)
        _, rec = store.claim("k", "sha", {"a": "1"}, "content", owner=owner, token=f"{owner}.1")
        store.mark_complete(rec.id, ["m:1"], token=f"{owner}.1")
        record_keys = [k.decode() for k in client.scan_iter(match=config.key_prefix + "*") if b":emb:" not in k]
        # item, next_id, both indexes, attrs and the lease (pending is empty again).
        assert len(record_keys) == 6, record_keys
        assert len({client.keyslot(k) for k in record_keys}) == 1
        assert all(k.startswith(config.key_prefix + "{") for k in record_keys)  # ACL patterns on the prefix still match
        shas = [f"s{i}" for i in range(60)]
        vectors = np.ones((60, 4), dtype=np.float32)
        store.cache_put_many("m:1", shas, vectors)
        masters = {client.get_node_from_key(store._cache_key("m:1", s)).name for s in shas}
        assert len(masters) == 3  # the bulk of the bytes is not pinned to one master
        assert len(list(client.scan_iter(match=config.key_prefix + "emb:*"))) == 60  # SCAN walks every master
        got = store.cache_get_many("m:1", [*shas, "missing"])
        assert all(v is not None and v.tolist() == [1.0] * 4 for v in got[:-1]) and got[-1] is None
        store.cache_drop(["m:1"], "s7")
        assert store.cache_get_many("m:1", ["s7"]) == [None]
        assert [r.id for batch in store.scan_complete() for r in batch] == [rec.id]
    finally:
        drop_prefix(client, config.key_prefix)
        store.close()


def test_insert_search_get_delete_through_the_server(stub: pb_grpc.LookalikeStub, photos: list[Path]) -> None:
    images = [unique_photo(p)[0] for p in photos[:3]]
    res = stub.Insert(
        pb.InsertRequest(
            items=[pb.InsertItem(key=f"c{i}", image=img, attributes={"n": str(i)}) for i, img in enumerate(images)]
        ),
        timeout=60,
    ).results
    assert [r.created for r in res] == [True, True, True]
    ids = [r.id for r in res]
    again = stub.Insert(pb.InsertRequest(items=[pb.InsertItem(key="c0-again", image=images[0])]), timeout=60)
    assert again.results[0].id == ids[0] and not again.results[0].created  # dedupe by content, via idx:sha
    hits = stub.Search(pb.SearchRequest(image=images[1], top_k=3), timeout=60).results[0].hits
    assert hits[0].id == ids[1] and hits[0].key == "c1" and dict(hits[0].attributes) == {"n": "1"}
    assert stub.Get(pb.GetRequest(key="c2"), timeout=30).id == ids[2]
    assert stub.Get(pb.GetRequest(id=ids[0]), timeout=30).key == "c0"
    stub.Delete(pb.DeleteRequest(id=ids[0]), timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        stub.Get(pb.GetRequest(id=ids[0]), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    hits = stub.Search(pb.SearchRequest(image=images[0], top_k=3), timeout=60).results[0].hits
    assert ids[0] not in [h.id for h in hits]


class _Inserter:
    """Two threads inserting fresh images, noting each acknowledged id and each error's status code."""

    def __init__(self, stub: pb_grpc.LookalikeStub) -> None:
        self._stub = stub
        self._seed = uuid.uuid4().int % 2**32
        self.acked: dict[str, int] = {}
        self.failed: dict[str, bytes] = {}
        self.codes: list[grpc.StatusCode] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._n = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def __enter__(self) -> _Inserter:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._n += 1
                n = self._n
            key = f"load-{self._seed}-{n}"
            image = distinct_image(self._seed + n)
            try:
                res = self._stub.Insert(pb.InsertRequest(items=[pb.InsertItem(key=key, image=image)]), timeout=30)
            except grpc.RpcError as exc:
                with self._lock:
                    self.codes.append(exc.code())
                    self.failed[key] = image
                time.sleep(0.05)
                continue
            with self._lock:
                self.acked[key] = res.results[0].id

    def wait_for(self, predicate: Any, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"timed out: {len(self.acked)} acked, codes {self.codes[-5:]}"
            time.sleep(0.05)

    def acked_more(self, n: int) -> None:
        """Waits until ``n`` more inserts than now are acknowledged."""
        before = len(self.acked)
        self.wait_for(lambda: len(self.acked) >= before + n)


def _health(live: LiveServer) -> int:
    with grpc.insecure_channel(live.target) as channel:
        request = health_pb2.HealthCheckRequest()
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status)


def _assert_write_invariant(service: Any, stub: pb_grpc.LookalikeStub, load: _Inserter) -> None:
    """The write protocol's invariant after the repair sweep (docs/integrity.md)."""
    print(f"{len(load.acked)} inserts acknowledged, {len(load.codes)} failed")
    # Every failure told the caller to retry; none was INTERNAL.
    assert set(load.codes) <= {grpc.StatusCode.UNAVAILABLE}, load.codes
    store: RedisStore = service.redis
    service.repair(verify=True)  # what the periodic sweep does
    # No acknowledged item lost: each is complete, under its id, and found first by its own vector.
    for key, item_id in load.acked.items():
        assert stub.Get(pb.GetRequest(key=key), timeout=30).id == item_id
        rec = store.get(item_id)
        assert rec is not None and rec.state == STATE_COMPLETE and rec.models
        hits = stub.Search(pb.SearchRequest(id=item_id, top_k=1), timeout=30).results[0].hits
        assert hits[0].id == item_id
    # Nothing half-written: no unfinished record, and rows exactly for the complete records.
    assert store.list_unfinished() == []
    complete = {r.id for batch in store.scan_complete() for r in batch}
    collection = service.collections[MODEL]
    assert service.milvus.existing_ids(collection, sorted(complete)) == complete
    assert service.milvus.count(collection) == len(complete)
    # A retry of a failed insert goes through now, once (no duplicate for its content).
    retried = {
        key: stub.Insert(pb.InsertRequest(items=[pb.InsertItem(key=key, image=image)]), timeout=60).results[0].id
        for key, image in list(load.failed.items())[:5]
    }
    assert len(set(retried.values())) == len(retried)
    assert service.milvus.count(collection) == len(complete | set(retried.values()))


@pytest.mark.slow  # ~13 s: the cluster needs its node timeout to declare the master failed
def test_a_master_killed_during_inserts_loses_nothing_acknowledged(
    live: LiveServer, cluster: cluster_processes.RedisClusterProcesses, stub: pb_grpc.LookalikeStub
) -> None:
    service: Any = live.server.service  # type: ignore[attr-defined]
    store: RedisStore = service.redis
    # The master that holds every record, index and lease: the worst one to lose.
    victim = cluster.node_of_key(store._keys.next_id)
    # A cache key a surviving master serves: while the cluster is failed, it answers CLUSTERDOWN.
    elsewhere = next(s for s in map(str, range(100)) if cluster.node_of_key(store._cache_key("m:1", s)) is not victim)
    assert _health(live) == health_pb2.HealthCheckResponse.SERVING
    with _Inserter(stub) as load:
        load.acked_more(4)
        t0 = time.monotonic()
        cluster.kill(victim)
        # Down longer than the node timeout: the survivors declare the cluster
        # failed and answer CLUSTERDOWN, not just refused connections.
        cluster.wait_state(next(n for n in cluster.nodes if n is not victim), "fail")
        with pytest.raises(errors.Unavailable, match="retriable") as info:
            store.cache_get_many("m:1", [elsewhere])
        assert isinstance(info.value.__cause__, redis.exceptions.ClusterDownError)
        load.wait_for(lambda: len(load.codes) >= 2)  # inserts fail while it is down
        load.wait_for(lambda: _health(live) == health_pb2.HealthCheckResponse.NOT_SERVING)
        t1 = time.monotonic()
        cluster.start_node(victim)  # back from its AOF
        cluster.wait_ok()
        load.wait_for(lambda: _health(live) == health_pb2.HealthCheckResponse.SERVING)
        load.acked_more(4)  # and inserts succeed again
        print(f"outage {t1 - t0:.1f} s, back to ok and 4 more acks in {time.monotonic() - t1:.1f} s")
    assert load.codes, "no insert failed: the outage was not exercised"
    _assert_write_invariant(service, stub, load)


def test_a_failover_to_a_replica_during_inserts_loses_nothing_acknowledged(
    live: LiveServer, cluster: cluster_processes.RedisClusterProcesses, stub: pb_grpc.LookalikeStub
) -> None:
    service: Any = live.server.service  # type: ignore[attr-defined]
    store: RedisStore = service.redis
    master = cluster.node_of_key(store._keys.next_id)
    replica = cluster.replica_of(master)
    with _Inserter(stub) as load:
        load.acked_more(4)
        cluster.failover(replica)  # the records' slot moves to another node mid-load
        cluster.wait_ok()
        load.acked_more(4)  # the client followed the slot to its new master
    # The new slot owner as the cluster reports it (gossip may take a moment to reach every node).
    load.wait_for(lambda: cluster.node_of_key(store._keys.next_id) is replica, timeout_s=10)
    _assert_write_invariant(service, stub, load)


def test_a_cluster_with_no_node_left_is_unavailable_not_internal(
    live: LiveServer, cluster: cluster_processes.RedisClusterProcesses, stub: pb_grpc.LookalikeStub, photos: list[Path]
) -> None:
    # Last in this module: it takes the module's cluster down for good.
    for node in cluster.nodes:
        cluster.kill(node)
    for call in (
        lambda: stub.Get(pb.GetRequest(key="c2"), timeout=30),
        lambda: stub.Insert(pb.InsertRequest(items=[pb.InsertItem(key="x", image=photos[0].read_bytes())]), timeout=30),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert "127.0.0.1" not in info.value.details()
    deadline = time.monotonic() + 30
    while _health(live) != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "health stayed SERVING with no Redis node up"
        time.sleep(0.1)
