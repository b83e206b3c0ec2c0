"""Item records, dedupe indexes and instance leases, in Redis.

:class:`RedisStore` is the metadata store the service uses. Its parts:

* :mod:`.redis_records`: the key layout, the record states of the insert
  protocol and the record codec (the reference for what Redis holds);
* :mod:`.redis_scripts`: the Lua scripts behind every multi-key change;
* :mod:`.redis_connection`: the client (a configured Redis, or the embedded
  one of :mod:`.embedded_redis`) and its errors translated;
* :mod:`.redis_embedding_cache`: cached embeddings by content hash;
* this module: the record operations, leases, and the sweeps' listings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence

from lookalike_server import errors
from lookalike_server.config import RedisConfig
from lookalike_server.store.redis_embedding_cache import RedisEmbeddingCache
from lookalike_server.store.redis_records import (
    CREATED,
    DEDUPE_MODES,
    STATE_COMPLETE,
    STATE_DELETING,
    STATE_PENDING,
    ItemRecord,
    decode,
    parse_record,
)
from lookalike_server.store.redis_scripts import (
    BEGIN_DELETE,
    CLAIM,
    DELETE,
    GET_BY_KEY,
    MARK_COMPLETE,
    SET_MODELS,
)


class RedisStore(RedisEmbeddingCache):
    """Item records, instance leases and the embedding cache.

    Thread-safe: redis-py clients keep a connection pool, and every operation
    here is either one command, one pipeline or one Lua script.

    Its arguments and start-up errors are those of
    :class:`~lookalike_server.store.redis_connection.RedisConnection`.
    """

    def __init__(self, config: RedisConfig, data_dir: str) -> None:
        super().__init__(config, data_dir)
        self._claim = self._redis.register_script(CLAIM)
        self._mark_complete = self._redis.register_script(MARK_COMPLETE)
        self._begin_delete = self._redis.register_script(BEGIN_DELETE)
        self._delete = self._redis.register_script(DELETE)
        self._set_models = self._redis.register_script(SET_MODELS)
        self._get_by_key = self._redis.register_script(GET_BY_KEY)

    # ----------------------------------------------------------------- records

    def reserve(
        self, key: str, content_sha256: str, attributes: Mapping[str, str], dedupe: str
    ) -> tuple[ItemRecord, bool]:
        """Finds the item a new insert duplicates, or reserves a new id for it.

        The ownerless form of :meth:`claim` (admin tools and store tests): it
        never takes a record over.

        Returns:
            ``(record, created)``: ``created`` is True for a new "pending"
            record; False when an existing item matched ("complete", or
            "pending" while an insert of it is in flight).
        """
        outcome, record = self.claim(key, content_sha256, attributes, dedupe, owner="", token="")
        return record, outcome == CREATED

    def claim(
        self,
        key: str,
        content_sha256: str,
        attributes: Mapping[str, str],
        dedupe: str,
        *,
        owner: str,
        token: str,
    ) -> tuple[int, ItemRecord]:
        """Finds the item an insert duplicates, or reserves it for this attempt.

        Race-free: lookup, lease check, id allocation and the writes of the
        record, both indexes, the pending entry and the attribute names run in
        one Lua script, which Redis executes without interleaving any other
        command. Two concurrent claims of the same content therefore
        serialise: the second finds the first's record.

        Args:
            key: The client's key.
            content_sha256: Hex sha256 of the image bytes.
            attributes: String attributes (names are recorded for filter checks).
            dedupe: ``"content"`` (same sha256 = same item) or ``"key"``.
            owner: The server instance (its lease is ``lease:<owner>``).
            token: This attempt, unique across instances and time.

        Returns:
            ``(outcome, record)``: :data:`FOUND_COMPLETE`, :data:`CREATED` (a
            new pending record owned by ``token``), :data:`BUSY` (a pending
            record whose owner's lease lives: wait for it) or
            :data:`TAKEN_OVER` (a pending record whose owner is gone, now
            owned by ``token``).

        Raises:
            errors.InvalidArgument: Unknown dedupe mode or non-string attributes.
            errors.Unavailable: Redis is unreachable.
        """
        self._check_open()
        if dedupe not in DEDUPE_MODES:
            raise errors.InvalidArgument(f"dedupe must be one of {DEDUPE_MODES}, got {dedupe!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()):
            raise errors.InvalidArgument("attributes must map strings to strings")
        attrs_json = json.dumps(dict(attributes), sort_keys=True, ensure_ascii=False)
        keys = [self._keys.by_sha, self._keys.by_key, self._keys.next_id, self._keys.pending, self._keys.attrs]
        args = [
            self._keys.item(""),
            content_sha256,
            key,
            attrs_json,
            dedupe,
            repr(time.time()),
            owner,
            token,
            self._keys.lease(""),
            *attributes,
        ]
        try:
            outcome, item_id, fields = self._claim(keys=keys, args=args)
        except Exception as exc:
            self._raise(exc, "claim")
        return int(outcome), parse_record(int(item_id), fields)

    def renew_lease(self, owner: str, ttl_s: float) -> None:
        """Sets (or extends) the lease of server instance ``owner`` for ``ttl_s``.

        While it lives, no other instance takes over or sweeps the owner's
        pending records. It lapses by itself when the owner dies.
        """
        self._check_open()
        try:
            self._redis.set(self._keys.lease(owner), "1", px=max(1, int(ttl_s * 1000)))
        except Exception as exc:
            self._raise(exc, "renew_lease")

    def drop_lease(self, owner: str) -> None:
        """Ends ``owner``'s lease at once (a clean stop)."""
        self._check_open()
        try:
            self._redis.delete(self._keys.lease(owner))
        except Exception as exc:
            self._raise(exc, "drop_lease")

    def lease_alive(self, owner: str) -> bool:
        """Whether ``owner`` holds a lease now ("" never does)."""
        if not owner:
            return False
        self._check_open()
        try:
            return bool(self._redis.exists(self._keys.lease(owner)))
        except Exception as exc:
            self._raise(exc, "lease_alive")

    def mark_complete(
        self, item_id: int, models: Sequence[str], token: str = "", drop: Sequence[str] = ()
    ) -> ItemRecord:
        """Records that ``models`` hold the item's vectors and marks it complete.

        Race-free: the read-merge-write of the model list runs in one Lua
        script, so two servers completing different models never lose one.

        Args:
            item_id: From :meth:`reserve`.
            models: Model keys just written (merged with those already listed).
            token: The attempt that owns the pending record; only it may
                complete it. "" = any record that is not being deleted.
            drop: Entries to remove from the list first (bare names of the
                first release, replaced by their model keys).

        Returns:
            The updated record.

        Raises:
            errors.NotFound: The record is gone, being deleted, or no longer
                owned by ``token``; the caller reports the insert as failed.
            errors.Unavailable: Redis is unreachable.
        """
        self._check_open()
        try:
            fields = self._mark_complete(
                keys=[self._keys.item(item_id), self._keys.pending],
                args=[int(item_id), json.dumps(list(models)), token, json.dumps(list(drop))],
            )
        except Exception as exc:
            self._raise(exc, "mark_complete")
        if not fields:
            raise errors.NotFound(
                f"item {item_id} no longer exists or another request took it over while it was being inserted"
            )
        return parse_record(item_id, fields)

    def get(self, item_id: int) -> ItemRecord | None:
        """The record of ``item_id``, or None."""
        self._check_open()
        try:
            fields = self._redis.hgetall(self._keys.item(int(item_id)))
        except Exception as exc:
            self._raise(exc, "get")
        return parse_record(item_id, fields) if fields else None

    def get_many(self, ids: Sequence[int]) -> dict[int, ItemRecord]:
        """Records of many ids in one round trip (a non-transactional pipeline).

        Args:
            ids: Item ids (duplicates allowed).

        Returns:
            ``{id: record}``; ids without a record are absent.
        """
        self._check_open()
        unique = list(dict.fromkeys(int(i) for i in ids))
        if not unique:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for item_id in unique:
            pipe.hgetall(self._keys.item(item_id))
        try:
            results = pipe.execute()
        except Exception as exc:
            self._raise(exc, "get_many")
        return {i: parse_record(i, f) for i, f in zip(unique, results, strict=True) if f}

    def get_by_key(self, key: str) -> ItemRecord | None:
        """The record the key index points at, or None (one atomic script)."""
        self._check_open()
        try:
            found = self._get_by_key(keys=[self._keys.by_key], args=[self._keys.item(""), key])
        except Exception as exc:
            self._raise(exc, "get_by_key")
        if not found:
            return None
        return parse_record(int(found[0]), found[1])

    def begin_delete(
        self, item_id: int, *, owner: str, token: str, expect: str = "", mode: str = "any"
    ) -> ItemRecord | None:
        """Moves a record to "deleting", owned by ``(owner, token)``.

        From then on nothing revives it: a new insert of the same content gets
        a new id, so removing its rows cannot hit an item anyone relies on.

        Args:
            item_id: The item.
            owner: Server instance doing the delete.
            token: This delete attempt.
            expect: The token the record must still carry (modes own/sweep).
            mode: ``"own"`` (a failed insert's own pending record), ``"sweep"``
                (a record not complete, unchanged since it was listed) or
                ``"any"`` (a client's Delete).

        Returns:
            The record as it was, or None when it is gone or the condition failed.
        """
        self._check_open()
        try:
            fields = self._begin_delete(
                keys=[self._keys.item(item_id), self._keys.pending],
                args=[int(item_id), owner, token, expect, mode],
            )
        except Exception as exc:
            self._raise(exc, "begin_delete")
        return parse_record(item_id, fields) if fields else None

    def delete(self, item_id: int, token: str = "") -> ItemRecord | None:
        """Removes a record and the index entries that still point at it.

        Race-free: one Lua script reads the record, compares each index entry
        with ``item_id`` and deletes, so an index entry that a newer item took
        over in the meantime is never removed.

        Args:
            item_id: The item.
            token: When given, only a record still owned by this attempt is removed.

        Returns:
            The removed record, or None when there was none (idempotent).
        """
        self._check_open()
        try:
            fields = self._delete(
                keys=[self._keys.item(item_id), self._keys.by_sha, self._keys.by_key, self._keys.pending],
                args=[int(item_id), token],
            )
        except Exception as exc:
            self._raise(exc, "delete")
        return parse_record(item_id, fields) if fields else None

    def set_models(self, item_id: int, expected: Sequence[str], models: Sequence[str]) -> bool:
        """Replaces a complete record's model list if it still equals ``expected``.

        Returns:
            True when the list was replaced.
        """
        self._check_open()
        try:
            done = self._set_models(
                keys=[self._keys.item(item_id)], args=[json.dumps(list(expected)), json.dumps(list(models))]
            )
        except Exception as exc:
            self._raise(exc, "set_models")
        return bool(done)

    def list_unfinished(self) -> list[ItemRecord]:
        """Every record not yet "complete" (pending or deleting), oldest first."""
        return self.list_pending(0.0, states=(STATE_PENDING, STATE_DELETING))

    def scan_complete(self, batch: int = 1000) -> Iterator[list[ItemRecord]]:
        """Complete records in batches, by scanning the item keys (the verify sweep)."""
        self._check_open()
        prefix = self._keys.item("")
        try:
            ids: list[int] = []
            for raw in self._redis.scan_iter(match=prefix + "*", count=batch):
                tail = decode(raw)[len(prefix) :]
                if tail.isdigit():
                    ids.append(int(tail))
                if len(ids) >= batch:
                    recs = self.get_many(ids)
                    yield [r for r in recs.values() if r.state == STATE_COMPLETE]
                    ids = []
            if ids:
                recs = self.get_many(ids)
                yield [r for r in recs.values() if r.state == STATE_COMPLETE]
        except errors.ServiceError:
            raise
        except Exception as exc:
            self._raise(exc, "scan_complete")

    def list_pending(self, older_than_s: float, states: Sequence[str] = (STATE_PENDING,)) -> list[ItemRecord]:
        """Records still "pending" that were reserved more than ``older_than_s`` ago.

        For the repair sweep after a crash: such an insert either died or is
        stuck, so the sweeper deletes its Milvus rows and the record.

        Args:
            older_than_s: Minimum age in seconds (0 = all pending).

        Returns:
            The records, oldest first.
        """
        self._check_open()
        cutoff = time.time() - older_than_s
        try:
            raw_ids = self._redis.zrangebyscore(self._keys.pending, "-inf", cutoff)
        except Exception as exc:
            self._raise(exc, "list_pending")
        ids = [int(decode(i)) for i in raw_ids]
        records = self.get_many(ids)
        return [records[i] for i in ids if i in records and records[i].state in states]

    def known_attributes(self) -> set[str]:
        """Names of every attribute ever inserted (to reject filters on unknown ones)."""
        self._check_open()
        try:
            return {decode(m) for m in self._redis.smembers(self._keys.attrs)}
        except Exception as exc:
            self._raise(exc, "known_attributes")
