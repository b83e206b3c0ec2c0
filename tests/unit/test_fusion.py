"""The fusion arithmetic (``lookalike_server.fusion``) on hand-checkable lists: no server, no store."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lookalike_server.errors import InvalidArgument
from lookalike_server.fusion import (
    DEFAULT_CANDIDATES,
    DEFAULT_METHOD,
    DEFAULT_RRF_K,
    FusionMethod,
    FusionRequest,
    ModelScore,
    fuse,
    missing_ids,
    plan_fusion,
    squared_l2,
)

MODELS = ("a", "b")


def plan(method: FusionMethod, weights: dict[str, float] | None = None, rrf_k: int = 0, candidates: int = 0):
    return plan_fusion(FusionRequest(method, weights or {}, rrf_k, candidates), MODELS, top_k=3, max_top_k=100)


# ----------------------------------------------------------------- planning --


def test_plan_resolves_the_defaults() -> None:
    p = plan_fusion(FusionRequest(), ["a", "b", "a"], top_k=10, max_top_k=1000)
    assert p.method is DEFAULT_METHOD
    assert p.models == ("a", "b")  # a model named twice is fused once
    assert p.weights == {"a": 1.0, "b": 1.0}
    assert p.rrf_k == DEFAULT_RRF_K == 60
    assert p.candidates == DEFAULT_CANDIDATES == 50
    # The default depth is at least top_k and at most the server's limit.
    assert plan_fusion(FusionRequest(), MODELS, top_k=80, max_top_k=1000).candidates == 80
    assert plan_fusion(FusionRequest(), MODELS, top_k=10, max_top_k=20).candidates == 20


@pytest.mark.parametrize(
    ("request_", "models", "message"),
    [
        (FusionRequest(), ["a"], r"two or more models; this search runs \['a'\]"),
        (FusionRequest(weights={"c": 1.0}), MODELS, r"weights name model\(s\) \['c'\] that this search does not run"),
        (FusionRequest(weights={"a": -1.0}), MODELS, r"weight for 'a' must be a finite number >= 0, got -1.0"),
        (FusionRequest(weights={"a": math.nan}), MODELS, "must be a finite number"),
        (FusionRequest(weights={"a": 0.0, "b": 0.0}), MODELS, "all 0"),
        (FusionRequest(rrf_k=-1), MODELS, "rrf_k must be >= 0"),
        (FusionRequest(candidates=2), MODELS, r"candidates must be 0 \(default\) or in top_k..100 \(top_k is 3\)"),
        (FusionRequest(candidates=101), MODELS, "candidates must be"),
    ],
)
def test_plan_refuses_what_cannot_be_fused_and_says_why(request_: FusionRequest, models, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        plan_fusion(request_, models, top_k=3, max_top_k=100)


# --------------------------------------------------------------------- math --


def test_squared_l2_matches_the_definition() -> None:
    q = np.array([1.0, 0.0], dtype=np.float32)
    v = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    assert squared_l2(q, v).tolist() == [0.0, 2.0, 4.0]
    assert squared_l2(q[None, :], v).shape == (3,)


def test_missing_ids_lists_what_each_model_did_not_return() -> None:
    cands = {"a": [(1, 0.1), (2, 0.2)], "b": [(2, 0.3), (3, 0.4)]}
    assert missing_ids(cands) == {"a": [3], "b": [1]}


def test_distance_fusion_sums_weighted_distances_over_the_union() -> None:
    cands = {"a": [(1, 0.10), (2, 0.20)], "b": [(2, 0.05), (3, 0.30)]}
    computed = {"a": {3: 0.50}, "b": {1: 0.40}}  # from the stored vectors
    got = fuse(plan(FusionMethod.DISTANCE), cands, computed, limit=10)
    # 1: 0.10 + 0.40 = 0.50; 2: 0.20 + 0.05 = 0.25; 3: 0.50 + 0.30 = 0.80
    assert [h.id for h in got] == [2, 1, 3]
    assert [h.score for h in got] == pytest.approx([0.25, 0.50, 0.80])
    first = got[0]
    assert [(s.model, s.rank) for s in first.models] == [("a", 2), ("b", 1)]
    # Item 1 was not among b's candidates: rank 0, its distance the computed one.
    assert got[1].models[1].rank == 0 and got[1].models[1].distance == pytest.approx(0.40)

    weighted = fuse(plan(FusionMethod.DISTANCE, {"a": 3.0, "b": 0.0}), cands, computed, limit=10)
    # a alone, tripled: 1: 0.30, 2: 0.60, 3: 1.50. b weighs 0 but still brought candidate 3
    # and still shows its distances.
    assert [(h.id, round(h.score, 6)) for h in weighted] == [(1, 0.3), (2, 0.6), (3, 1.5)]
    assert weighted[2].models[1] == ModelScore("b", 0.30, 2)


def test_distance_fusion_leaves_out_an_item_without_a_vector_in_every_model() -> None:
    cands = {"a": [(1, 0.1), (9, 0.0)], "b": [(1, 0.2)]}
    got = fuse(plan(FusionMethod.DISTANCE), cands, {"a": {}, "b": {}}, limit=10)
    assert [h.id for h in got] == [1]
    # RRF can still rank it, on the one model that has it.
    rrf = fuse(plan(FusionMethod.RRF), cands, {}, limit=10)
    assert [h.id for h in rrf] == [1, 9]
    assert [s.model for s in rrf[1].models] == ["a"]


def test_rrf_scores_and_breaks_ties_by_distance_then_id() -> None:
    # 1 is first in a and second in b, 2 the reverse: the same RRF score, an exact tie.
    cands = {"a": [(1, 0.30), (2, 0.40), (3, 0.50)], "b": [(2, 0.10), (1, 0.35), (4, 0.60)]}
    computed = {"a": {4: 0.9}, "b": {3: 0.9}}
    got = fuse(plan(FusionMethod.RRF, rrf_k=60), cands, computed, limit=10)
    assert got[0].score == got[1].score == pytest.approx(1 / 61 + 1 / 62)
    # The tie goes to the lower distance sum: 2 (0.50) before 1 (0.65).
    assert [h.id for h in got] == [2, 1, 3, 4]
    assert got[2].score == pytest.approx(1 / 63)  # 3: only a's third
    # With equal distances too, the lower id wins; the input order does not matter.
    tie = {"a": [(7, 0.2), (5, 0.2)], "b": [(5, 0.2), (7, 0.2)]}
    flipped = {"b": tie["b"], "a": tie["a"]}
    assert [h.id for h in fuse(plan(FusionMethod.RRF), tie, {}, 10)] == [5, 7]
    assert [h.id for h in fuse(plan(FusionMethod.RRF), flipped, {}, 10)] == [5, 7]


def test_rrf_weights_and_k() -> None:
    cands = {"a": [(1, 0.1)], "b": [(2, 0.1)]}
    got = fuse(plan(FusionMethod.RRF, {"a": 1.0, "b": 2.0}, rrf_k=1), cands, {}, 10)
    assert [(h.id, h.score) for h in got] == [(2, pytest.approx(2 / 2)), (1, pytest.approx(1 / 2))]


def test_fuse_truncates_to_the_limit() -> None:
    cands = {"a": [(i, i / 10) for i in range(5)], "b": [(i, i / 10) for i in range(5)]}
    assert [h.id for h in fuse(plan(FusionMethod.DISTANCE), cands, {}, limit=3)] == [0, 1, 2]
