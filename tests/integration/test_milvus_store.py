"""MilvusStore against real backends: Milvus Lite and a Milvus standalone server.

Every integration test runs on both (``milvus_store`` is parametrised). The
pure :func:`build_filter` tests need no service: ``tests/unit/test_milvus_filters.py``.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from lookalike_server import errors
from lookalike_server.config import MilvusConfig
from lookalike_server.store.milvus import MilvusStore, SearchHit

MilvusConfigFactory = Callable[..., MilvusConfig]

integration = pytest.mark.integration


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --------------------------------------------------------------- collections


@integration
def test_collection_has_index_before_data(milvus_store: MilvusStore) -> None:
    name = milvus_store.ensure_collection("resnet50", "1", 8)
    assert name.endswith("_resnet50_v1")
    assert milvus_store.ensure_collection("resnet50", "1", 8) == name  # idempotent
    client = milvus_store._client
    indexes = client.list_indexes(name)
    assert indexes, "the index must exist on the empty collection"
    info = client.describe_index(name, indexes[0])
    assert info["index_type"] == milvus_store.index_type and info["metric_type"] == "L2"
    assert milvus_store.count(name) == 0


@integration
def test_collection_name_is_sanitised(milvus_store: MilvusStore) -> None:
    name = milvus_store.collection_name("efficientnet-lite0", "1.0")
    assert name.endswith("_efficientnet_lite0_v1_0")
    assert milvus_store.ensure_collection("efficientnet-lite0", "1.0", 4) == name


@integration
def test_dimension_mismatch_is_a_config_error(milvus_store: MilvusStore) -> None:
    name = milvus_store.ensure_collection("m", "1", 16)
    with pytest.raises(errors.ConfigError, match=name):
        milvus_store.ensure_collection("m", "1", 32)


# ---------------------------------------------------------------- round trip


@integration
@pytest.mark.parametrize("dim", [512, 1280, 2048])
def test_round_trip(milvus_store: MilvusStore, dim: int) -> None:
    name = milvus_store.ensure_collection("rt", str(dim), dim)
    n = 200
    vectors = unit_vectors(n, dim, seed=dim)
    ids = list(range(1000, 1000 + n))
    keys = [f"img/{i}.jpg" for i in ids]
    attrs = [{"parity": str(i % 2)} for i in ids]
    milvus_store.insert(name, ids, vectors, keys, attrs)
    assert milvus_store.count(name) == n
    # A retried insert (same ids) overwrites instead of duplicating.
    milvus_store.insert(name, ids[:10], vectors[:10], keys[:10], attrs[:10])
    assert milvus_store.count(name) == n

    results = milvus_store.search(name, vectors[:5], top_k=10)
    assert len(results) == 5
    for row, hits in enumerate(results):
        assert len(hits) == 10
        assert hits[0].id == ids[row]
        assert hits[0].distance == pytest.approx(0.0, abs=1e-4)
        distances = [h.distance for h in hits]
        assert distances == sorted(distances)
        # Squared L2: unit vectors are at most 4 apart.
        assert all(0 <= d <= 4.0 + 1e-4 for d in distances)
        other = hits[1]
        expected = float(np.sum((vectors[row] - vectors[ids.index(other.id)]) ** 2))
        assert other.distance == pytest.approx(expected, rel=1e-3)

    got = milvus_store.get_vectors(name, [ids[0], ids[1], 999_999])
    assert set(got) == {ids[0], ids[1]}
    np.testing.assert_allclose(got[ids[0]], vectors[0], rtol=1e-6)
    assert got[ids[0]].dtype == np.float32

    milvus_store.delete(name, ids[:3])
    milvus_store.delete(name, ids[:3])  # idempotent
    assert milvus_store.count(name) == n - 3
    hits = milvus_store.search(name, vectors[0], top_k=5)[0]
    assert ids[0] not in {h.id for h in hits}
    assert milvus_store.get_vectors(name, ids[:3]) == {}


@integration
def test_reopen_keeps_data(milvus_backend: str, milvus_config: MilvusConfigFactory) -> None:
    config = milvus_config(flush_rows=1)
    store = MilvusStore(config, milvus_backend)
    name = store.ensure_collection("persist", "1", 8)
    vectors = unit_vectors(5, 8)
    store.insert(name, [1, 2, 3, 4, 5], vectors, list("abcde"), [{}] * 5)
    store.close()
    # Lite reopens collections released; ensure_collection must load them again.
    again = MilvusStore(config, milvus_backend)
    try:
        assert again.ensure_collection("persist", "1", 8) == name
        assert again.search(name, vectors[2], top_k=1)[0][0].id == 3
        assert again.count(name) == 5
    finally:
        if milvus_backend.startswith("http"):
            again._client.drop_collection(name)
        again.close()


# ------------------------------------------------------------------- filters

FILTER_KEYS = [
    "photos/cat_1.jpg",
    "photos/cat%1.jpg",
    "photos/catX1.jpg",  # would match `cat_` if _ were a wildcard
    "photos/cat1.jpg",
    '100% "real".png',
    "100%",
    "1000.png",  # would match `100%` if % were a wildcard
    "back\\slash/a.png",
    "back\\slash\\b.png",
    "backXslash.png",
    "it's.png",
    "naïve/été.png",
    "tab\there.png",
    "line\nbreak.png",
    "a",
    "ab",
    "b",
]


@pytest.fixture(scope="module")
def filter_collection(milvus_store: MilvusStore) -> str:
    name = milvus_store.ensure_collection("filters", "1", 8)
    n = len(FILTER_KEYS)
    attrs = [{"kind": "even" if i % 2 == 0 else 'o"dd\\', "tag": f"t{i % 3}"} for i in range(n)]
    milvus_store.insert(name, list(range(n)), unit_vectors(n, 8, seed=1), FILTER_KEYS, attrs)
    return name


def _ids(store: MilvusStore, collection: str, **filters: object) -> set[int]:
    query = unit_vectors(1, 8, seed=99)
    hits = store.search(collection, query, top_k=len(FILTER_KEYS), **filters)  # type: ignore[arg-type]
    return {h.id for h in hits[0]}


@integration
@pytest.mark.parametrize(
    "prefix",
    [
        "photos/cat_",
        "photos/cat%",
        "photos/cat",
        "100%",
        '100% "',
        "back\\slash/",
        "back\\slash",
        "it's",
        "naïve/",
        "tab\t",
        "line\n",
        "a",
        "zzz",
    ],
)
def test_key_prefix_filter_is_literal(milvus_store: MilvusStore, filter_collection: str, prefix: str) -> None:
    expected = {i for i, k in enumerate(FILTER_KEYS) if k.startswith(prefix)}
    assert _ids(milvus_store, filter_collection, key_prefix=prefix) == expected


@integration
def test_attribute_and_exclusion_filters(milvus_store: MilvusStore, filter_collection: str) -> None:
    n = len(FILTER_KEYS)
    odd = {i for i in range(n) if i % 2 == 1}
    assert _ids(milvus_store, filter_collection, attributes={"kind": 'o"dd\\'}) == odd
    both = {i for i in odd if i % 3 == 1}
    assert _ids(milvus_store, filter_collection, attributes={"kind": 'o"dd\\', "tag": "t1"}) == both
    assert _ids(milvus_store, filter_collection, attributes={"missing": "x"}) == set()
    assert _ids(milvus_store, filter_collection, exclude_ids=[0, 1, 2]) == set(range(3, n))
    combined = _ids(milvus_store, filter_collection, key_prefix="photos/", attributes={"kind": "even"}, exclude_ids=[0])
    assert combined == {2}


# ---------------------------------------------------------------- bad input


@integration
def test_bad_input_is_invalid_argument(milvus_store: MilvusStore) -> None:
    name = milvus_store.ensure_collection("bad", "1", 8)
    good = unit_vectors(2, 8)
    with pytest.raises(errors.InvalidArgument, match="shape"):
        milvus_store.insert(name, [1, 2], unit_vectors(2, 9), ["a", "b"], [{}, {}])
    nan = good.copy()
    nan[0, 0] = np.nan
    with pytest.raises(errors.InvalidArgument, match="NaN"):
        milvus_store.insert(name, [1, 2], nan, ["a", "b"], [{}, {}])
    with pytest.raises(errors.InvalidArgument):
        milvus_store.insert(name, [1], good, ["a", "b"], [{}, {}])
    with pytest.raises(errors.InvalidArgument, match="1024"):
        milvus_store.insert(name, [1, 2], good, ["x" * 1025, "b"], [{}, {}])
    with pytest.raises(errors.InvalidArgument):
        milvus_store.search(name, unit_vectors(1, 7), top_k=3)
    with pytest.raises(errors.InvalidArgument):
        milvus_store.search(name, good, top_k=0)
    with pytest.raises(errors.InvalidArgument):
        milvus_store.search(name, good, top_k=3, attributes={"bad name": "x"})
    assert milvus_store.count(name) == 0  # nothing was written by the failures


@integration
def test_missing_collection_is_failed_precondition(milvus_store: MilvusStore) -> None:
    name = milvus_store.ensure_collection("exists", "1", 4)
    milvus_store._dims["nope_v1"] = 4  # skip the describe so the search itself fails
    try:
        with pytest.raises(errors.FailedPrecondition, match="nope_v1"):
            milvus_store.search("nope_v1", unit_vectors(1, 4), top_k=1)
    finally:
        del milvus_store._dims["nope_v1"]
    assert milvus_store.search(name, unit_vectors(1, 4), top_k=1) == [[]]


# -------------------------------------------------------------- unavailable


@integration
def test_unreachable_milvus_is_unavailable(
    milvus_config: MilvusConfigFactory, free_port: Callable[[], int], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(errors.Unavailable) as info:
        MilvusStore(milvus_config(timeout_s=3.0), f"http://root:s3cret@127.0.0.1:{port}")
    message = info.value.message
    assert "Milvus" in message and "retriable" in message
    # The message may reach a caller: it names the dependency, not its address. The
    # operator's log has the address, without the password.
    assert f"127.0.0.1:{port}" not in message and "s3cret" not in message
    assert f"http://127.0.0.1:{port}" in caplog.text and "s3cret" not in caplog.text
    assert info.value.retriable and info.value.code == "UNAVAILABLE"
    assert time.monotonic() - started < 10


@integration
def test_ping_and_closed_store(milvus_backend: str, milvus_config: MilvusConfigFactory) -> None:
    store = MilvusStore(milvus_config(), milvus_backend)
    store.ping()
    store.close()
    store.close()  # idempotent
    with pytest.raises(errors.Unavailable, match="closed"):
        store.ping()


# ------------------------------------------------------------------ latency


@integration
def test_search_latency_at_a_few_thousand_rows(milvus_store: MilvusStore) -> None:
    """Not a benchmark: records the order of magnitude on each backend (see -s output)."""
    dim, n = 512, 3000
    name = milvus_store.ensure_collection("latency", "1", dim)
    vectors = unit_vectors(n, dim, seed=7)
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        ids = list(range(start, start + 1000))
        milvus_store.insert(name, ids, vectors[start : start + 1000], [f"k{i}" for i in ids], [{}] * 1000)
    milvus_store.flush(name)
    insert_s = time.perf_counter() - t0
    queries = unit_vectors(30, dim, seed=8)

    def median_ms(level: str, count: int) -> tuple[float, float]:
        times = []
        for q in queries[:count]:
            t = time.perf_counter()
            hits = milvus_store.search(name, q, top_k=10, consistency_level=level)[0]
            times.append((time.perf_counter() - t) * 1000)
            assert len(hits) <= 10 and all(isinstance(h, SearchHit) for h in hits)
        return statistics.median(times), sorted(times)[int(0.9 * len(times))]

    milvus_store.search(name, queries[0], top_k=10)  # warm-up
    strong = median_ms("Strong", 10)  # ~200 ms each on the server
    bounded = median_ms("Bounded", 30)
    backend = "lite" if milvus_store.is_lite else "server"
    sys.stderr.write(
        f"\n[{backend}: {n} x {dim} inserted in {insert_s:.2f} s; search top-10 median/p90: "
        f"Bounded {bounded[0]:.1f}/{bounded[1]:.1f} ms, Strong {strong[0]:.1f}/{strong[1]:.1f} ms]\n"
    )
    # Exact self-match still holds at this size.
    assert milvus_store.search(name, vectors[123], top_k=1)[0][0].id == 123


def test_a_matching_index_is_not_reported(milvus_store: MilvusStore, caplog: pytest.LogCaptureFixture) -> None:
    """Re-opening a collection built with the configured params says nothing (Lite and a server
    describe an index's params differently)."""
    milvus_store.ensure_collection("idxcheck", "1", 8)
    with caplog.at_level(logging.WARNING, logger="lookalike_server.store.milvus_collections"):
        milvus_store.ensure_collection("idxcheck", "1", 8)
    assert not [r for r in caplog.records if "not the configured" in r.getMessage()]
