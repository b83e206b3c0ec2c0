"""The grouping (union-find, leader split), the request checks and the client's page assembler."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.dupes import DuplicateGroup, DuplicatesSummary, GroupAssembler
from lookalike.v1 import lookalike_pb2 as pb
from lookalike_server.dupes_grouping import UnionFind, components, split_component
from lookalike_server.errors import InvalidArgument
from lookalike_server.validation import MAX_DUPES_PAGE, check_dupes_request


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
