"""The grouping (union-find, leader split), the request checks and the client's page assembler."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.dupes import DuplicateGroup, DuplicatesSummary, GroupAssembler
from lookalike.v1 import lookalike_pb2 as pb
from lookalike_server.dupes_grouping import UnionFind, components, split_component, split_component_multi
from lookalike_server.errors import InvalidArgument
from lookalike_server.validation import MAX_DUPES_PAGE, check_dupes_request
from tests.dupes_reference import brute_force_groups


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_union_find_keeps_only_paired_ids_and_orders_sets() -> None:
    uf = UnionFind()
    for a, b in [(5, 9), (9, 12), (3, 4)]:
        uf.union(a, b)
    assert len(uf) == 5
    assert uf.sets() == [[3, 4], [5, 9, 12]]
    assert components([(1, 2), (2, 3), (10, 11)]) == [[1, 2, 3], [10, 11]]


def test_split_stops_a_chain() -> None:
    # Points on a circle with growing steps: neighbours are within the threshold, nothing farther is.
    angles = [0.0, 0.30, 0.62, 0.95]
    vectors = {i + 1: _unit([np.cos(a), np.sin(a)]) for i, a in enumerate(angles)}
    step = float(((vectors[3] - vectors[4]) ** 2).sum())  # the largest step
    threshold = step * 1.01
    assert components([(1, 2), (2, 3), (3, 4)]) == [[1, 2, 3, 4]]  # one chained component
    groups = split_component([1, 2, 3, 4], vectors, threshold)
    # 1-2 merge first (closest); 2-3 cannot (3 is too far from 1, the representative); 3-4 merge.
    assert [(g.representative, g.members) for g in groups] == [(1, [1, 2]), (3, [3, 4])]
    for g in groups:
        assert all(d <= threshold for d in g.distances) and g.distances[0] == 0.0


def test_copies_stay_with_their_original_when_a_similar_photo_came_first() -> None:
    # 1 is a similar but distinct photo indexed first; 2 the original; 3 and 4 its copies.
    # 1 is within the threshold of 2 but not of the copies: it must not take 2 from them.
    vectors = {1: _unit([1.0, 0.0]), 2: _unit([np.cos(0.5), np.sin(0.5)])}
    vectors[3] = _unit([np.cos(0.6), np.sin(0.6)])
    vectors[4] = _unit([np.cos(0.65), np.sin(0.65)])
    threshold = float(((vectors[1] - vectors[2]) ** 2).sum()) * 1.01
    assert float(((vectors[1] - vectors[3]) ** 2).sum()) > threshold
    (group,) = split_component([1, 2, 3, 4], vectors, threshold)
    assert group.members == [2, 3, 4] and group.representative == 2


def test_large_components_fall_back_to_leaders(monkeypatch: pytest.MonkeyPatch) -> None:
    import lookalike_server.dupes_grouping as grouping

    monkeypatch.setattr(grouping, "MAX_LINKAGE", 2)
    angles = [0.0, 0.30, 0.62, 0.95]
    vectors = {i + 1: _unit([np.cos(a), np.sin(a)]) for i, a in enumerate(angles)}
    threshold = float(((vectors[3] - vectors[4]) ** 2).sum()) * 1.01
    groups = grouping.split_component([1, 2, 3, 4], vectors, threshold)
    assert [g.members for g in groups] == [[1, 2], [3, 4]]


def test_split_orders_members_by_distance_and_drops_missing_ids() -> None:
    vectors = {7: _unit([1, 0, 0]), 8: _unit([1, 0.3, 0]), 9: _unit([1, 0.1, 0])}
    (group,) = split_component([9, 8, 7, 42], vectors, 0.2)  # 42 was deleted meanwhile
    assert group.representative == 7
    assert group.members == [7, 9, 8]
    assert group.distances == sorted(group.distances)


@pytest.mark.parametrize(("threshold", "page"), [(-0.1, 0), (2.5, 0), (float("nan"), 0), (0.1, MAX_DUPES_PAGE + 1)])
def test_bad_requests_name_the_field(threshold: float, page: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_dupes_request(threshold, page)
    assert ("threshold" if page == 0 else "page_size") in info.value.message


def _page(rep: int, size: int, offset: int, more: bool, ids: list[int]) -> pb.FindDuplicatesResponse:
    members = [pb.DuplicateMember(id=i, key=f"k{i}", distance=0.0 if i == rep else 0.1) for i in ids]
    return pb.FindDuplicatesResponse(
        group=pb.DuplicateGroup(representative_id=rep, size=size, offset=offset, more=more, members=members)
    )


def test_assembler_joins_pages_and_rejects_disorder() -> None:
    asm = GroupAssembler()
    assert asm.feed(_page(1, 3, 0, True, [1, 2])) is None
    group = asm.feed(_page(1, 3, 2, False, [3]))
    assert isinstance(group, DuplicateGroup)
    assert [m.id for m in group.members] == [1, 2, 3] and group.representative.id == 1
    summary = asm.feed(pb.FindDuplicatesResponse(summary=pb.DuplicatesSummary(model="m", groups=1)))
    assert isinstance(summary, DuplicatesSummary) and summary.groups == 1
    with pytest.raises(ValueError):
        GroupAssembler().feed(_page(1, 3, 2, False, [3]))  # starts mid-group
    bad = GroupAssembler()
    bad.feed(_page(1, 3, 0, True, [1, 2]))
    with pytest.raises(ValueError):
        bad.feed(_page(5, 2, 0, False, [5, 6]))  # another group before the first ended


def test_walk_slots_refuse_beyond_the_limit_and_come_back() -> None:
    from lookalike_server.admission import Admission
    from lookalike_server.config import LimitsConfig
    from lookalike_server.errors import Overloaded

    admission = Admission(LimitsConfig(max_dupes_walks=1), {"m": 8})
    permit = admission.admit_walk("FindDuplicates")
    with pytest.raises(Overloaded) as info:
        admission.admit_walk("FindDuplicates")
    assert "max_dupes_walks" in info.value.message
    assert admission.stats().rejected == {"walks": 1} and admission.stats().inflight_walks == 1
    permit.release()
    permit.release()  # idempotent
    admission.admit_walk("FindDuplicates").release()
    assert admission.stats().inflight_walks == 0


def test_several_models_group_a_pair_that_only_one_model_finds_near() -> None:
    # Under model a, 2 is far from 1; under model b it is close. 3 is far under both.
    va = {1: _unit([1, 0]), 2: _unit([np.cos(0.9), np.sin(0.9)]), 3: _unit([-1, 0.2])}
    vb = {1: _unit([1, 0, 0]), 2: _unit([1, 0.1, 0]), 3: _unit([0, 0, 1])}
    thresholds = {"a": 0.1, "b": 0.1}
    assert split_component([1, 2, 3], va, 0.1) == []
    (group,) = split_component_multi([1, 2, 3], {"a": va, "b": vb}, thresholds)
    assert group.representative == 1 and group.members == [1, 2]
    d_a = float(((va[1] - va[2]) ** 2).sum())
    d_b = float(((vb[1] - vb[2]) ** 2).sum())
    assert group.distances == pytest.approx([0.0, d_a], abs=1e-6)  # the first model's
    assert group.per_model["a"] == pytest.approx([0.0, d_a], abs=1e-6) and group.per_model["b"] == pytest.approx(
        [0.0, d_b], abs=1e-6
    )
    # An item missing under one model is not compared at all.
    del vb[2]
    assert split_component_multi([1, 2, 3], {"a": va, "b": vb}, thresholds) == []


def test_one_model_through_the_multi_split_is_the_plain_split() -> None:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(6, 16))
    vectors = {}
    for i in range(40):
        v = centres[i % 6] + 0.35 * rng.normal(size=16)
        vectors[100 + i] = (v / np.linalg.norm(v)).astype(np.float32)
    plain = split_component(list(vectors), vectors, 0.3)
    multi = split_component_multi(list(vectors), {"m": vectors}, {"m": 0.3})
    assert plain  # the data does form groups
    assert [(g.representative, g.members, g.distances) for g in plain] == [
        (g.representative, g.members, g.distances) for g in multi
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_model_split_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = list(range(10, 70))
    vectors: dict[str, dict[int, np.ndarray]] = {}
    for model, dim in (("a", 12), ("b", 20)):
        centres = rng.normal(size=(8, dim))
        vectors[model] = {}
        for i in ids:
            v = centres[i % 8] + 0.5 * rng.normal(size=dim)
            vectors[model][i] = (v / np.linalg.norm(v)).astype(np.float32)
    thresholds = {"a": 0.35, "b": 0.45}
    groups = split_component_multi(ids, vectors, thresholds)
    expected = brute_force_groups(ids, {m: np.stack([v[i] for i in ids]) for m, v in vectors.items()}, thresholds)
    assert expected and sorted(sorted(g.members) for g in groups) == expected
    for g in groups:
        for k, member in enumerate(g.members):
            # every member is near its representative under at least one model
            assert any(g.per_model[m][k] <= thresholds[m] + 1e-6 for m in thresholds), (g, member)


def test_multi_model_leader_split_keeps_the_any_model_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    import lookalike_server.dupes_grouping as grouping

    monkeypatch.setattr(grouping, "MAX_LINKAGE", 2)
    va = {1: _unit([1, 0]), 2: _unit([np.cos(0.9), np.sin(0.9)]), 3: _unit([np.cos(0.05), np.sin(0.05)])}
    vb = {1: _unit([1, 0, 0]), 2: _unit([1, 0.1, 0]), 3: _unit([0, 0, 1])}
    (group,) = grouping.split_component_multi([1, 2, 3], {"a": va, "b": vb}, {"a": 0.1, "b": 0.1})
    # Leader 1 takes 3 (near under a) and 2 (near under b); members by the first model's distance.
    assert group.members == [1, 3, 2]
    assert group.per_model["b"][2] < 0.1 < group.per_model["a"][2]
