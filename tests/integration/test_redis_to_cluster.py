"""scripts/redis_to_cluster.py: records written by a server on a standalone Redis, read back on a cluster."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import redis

from lookalike_server.store.redis import RedisStore
from lookalike_server.store.redis_records import CREATED, FOUND_COMPLETE, STATE_COMPLETE
from tests.conftest import ROOT
from tests.integration import redis_cluster as cluster_processes
from tests.integration.conftest import drop_prefix, redis_config

pytestmark = pytest.mark.integration


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("redis_to_cluster", ROOT / "scripts" / "redis_to_cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_records_copied_to_a_cluster_read_the_same_and_ids_continue(
    redis_url: str,
    redis_cluster: cluster_processes.RedisClusterProcesses,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"migrate-{uuid.uuid4().hex[:8]}:"
    old = RedisStore(redis_config(redis_url, key_prefix=prefix), str(tmp_path))
    new: RedisStore | None = None
    try:
        owner = uuid.uuid4().hex
        old.renew_lease(owner, 60)
        done = []
        for i in range(3):
            _, rec = old.claim(f"k{i}", f"sha{i}", {"n": str(i)}, "content", owner=owner, token=f"{owner}.{i}")
            done.append(old.mark_complete(rec.id, ["m:1"], token=f"{owner}.{i}"))
        _, pending = old.claim("k-pending", "sha-p", {}, "content", owner=owner, token=f"{owner}.p")
        old.cache_put_many("m:1", ["sha0"], np.ones((1, 4), dtype=np.float32), ttl_s=600)

        assert old.cluster is False
        args = ["--from", redis_url, "--to", redis_cluster.url, "--prefix", prefix, "--with-cache"]
        assert _script().main(args) == 0
        # 4 records, the cache entry, next_id, both indexes, pending and attrs; not the lease.
        assert capsys.readouterr().out.strip() == "copied 10 keys, skipped 1 (leases, cache)"

        new = RedisStore(redis_config(redis_cluster.url, key_prefix=prefix), str(tmp_path))
        assert new.get_many([r.id for r in done]) == {r.id: r for r in done}
        assert new.get_by_key("k1") == done[1]
        assert [r.id for r in new.list_unfinished()] == [pending.id]
        assert new.known_attributes() == {"n"}
        assert new.cache_get_many("m:1", ["sha0"])[0].tolist() == [1.0] * 4  # type: ignore[union-attr]
        assert 0 < new.client.ttl(new._cache_key("m:1", "sha0")) <= 600
        # The dedupe index and the id counter carry on where the old Redis stopped.
        outcome, again = new.claim("other-key", "sha2", {}, "content", owner=owner, token=f"{owner}.x")
        assert (outcome, again.id, again.state) == (FOUND_COMPLETE, done[2].id, STATE_COMPLETE)
        outcome, fresh = new.claim("k-new", "sha-new", {}, "content", owner=owner, token=f"{owner}.y")
        assert outcome == CREATED and fresh.id == pending.id + 1
        # A second run refuses to copy over records already there.
        with pytest.raises(SystemExit, match="already holds records"):
            _script().migrate(old.client, redis_cluster.client(), prefix)
    finally:
        drop_prefix(old.client, prefix)
        old.close()
        if new is not None:
            drop_prefix(new.client, prefix)
            new.close()
        client: redis.RedisCluster = redis_cluster.client()
        drop_prefix(client, prefix)
        client.close()
