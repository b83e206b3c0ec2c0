"""Milvus Lite's index: parameters honoured, the default finds every stored item by its own vector."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from lookalike_server.store.milvus import MilvusStore
from lookalike_server.store.milvus_schema import LITE_DEFAULT_INDEX
from tests.integration.conftest import milvus_config

pytestmark = pytest.mark.integration


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim), dtype=np.float32)
    v = np.abs(centres[rng.integers(0, 8, n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_lite_default_index_is_the_measured_one(tmp_path: Path) -> None:
    store = MilvusStore(milvus_config(), str(tmp_path / "milvus.db"))
    try:
        name = store.ensure_collection("m", "1", 8)
        info = store._client.describe_index(name, "vector")
        assert store.index_type == LITE_DEFAULT_INDEX == info["index_type"]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("index", "changes", "want"),
    [
        ("HNSW", {"hnsw_m": 32, "hnsw_ef_construction": 120}, {"M": 32, "efConstruction": 120}),
        ("IVF_FLAT", {"ivf_nlist": 64}, {"nlist": 64}),
    ],
)
def test_lite_honours_build_params(tmp_path: Path, index: str, changes: dict[str, int], want: dict[str, int]) -> None:
    """Milvus Lite 3.2 used to build with its defaults ("build_params": {}) whatever was asked."""
    store = MilvusStore(milvus_config(index_type=index, **changes), str(tmp_path / "milvus.db"))
    try:
        name = store.ensure_collection("m", "1", 8)
        info = store._client.describe_index(name, "vector")
        assert info["index_type"] == index
        assert {k: int(v) for k, v in info["params"].items()} == want
    finally:
        store.close()


def test_existing_collection_with_other_params_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri = str(tmp_path / "milvus.db")
    cfg = milvus_config(index_type="HNSW", hnsw_m=16)
    store = MilvusStore(cfg, uri)
    store.ensure_collection("m", "1", 8)
    store.close()
    again = MilvusStore(milvus_config(index_type="HNSW", hnsw_m=48, collection_prefix=cfg.collection_prefix), uri)
    try:
        with caplog.at_level(logging.WARNING, logger="lookalike_server.store.milvus_collections"):
            again.ensure_collection("m", "1", 8)
        assert any(
            "not the configured HNSW" in r.getMessage() and "'M': '48'" in r.getMessage() for r in caplog.records
        )
    finally:
        again.close()


def test_lite_default_index_finds_every_item_by_its_own_vector(tmp_path: Path) -> None:
    """Self-recall 1.0 over every stored item, across several flushed (indexed) segments and deletes."""
    store = MilvusStore(milvus_config(flush_rows=0), str(tmp_path / "milvus.db"))
    try:
        dim, n = 64, 3000
        name = store.ensure_collection("m", "1", dim)
        data = _vectors(n, dim)
        for start in range(0, n, 1000):
            ids = list(range(start, start + 1000))
            store.insert(name, ids, data[start : start + 1000], [f"k{i}" for i in ids], [{} for _ in ids])
            store.flush(name)
        store.delete(name, list(range(0, n, 7)))
        alive = [i for i in range(n) if i % 7]
        missed = []
        for lo in range(0, len(alive), 100):
            batch = alive[lo : lo + 100]
            for i, hits in zip(batch, store.search(name, data[batch], 1), strict=True):
                if not hits or hits[0].id != i:
                    missed.append(i)
        assert missed == [], f"{len(missed)} of {len(alive)} stored items not found first by their own vector"
    finally:
        store.close()
