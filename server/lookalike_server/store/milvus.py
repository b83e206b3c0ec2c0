"""Vector store over Milvus: one collection per model version.

Works unchanged against Milvus Lite (a local ``*.db`` path) and a Milvus server
(``http://host:19530``); every pymilvus / gRPC exception is translated here into
the server's error family (:mod:`lookalike_server.errors`), so nothing above
this module ever sees a dependency's exception.

Things learnt from running both backends (pymilvus 3.0.2, Milvus Lite 3.2.2,
Milvus standalone 2.3.5) that shaped this module:

* The index is created together with the collection, before any row, so Milvus
  never has to build it over existing data on the first search.
* Milvus Lite reopens collections in the *released* state, so
  :meth:`MilvusStore.ensure_collection` always loads (loading is idempotent).
* Milvus Lite scans unflushed rows slowly, hence the flush policy
  (``MilvusConfig.flush_rows``). On a Milvus server one flush costs about half
  a second and is not needed for search speed, so deployments on a server
  should raise ``flush_rows`` or set it to 0.
* ``LIKE`` differs between versions: Milvus 2.3 takes the pattern before ``%``
  as a literal prefix (no escapes, ``_`` is literal), newer Milvus and Lite
  treat ``_`` as a wildcard and ``\\`` as an escape. :func:`build_filter`
  therefore only uses ``LIKE`` for prefixes free of ``%``, ``_`` and ``\\``
  and otherwise a string range (``key >= p and key < p'``), which means the
  same on every version.
* String literals accept ``\\"``, ``\\\\``, ``\\n``, ``\\r`` and ``\\t`` on
  every version, but ``\\uXXXX`` only on the server, so other control
  characters cannot be expressed portably and are refused.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import (
    DataNotMatchException,
    DataTypeNotMatchException,
    MilvusException,
    MilvusUnavailableException,
    ParamError,
)

from lookalike_server import errors
from lookalike_server.config import MilvusConfig
from lookalike_server.validation import ATTRIBUTE_NAME, MAX_DIM, MAX_KEY_BYTES, MAX_TOP_K

log = logging.getLogger(__name__)

ID_FIELD = "id"
VECTOR_FIELD = "vector"
KEY_FIELD = "key"
ATTRS_FIELD = "attrs"
# Limits live in one place (validation.py); these names stay for importers.
KEY_MAX_BYTES = MAX_KEY_BYTES
METRIC = "L2"
# Milvus' own limits: collection names and the largest `limit` of a search.
_MAX_NAME_LEN = 255
_MAX_TOP_K = MAX_TOP_K
_MAX_HNSW_EF = 32768
_MAX_IVF_NPROBE = 65536
# Default indexes when MilvusConfig.index_type is empty.
LITE_DEFAULT_INDEX = "IVF_FLAT"
SERVER_DEFAULT_INDEX = "HNSW"

# gRPC codes that mean "the service is not there right now", as opposed to "you
# asked for something wrong".
_UNAVAILABLE_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Milvus status codes with the same meaning: rate limited, force-denied by quota.
_UNAVAILABLE_MILVUS = {8, 9}
_UNAVAILABLE_TEXT = (
    "fail connecting",
    "server unavailable",
    "connection refused",
    "failed to connect",
    "not ready",
    "is stopping",
    "server closed",
    "deadline exceeded",
    "timeout",
)
_COLLECTION_NOT_FOUND = 100

# Escapes understood identically by Milvus 2.3 and Milvus Lite inside "...".
_LITERAL_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_LIKE_SPECIAL = frozenset("%_\\")


@dataclass(frozen=True)
class SearchHit:
    """One search result.

    Attributes:
        id: Item id (the Milvus primary key, equal to the Redis record id).
        distance: Squared L2 distance as Milvus reports it (0 = identical).
    """

    id: int
    distance: float


def redact_uri(uri: str) -> str:
    """Returns ``uri`` without user/password, safe for messages and logs.

    Args:
        uri: A Milvus or Redis URI, or a local path.

    Returns:
        The URI with any ``user:password@`` removed.
    """
    parts = urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def string_literal(value: str, what: str = "value") -> str:
    """Quotes ``value`` as a Milvus expression string literal.

    Args:
        value: Any text.
        what: What the value is, for the error message.

    Returns:
        The literal, double quotes included.

    Raises:
        errors.InvalidArgument: ``value`` holds a control character other than
            tab, newline or carriage return (no portable escape exists).
    """
    out = []
    for ch in value:
        escaped = _LITERAL_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise errors.InvalidArgument(f"{what} contains control character U+{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    Milvus compares VARCHAR values by UTF-8 bytes, which orders like code points,
    which is how Python compares ``str``; so ``p <= s < bound`` exactly when ``s``
    starts with ``p``.

    Returns:
        The bound, or None when no bound exists (``prefix`` is all U+10FFFF).
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are not characters: skip them
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _key_prefix_clause(key_prefix: str) -> str:
    if not _LIKE_SPECIAL.intersection(key_prefix):
        # No LIKE metacharacter: every Milvus version reads this as a literal prefix.
        return f"{KEY_FIELD} like {string_literal(key_prefix + '%', 'key_prefix')}"
    lower = string_literal(key_prefix, "key_prefix")
    upper = _prefix_upper_bound(key_prefix)
    if upper is None:
        return f"{KEY_FIELD} >= {lower}"
    return f"({KEY_FIELD} >= {lower} and {KEY_FIELD} < {string_literal(upper, 'key_prefix')})"


def build_filter(
    key_prefix: str,
    attributes: Mapping[str, str] | None,
    exclude_ids: Sequence[int] = (),
) -> str:
    """Builds a Milvus boolean expression from typed filter fields.

    Nothing a client sends is pasted into the expression unescaped: attribute
    names must be identifiers, values and the key prefix become escaped string
    literals, ids are formatted as integers.

    Args:
        key_prefix: Keep items whose key starts with this ("" = any key).
        attributes: Keep items whose attribute ``name`` equals ``value`` for
            every pair (all must match).
        exclude_ids: Drop these item ids (e.g. the query item itself).

    Returns:
        The expression, or "" when there is nothing to filter on.

    Raises:
        errors.InvalidArgument: An attribute name is not an identifier
            (``^[A-Za-z_][A-Za-z0-9_]{0,63}$``), a value is not a string, a
            text holds a control character other than tab/newline/CR, or an id
            is not an integer.
    """
    clauses: list[str] = []
    if key_prefix:
        clauses.append(_key_prefix_clause(key_prefix))
    for name, value in sorted((attributes or {}).items()):
        if not isinstance(name, str) or not ATTRIBUTE_NAME.match(name):
            raise errors.InvalidArgument(
                f"attribute name {name!r} is invalid: use letters, digits and _, not starting with a digit, "
                "at most 64 characters"
            )
        if not isinstance(value, str):
            raise errors.InvalidArgument(f"attribute {name!r} must be a string, got {type(value).__name__}")
        # The name matched the identifier pattern, so it needs no escaping.
        clauses.append(f'{ATTRS_FIELD}["{name}"] == {string_literal(value, f"attribute {name!r}")}')
    if len(exclude_ids):
        ids = set()
        for item_id in exclude_ids:
            if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
                raise errors.InvalidArgument(f"exclude_ids must be integers, got {item_id!r}")
            ids.add(int(item_id))
        clauses.append(f"{ID_FIELD} not in [{', '.join(str(i) for i in sorted(ids))}]")
    return " and ".join(clauses)


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


class MilvusStore:
    """Vectors of items, one collection per model version.

    Thread-safe: the pymilvus client multiplexes calls over one gRPC channel,
    and the only state here (dimension cache, unflushed-row counters) is
    guarded by a lock.

    Args:
        config: Milvus settings (token, database, index, consistency, flush policy, timeout).
        uri: ``http://host:port`` (``https://`` for TLS) for a Milvus server, or
            a local ``*.db`` path for Milvus Lite.

    Raises:
        errors.Unavailable: Milvus cannot be reached.
    """

    def __init__(self, config: MilvusConfig, uri: str) -> None:
        self._config = config
        self._uri = uri
        self._safe_uri = redact_uri(uri)
        self._is_lite = not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))
        self._lock = threading.Lock()
        # Milvus Lite is one embedded process whose writes are not safe to
        # overlap: concurrent flushes fail with "current_seq is monotonic;
        # tried to set 338 < 339". It executes them one at a time anyway, so
        # serialising writes here costs nothing. A server needs no such lock.
        self._write_lock: AbstractContextManager[Any] = threading.Lock() if self._is_lite else nullcontext()
        # flush_rows < 0 = auto: flush every write on Lite (it scans unflushed
        # rows slowly), never explicitly on a server (it seals segments itself,
        # and one flush costs ~0.5 s there).
        self._flush_rows = config.flush_rows if config.flush_rows >= 0 else (1 if self._is_lite else 0)
        # Empty = the backend's default, chosen by measurement
        # (benchmarks/results/lite-index-*.md): on Milvus Lite an IVF_FLAT
        # index finds every stored item with its own vector (its own cell is
        # always probed first) and searches ~9x faster than Lite's HNSW.
        self._index_type = config.index_type or (LITE_DEFAULT_INDEX if self._is_lite else SERVER_DEFAULT_INDEX)
        if self._is_lite and self._index_type == "HNSW":
            log.warning(
                "HNSW on Milvus Lite: searches are ~9x slower than IVF_FLAT and a graph index may never "
                "return some stored items, even searched with their own vector (self-recall < 1 measured "
                "at M=16); prefer --milvus-index-type IVF_FLAT or FLAT on Lite"
            )
        self._dims: dict[str, int] = {}
        self._unflushed: dict[str, int] = {}
        self._closed = False
        kwargs: dict[str, Any] = {"uri": uri, "timeout": config.timeout_s}
        if config.token:
            kwargs["token"] = config.token
        if config.db_name:
            kwargs["db_name"] = config.db_name
        try:
            self._client = MilvusClient(**kwargs)
        except Exception as exc:
            self._raise(exc, "connect")

    @property
    def uri(self) -> str:
        """The URI this store talks to, without credentials."""
        return self._safe_uri

    @property
    def is_lite(self) -> bool:
        """Whether the backend is Milvus Lite (a local file) rather than a server."""
        return self._is_lite

    # ------------------------------------------------------------------ errors

    def _raise(self, exc: BaseException, action: str, collection: str | None = None) -> NoReturn:
        """Translates a dependency exception into the server's error family.

        Args:
            exc: What pymilvus/gRPC raised.
            action: What we were doing, for the message.
            collection: The collection concerned, if any.

        Raises:
            errors.ServiceError: Always; the original is chained as ``__cause__``.
        """
        where = f"{action} on collection {collection!r}" if collection else action
        if isinstance(exc, errors.ServiceError):
            raise exc
        if _is_unavailable(exc) or not isinstance(exc, (ParamError, DataTypeNotMatchException, DataNotMatchException)):
            # Callers learn which dependency failed, not where it lives: gRPC's
            # text names ipv4:host:port. The operator's log keeps the detail.
            log.warning("Milvus at %s: %s: %s", self._safe_uri, where, _short(exc))
        if _is_unavailable(exc):
            raise errors.Unavailable(f"Milvus is unavailable ({where}); retriable") from exc
        if isinstance(exc, (ParamError, DataTypeNotMatchException, DataNotMatchException)):
            raise errors.InvalidArgument(f"Milvus rejected {where}: {_short(exc)}") from exc
        if isinstance(exc, MilvusException) and exc.code == _COLLECTION_NOT_FOUND:
            raise errors.FailedPrecondition(
                f"Milvus collection {collection!r} does not exist ({where}); it is created at start-up"
            ) from exc
        raise errors.InternalError(f"Milvus failed ({where}); the server log has the details") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise errors.Unavailable("Milvus store is closed; retriable after restart")

    # ------------------------------------------------------------- collections

    def collection_name(self, model: str, version: str) -> str:
        """The collection holding ``model``'s vectors at ``version``.

        Characters outside ``[A-Za-z0-9_]`` become ``_`` (so ``resnet-50`` and
        ``resnet_50`` would share a collection: keep model names distinct after
        that mapping).

        Args:
            model: Model name from the registry.
            version: Model version (changing it starts a fresh collection).

        Returns:
            ``{prefix}_{model}_v{version}``, sanitised, at most 255 characters.
        """
        name = _sanitize(f"{self._config.collection_prefix}_{model}_v{version}")
        if name[0].isdigit():
            name = "_" + name
        return name[:_MAX_NAME_LEN]

    @property
    def index_type(self) -> str:
        """The vector index this store creates: the configured one, or the backend's default."""
        return self._index_type

    def _build_params(self) -> dict[str, Any]:
        cfg = self._config
        if self._index_type == "HNSW":
            return {"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction}
        if self._index_type == "IVF_FLAT":
            return {"nlist": cfg.ivf_nlist}
        return {}

    def _index_params(self) -> Any:
        params: dict[str, Any] = self._build_params()
        if self._is_lite and params:
            # pymilvus 3 sends build parameters as one key-value pair each;
            # Milvus Lite 3.2 reads only a JSON "params" pair and silently
            # builds with its defaults otherwise (HNSW M=16, IVF nlist=128).
            # Sent this way Lite honours them; ensure_collection checks.
            params = {"params": json.dumps(params)}
        index_params = MilvusClient.prepare_index_params()
        index_params.add_index(field_name=VECTOR_FIELD, index_type=self._index_type, metric_type=METRIC, params=params)
        return index_params

    def _check_index(self, name: str) -> None:
        """Says clearly when the collection's index is not the one configured.

        An index is built when the collection is created; a collection made
        by an older release (Milvus Lite then ignored every build parameter)
        or with other settings keeps its index until it is rebuilt.
        """
        try:
            info = self._client.describe_index(name, VECTOR_FIELD, timeout=self._config.timeout_s)
        except MilvusException:
            return  # no such index: the caller creates ours
        got_type = str(info.get("index_type", ""))
        want = {k: str(v) for k, v in self._build_params().items()}
        got = {k: str(v) for k, v in dict(info.get("params") or {}).items() if k in want}
        if got_type != self._index_type or got != want:
            log.warning(
                "Milvus collection %s has a %s index with build params %s, not the configured %s %s; "
                "searches use it as it is. To rebuild, drop the collection (Milvus Lite: delete the "
                "data dir's milvus.db) and re-run `lookalike index`",
                name,
                got_type or "?",
                got or "{} (the engine's defaults)",
                self._index_type,
                want,
            )

    def _schema(self, dim: int) -> Any:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field(KEY_FIELD, DataType.VARCHAR, max_length=KEY_MAX_BYTES)
        schema.add_field(ATTRS_FIELD, DataType.JSON)
        return schema

    def _existing_dim(self, name: str) -> int:
        info = self._client.describe_collection(name, timeout=self._config.timeout_s)
        for f in info.get("fields", []):
            if f.get("name") == VECTOR_FIELD:
                return int(f.get("params", {}).get("dim", 0))
        raise errors.ConfigError(f"Milvus collection {name!r} exists but has no {VECTOR_FIELD!r} field")

    def ensure_collection(self, model: str, version: str, dim: int) -> str:
        """Creates (if needed) and loads the collection for a model version.

        Idempotent and safe to call from several servers at once: a concurrent
        creator's "already exists" is treated as success and its schema checked.
        The index is part of the create call, so it exists before any row.

        Args:
            model: Model name.
            version: Model version.
            dim: Embedding dimension of the model.

        Returns:
            The collection name.

        Raises:
            errors.ConfigError: The collection exists with another dimension.
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        if dim < 1 or dim > MAX_DIM:
            raise errors.ConfigError(f"model {model!r}: embedding dimension {dim} is outside 1..{MAX_DIM}")
        name = self.collection_name(model, version)
        timeout = self._config.timeout_s
        try:
            if not self._client.has_collection(name, timeout=timeout):
                try:
                    self._client.create_collection(
                        name,
                        schema=self._schema(dim),
                        index_params=self._index_params(),
                        consistency_level=self._config.consistency_level,
                        timeout=timeout,
                    )
                    log.info("created Milvus collection %s (dim %d, %s)", name, dim, self._index_type)
                except MilvusException:
                    # Lost a creation race with another server? Then it exists now.
                    if not self._client.has_collection(name, timeout=timeout):
                        raise
            existing = self._existing_dim(name)
            if existing != dim:
                raise errors.ConfigError(
                    f"Milvus collection {name!r} holds {existing}-dimensional vectors but model "
                    f"{model!r} version {version!r} produces {dim}; "
                    "bump the model version or drop the collection"
                )
            if not self._client.list_indexes(name, timeout=timeout):
                # Created by something else without an index: add ours before loading.
                self._client.create_index(name, self._index_params(), timeout=timeout)
            self._check_index(name)
            # Lite reopens collections released; load is a no-op when loaded.
            self._client.load_collection(name, timeout=timeout)
        except (errors.ConfigError, errors.ServiceError):
            raise
        except Exception as exc:
            self._raise(exc, "ensure_collection", name)
        with self._lock:
            self._dims[name] = dim
        return name

    def _dim(self, collection: str) -> int:
        with self._lock:
            dim = self._dims.get(collection)
        if dim is None:
            try:
                dim = self._existing_dim(collection)
            except errors.ConfigError:
                raise
            except Exception as exc:
                self._raise(exc, "describe_collection", collection)
            with self._lock:
                self._dims[collection] = dim
        return dim

    def _check_vectors(self, collection: str, vectors: np.ndarray, what: str) -> np.ndarray:
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        dim = self._dim(collection)
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise errors.InvalidArgument(
                f"{what} must have shape (n, {dim}) for collection {collection!r}, got {tuple(np.shape(vectors))}"
            )
        if not np.isfinite(arr).all():
            raise errors.InvalidArgument(f"{what} contain NaN or infinite values")
        return arr

    # ------------------------------------------------------------------ writes

    def insert(
        self,
        collection: str,
        ids: Sequence[int],
        vectors: np.ndarray,
        keys: Sequence[str],
        attributes: Sequence[Mapping[str, str]],
    ) -> None:
        """Writes rows with upsert semantics, so retrying a failed call is safe.

        Args:
            collection: From :meth:`ensure_collection`.
            ids: Item ids (one per row).
            vectors: ``(n, dim)`` float array.
            keys: Client keys (at most 1024 UTF-8 bytes each).
            attributes: String attributes per row.

        Raises:
            errors.InvalidArgument: Lengths disagree, wrong dimension, NaN,
                a key too long, or an attribute that is not ``str -> str``
                with an identifier name.
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        arr = self._check_vectors(collection, vectors, "vectors")
        n = arr.shape[0]
        if not (len(ids) == n == len(keys) == len(attributes)):
            raise errors.InvalidArgument(
                f"insert needs one id, key and attribute map per vector: got {len(ids)} ids, {n} vectors, "
                f"{len(keys)} keys, {len(attributes)} attribute maps"
            )
        if n == 0:
            return
        rows = []
        for item_id, vec, key, attrs in zip(ids, arr, keys, attributes, strict=True):
            if len(key.encode("utf-8")) > KEY_MAX_BYTES:
                raise errors.InvalidArgument(f"key of item {item_id} exceeds {KEY_MAX_BYTES} UTF-8 bytes")
            for name, value in attrs.items():
                if not ATTRIBUTE_NAME.match(name) or not isinstance(value, str):
                    raise errors.InvalidArgument(
                        f"attribute {name!r} of item {item_id}: names must be identifiers, values strings"
                    )
            rows.append({ID_FIELD: int(item_id), VECTOR_FIELD: vec.tolist(), KEY_FIELD: key, ATTRS_FIELD: dict(attrs)})
        try:
            with self._write_lock:
                self._client.upsert(collection, rows, timeout=self._config.timeout_s)
        except Exception as exc:
            self._raise(exc, f"upsert of {n} rows", collection)
        self._wrote(collection, n)

    def delete(self, collection: str, ids: Sequence[int]) -> None:
        """Deletes rows by id; ids that do not exist are ignored (idempotent).

        Args:
            collection: From :meth:`ensure_collection`.
            ids: Item ids.

        Raises:
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        id_list = [int(i) for i in ids]
        if not id_list:
            return
        try:
            with self._write_lock:
                self._client.delete(collection, ids=id_list, timeout=self._config.timeout_s)
        except Exception as exc:
            self._raise(exc, f"delete of {len(id_list)} ids", collection)
        self._wrote(collection, len(id_list))

    def _wrote(self, collection: str, rows: int) -> None:
        """Applies the flush policy after a write of ``rows`` rows."""
        threshold = self._flush_rows
        if threshold == 0:
            return
        with self._lock:
            pending = self._unflushed.get(collection, 0) + rows
            due = pending >= threshold
            self._unflushed[collection] = 0 if due else pending
        if due:
            self.flush(collection)

    def flush(self, collection: str | None = None) -> None:
        """Seals unflushed rows of one collection, or of every one written to.

        Args:
            collection: The collection, or None for all with unflushed writes.

        Raises:
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        with self._lock:
            if collection is None:
                names = [c for c, n in self._unflushed.items() if n] or list(self._dims)
            else:
                names = [collection]
            for name in names:
                self._unflushed[name] = 0
        for name in names:
            try:
                with self._write_lock:
                    self._client.flush(name, timeout=self._config.timeout_s)
            except Exception as exc:
                self._raise(exc, "flush", name)

    # ------------------------------------------------------------------- reads

    def _consistency(self, override: str | None) -> str:
        if override is None:
            return self._config.consistency_level
        if override not in ("Strong", "Bounded", "Session", "Eventually"):
            raise errors.InvalidArgument(
                f"consistency level must be Strong, Bounded, Session or Eventually, got {override!r}"
            )
        return override

    def _search_params(self, top_k: int, filtered: bool = False) -> dict[str, Any]:
        cfg = self._config
        params: dict[str, Any] = {}
        if self._index_type == "HNSW":
            # HNSW cannot return more than ef candidates.
            params["ef"] = min(max(cfg.search_ef, top_k), _MAX_HNSW_EF)
        elif self._index_type == "IVF_FLAT":
            # A selective filter (key prefix, attributes) may match items only
            # in cells nprobe would skip: probe every cell then, which is an
            # exact scan of the matching rows, not a silent miss. Unfiltered,
            # probe at least top_k cells: a cell holds at least one row, and
            # Milvus Lite clamps nlist to a small segment's row count (one row
            # per cell), where nprobe cells would cap the hits at nprobe.
            nprobe = cfg.ivf_nlist if filtered else max(cfg.ivf_nprobe, top_k)
            params["nprobe"] = min(nprobe, _MAX_IVF_NPROBE)
        return {"metric_type": METRIC, "params": params}

    def search(
        self,
        collection: str,
        vectors: np.ndarray,
        top_k: int,
        *,
        key_prefix: str = "",
        attributes: Mapping[str, str] | None = None,
        exclude_ids: Sequence[int] = (),
        consistency_level: str | None = None,
    ) -> list[list[SearchHit]]:
        """Nearest neighbours of each query vector.

        Args:
            collection: From :meth:`ensure_collection`.
            vectors: ``(n, dim)`` (or ``(dim,)``) query vectors.
            top_k: Hits wanted per query (1..16384).
            key_prefix: Only items whose key starts with this.
            attributes: Only items with all these attribute values.
            exclude_ids: Never return these ids.
            consistency_level: Override of the configured level for this call,
                e.g. "Strong" when a client needs to see its own writes. On a
                Milvus server Strong waits for the next time tick (~200 ms per
                search); Bounded may miss writes of the last few seconds and
                still return rows deleted in that window.

        Returns:
            One list per query row, nearest first, with squared L2 distances.

        Raises:
            errors.InvalidArgument: Bad top_k, vectors or filter fields.
            errors.FailedPrecondition: The collection does not exist.
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        if not 1 <= top_k <= _MAX_TOP_K:
            raise errors.InvalidArgument(f"top_k must be in 1..{_MAX_TOP_K}, got {top_k}")
        arr = self._check_vectors(collection, vectors, "query vectors")
        expr = build_filter(key_prefix, attributes, exclude_ids)
        if arr.shape[0] == 0:
            return []
        try:
            result = self._client.search(
                collection,
                data=[v.tolist() for v in arr],
                filter=expr,
                limit=top_k,
                # Only the primary key: the service joins metadata from Redis.
                output_fields=[ID_FIELD],
                search_params=self._search_params(top_k, filtered=bool(key_prefix or attributes)),
                anns_field=VECTOR_FIELD,
                consistency_level=self._consistency(consistency_level),
                timeout=self._config.timeout_s,
            )
        except Exception as exc:
            self._raise(exc, "search", collection)
        return [[SearchHit(int(h["id"]), float(h["distance"])) for h in hits] for hits in result]

    def get_vectors(
        self, collection: str, ids: Sequence[int], *, consistency_level: str | None = None
    ) -> dict[int, np.ndarray]:
        """Stored vectors by id.

        Args:
            collection: From :meth:`ensure_collection`.
            ids: Item ids.
            consistency_level: Override of the configured level for this call.

        Returns:
            ``{id: float32 vector}``; ids without a row are absent.

        Raises:
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        id_list = sorted({int(i) for i in ids})
        if not id_list:
            return {}
        try:
            rows = self._client.query(
                collection,
                ids=id_list,
                output_fields=[ID_FIELD, VECTOR_FIELD],
                consistency_level=self._consistency(consistency_level),
                timeout=self._config.timeout_s,
            )
        except Exception as exc:
            self._raise(exc, "get_vectors", collection)
        return {int(r[ID_FIELD]): np.asarray(r[VECTOR_FIELD], dtype=np.float32) for r in rows}

    def count(self, collection: str) -> int:
        """Number of live rows (deleted and overwritten rows not counted).

        Uses ``count(*)`` with Strong consistency rather than the collection
        statistics, which count every row ever written, deletes included.

        Raises:
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        try:
            rows = self._client.query(
                collection,
                filter="",
                output_fields=["count(*)"],
                consistency_level="Strong",
                timeout=self._config.timeout_s,
            )
        except Exception as exc:
            self._raise(exc, "count", collection)
        return int(rows[0]["count(*)"])

    # --------------------------------------------------------------- lifecycle

    def ping(self) -> None:
        """Checks that Milvus answers a cheap call.

        Raises:
            errors.Unavailable: Milvus is unreachable or this store is closed.
        """
        self._check_open()
        try:
            self._client.list_collections(timeout=min(self._config.timeout_s, 5.0))
        except Exception as exc:
            if isinstance(exc, MilvusException) and not _is_unavailable(exc):
                # Whatever went wrong, for a health check Milvus is not serving.
                raise errors.Unavailable(
                    f"Milvus at {self._safe_uri} failed a health check: {_short(exc)}; retriable"
                ) from exc
            self._raise(exc, "ping")

    def close(self) -> None:
        """Flushes pending writes (best effort) and closes the client. Idempotent."""
        if self._closed:
            return
        with self._lock:
            pending = [c for c, n in self._unflushed.items() if n]
        for name in pending:
            try:
                self._client.flush(name, timeout=self._config.timeout_s)
            except Exception as exc:  # closing must not fail on an unreachable server
                log.warning("flush of %s at close failed: %s", name, _short(exc))
        self._closed = True
        try:
            self._client.close()
        except Exception as exc:
            log.warning("closing Milvus client for %s failed: %s", self._safe_uri, _short(exc))

    def existing_ids(self, collection: str, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` have a row, read with Strong consistency (the verify sweep).

        Strong, because a row written a moment ago must not look missing: the
        sweep would otherwise un-list a model that is in fact stored.

        Raises:
            errors.Unavailable: Milvus is unreachable.
        """
        self._check_open()
        id_list = sorted({int(i) for i in ids})
        if not id_list:
            return set()
        try:
            rows = self._client.query(
                collection,
                ids=id_list,
                output_fields=[ID_FIELD],
                consistency_level="Strong",
                timeout=self._config.timeout_s,
            )
        except Exception as exc:
            self._raise(exc, "existing_ids", collection)
        return {int(r[ID_FIELD]) for r in rows}


def _is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Milvus is unreachable or refusing work for now."""
    if isinstance(exc, (MilvusUnavailableException, ConnectionError, TimeoutError, grpc.FutureTimeoutError)):
        return True
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in _UNAVAILABLE_GRPC
    if isinstance(exc, MilvusException):
        code = exc.code
        if isinstance(code, grpc.StatusCode):  # a gRPC error that outlived pymilvus' retries
            return code in _UNAVAILABLE_GRPC
        if code in _UNAVAILABLE_MILVUS:
            return True
        # Connection failures arrive as generic codes; only the text tells them apart.
        text = str(exc.message).lower()
        return any(t in text for t in _UNAVAILABLE_TEXT)
    return False


def _short(exc: BaseException, limit: int = 300) -> str:
    """One line of an exception, bounded, for messages sent to clients."""
    text = f"code={exc.code}: {exc.message}" if isinstance(exc, MilvusException) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
