"""The repair sweep: unfinished records no live attempt owns, and complete records without rows.

Run at start-up and periodically by the server (any replica may run it at any
time). It never removes a live replica's in-flight work: a pending record is
removed only when its owner's lease lapsed, or when this instance owns it with
no attempt in flight (a clean-up that failed). See :mod:`lookalike_server.ingest`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lookalike_server.ingest import Ingestor

log = logging.getLogger(__name__)


class Repairer:
    """The sweep over the stores an :class:`~lookalike_server.ingest.Ingestor` writes.

    Args:
        ingest: The write side (its stores, lease, model keys and removal step).
        verify_every_s: Seconds between verify passes after the first.
    """

    def __init__(self, ingest: Ingestor, verify_every_s: float = 3600.0) -> None:
        self._ingest = ingest
        self._verify_every_s = verify_every_s
        self._verified_at: float | None = None

    def sweep_unfinished(self) -> int:
        """Removes pending/deleting records no live attempt owns.

        Skipped: records of a live attempt of this instance, and records of
        another instance whose lease lives (its in-flight work).

        Returns:
            Number removed.
        """
        redis = self._ingest.stores.redis
        removed = []
        for rec in redis.list_unfinished():
            if rec.owner == self._ingest.lease.owner:
                if self._ingest.lease.in_flight(rec.token):
                    continue
            elif rec.owner and redis.lease_alive(rec.owner):
                continue
            if self._ingest.remove(rec, mode="sweep"):
                removed.append(rec.id)
        if removed:
            log.info("repair: removed %d unfinished item(s) no live insert owns: %s", len(removed), removed[:20])
        return len(removed)

    def verify_complete(self, batch: int = 1000) -> int:
        """Checks complete records against Milvus; un-lists models whose row is missing.

        Also rewrites bare model names of the first release as model keys.

        Returns:
            Number of (item, model) pairs un-listed (ghosts repaired).
        """
        redis, milvus = self._ingest.stores.redis, self._ingest.stores.milvus
        fixed: list[tuple[int, str]] = []
        for records in redis.scan_complete(batch):
            current: dict[int, tuple[str, ...]] = {}
            for rec in records:
                keys = self._ingest.record_keys(rec)
                if keys != rec.models and not redis.set_models(rec.id, rec.models, keys):
                    continue  # changed under us; the next sweep looks again
                current[rec.id] = keys
            for name, collection in self._ingest.collections.items():
                key = self._ingest.keys[name]
                ids = [i for i, keys in current.items() if key in keys]
                if not ids:
                    continue
                missing = set(ids) - milvus.existing_ids(collection, ids)
                for item_id in sorted(missing):
                    keys = current[item_id]
                    rest = tuple(k for k in keys if k != key)
                    if redis.set_models(item_id, keys, rest):
                        current[item_id] = rest
                        fixed.append((item_id, key))
        if fixed:
            log.warning(
                "repair: %d complete item(s) lacked a row; un-listed so a re-insert writes it: %s",
                len(fixed),
                fixed[:20],
            )
        return len(fixed)

    def repair(self, verify: bool | None = None) -> int:
        """The sweep: unfinished records, then (first call, then hourly) the verify pass.

        Returns:
            Items removed plus (item, model) pairs un-listed.
        """
        n = self.sweep_unfinished()
        now = time.monotonic()
        if verify is None:
            verify = self._verified_at is None or now - self._verified_at >= self._verify_every_s
        if verify:
            n += self.verify_complete()
            self._verified_at = now
        return n
