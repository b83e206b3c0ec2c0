"""Insert, Delete and repair: the write protocol across Milvus and Redis.

**The invariant.** An insert acknowledged OK (created or not) is stored
complete and is found by a search with its own vector under every model it
lists; a complete record always has its rows; no pending record outlives its
owner's lease; no id is ever reused; a retry returns the same id.

**How it is kept** (record states are in :mod:`lookalike_server.store.redis_records`):

1. *Claim.* One Lua script finds the item by content hash (or key) or
   allocates its id and writes a *pending* record owned by this server
   instance (``owner``, whose lease key a heartbeat renews) and this attempt
   (``token``). A second insert of the same item that finds it pending under
   a live lease *waits* for that attempt instead of racing it; one that finds
   the owner's lease gone takes the record over (same id).
2. *Write.* Embeddings are computed (or read from the cache) and the rows
   upserted under the id. Upserts make a re-run harmless: same id, same vector.
3. *Complete.* A conditional script flips the record to *complete* with the
   model keys (``name:version``) only if this attempt still owns it. The
   insert is acknowledged only after that, so acknowledged means complete
   with rows written.
4. *Failure.* The attempt moves its own record to *deleting* (conditional
   on still owning it), removes the rows, then the record. A record in
   *deleting* is never revived: an insert of the same content gets a new id,
   so a row delete that lands late (a stalled Milvus) can only hit a dead id.
   A failed attempt never touches a record another attempt now owns, and
   never deletes rows of a complete record.
5. *Sweep* (:mod:`lookalike_server.repair`, at start-up and periodically). Removes
   the pending/deleting records whose owner's lease lapsed (a crashed
   replica) or that this instance owns with no attempt in flight (a clean-up
   that failed); never a live replica's in-flight work. The *verify* pass
   checks complete records against Milvus (Strong reads) and un-lists a
   model whose row is missing, so a re-insert writes it again instead of
   answering "already indexed" for a ghost.

Why each hazard is covered: a client cancel runs step 4 for what this attempt
owns; a concurrent re-run waits at step 1; a store stall longer than any
timeout can make a step's *outcome* unknown, but step 3 is the only one that
acknowledges and it is conditional, and the only row deletes are of ids in
*deleting*, which nothing revives; SIGKILL leaves pending records whose lease
lapses, then the sweep of any instance removes them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lookalike_server.batching import MicroBatcher
from lookalike_server.config import Config
from lookalike_server.domain import (
    InsertItem,
    InsertResult,
    RequestContext,
    Timing,
    model_key,
    normalise_model_keys,
)
from lookalike_server.embedding_cache import CachedEmbedder
from lookalike_server.errors import Aborted, NotFound, ServiceError
from lookalike_server.lease import DEFAULT_LEASE_S, Lease
from lookalike_server.models import OnnxModel
from lookalike_server.store import Stores
from lookalike_server.store.redis_records import BUSY, CREATED, FOUND_COMPLETE, STATE_DELETING, ItemRecord
from lookalike_server.validation import check_image_bytes, check_images, validate_item

log = logging.getLogger(__name__)

#: How long an insert waits for a concurrent attempt on the same item when the
#: request has no deadline.
MAX_WAIT_S = 60.0


@dataclass(frozen=True)
class _Row:
    """One vector to write to one collection."""

    id: int
    vector: np.ndarray
    key: str
    attributes: dict[str, str]


@dataclass
class _Attempt:
    """What one insert did for one item."""

    record: ItemRecord
    outcome: int
    token: str
    keys: list[str] = field(default_factory=list)  # model keys to write
    names: list[str] = field(default_factory=list)  # the same, as model names
    done: bool = False

    @property
    def owned(self) -> bool:
        """Whether this attempt owns a pending record (created or taken over)."""
        return self.outcome not in (FOUND_COMPLETE, BUSY)


class Ingestor:
    """Insert, Delete and the repair sweep.

    Args:
        config: Server configuration.
        stores: The stores (shared, possibly wrapped by tests).
        models: Loaded models by name.
        collections: Model name -> collection.
        embed: Cached embedding.
        lease_s: Lease lifetime of this server instance.
    """

    def __init__(
        self,
        config: Config,
        stores: Stores,
        models: dict[str, OnnxModel],
        collections: dict[str, str],
        embed: CachedEmbedder,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self.config = config
        self.stores = stores
        self.models = models
        self.collections = collections
        self.keys = {name: model_key(name, m.spec.version) for name, m in models.items()}
        self._names = {k: n for n, k in self.keys.items()}
        self._embed = embed
        self.lease = Lease(stores, lease_s)
        # Rows of concurrent inserts are merged into one Milvus write per
        # collection: the same micro-batcher that merges inference.
        self._writers: dict[str, MicroBatcher[_Row, None]] = {
            name: MicroBatcher(
                f"write-{name}",
                functools.partial(self._write_rows, collection),
                max_batch_size=512,
                max_delay_s=0.002,
                queue_size=100_000,
            )
            for name, collection in collections.items()
        }

    def _write_rows(self, collection: str, rows: list[_Row]) -> list[None]:
        """Writer batcher's batch function: one upsert for many inserts' rows."""
        self.stores.milvus.insert(
            collection,
            [r.id for r in rows],
            np.stack([r.vector for r in rows]),
            [r.key for r in rows],
            [r.attributes for r in rows],
        )
        return [None] * len(rows)

    # -------------------------------------------------------- model keys --
    def record_keys(self, record: ItemRecord) -> tuple[str, ...]:
        """The record's model keys (bare names of the first release read as keys)."""
        return normalise_model_keys(record.models, self.keys)

    def record_names(self, record: ItemRecord) -> tuple[str, ...]:
        """The record's models as clients name them: a loaded model's name, else its key."""
        return tuple(self._names.get(k, k) for k in self.record_keys(record))

    # ------------------------------------------------------------ insert --
    def insert(
        self, items: Sequence[InsertItem], names: Sequence[str], ctx: RequestContext
    ) -> tuple[list[InsertResult], Timing]:
        """Indexes items under the given (resolved) model names. Idempotent.

        Args:
            items: Items to index; validated first, so one bad item writes nothing.
            names: Loaded model names (already resolved; non-empty).
            ctx: Deadline and cancellation.

        Returns:
            One result per item, in order, and timing.
        """
        limits = self.config.limits
        check_images([it.image for it in items], limits, "items")
        for i, item in enumerate(items):
            validate_item(item, i)
            check_image_bytes(item.image, limits, f"item {i}")
        started = time.perf_counter()
        timing = Timing()
        shas = [hashlib.sha256(it.image).hexdigest() for it in items]
        dedupe = self.config.index.dedupe
        ident = shas if dedupe == "content" else [it.key for it in items]
        attempts: dict[str, _Attempt] = {}
        try:
            t0 = time.perf_counter()
            # Claims in a fixed order (by dedupe identity): two requests that
            # hold some items and wait for others can never wait on each other.
            for i in sorted(range(len(items)), key=lambda i: ident[i]):
                if ident[i] not in attempts:  # the same item twice in one request: one attempt
                    attempts[ident[i]] = self._claim(items[i], shas[i], dedupe, ctx)
            timing.redis_ms += (time.perf_counter() - t0) * 1e3
            for att in attempts.values():
                have = () if att.owned else self.record_keys(att.record)
                att.names = [n for n in names if self.keys[n] not in have]
                att.keys = [self.keys[n] for n in att.names]
            self._write(items, shas, ident, attempts, ctx, timing)
            t0 = time.perf_counter()
            for att in attempts.values():
                if att.names:
                    self._complete(att)
            timing.redis_ms += (time.perf_counter() - t0) * 1e3
        except BaseException:
            for att in attempts.values():
                if att.owned and not att.done:
                    self._abandon(att)
            raise
        finally:
            for att in attempts.values():
                self.lease.end(att.token)
        results = []
        seen: set[str] = set()
        for i in range(len(items)):
            att = attempts[ident[i]]
            created = att.outcome == CREATED and ident[i] not in seen
            seen.add(ident[i])
            results.append(InsertResult(att.record.id, created, self.record_names(att.record), shas[i]))
        timing.total_ms = (time.perf_counter() - started) * 1e3
        return results, timing

    def _claim(self, item: InsertItem, sha: str, dedupe: str, ctx: RequestContext) -> _Attempt:
        """Claims the item, waiting while another live attempt owns it."""
        redis = self.stores.redis
        token = self.lease.begin()
        waited_from = time.monotonic()
        pause = 0.01
        try:
            while True:
                ctx.check("reserving ids")
                outcome, rec = redis.claim(item.key, sha, item.attributes, dedupe, owner=self.lease.owner, token=token)
                if outcome != BUSY:
                    return _Attempt(rec, outcome, token)
                if rec.owner == self.lease.owner and not self.lease.in_flight(rec.token):
                    # Our own attempt failed and its clean-up did too: finish
                    # that clean-up now (nothing was acknowledged for it).
                    self.remove(rec, mode="sweep")
                    continue
                remaining = ctx.remaining()
                budget = MAX_WAIT_S if remaining is None else remaining
                if time.monotonic() - waited_from > budget:
                    raise Aborted(
                        f"item {rec.id} ({rec.key!r}) is being inserted by another request that has not "
                        "finished; retry the insert"
                    )
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
        except BaseException:
            self.lease.end(token)
            raise

    def _write(
        self,
        items: Sequence[InsertItem],
        shas: Sequence[str],
        ident: Sequence[str],
        attempts: dict[str, _Attempt],
        ctx: RequestContext,
        timing: Timing,
    ) -> None:
        """Embeds and upserts the rows each attempt needs."""
        first: dict[str, int] = {}
        for i in range(len(items)):
            first.setdefault(ident[i], i)
        todo = [(first[k], att) for k, att in attempts.items() if att.names]
        if not todo:
            return
        todo.sort(key=lambda t: t[0])
        order = [name for name in self.models if any(name in att.names for _, att in todo)]
        vectors = self._embed.embed([items[i].image for i, _ in todo], [shas[i] for i, _ in todo], order, ctx, timing)
        ctx.check("writing vectors")
        t0 = time.perf_counter()
        writes = []
        for name in order:
            for k, (_i, att) in enumerate(todo):
                if name in att.names:
                    rec = att.record
                    row = _Row(rec.id, vectors[name][k], rec.key, rec.attributes)
                    writes.append(self._writers[name].submit(row))
        # Not cancellable past this point: the writes are in flight, and the
        # attempt ends either completed or cleaned up by this call.
        for fut in writes:
            fut.result()
        timing.milvus_ms += (time.perf_counter() - t0) * 1e3

    def _complete(self, att: _Attempt) -> None:
        """Step 3: the conditional flip to complete; acknowledges nothing if it fails."""
        rec = att.record
        bare = [m for m in rec.models if ":" not in m]
        try:
            att.record = self.stores.redis.mark_complete(
                rec.id, att.keys, token=att.token if att.owned else "", drop=bare
            )
            att.done = True
        except NotFound:
            try:
                now = self.stores.redis.get(rec.id)
            except ServiceError:
                now = rec  # unknown: leave the rows (at worst unreachable, never a ghost)
            if now is None or now.state == STATE_DELETING:
                # The id is dead (deleted, or being deleted): nothing can rely
                # on its rows, so taking ours back out is safe.
                self._delete_rows(rec.id, att.names)
            raise Aborted(
                f"item {rec.id} ({rec.key!r}) was deleted while this insert ran (or another request took it "
                "over); retry the insert"
            ) from None

    def _delete_rows(self, item_id: int, names: Sequence[str]) -> None:
        try:
            for name in names:
                self.stores.milvus.delete(self.collections[name], [item_id])
        except ServiceError as exc:
            log.warning("removing rows of dead item %d failed (%s); they are unreachable", item_id, exc)

    def _abandon(self, att: _Attempt) -> None:
        """Step 4 for an attempt that owns its pending record."""
        try:
            self.remove(att.record, mode="own", expect=att.token)
        except ServiceError as exc:
            log.warning("insert clean-up of item %d failed (%s); the repair sweep will remove it", att.record.id, exc)

    def remove(self, rec: ItemRecord, *, mode: str, expect: str | None = None) -> bool:
        """Moves a record to deleting (if the condition holds), removes its rows, then it.

        Returns:
            True when this call removed it.
        """
        redis = self.stores.redis
        token = self.lease.begin()
        try:
            got = redis.begin_delete(
                rec.id, owner=self.lease.owner, token=token, expect=rec.token if expect is None else expect, mode=mode
            )
            if got is None:
                return False
            for collection in self.collections.values():
                self.stores.milvus.delete(collection, [rec.id])
            redis.delete(rec.id, token=token)
            return True
        finally:
            self.lease.end(token)

    # ------------------------------------------------------------ delete --
    def delete(self, item_id: int) -> tuple[str, ...]:
        """Removes an item: record to deleting, rows from every collection, then the record.

        The record goes to *deleting* first, so an insert of the same content
        that runs meanwhile gets a new id instead of relying on this one. If a
        row delete fails, the record stays in *deleting* (hidden from Get and
        Search): a retry, or the sweep, finishes the job.
        """
        redis = self.stores.redis
        token = self.lease.begin()
        try:
            rec = redis.begin_delete(item_id, owner=self.lease.owner, token=token, mode="any")
            if rec is None:
                raise NotFound(f"no item with id {item_id}")
            for collection in self.collections.values():
                self.stores.milvus.delete(collection, [item_id])
            redis.delete(item_id, token=token)
            self._drop_cached(rec.content_sha256)
            return self.record_names(rec)
        finally:
            self.lease.end(token)

    def _drop_cached(self, sha: str) -> None:
        """Drops a deleted item's cached embeddings: without this, insert-and-delete traffic fills Redis.

        Best effort: the item is already gone, and its TTL removes what a failure leaves.
        """
        try:
            self.stores.redis.cache_drop([m.spec.key for m in self.models.values()], sha)
        except ServiceError as exc:  # not the caller's failure: the delete itself succeeded
            log.warning("deleted item's cached embeddings stay until their TTL: %s", exc)

    def close(self) -> None:
        """Drains pending writes and ends the lease."""
        for writer in self._writers.values():
            writer.close()
        self.lease.close()
