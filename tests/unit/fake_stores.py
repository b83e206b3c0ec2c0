"""In-memory stand-ins for the stores and the embedder, for unit tests of the service.

They follow the contracts of :class:`~lookalike_server.store.redis.RedisStore`
(the semantics of its Lua scripts, each step atomic under one lock) and of
:class:`~lookalike_server.store.milvus.MilvusStore`, without a server. The
real stores' own tests (tests/integration) pin those contracts on Redis and
Milvus.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from lookalike_server.domain import RequestContext, Timing
from lookalike_server.errors import ModelNotFound, NotFound, Unavailable
from lookalike_server.store.milvus import SearchHit
from lookalike_server.store.redis_records import BUSY, CREATED, FOUND_COMPLETE, TAKEN_OVER, ItemRecord


@dataclass
class _Rec:
    key: str
    attrs: dict[str, str]
    sha: str
    models: list[str]
    created_at: float
    state: str
    owner: str = ""
    token: str = ""

    def view(self, item_id: int) -> ItemRecord:
        return ItemRecord(
            item_id,
            self.key,
            dict(self.attrs),
            self.sha,
            tuple(self.models),
            self.created_at,
            self.state,
            self.owner,
            self.token,
        )


@dataclass
class FakeRedis:
    """Records, indexes, leases and the cache, in dicts. ``down`` makes every call fail."""

    items: dict[int, _Rec] = field(default_factory=dict)
    by_sha: dict[str, int] = field(default_factory=dict)
    by_key: dict[str, int] = field(default_factory=dict)
    leases: set[str] = field(default_factory=set)
    cache: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    cache_ttls: dict[tuple[str, str], int | None] = field(default_factory=dict)
    attrs: set[str] = field(default_factory=set)
    next_id: int = 0
    down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _up(self) -> None:
        if self.down:
            raise Unavailable("fake Redis is down; retriable")

    def claim(
        self, key: str, sha: str, attributes: Mapping[str, str], dedupe: str, *, owner: str, token: str
    ) -> tuple[int, ItemRecord]:
        self._up()
        with self.lock:
            existing = self.by_sha.get(sha) if dedupe == "content" else self.by_key.get(key)
            rec = self.items.get(existing) if existing is not None else None
            if rec is not None and existing is not None:
                if rec.state == "complete":
                    return FOUND_COMPLETE, rec.view(existing)
                if rec.state == "pending":
                    live = bool(rec.owner and rec.token and rec.owner in self.leases)
                    if live or not owner:
                        return BUSY, rec.view(existing)
                    rec.owner, rec.token = owner, token
                    return TAKEN_OVER, rec.view(existing)
            self.next_id += 1
            new = _Rec(key, dict(attributes), sha, [], time.time(), "pending", owner, token)
            self.items[self.next_id] = new
            self.by_sha[sha] = self.next_id
            self.by_key[key] = self.next_id
            self.attrs.update(attributes)
            return CREATED, new.view(self.next_id)

    def mark_complete(
        self, item_id: int, models: Sequence[str], token: str = "", drop: Sequence[str] = ()
    ) -> ItemRecord:
        self._up()
        with self.lock:
            rec = self.items.get(item_id)
            if rec is None or rec.state == "deleting" or (token and (rec.state != "pending" or rec.token != token)):
                raise NotFound(f"item {item_id} no longer exists or another request took it over")
            rec.models = [m for m in rec.models if m not in drop]
            rec.models += [m for m in models if m not in rec.models]
            rec.state, rec.owner, rec.token = "complete", "", ""
            return rec.view(item_id)

    def begin_delete(
        self, item_id: int, *, owner: str, token: str, expect: str = "", mode: str = "any"
    ) -> ItemRecord | None:
        self._up()
        with self.lock:
            rec = self.items.get(item_id)
            if rec is None:
                return None
            if mode == "own" and (rec.state != "pending" or rec.token != expect):
                return None
            if mode == "sweep" and (rec.state == "complete" or rec.token != expect):
                return None
            before = rec.view(item_id)
            rec.state, rec.owner, rec.token = "deleting", owner, token
            return before

    def delete(self, item_id: int, token: str = "") -> ItemRecord | None:
        self._up()
        with self.lock:
            rec = self.items.get(item_id)
            if rec is None or (token and rec.token != token):
                return None
            del self.items[item_id]
            if self.by_sha.get(rec.sha) == item_id:
                del self.by_sha[rec.sha]
            if self.by_key.get(rec.key) == item_id:
                del self.by_key[rec.key]
            return rec.view(item_id)

    def set_models(self, item_id: int, expected: Sequence[str], models: Sequence[str]) -> bool:
        self._up()
        with self.lock:
            rec = self.items.get(item_id)
            if rec is None or rec.state != "complete" or tuple(rec.models) != tuple(expected):
                return False
            rec.models = list(models)
            return True

    def get(self, item_id: int) -> ItemRecord | None:
        self._up()
        rec = self.items.get(item_id)
        return rec.view(item_id) if rec else None

    def get_many(self, ids: Sequence[int]) -> dict[int, ItemRecord]:
        self._up()
        return {i: self.items[i].view(i) for i in ids if i in self.items}

    def get_by_key(self, key: str) -> ItemRecord | None:
        self._up()
        item_id = self.by_key.get(key)
        return self.get(item_id) if item_id is not None else None

    def list_unfinished(self) -> list[ItemRecord]:
        self._up()
        return [r.view(i) for i, r in sorted(self.items.items()) if r.state != "complete"]

    def scan_complete(self, batch: int = 1000) -> Iterator[list[ItemRecord]]:
        self._up()
        done = [r.view(i) for i, r in sorted(self.items.items()) if r.state == "complete"]
        for k in range(0, len(done), batch):
            yield done[k : k + batch]

    def renew_lease(self, owner: str, ttl_s: float) -> None:
        self._up()
        self.leases.add(owner)

    def drop_lease(self, owner: str) -> None:
        self._up()
        self.leases.discard(owner)

    def lease_alive(self, owner: str) -> bool:
        self._up()
        return owner in self.leases

    def known_attributes(self) -> set[str]:
        self._up()
        return set(self.attrs)

    def cache_get_many(self, model_key: str, shas: Sequence[str]) -> list[np.ndarray | None]:
        self._up()
        return [self.cache.get((model_key, s)) for s in shas]

    def cache_put_many(
        self, model_key: str, shas: Sequence[str], vectors: np.ndarray, ttl_s: int | None = None
    ) -> None:
        self._up()
        for sha, vec in zip(shas, vectors, strict=True):
            self.cache[(model_key, sha)] = np.asarray(vec, dtype=np.float32).copy()
            self.cache_ttls[(model_key, sha)] = ttl_s

    def cache_drop(self, model_keys: Sequence[str], sha: str) -> None:
        self._up()
        for m in model_keys:
            self.cache.pop((m, sha), None)
            self.cache_ttls.pop((m, sha), None)

    def ping(self) -> None:
        self._up()


@dataclass
class FakeMilvus:
    """Collections of ``{id: vector}``; ``fail`` names methods that raise Unavailable."""

    rows: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)

    def _up(self, what: str) -> None:
        if what in self.fail:
            raise Unavailable(f"fake Milvus {what} failed; retriable")

    def ensure_collection(self, model: str, version: str, dim: int) -> str:
        name = f"lookalike_{model}_v{version}"
        self.rows.setdefault(name, {})
        return name

    def insert(self, collection: str, ids: Sequence[int], vectors: np.ndarray, keys: Any, attributes: Any) -> None:
        self._up("insert")
        for i, v in zip(ids, vectors, strict=True):
            self.rows[collection][int(i)] = np.asarray(v, dtype=np.float32)

    def delete(self, collection: str, ids: Sequence[int]) -> None:
        self._up("delete")
        for i in ids:
            self.rows[collection].pop(int(i), None)

    def get_vectors(self, collection: str, ids: Sequence[int], **_: Any) -> dict[int, np.ndarray]:
        self._up("get_vectors")
        return {int(i): self.rows[collection][int(i)] for i in ids if int(i) in self.rows[collection]}

    def existing_ids(self, collection: str, ids: Sequence[int]) -> set[int]:
        self._up("existing_ids")
        return {int(i) for i in ids if int(i) in self.rows[collection]}

    def search(self, collection: str, vectors: np.ndarray, top_k: int, **kw: Any) -> list[list[SearchHit]]:
        self._up("search")
        exclude = set(kw.get("exclude_ids") or ())
        out = []
        for q in np.atleast_2d(vectors):
            hits = [
                SearchHit(i, float(np.sum((v - q) ** 2))) for i, v in self.rows[collection].items() if i not in exclude
            ]
            out.append(sorted(hits, key=lambda h: h.distance)[:top_k])
        return out

    def count(self, collection: str) -> int:
        return len(self.rows[collection])

    def ping(self) -> None:
        self._up("ping")


class FakeEmbedder:
    """Models ``a`` and ``b`` (dim 4): a vector is a function of the image bytes."""

    def __init__(self, versions: Mapping[str, str] | None = None, dim: int = 4) -> None:
        versions = versions or {"a": "1", "b": "1"}
        self.models: dict[str, Any] = {
            name: SimpleNamespace(
                spec=SimpleNamespace(name=name, version=v, dim=dim, key=f"{name}@{v}"),
            )
            for name, v in versions.items()
        }
        self.calls = 0
        self.gate: threading.Event | None = None  # when set, embed waits for it (races)

    def require(self, names: Sequence[str]) -> list[str]:
        if not names:
            return list(self.models)
        for n in names:
            if n not in self.models:
                raise ModelNotFound(f"model {n!r} is not loaded")
        return list(dict.fromkeys(names))

    def embed(
        self, images: Sequence[bytes], models: Sequence[str], ctx: RequestContext
    ) -> tuple[dict[str, np.ndarray], Timing]:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        ctx.check("embedding")
        out = {}
        for m in models:
            dim = self.models[m].spec.dim
            rows = []
            for img in images:
                seed = int.from_bytes(hashlib.sha256(m.encode() + img).digest()[:4], "little")
                v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
                rows.append(v / np.linalg.norm(v))
            out[m] = np.stack(rows)
        return out, Timing(inference_ms=1.0, batch_size=len(images))
