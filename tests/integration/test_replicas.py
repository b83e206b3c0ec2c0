"""Two server replicas, each its own ``lookalike-server`` process, on one Milvus and one Redis.

The README says the server keeps no state of its own and scales by replicas: what one
replica writes the other reads, a round_robin client spreads calls over both (counted by
each replica's own ``GetStats``), and a replica that is stopped (SIGTERM: health
NOT_SERVING, a short delay, drain) costs no call, because the client's health checks stop
sending it work before it refuses any (shown with client retries off). The processes are started by the helpers of
``benchmarks/replicas.py``, which the throughput benchmark uses too.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from lookalike import LookalikeClient, NotFoundError
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("replicas_bench", ROOT / "benchmarks" / "replicas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


bench = _bench_module()


@pytest.fixture(scope="module")
def two_replicas(
    milvus_server_uri: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Any]]:
    """Two replicas on the session's Milvus standalone and Redis, under a unique prefix."""
    prefix = f"itrep{uuid.uuid4().hex[:6]}:"
    work = tmp_path_factory.mktemp("replicas")
    try:
        # A 5 s shutdown delay: time to watch the stopping replica get no new calls.
        with bench.replicas(2, milvus_server_uri, redis_url, prefix, work, shutdown_delay_s=5) as started:
            yield started
    finally:
        bench.drop_redis_prefix(redis_url, prefix)
        bench.drop_milvus_prefix(milvus_server_uri, prefix)


def _crop(path: Path) -> bytes:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    buf = io.BytesIO()
    img.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def test_what_one_replica_writes_the_other_reads(two_replicas: list[Any], photos: list[Path]) -> None:
    a, b = (LookalikeClient(r.target, timeout=60) for r in two_replicas)
    with a, b:
        results = a.insert([(p.name, p, {"n": str(i)}) for i, p in enumerate(photos[:4])])
        assert all(r.created for r in results)
        ids = {p.name: r.id for p, r in zip(photos, results, strict=False)}

        got = b.get(ids[photos[2].name])
        assert (got.key, got.attributes) == (photos[2].name, {"n": "2"})
        assert b.get(key=photos[3].name).id == ids[photos[3].name]
        # Insert is idempotent across replicas too: the same content, the same id.
        again = b.insert((photos[0].name, photos[0]))
        assert (again.id, again.created) == (ids[photos[0].name], False)

        found = b.search(image=_crop(photos[1]), top_k=3).results
        assert [r.model for r in found] == ["mobilenet_v2"]
        assert found[0].hits[0].id == ids[photos[1].name]

        b.delete(ids[photos[1].name])
        with pytest.raises(NotFoundError):
            a.get(ids[photos[1].name])
        for r in a.search(image=_crop(photos[1]), top_k=3).results:
            assert ids[photos[1].name] not in [h.id for h in r.hits]


def test_the_benchmark_measures_through_both_replicas(two_replicas: list[Any]) -> None:
    # benchmarks/replicas.py's measuring step, briefly: its counts must add up.
    images = [bench.make_image(i, size=64) for i in range(4)]
    point = bench.measure(two_replicas, "embed", images, concurrency=2, seconds=1.0, warmup_s=0.5)
    assert point.replicas == 2 and point.errors == 0 and point.calls > 0
    # Every measured call is one OK Embed on exactly one replica, and both got some.
    assert sum(point.calls_per_replica) == point.calls
    assert all(n > 0 for n in point.calls_per_replica)
    assert len(point.replica_cpu_cores) == 2 and all(c > 0 for c in point.replica_cpu_cores)
    assert point.machine_busy_cores > 0 and point.p50_ms <= point.p99_ms
    assert bench.table([point]).count("\n") == 2


def _work_done(stats: Any) -> int:
    """Calls of the test's load a replica answered (its ``GetStats`` counters)."""
    return sum(v for k, v in stats.requests_by_status.items() if k.split(":")[0] in ("Get", "Search", "ListModels"))


def _served(target: str, method: str) -> int:
    return bench.served_counts(target).get(method, 0)


def test_round_robin_spreads_calls_and_a_stopped_replica_costs_no_call(
    two_replicas: list[Any], photos: list[Path]
) -> None:
    first, second = two_replicas
    # retries=0: no call is rescued by a retry, so a call that reached the stopping replica
    # after it began refusing would fail. Only the health checks can keep them all green.
    with LookalikeClient([r.target for r in two_replicas], timeout=30, retries=0) as client:
        assert client.balancing == "round_robin"
        item = client.insert((photos[5].name, photos[5]))

        # Both connections come up within a few calls; then the rotation alternates.
        deadline = time.monotonic() + 30
        while not (_served(first.target, "Get") and _served(second.target, "Get")):
            assert time.monotonic() < deadline, "the second replica never got a call"
            client.get(item.id)
        before = [_served(r.target, "Get") for r in two_replicas]
        for _ in range(20):
            assert client.get(item.id).key == photos[5].name
        spread = [_served(r.target, "Get") - n for r, n in zip(two_replicas, before, strict=True)]
        # 10/10 when both stay healthy throughout; a replica whose store ping timed out on
        # a loaded machine is skipped for a moment, hence no exact split.
        assert sum(spread) == 20 and min(spread) >= 5, spread

        # Now stop the second replica while calls keep coming; none may fail. SIGTERM makes
        # it report NOT_SERVING, keep serving for its shutdown delay (5 s here), then refuse new calls
        # and drain: the client's Health/Watch stream must move traffic off it in between.
        failures: list[BaseException] = []
        done = threading.Event()
        calls = {"total": 0, "after_exit": 0}
        counting = threading.Lock()

        def load(i: int) -> None:
            while not done.is_set():
                try:
                    if i % 3 == 0:
                        assert client.get(item.id).id == item.id
                    elif i % 3 == 1:
                        assert client.search(id=item.id, top_k=2).results
                    else:
                        assert client.list_models()
                except BaseException as exc:  # recorded: the assertion below shows it
                    failures.append(exc)
                with counting:
                    calls["total"] += 1
                    if not second.running():
                        calls["after_exit"] += 1
                i += 1

        # Four threads: a Search on Milvus standalone can take a few hundred ms (its
        # consistency wait), and one thread made only 3 calls in some seconds.
        workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        served_while_not_serving = -1
        try:
            time.sleep(1.0)
            first_before = bench.served_counts(first.target)
            second.terminate()
            with LookalikeClient(second.target, timeout=5) as direct:
                deadline = time.monotonic() + 10
                while direct.health("lookalike.v1.Lookalike") != "NOT_SERVING":
                    assert time.monotonic() < deadline, "SIGTERM did not turn health NOT_SERVING"
                    time.sleep(0.02)
                # Still serving (the shutdown delay, 5 s), but the client has stopped
                # sending it work: once the Watch update has reached the client (counters
                # steady over 0.5 s in which the load made at least 4 calls, within 2.5 s),
                # they stand still for a second while the load goes on. (With
                # health_check=False, tried by hand, it kept getting calls: 3 in that
                # second, and 5 in 1.5 s in an earlier version of this test.) The load's
                # progress is checked because the load is slow (a Search on Milvus
                # standalone can take a few hundred ms), so a 0.2 s window could hold no call
                # for the stopping replica by chance: CI once saw 1 call served after such a
                # window.
                c1, settle_by = _work_done(direct.stats()), time.monotonic() + 2.5
                while time.monotonic() < settle_by:
                    sent = calls["total"]
                    time.sleep(0.5)
                    c0, c1 = c1, _work_done(direct.stats())
                    if c0 == c1 and calls["total"] - sent >= 4:
                        break
                sent = calls["total"]
                time.sleep(1.0)
                served_while_not_serving = _work_done(direct.stats()) - c1
                assert calls["total"] - sent >= 5, "the load stalled, so the quiet second shows nothing"
            assert second.proc is not None and second.proc.wait(30) == 0
            while calls["after_exit"] < 30 and any(w.is_alive() for w in workers):
                time.sleep(0.05)
        finally:
            done.set()
            for w in workers:
                w.join(60)
        assert not failures, failures[:3]
        assert served_while_not_serving == 0
        assert calls["after_exit"] >= 30
        first_after = bench.served_counts(first.target)
        # Everything after the stop went to the first replica.
        gained = sum(first_after.get(m, 0) - first_before.get(m, 0) for m in ("Get", "Search", "ListModels"))
        assert gained >= calls["after_exit"]
