"""Fusing several models' hit lists into one: the arithmetic, apart from gRPC and the stores.

Two methods (see ``docs/fusion.md`` for when each wins, and the measurement behind the
default):

* **distance**: each candidate's squared L2 distances under the fused models, weighted and
  summed; lowest first. Every candidate needs a distance under every model, so one that a
  model did not return has its stored vector compared with that model's query vector
  (:func:`squared_l2`); the caller fetches those vectors (:func:`missing_ids` says which).
  Embeddings are L2-normalised, so each model's distances lie on the same 0..4 scale and
  a plain sum is meaningful.
* **rrf**: reciprocal rank fusion (Cormack et al., 2009): ``sum(w / (k + rank))`` over the
  models whose candidate list holds the item, highest first. Ranks only, so the models'
  distance scales do not matter, but many items tie (rank 1 in one model and 2 in the other
  scores the same as the reverse); ties go to the lower weighted distance sum, then to the
  lower id, so the order never depends on dict or thread order.

Everything here is a pure function over plain data; :mod:`lookalike_server.query` runs the
searches, fetches the missing vectors and joins the records.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lookalike_server.errors import InvalidArgument

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_METHOD",
    "DEFAULT_RRF_K",
    "FusedScore",
    "FusionMethod",
    "FusionPlan",
    "FusionRequest",
    "ModelScore",
    "fuse",
    "missing_ids",
    "plan_fusion",
    "squared_l2",
]


class FusionMethod(enum.Enum):
    """How the per-model lists are combined."""

    DISTANCE = "distance"
    RRF = "rrf"


#: Used when a request leaves the method unspecified. Chosen by measurement:
#: ``benchmarks/results/quality.md`` (fused rows) and ``docs/fusion.md``.
DEFAULT_METHOD = FusionMethod.DISTANCE
#: RRF's k as in the original paper; it damps the weight of the very first ranks.
DEFAULT_RRF_K = 60
#: Candidates drawn per model when the request gives none (at least top_k).
DEFAULT_CANDIDATES = 50


@dataclass(frozen=True)
class FusionRequest:
    """What a search asked for (wire values, not yet checked).

    Attributes:
        method: The method, or None for the server default.
        weights: Weight per model name; models not named weigh 1.
        rrf_k: RRF's k; 0 = :data:`DEFAULT_RRF_K`.
        candidates: Hits drawn per model; 0 = ``max(top_k, DEFAULT_CANDIDATES)`` capped.
    """

    method: FusionMethod | None = None
    weights: dict[str, float] = field(default_factory=dict)
    rrf_k: int = 0
    candidates: int = 0


@dataclass(frozen=True)
class FusionPlan:
    """A checked fusion request, every default resolved.

    Attributes:
        method: The method.
        models: The fused models, in request order.
        weights: Weight of every fused model.
        rrf_k: RRF's k.
        candidates: Hits drawn per model.
    """

    method: FusionMethod
    models: tuple[str, ...]
    weights: dict[str, float]
    rrf_k: int
    candidates: int


@dataclass(frozen=True)
class ModelScore:
    """One model's view of a fused hit.

    Attributes:
        model: Model name.
        distance: Squared L2 distance under this model.
        rank: 1-based rank in the model's candidate list; 0 = not among them.
    """

    model: str
    distance: float
    rank: int


@dataclass(frozen=True)
class FusedScore:
    """One fused hit before the records are joined.

    Attributes:
        id: Item id.
        score: Weighted distance sum (distance, lower first) or summed reciprocal ranks
            (rrf, higher first).
        models: One entry per fused model under which the item has a vector, in plan order.
    """

    id: int
    score: float
    models: tuple[ModelScore, ...]


def plan_fusion(request: FusionRequest, models: Sequence[str], top_k: int, max_top_k: int) -> FusionPlan:
    """Checks a fusion request against the searched models and resolves its defaults.

    Args:
        request: What the search asked for.
        models: The models the search runs, in request order.
        top_k: The search's resolved top_k.
        max_top_k: The server's top_k limit (also the most candidates per model).

    Returns:
        The plan.

    Raises:
        InvalidArgument: Fewer than two models, a weight for a model not searched, a weight
            that is negative or not finite, all weights zero, a negative rrf_k, or a
            candidate depth below top_k or above the limit; each message says what to change.
    """
    names = tuple(dict.fromkeys(models))
    if len(names) < 2:
        raise InvalidArgument(
            f"fusion combines two or more models; this search runs {list(names)}: name more models "
            "(or leave models empty to search every loaded one), or drop fusion"
        )
    stray = sorted(set(request.weights) - set(names))
    if stray:
        raise InvalidArgument(f"fusion weights name model(s) {stray} that this search does not run {list(names)}")
    for name, w in request.weights.items():
        if not math.isfinite(w) or w < 0:
            raise InvalidArgument(f"fusion weight for {name!r} must be a finite number >= 0, got {w}")
    weights = {m: float(request.weights.get(m, 1.0)) for m in names}
    if not any(weights.values()):
        raise InvalidArgument("fusion weights are all 0: give at least one model a positive weight")
    if request.rrf_k < 0:
        raise InvalidArgument(f"fusion rrf_k must be >= 0 (0 = default {DEFAULT_RRF_K}), got {request.rrf_k}")
    candidates = request.candidates
    if candidates == 0:
        candidates = min(max(top_k, DEFAULT_CANDIDATES), max_top_k)
    elif candidates < top_k or candidates > max_top_k:
        raise InvalidArgument(
            f"fusion candidates must be 0 (default) or in top_k..{max_top_k} (top_k is {top_k}), got {candidates}"
        )
    return FusionPlan(
        method=request.method or DEFAULT_METHOD,
        models=names,
        weights=weights,
        rrf_k=request.rrf_k or DEFAULT_RRF_K,
        candidates=candidates,
    )


def squared_l2(query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Squared L2 distances of each row of ``vectors`` to ``query``, as Milvus' L2 metric reports them.

    Args:
        query: ``(dim,)`` or ``(1, dim)`` query vector.
        vectors: ``(n, dim)`` stored vectors.

    Returns:
        ``(n,)`` float64 distances.
    """
    diff = np.asarray(vectors, dtype=np.float64) - np.asarray(query, dtype=np.float64).reshape(1, -1)
    return np.einsum("ij,ij->i", diff, diff)


def missing_ids(candidates: Mapping[str, Sequence[tuple[int, float]]]) -> dict[str, list[int]]:
    """Per model, the candidate ids (of any model) that this model's own list lacks.

    Args:
        candidates: Model → its candidates as ``(id, distance)``, nearest first.

    Returns:
        Model → sorted ids whose distance under it must be computed from the stored vector.
    """
    union = {i for hits in candidates.values() for i, _ in hits}
    return {m: sorted(union - {i for i, _ in hits}) for m, hits in candidates.items()}


def fuse(
    plan: FusionPlan,
    candidates: Mapping[str, Sequence[tuple[int, float]]],
    computed: Mapping[str, Mapping[int, float]],
    limit: int,
) -> list[FusedScore]:
    """One ranked list over the union of the models' candidates.

    Args:
        plan: The checked request.
        candidates: Model → its candidates as ``(id, distance)``, nearest first (at most
            ``plan.candidates`` each).
        computed: Model → distances computed from stored vectors for ids its list lacks; an
            id absent from both has no vector under that model.
        limit: Length of the answer.

    Returns:
        Best first: distance by weighted sum ascending, rrf by score descending; ties as
        the module docstring says. With distance, an item without a vector under every
        fused model (indexed under fewer models) cannot be scored and is left out.
    """
    ranks = {m: {i: r for r, (i, _) in enumerate(candidates.get(m, ()), start=1)} for m in plan.models}
    dists = {m: {i: d for i, d in candidates.get(m, ())} for m in plan.models}
    union = sorted({i for m in plan.models for i in ranks[m]})
    scored: list[tuple[tuple[float, float, int], FusedScore]] = []
    for item in union:
        per_model: list[ModelScore] = []
        for m in plan.models:
            d = dists[m].get(item)
            if d is None:
                d = computed.get(m, {}).get(item)
            if d is not None:
                per_model.append(ModelScore(m, float(d), ranks[m].get(item, 0)))
        complete = len(per_model) == len(plan.models)
        # fsum: exact, so sums of the same terms in another order tie exactly.
        weighted = math.fsum(plan.weights[s.model] * s.distance for s in per_model) if complete else math.inf
        if plan.method is FusionMethod.DISTANCE:
            if not complete:
                continue
            key = (weighted, 0.0, item)
            score = weighted
        else:
            score = math.fsum(plan.weights[s.model] / (plan.rrf_k + s.rank) for s in per_model if s.rank > 0)
            key = (-score, weighted, item)
        scored.append((key, FusedScore(item, score, tuple(per_model))))
    scored.sort(key=lambda pair: pair[0])
    return [hit for _, hit in scored[:limit]]
