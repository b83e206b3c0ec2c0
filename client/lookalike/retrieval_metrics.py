"""Retrieval metrics over rankings: P@k, average precision, their random baselines, confusions.

Pure functions over rankings of booleans or ids, so that the arithmetic is unit-tested on
hand-checkable numbers apart from any server. Used by :mod:`lookalike.evaluate` (``lookalike
eval``) and ``benchmarks/quality.py``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RetrievalScores",
    "average_precision",
    "confused_pairs",
    "precision_at_k",
    "random_average_precision",
    "random_precision",
    "score_rankings",
]


def precision_at_k(relevant: Sequence[bool], k: int) -> float:
    """Fraction of the first ``k`` hits that are relevant.

    A ranking shorter than ``k`` counts its missing ranks as misses (the denominator is
    always ``k``), so a server returning too few hits is not rewarded.

    Args:
        relevant: Relevance of each hit, best first.
        k: Cut-off, at least 1.

    Returns:
        P@k in [0, 1].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return sum(1 for r in relevant[:k] if r) / k


def average_precision(relevant: Sequence[bool], n_relevant: int) -> float:
    """Average precision of one ranking: the mean of P@rank over the ranks of relevant hits.

    Divided by ``n_relevant`` (all relevant items in the collection), not by the number
    retrieved, so a relevant item missing from the ranking counts as precision 0.

    Args:
        relevant: Relevance of each hit, best first.
        n_relevant: Relevant items in the whole collection for this query (> 0).

    Returns:
        AP in [0, 1].
    """
    if n_relevant < 1:
        raise ValueError("average precision is undefined without a relevant item")
    found = 0
    total = 0.0
    for rank, is_relevant in enumerate(relevant, start=1):
        if is_relevant:
            found += 1
            total += found / rank
    return total / n_relevant


def random_precision(n_relevant: int, n_candidates: int) -> float:
    """Expected P@k of a uniformly random ranking (the same for every k <= n_candidates)."""
    return n_relevant / n_candidates


def random_average_precision(n_relevant: int, n_candidates: int) -> float:
    """Expected AP of a uniformly random ranking of ``n_candidates`` with ``n_relevant`` relevant.

    Rank k holds a relevant item with probability R/N; given that, the other k-1 ranks above
    it hold (k-1)(R-1)/(N-1) relevant ones on average, so E[P@k | relevant at k] =
    (1 + (k-1)(R-1)/(N-1)) / k. Summing over k and dividing by R:
    E[AP] = (1/N) * sum_{k=1..N} (1 + (k-1)(R-1)/(N-1)) / k.

    Args:
        n_relevant: R, at least 1.
        n_candidates: N, at least R.
    """
    r, n = n_relevant, n_candidates
    if not 1 <= r <= n:
        raise ValueError(f"need 1 <= n_relevant <= n_candidates, got {r}, {n}")
    if n == 1:
        return 1.0
    slope = (r - 1) / (n - 1)
    return sum((1 + (k - 1) * slope) / k for k in range(1, n + 1)) / n


@dataclass(frozen=True)
class RetrievalScores:
    """Leave-one-out scores of one ranking method, averaged over the queries with a relevant item."""

    queries: int
    skipped: int
    precision: dict[int, float]
    mean_ap: float
    chance_precision: float
    chance_map: float
    precision_at_1_by_label: dict[str, float]


def score_rankings(
    rankings: Mapping[Any, Sequence[Any]],
    labels: Mapping[Any, str],
    ks: Iterable[int] = (1, 5),
) -> RetrievalScores:
    """Scores leave-one-out rankings against labels.

    Args:
        rankings: Query item → the other items, best first (the query itself must not appear).
        labels: Item → label, for every item in the collection (queries and candidates).
        ks: Cut-offs for P@k.

    Returns:
        Means over the queries whose label has at least one other member; the others are
        counted in ``skipped`` (no relevant item exists, so P@k and AP say nothing).
    """
    ks = tuple(ks)
    per_label_count = Counter(labels.values())
    candidates = len(labels) - 1
    sums: dict[int, float] = dict.fromkeys(ks, 0.0)
    ap_sum = chance_p_sum = chance_ap_sum = 0.0
    by_label: dict[str, list[float]] = defaultdict(list)
    queries = skipped = 0
    for query, ranking in rankings.items():
        label = labels[query]
        n_relevant = per_label_count[label] - 1
        if n_relevant < 1:
            skipped += 1
            continue
        if query in ranking:
            raise ValueError(f"query {query!r} ranks itself: leave-one-out needs it excluded")
        relevant = [labels[hit] == label for hit in ranking]
        queries += 1
        for k in ks:
            sums[k] += precision_at_k(relevant, k)
        ap_sum += average_precision(relevant, n_relevant)
        chance_p_sum += random_precision(n_relevant, candidates)
        chance_ap_sum += random_average_precision(n_relevant, candidates)
        by_label[label].append(precision_at_k(relevant, 1))
    if queries == 0:
        raise ValueError("no query has a relevant item")
    return RetrievalScores(
        queries=queries,
        skipped=skipped,
        precision={k: s / queries for k, s in sums.items()},
        mean_ap=ap_sum / queries,
        chance_precision=chance_p_sum / queries,
        chance_map=chance_ap_sum / queries,
        precision_at_1_by_label={lbl: sum(v) / len(v) for lbl, v in sorted(by_label.items())},
    )


def confused_pairs(
    rankings: Mapping[Any, Sequence[Any]], labels: Mapping[Any, str], top: int = 10
) -> list[tuple[str, str, int]]:
    """The label pairs most often confused at rank 1, either way round.

    Args:
        rankings: Query item → ranking, best first.
        labels: Item → label.
        top: How many pairs to return.

    Returns:
        ``(label_a, label_b, count)`` with ``label_a < label_b``, most confused first (ties by
        the labels): ``count`` is how many queries of either label had the other first.
        Queries whose label has no other member are not counted.
    """
    per_label = Counter(labels.values())
    counts: Counter[tuple[str, str]] = Counter()
    for query, ranking in rankings.items():
        # A query whose label has no other member cannot be right: not a confusion, as in
        # score_rankings, where it is skipped.
        if not ranking or per_label[labels[query]] < 2:
            continue
        a, b = labels[query], labels[ranking[0]]
        if a != b:
            counts[(min(a, b), max(a, b))] += 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(a, b, n) for (a, b), n in ordered[:top]]
