"""Near-duplicate groups from neighbour pairs: union-find, then a split that stops chaining.

Pure functions over ids, pairs and vectors; :mod:`lookalike_server.dupes` walks
the index and feeds them.

**Why not plain connected components.** Within a threshold ``t`` the relation
"is near" is not transitive: ``a`` near ``b`` and ``b`` near ``c`` says nothing
about ``a`` and ``c``. Connected components of the pair graph therefore chain:
a slow series of edits (or a dense cluster of similar but distinct photos)
ends up as one group whose ends look nothing alike. So components are only
the first cut (cheap, from the pairs alone); each component is then split
greedily by *leaders*: the earliest id not yet placed becomes a
representative, and every unplaced member within ``t`` of it joins its group.
The result:

* every member of a group is within ``t`` of its representative (so any two
  members are within ``4t``: squared L2 is a squared metric, so
  ``sqrt(d(a, c)) <= sqrt(d(a, r)) + sqrt(d(r, c))``);
* no item is in two groups, and an item whose only near neighbours were taken
  by an earlier leader may end up alone (it is then not reported);
* the grouping is deterministic: leaders in id order, ties impossible.

**Representative = the earliest (lowest) id.** Ids grow with insertion, so the
earliest copy indexed, which in a photo library is usually the original. A
medoid would need all pairwise distances of a group (quadratic) and would
move as copies are added; the earliest id is stable across runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["Grouped", "UnionFind", "components", "split_component"]


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
        distances: Squared L2 distance of each member to the representative.
    """

    representative: int
    members: list[int]
    distances: list[float]


def split_component(ids: list[int], vectors: Mapping[int, np.ndarray], threshold: float) -> list[Grouped]:
    """Splits one component into leader groups (see the module docstring).

    Args:
        ids: The component's ids (any order); ids absent from ``vectors`` (an
            item deleted during the walk) are dropped.
        vectors: Normalised vectors by id.
        threshold: Squared L2 distance within which a member joins a leader.

    Returns:
        Groups of two or more members, ordered by representative id.
    """
    present = sorted(i for i in ids if i in vectors)
    if len(present) < 2:
        return []
    mat = np.stack([vectors[i] for i in present]).astype(np.float32, copy=False)
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
        diff = mat[rest] - mat[lead]
        dist = np.einsum("ij,ij->i", diff, diff)
        near = dist <= threshold
        if not near.any():
            continue
        taken = rest[near]
        unplaced[taken] = False
        order = np.lexsort((id_arr[taken], dist[near]))
        members = [int(id_arr[lead])] + [int(x) for x in id_arr[taken][order]]
        distances = [0.0] + [float(d) for d in dist[near][order]]
        groups.append(Grouped(int(id_arr[lead]), members, distances))
    return groups
