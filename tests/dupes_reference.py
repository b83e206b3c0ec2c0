"""The documented duplicate grouping, computed by brute force: the reference the dupes tests compare with.

Written apart from ``lookalike_server.dupes_grouping`` on purpose (every pair's
distance, no index, no walk), and shared by the unit and integration tests so the
rule they check is written once.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np


def brute_force_groups(
    ids: Sequence[int], vectors: Mapping[str, np.ndarray], thresholds: Mapping[str, float]
) -> list[list[int]]:
    """Groups of near items, each as sorted ids; groups sorted.

    Two items are near when ANY model puts them within its threshold (squared L2). Pairs
    are taken by smallest distance/threshold first, ties by position, and two groups merge
    only while the merged group's earliest id is near every member (no chaining).

    Args:
        ids: Item ids, in any order.
        vectors: Per model, one row per id, aligned with ``ids``.
        thresholds: Per model, the squared-L2 threshold.
    """
    order = np.argsort(ids)
    ids = [ids[i] for i in order]
    d = {}
    for m, v in vectors.items():
        v = np.asarray(v)[order].astype(np.float64)
        d[m] = ((v[:, None, :] - v[None, :, :]) ** 2).sum(-1)
    near = np.logical_or.reduce([d[m] <= t for m, t in thresholds.items()])
    key = np.minimum.reduce([d[m] / t for m, t in thresholds.items()])
    n = len(ids)
    group = {i: {i} for i in range(n)}  # position -> the set it belongs to (shared objects)
    for _k, a, b in sorted((key[a, b], a, b) for a, b in itertools.combinations(range(n), 2) if near[a, b]):
        ga, gb = group[a], group[b]
        rep = min(ga | gb)
        if ga is gb or not all(near[rep, x] for x in ga | gb):
            continue
        merged = ga | gb
        for x in merged:
            group[x] = merged
    unique = {id(g): g for g in group.values()}.values()
    return sorted(sorted(ids[x] for x in g) for g in unique if len(g) > 1)
