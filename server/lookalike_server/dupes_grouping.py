"""Near-duplicate groups from neighbour pairs: union-find, then a split that stops chaining.

Pure functions over ids, pairs and vectors; :mod:`lookalike_server.dupes` walks
the index and feeds them.

**Why not plain connected components.** Within a threshold ``t`` the relation
"is near" is not transitive: ``a`` near ``b`` and ``b`` near ``c`` says nothing
about ``a`` and ``c``. Connected components of the pair graph therefore chain:
a slow series of edits (or a dense cluster of similar but distinct photos)
ends up as one group whose ends look nothing alike. So components are only
the first cut (cheap, from the pairs alone); each component is then split by
*linkage to the representative*: its pairs are taken closest first, and two
groups merge only when every member of both is within ``t`` of the merged
group's representative (its earliest id). The result:

* every member of a group is within ``t`` of its representative (so any two
  members within ``4t``: squared L2 is the square of a metric), so nothing
  chains;
* copies, being closest, join their original first; a distinct but similar
  photo indexed earlier would become the representative, so it joins only if
  it is near every copy too: a neighbour never pulls an original away from its
  copies (splitting by leaders in id order would: the earlier photo leads,
  takes the original, and leaves the copies it is not near);
* no item is in two groups; an item whose near neighbours all ended in groups
  whose representative it is not near stays alone (it is then not reported);
* the grouping is deterministic: pairs by distance, ties by id.

**Several models** (:func:`split_component_multi`): "near" is "within the
threshold of *any* model" (each model its own threshold), pairs are taken by
the smallest distance ÷ threshold, and every member is near its
representative under at least one model; the rest is as above.

A component of more than :data:`MAX_LINKAGE` items (its distance matrix would
not be small) is split by *leaders* instead: the earliest unplaced id takes
every unplaced item within ``t`` of it (members within ``t`` of the
representative, as above).

**Representative = the earliest (lowest) id.** Ids grow with insertion, so the
earliest copy indexed, which in a photo library is usually the original. A
medoid would need all pairwise distances of a group (quadratic) and would
move as copies are added; the earliest id is stable across runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MAX_LINKAGE", "Grouped", "UnionFind", "components", "split_component", "split_component_multi"]

#: Largest component split by linkage to the representative (its distance matrix: 4000² float32 = 64 MB);
#: larger ones are split by leaders.
MAX_LINKAGE = 4000


class UnionFind:
    """Disjoint sets over int ids seen in pairs (path halving, union by size).

    Only ids that appear in some pair are stored, so memory grows with the
    number of near items, not with the index.
    """

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}
        self._size: dict[int, int] = {}

    def find(self, x: int) -> int:
        """The root of ``x``'s set (``x`` is added on first sight)."""
        parent = self._parent
        if x not in parent:
            parent[x] = x
            self._size[x] = 1
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        """Merges the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size.pop(rb)

    def __len__(self) -> int:
        return len(self._parent)

    def sets(self) -> list[list[int]]:
        """Every set with at least two ids, each sorted, ordered by their smallest id."""
        out: dict[int, list[int]] = {}
        for x in self._parent:
            out.setdefault(self.find(x), []).append(x)
        groups = [sorted(v) for v in out.values() if len(v) > 1]
        groups.sort(key=lambda g: g[0])
        return groups


def components(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (of two or more ids) of the pair graph, by smallest id."""
    uf = UnionFind()
    for a, b in pairs:
        uf.union(int(a), int(b))
    return uf.sets()


@dataclass(frozen=True)
class Grouped:
    """One group after the split.

    Attributes:
        representative: The earliest id of the group.
        members: Ids, representative first, then by distance to it (ties by id).
        distances: Squared L2 distance of each member to the representative (under the
            first model when several are compared).
        per_model: Model → each member's distance to the representative under it
            (only from :func:`split_component_multi`).
    """

    representative: int
    members: list[int]
    distances: list[float]
    per_model: dict[str, list[float]] = field(default_factory=dict)


def split_component(ids: list[int], vectors: Mapping[int, np.ndarray], threshold: float) -> list[Grouped]:
    """Splits one component into star groups around their earliest id (see the module docstring).

    The component's pairs are taken closest first; two groups merge only when
    every member of both is within ``threshold`` of the merged group's
    representative (its earliest id). Copies (small distances) therefore join
    their original before a merely similar photo can, and a similar photo
    indexed earlier joins only if it is near all of them. Components larger
    than :data:`MAX_LINKAGE` (their distance matrix would not be small) are
    split by leaders instead.

    Args:
        ids: The component's ids (any order); ids absent from ``vectors`` (an
            item deleted during the walk) are dropped.
        vectors: Normalised vectors by id.
        threshold: Largest distance between two members of a group.

    Returns:
        Groups of two or more members, ordered by representative id.
    """
    groups = split_component_multi(ids, {"": vectors}, {"": threshold})
    return [Grouped(g.representative, g.members, g.distances) for g in groups]


def split_component_multi(
    ids: list[int], vectors: Mapping[str, Mapping[int, np.ndarray]], thresholds: Mapping[str, float]
) -> list[Grouped]:
    """:func:`split_component` under several models: near = within the threshold of ANY model.

    Two items are near when at least one model puts them within its own threshold
    (the multi-model FindDuplicates rule); "closest first" orders pairs by the
    smallest ``distance / threshold`` over the models (with one model, by the
    distance itself, so the one-model split is unchanged). Every member of a group
    is near its representative under at least one model.

    Args:
        ids: The component's ids; ids absent from any model's ``vectors`` are dropped.
        vectors: Model → normalised vectors by id (the first model's distances are
            :attr:`Grouped.distances`).
        thresholds: Model → its threshold (same keys as ``vectors``).

    Returns:
        Groups of two or more members, ordered by representative id.
    """
    models = list(vectors)
    present = sorted(i for i in ids if all(i in vectors[m] for m in models))
    if len(present) < 2:
        return []
    mats = {m: np.stack([vectors[m][i] for i in present]).astype(np.float32, copy=False) for m in models}
    if len(present) > MAX_LINKAGE:
        return _leader_split(present, mats, thresholds)
    dists = {m: _pairwise(mats[m]) for m in models}
    near = np.zeros((len(present), len(present)), dtype=bool)
    for m in models:
        near |= dists[m] <= thresholds[m]
    # One model: its distance orders the pairs, exactly as before there were several.
    key = dists[models[0]] if len(models) == 1 else np.minimum.reduce([dists[m] / thresholds[m] for m in models])
    ii, jj = np.nonzero(np.triu(near, k=1))
    order = np.lexsort((jj, ii, key[ii, jj]))  # closest first; ties by position (= id order)
    label = list(range(len(present)))
    members: dict[int, list[int]] = {i: [i] for i in range(len(present))}
    lead = list(range(len(present)))  # per group label: its earliest position (= id order)
    for k in order:
        a, b = label[ii[k]], label[jj[k]]
        if a == b:
            continue
        new_lead = min(lead[a], lead[b])
        # The merged group's representative must be near all its members.
        if not (near[new_lead, members[a]].all() and near[new_lead, members[b]].all()):
            continue
        if len(members[a]) < len(members[b]):
            a, b = b, a
        for row in members[b]:
            label[row] = a
        members[a].extend(members.pop(b))
        lead[a] = new_lead
    groups = []
    first_model = dists[models[0]]
    for rows in members.values():
        if len(rows) < 2:
            continue
        first = min(rows)  # positions follow id order: the earliest id
        d = first_model[first, rows]
        order_in = np.lexsort((np.asarray(rows), d))
        ordered = [rows[o] for o in order_in]
        groups.append(
            Grouped(
                present[first],
                [present[r] for r in ordered],
                [float(first_model[first, r]) for r in ordered],
                {m: [float(dists[m][first, r]) for r in ordered] for m in models},
            )
        )
    groups.sort(key=lambda g: g.representative)
    return groups


def _pairwise(mat: np.ndarray) -> np.ndarray:
    """Squared L2 between every two rows (0 on the diagonal, never negative)."""
    sq = np.einsum("ij,ij->i", mat, mat)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (mat @ mat.T), 0.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def _leader_split(present: list[int], mats: Mapping[str, np.ndarray], thresholds: Mapping[str, float]) -> list[Grouped]:
    """Leaders in id order, each taking every unplaced item near it (large components)."""
    models = list(mats)
    id_arr = np.asarray(present, dtype=np.int64)
    unplaced = np.ones(len(present), dtype=bool)
    groups: list[Grouped] = []
    for lead in range(len(present)):
        if not unplaced[lead]:
            continue
        unplaced[lead] = False
        rest = np.flatnonzero(unplaced)
        if rest.size == 0:
            break
        dist = {}
        for m in models:
            diff = mats[m][rest] - mats[m][lead]
            dist[m] = np.einsum("ij,ij->i", diff, diff)
        near = np.logical_or.reduce([dist[m] <= thresholds[m] for m in models])
        if not near.any():
            continue
        taken = rest[near]
        unplaced[taken] = False
        d0 = dist[models[0]][near]
        order = np.lexsort((id_arr[taken], d0))
        members = [int(id_arr[lead])] + [int(x) for x in id_arr[taken][order]]
        per_model = {m: [0.0] + [float(x) for x in dist[m][near][order]] for m in models}
        groups.append(Grouped(int(id_arr[lead]), members, per_model[models[0]], per_model))
    return groups
