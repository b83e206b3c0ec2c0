"""``benchmarks/scale.py`` end to end at 2,000 rows on Milvus Lite: the result's structure and its invariants.

The full run (a million rows on a standalone server) takes an hour; this runs
every step of it (resemblance check, server write path through the real stores,
bulk insert with exact neighbours, index build, search sweep, report) on a
small collection, so the script cannot rot unnoticed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scale
import scale_vectors

pytestmark = pytest.mark.integration


def test_draws_are_a_pure_function_of_seed_and_row() -> None:
    model = scale_vectors.EmbeddingModel.load(scale.DEFAULT_MODEL)
    whole = scale_vectors.draw(model, 0, scale_vectors.CHUNK + 20, seed=3)
    # A slice across the chunk boundary equals the same rows of a longer draw.
    part = scale_vectors.draw(model, scale_vectors.CHUNK - 5, 10, seed=3)
    assert np.array_equal(part, whole[scale_vectors.CHUNK - 5 : scale_vectors.CHUNK + 5])
    assert not np.array_equal(part, scale_vectors.draw(model, scale_vectors.CHUNK - 5, 10, seed=4))
    assert whole.shape == (scale_vectors.CHUNK + 20, 1280)
    assert np.allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    assert (whole >= 0).all()  # like MobileNetV2's pooled ReLU6 features


def test_running_exact_top_k_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1000, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[:7] + 0.1 * rng.standard_normal((7, 16)).astype(np.float32)
    truth = scale.ExactTopK(queries)
    for start in range(0, 1000, 300):  # uneven batches, the last shorter
        truth.update(start, data[start : start + 300])
    want = np.argsort(((data[None, :, :] - queries[:, None, :]) ** 2).sum(-1), axis=1)[:, :10]
    assert np.array_equal(np.sort(truth.ids, axis=1), np.sort(want, axis=1))


def test_scale_script_on_lite(tmp_path: Path, redis_url: str) -> None:
    out_json, out_md = tmp_path / "scale.json", tmp_path / "scale.md"
    argv = [
        "--rows", "2000", "--lite", str(tmp_path / "milvus.db"), "--redis-url", redis_url,
        "--server-path-rows", "300", "--insert-batch", "700", "--heldout", "10", "--perturbed", "10",
        "--variant", "IVF_FLAT:nlist=16:nprobe=1,16",
        "--out-json", str(out_json), "--out-md", str(out_md),
    ]  # fmt: skip
    assert scale.main(argv) == 0
    data = json.loads(out_json.read_text())
    assert data["meta"]["rows"] == 2000 and data["meta"]["dim"] == 1280
    assert data["server_write_path"]["rows"] == 300
    assert data["bulk"]["rows"] == 2000
    # A perturbed copy is much closer to its source than rows are to each other.
    assert data["bulk"]["perturbed_source_in_exact_top10"] == 1.0
    (variant,) = data["variants"]
    assert variant["index"] == "IVF_FLAT" and variant["build_params"] == {"nlist": 16}
    one, every = variant["points"]
    assert one["queries"] == every["queries"] == 20
    # Probing every cell is an exact scan: the index must agree with numpy.
    assert every["params"] == {"nprobe": 16} and every["recall"] == 1.0
    assert one["recall"] <= every["recall"]
    assert "| IVF_FLAT | nlist=16 |" in out_md.read_text()
