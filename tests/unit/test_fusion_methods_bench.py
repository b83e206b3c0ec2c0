"""benchmarks/fusion_methods.py: its offline rankings agree with the server's fusion arithmetic.

The benchmark's table is only comparable with ``lookalike eval`` if its numpy rankings are
the server's; here both rank the same random vectors (with deliberate ties for RRF) and
must give the same order, and the scores are checked on a hand-computed example.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from lookalike_server.fusion import FusionMethod, FusionRequest, fuse, plan_fusion

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    # benchmarks/ is a folder of scripts, not a package: load the file itself.
    spec = importlib.util.spec_from_file_location("fusion_methods_benchmark", ROOT / "benchmarks" / "fusion_methods.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fm = _load()


def _vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("method", [FusionMethod.DISTANCE, FusionMethod.RRF])
def test_offline_order_equals_the_servers_fuse(method: FusionMethod) -> None:
    rng = np.random.default_rng(7)
    n = 30
    a, b = _vectors(rng, n, 8), _vectors(rng, n, 5)
    ev = fm.LeaveOneOut(np.array(["x"] * n))
    da, db = fm._sqd(a, a), fm._sqd(b, b)
    order = ev.order(da + db) if method is FusionMethod.DISTANCE else ev.order(ev.rrf([da, db]), da + db)
    plan = plan_fusion(FusionRequest(method=method), ["a", "b"], top_k=n - 1, max_top_k=1000)
    for q in range(n):
        others = [i for i in range(n) if i != q]
        cands = {
            name: sorted(((i, float(d[q, i])) for i in others), key=lambda t: (t[1], t[0]))
            for name, d in (("a", da), ("b", db))
        }
        served = [hit.id for hit in fuse(plan, cands, {}, limit=n - 1)]
        assert served == order[q].tolist(), q


def test_scores_by_hand() -> None:
    # Four items, labels A A B B; distances chosen so each query's ranking is known.
    ev = fm.LeaveOneOut(np.array(["A", "A", "B", "B"]))
    dist = np.array(
        [
            [0.0, 0.1, 0.2, 0.3],  # q0: 1 2 3 -> rel T F F
            [0.1, 0.0, 0.05, 0.3],  # q1: 2 0 3 -> rel F T F
            [0.2, 0.05, 0.0, 0.4],  # q2: 1 0 3 -> rel F F T
            [0.3, 0.3, 0.4, 0.0],  # q3: 0 1 2 (tie 0/1 by id) -> rel F F T
        ]
    )
    order = ev.order(dist)
    assert order.tolist() == [[1, 2, 3], [2, 0, 3], [1, 0, 3], [0, 1, 2]]
    s = ev.scores(order)
    assert s["hits"] == 1 and s["p1"] == pytest.approx(0.25)
    # AP: q0 1; q1 1/2; q2 1/3; q3 1/3.
    assert s["map"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 3) / 4)
    assert s["p5"] == pytest.approx(0.2)  # one relevant item in each ranking of 3; P@5 divides by 5


def test_comb_mnz_equals_comb_sum_when_every_list_holds_every_item() -> None:
    rng = np.random.default_rng(3)
    a, b = _vectors(rng, 12, 6), _vectors(rng, 12, 6)
    ev = fm.LeaveOneOut(np.array(["x"] * 12))
    da, db = fm._sqd(a, a), fm._sqd(b, b)
    full = ev.n - 1
    np.testing.assert_allclose(ev.comb([da, db], full, mnz=True), 2 * ev.comb([da, db], full, mnz=False))
    # With a shallow depth, an item in one list only scores under CombMNZ with count 1.
    shallow_mnz, shallow_sum = ev.comb([da, db], 3, mnz=True), ev.comb([da, db], 3, mnz=False)
    assert not np.allclose(shallow_mnz, 2 * shallow_sum)
