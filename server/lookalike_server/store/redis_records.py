"""What the server keeps in Redis: the key layout, record states and the record codec.

Layout (``P`` = ``RedisConfig.key_prefix``)::

    P item:<id>     hash   key, attrs (JSON), sha, models (JSON list of model
                           keys ``name:version``), created_at, state, owner, token
    P next_id       string the id counter (INCR)
    P idx:sha       hash   content sha256 -> id
    P idx:key       hash   client key -> id
    P pending       zset   id scored by created_at, for ids not yet "complete"
    P lease:<owner> string a server instance's lease, renewed while it lives (TTL)
    P attrs         set    attribute names ever inserted
    P emb:<m>:<sha> string float32 embedding bytes, with a TTL

Every multi-key change runs as one Lua script
(:mod:`lookalike_server.store.redis_scripts`), which Redis executes atomically
(no other command runs between its steps), so concurrent servers never see a
half-written record and never both allocate an id for the same content.

On Redis Cluster (a ``redis+cluster://`` URL) a script may only touch keys of
one hash slot, and the claim script touches the indexes, the counter, the
pending set, a lease and the record it creates. So every key above except the
embedding cache carries the hash tag ``{T}`` (``T`` = the prefix without its
trailing ``:``), chosen here, never by the user: ``P{T}:item:<id>``,
``P{T}:idx:sha``... All of them live in one slot, on one master, and every
record transition stays one atomic script. The embedding cache (the bulk of
the bytes: a vector per model per image) has no tag, so its keys spread over
every master. A standalone Redis keeps the untagged layout above unchanged.

The record's ``state`` carries the insert protocol (see
:mod:`lookalike_server.ingest` for the invariant it keeps):

* ``pending``: an insert attempt (``token``) of a server instance (``owner``)
  is writing its rows. Only that attempt may complete it. Another insert of
  the same item waits while the owner's lease (``lease:<owner>``) lives, and
  takes the record over once the lease is gone.
* ``complete``: every model listed in ``models`` has its row.
* ``deleting``: the owner (a failed insert, a Delete, or a sweep) is removing
  the rows, then the record. Nothing revives such a record: a new insert of
  the same content gets a new id, so a row delete that lands late can never
  hit an item someone was told is stored.

Records of the first release have no owner: they count as orphaned.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

STATE_PENDING = "pending"
STATE_COMPLETE = "complete"
STATE_DELETING = "deleting"

#: Outcomes of :meth:`~lookalike_server.store.redis.RedisStore.claim`.
FOUND_COMPLETE, CREATED, BUSY, TAKEN_OVER = 0, 1, 2, 3
DEDUPE_MODES = ("content", "key")


@dataclass(frozen=True)
class ItemRecord:
    """What Redis knows about one item.

    Attributes:
        id: Item id, shared by every model's Milvus collection.
        key: The client's key (e.g. a path or URL).
        attributes: The client's string attributes.
        content_sha256: Hex sha256 of the image bytes.
        models: Model keys whose collections hold a vector for this item.
        created_at: Unix time of the reservation.
        state: ``"pending"`` while an insert is in flight, then ``"complete"``;
            ``"deleting"`` while its rows and then the record are removed.
        owner: Server instance that owns a pending/deleting record ("" = none).
        token: The owning attempt within that instance ("" = none).
    """

    id: int
    key: str
    attributes: dict[str, str]
    content_sha256: str
    models: tuple[str, ...]
    created_at: float
    state: str
    owner: str = ""
    token: str = ""


def cluster_hash_tag(prefix: str) -> str:
    """The hash tag of the records, indexes and leases on Redis Cluster.

    The prefix itself (less a trailing ``:``), so two deployments with other
    prefixes on one cluster get their own slots; ``lookalike`` for an empty one.
    """
    return "{" + (prefix.rstrip(":") or "lookalike") + "}"


class KeyLayout:
    """The names of the keys above, under one prefix.

    Args:
        prefix: ``RedisConfig.key_prefix``, prepended to every key.
        cluster: Redis Cluster: the record keys (everything but the embedding
            cache) also carry :func:`cluster_hash_tag` after the prefix, so
            the scripts' keys share one slot.

    Attributes:
        prefix: What precedes the name of every record key (``P`` standalone,
            ``P{T}:`` on a cluster).
        cache_prefix: What precedes the name of every embedding cache key (``P``).
    """

    def __init__(self, prefix: str, cluster: bool = False) -> None:
        self.cache_prefix = prefix
        self.prefix = f"{prefix}{cluster_hash_tag(prefix)}:" if cluster else prefix

    def key(self, *parts: str | int) -> str:
        """``prefix`` followed by ``parts`` joined with ``:``."""
        return self.prefix + ":".join(str(p) for p in parts)

    def item(self, item_id: int | str) -> str:
        """The record hash of ``item_id``; ``item("")`` is the prefix of them all."""
        return self.key("item", item_id)

    def lease(self, owner: str) -> str:
        """The lease of instance ``owner``; ``lease("")`` is the prefix of them all."""
        return self.key("lease", owner)

    def embedding(self, model_key: str, sha: str) -> str:
        """The cached embedding of content ``sha`` under ``model_key``.

        Never hash-tagged: on a cluster, cache entries spread over every master.
        """
        return f"{self.cache_prefix}emb:{model_key}:{sha}"

    @property
    def next_id(self) -> str:
        """The id counter."""
        return self.key("next_id")

    @property
    def by_sha(self) -> str:
        """The index content sha256 -> id."""
        return self.key("idx", "sha")

    @property
    def by_key(self) -> str:
        """The index client key -> id."""
        return self.key("idx", "key")

    @property
    def pending(self) -> str:
        """The ids not yet complete, scored by created_at."""
        return self.key("pending")

    @property
    def attrs(self) -> str:
        """The attribute names ever inserted."""
        return self.key("attrs")


def decode(value: Any) -> str:
    """A Redis reply value (bytes or not) as text."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def parse_record(item_id: int, fields: Mapping[Any, Any] | Sequence[Any]) -> ItemRecord:
    """Builds a record from HGETALL output (a dict, or a flat list from Lua).

    Args:
        item_id: The record's id (the key names it; the hash does not hold it).
        fields: The hash's fields and values, as bytes or text.

    Returns:
        The record; missing fields take their defaults (state ``pending``).
    """
    if isinstance(fields, Mapping):
        data = {decode(k): decode(v) for k, v in fields.items()}
    else:
        flat = [decode(x) for x in fields]
        data = dict(zip(flat[0::2], flat[1::2], strict=True))
    return ItemRecord(
        id=int(item_id),
        key=data.get("key", ""),
        attributes=dict(json.loads(data.get("attrs") or "{}")),
        content_sha256=data.get("sha", ""),
        models=tuple(json.loads(data.get("models") or "[]")),
        created_at=float(data.get("created_at") or 0.0),
        state=data.get("state", STATE_PENDING),
        owner=data.get("owner", ""),
        token=data.get("token", ""),
    )
