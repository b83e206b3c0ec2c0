"""The duplicate walk's store reads on both backends: batched scans and radius searches.

Checks against an exact answer computed here: the scan returns every row the
filter keeps exactly once; the radius search (range search where the engine
answers it, top-k plus a cut otherwise) returns exactly the rows within the
radius, on Milvus Lite and on a Milvus standalone server.
"""

from __future__ import annotations

import numpy as np
import pytest

from lookalike_server.errors import InvalidArgument
from lookalike_server.store.milvus import MilvusStore
from lookalike_server.store.milvus_scan import RANGE, TOPK

DIM = 16


@pytest.fixture(scope="module")
def scan_data(milvus_store: MilvusStore) -> tuple[str, np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((60, DIM)).astype(np.float32)
    # Every third row gets a near copy (squared L2 around 0.01) right after it.
    rows = []
    for i, v in enumerate(base):
        rows.append(v)
        if i % 3 == 0:
            rows.append(v + rng.standard_normal(DIM).astype(np.float32) * 0.02)
    vectors = np.stack(rows)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = [f"{'a' if i % 2 else 'b'}/{i}" for i in range(len(vectors))]
    coll = milvus_store.ensure_collection("scan_walk", "1", DIM)
    milvus_store.insert(coll, list(range(1, len(vectors) + 1)), vectors, keys, [{} for _ in keys])
    milvus_store.flush(coll)
    return coll, vectors, keys


def test_scan_returns_every_filtered_row_once(milvus_store: MilvusStore, scan_data) -> None:  # type: ignore[no-untyped-def]
    coll, vectors, keys = scan_data
    seen: list[int] = []
    for ids, vecs in milvus_store.scan_vectors(coll, batch_size=7):
        assert len(ids) <= 7 and vecs.shape == (len(ids), DIM)
        np.testing.assert_allclose(vecs, vectors[ids - 1], atol=1e-6)
        seen += ids.tolist()
    assert sorted(seen) == list(range(1, len(vectors) + 1))
    only_a = [int(i) for ids, _ in milvus_store.scan_vectors(coll, key_prefix="a/", batch_size=7) for i in ids]
    assert sorted(only_a) == [i + 1 for i, k in enumerate(keys) if k.startswith("a/")]


@pytest.mark.parametrize("mode", [RANGE, TOPK])
def test_radius_search_is_exact(milvus_store: MilvusStore, scan_data, mode: str) -> None:  # type: ignore[no-untyped-def]
    coll, vectors, _ = scan_data
    radius = 0.05
    hits, used = milvus_store.neighbours(coll, vectors, radius, 10, mode=mode)
    assert used == mode  # both backends answer range searches
    d = ((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    for q, got in enumerate(hits):
        want = {j + 1 for j in np.flatnonzero(d[q] <= radius)}
        assert {i for i, _ in got} == want
        assert all(dist <= radius for _, dist in got)


def test_radius_search_refuses_a_bad_limit(milvus_store: MilvusStore, scan_data) -> None:  # type: ignore[no-untyped-def]
    coll, vectors, _ = scan_data
    with pytest.raises(InvalidArgument):
        milvus_store.neighbours(coll, vectors[:1], 0.1, 0)
