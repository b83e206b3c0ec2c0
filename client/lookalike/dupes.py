"""Near-duplicate groups as the clients return them, and the reassembly of paged groups.

``FindDuplicates`` streams a large group in several messages (``page_size`` members
each, same ``representative_id``, ``more`` set on all but the last) and closes with one
summary. :class:`GroupAssembler` turns that stream back into whole
:class:`DuplicateGroup` objects, keeping only the group being received in memory; both
the blocking and the ``asyncio`` client use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lookalike.v1 import lookalike_pb2 as pb

__all__ = [
    "DuplicateGroup",
    "DuplicateMember",
    "DuplicatesSummary",
    "GroupAssembler",
    "dupes_request",
    "format_distances",
]


@dataclass(frozen=True)
class DuplicateMember:
    """One item of a group.

    Attributes:
        id: Item id.
        key: The item's key.
        distance: Squared L2 distance to the group's representative (0 for itself).
        exact: Same content hash as the representative, or an identical embedding.
        content_sha256: Hex sha256 of the item's image bytes.
        attributes: The item's attributes.
        distances: Model → squared L2 distance to the representative under it (every
            model compared; ``distance`` is the first one's).
    """

    id: int
    key: str
    distance: float
    exact: bool
    content_sha256: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    distances: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DuplicateGroup:
    """A whole group: the representative (earliest id) first, then by distance to it.

    Attributes:
        representative_id: The group's earliest indexed item.
        members: Every member, the representative first.
        exact_count: Members (representative excluded) that are exact copies of it.
    """

    representative_id: int
    members: list[DuplicateMember]
    exact_count: int

    @property
    def representative(self) -> DuplicateMember:
        """The first member."""
        return self.members[0]

    @property
    def copies(self) -> list[DuplicateMember]:
        """Every member but the representative."""
        return self.members[1:]


@dataclass(frozen=True)
class DuplicatesSummary:
    """What the server's walk did (the stream's last message).

    Attributes:
        model: The model compared.
        threshold: The threshold applied (squared L2).
        default_threshold: Whether it was the model's calibrated default.
        exact_distance: Distances at or below this count as exact copies.
        items_scanned: Items compared (after the filter).
        groups: Groups sent.
        grouped_items: Items in those groups.
        pairs: Near pairs found.
        search_mode: ``"range"`` (Milvus range search) or ``"topk"`` (top-k and a cut).
        capped_items: Items with more neighbours than the server keeps per item.
        elapsed_ms: Server time for the walk.
        models: Every model compared (the first is ``model``): a pair is near when any
            of them puts it within its threshold.
        thresholds: Model → the threshold applied under it.
    """

    model: str
    threshold: float
    default_threshold: bool
    exact_distance: float
    items_scanned: int
    groups: int
    grouped_items: int
    pairs: int
    search_mode: str
    capped_items: int
    elapsed_ms: float
    models: list[str] = field(default_factory=list)
    thresholds: Mapping[str, float] = field(default_factory=dict)


def format_distances(member: DuplicateMember, models: Sequence[str] = ()) -> str:
    """``d=0.1234``, or with several models ``d=0.1234/0.2345``: one per model, in ``models``' order.

    Args:
        member: A group member.
        models: The models compared, in request order (the summary's ``models``; a
            protobuf map does not keep the order). Names missing here follow by name.
    """
    if len(member.distances) > 1:
        order = [m for m in models if m in member.distances] + sorted(set(member.distances) - set(models))
        return "d=" + "/".join(f"{member.distances[m]:.4f}" for m in order)
    return f"d={member.distance:.4f}"


def _member(m: pb.DuplicateMember) -> DuplicateMember:
    return DuplicateMember(m.id, m.key, m.distance, m.exact, m.content_sha256, dict(m.attributes), dict(m.distances))


def _summary(s: pb.DuplicatesSummary) -> DuplicatesSummary:
    return DuplicatesSummary(
        model=s.model,
        threshold=s.threshold,
        default_threshold=s.default_threshold,
        exact_distance=s.exact_distance,
        items_scanned=s.items_scanned,
        groups=s.groups,
        grouped_items=s.grouped_items,
        pairs=s.pairs,
        search_mode=s.search_mode,
        capped_items=s.capped_items,
        elapsed_ms=s.elapsed_ms,
        models=list(s.models) or [s.model],
        # In the models' order: a protobuf map keeps none.
        thresholds={m: s.thresholds[m] for m in s.models if m in s.thresholds} or {s.model: s.threshold},
    )


def dupes_request(
    model: str | Sequence[str] | None,
    threshold: float | None,
    key_prefix: str | None,
    attributes: Mapping[str, str] | None,
    page_size: int,
    exact_only: bool,
) -> pb.FindDuplicatesRequest:
    """The ``FindDuplicates`` request (``None`` = the server's default; several models = ``models``)."""
    names = [model] if isinstance(model, str) else list(model or [])
    return pb.FindDuplicatesRequest(
        model=names[0] if len(names) == 1 else "",
        models=names if len(names) > 1 else [],
        threshold=float(threshold or 0.0),
        filter=pb.Filter(key_prefix=key_prefix or "", attributes=dict(attributes or {})),
        page_size=page_size,
        exact_only=exact_only,
    )


class GroupAssembler:
    """Feeds on ``FindDuplicatesResponse`` messages; returns whole groups and the summary.

    Raises:
        ValueError: Pages out of order (a server bug: better loud than a wrong group).
    """

    def __init__(self) -> None:
        self._rep: int | None = None
        self._members: list[DuplicateMember] = []
        self._exact = 0

    def feed(self, msg: Any) -> DuplicateGroup | DuplicatesSummary | None:
        """One message in; a finished group, the summary, or ``None`` while a group is incomplete."""
        if msg.WhichOneof("kind") == "summary":
            if self._rep is not None:
                raise ValueError(f"stream ended inside group {self._rep}")
            return _summary(msg.summary)
        g = msg.group
        if self._rep is None:
            if g.offset != 0:
                raise ValueError(f"group {g.representative_id} started at offset {g.offset}")
            self._rep, self._members, self._exact = g.representative_id, [], g.exact_count
        elif g.representative_id != self._rep or g.offset != len(self._members):
            raise ValueError(f"page of group {g.representative_id} at offset {g.offset} inside group {self._rep}")
        self._members.extend(_member(m) for m in g.members)
        if g.more:
            return None
        done = DuplicateGroup(self._rep, self._members, self._exact)
        self._rep, self._members = None, []
        return done
