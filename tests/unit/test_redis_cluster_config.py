"""Redis Cluster settings: the URL syntax, its validation, and the key layout's hash tags (no server needed)."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from lookalike_server import errors
from lookalike_server.config_loading import load_config
from lookalike_server.errors import ConfigError
from lookalike_server.logging_setup import config_secrets
from lookalike_server.store.addresses import ClusterURL, is_cluster_url, parse_cluster_url, redact_uri
from lookalike_server.store.redis_connection import translate
from lookalike_server.store.redis_records import KeyLayout


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        (
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002",
            ClusterURL("redis://10.0.0.1:7000", (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002))),
        ),
        (
            "rediss+cluster://app:p%40ss@a.example:6380,b.example/0?ssl_cert_reqs=required",
            ClusterURL(
                "rediss://app:p%40ss@a.example:6380/0?ssl_cert_reqs=required",
                (("a.example", 6380), ("b.example", 6379)),
            ),
        ),
        ("redis+cluster://[::1]:7000", ClusterURL("redis://[::1]:7000", (("::1", 7000),))),
        ("REDIS+CLUSTER://h:1", ClusterURL("redis://h:1", (("h", 1),))),
    ],
)
def test_cluster_urls_split_into_a_redis_py_url_and_seeds(url: str, parsed: ClusterURL) -> None:
    assert is_cluster_url(url)
    assert parse_cluster_url(url) == parsed


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+cluster://h:1/2", "only database 0"),
        ("redis+cluster://h:port", "not a port number"),
        ("redis+cluster://h:1,:2", "host:port seeds"),
        ("redis+cluster://h:70000", "not a port number"),
        ("redis://h:1", "starts with"),
    ],
)
def test_bad_cluster_urls_say_what_is_wrong(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_cluster_url(url)


def test_config_takes_cluster_urls_and_names_the_bad_setting() -> None:
    config = load_config(["--redis-url", "redis+cluster://h1:7000,h2:7000"], {})
    assert config.redis.url.startswith("redis+cluster://")
    with pytest.raises(ConfigError, match=r"redis\.url.*database 0"):
        load_config(["--redis-url", "redis+cluster://h1:7000/3"], {})
    # The server picks the hash tags; a user-made one would pin the cache to one slot.
    with pytest.raises(ConfigError, match=r"redis\.key_prefix.*hash tags"):
        load_config(["--redis-url", "redis+cluster://h1:7000", "--redis-key-prefix", "{app}:"], {})
    assert load_config(["--redis-url", "redis://h:1/0", "--redis-key-prefix", "{app}:"], {}).redis.key_prefix


def test_cluster_credentials_are_redacted_and_masked() -> None:
    url = "rediss+cluster://app:s3cretpw@h1:7000,h2:7000/0"
    assert redact_uri(url) == "rediss+cluster://h1:7000,h2:7000/0"
    assert "s3cretpw" in config_secrets(load_config(["--redis-url", url], {}))


def test_standalone_layout_is_unchanged() -> None:
    keys = KeyLayout("lookalike:")
    assert [keys.item(7), keys.next_id, keys.by_sha, keys.by_key, keys.pending, keys.attrs, keys.lease("o")] == [
        "lookalike:item:7",
        "lookalike:next_id",
        "lookalike:idx:sha",
        "lookalike:idx:key",
        "lookalike:pending",
        "lookalike:attrs",
        "lookalike:lease:o",
    ]
    assert keys.embedding("m:1", "abc") == "lookalike:emb:m:1:abc"


def test_cluster_layout_puts_every_record_key_in_one_slot_and_leaves_the_cache_untagged() -> None:
    keys = KeyLayout("lookalike:", cluster=True)
    record_keys = [keys.item(7), keys.item(8_000_000), keys.next_id, keys.by_sha, keys.by_key, keys.pending]
    record_keys += [keys.attrs, keys.lease("a"), keys.lease("b")]
    assert keys.item(7) == "lookalike:{lookalike}:item:7"
    assert all(k.startswith("lookalike:") for k in record_keys)  # ACL key patterns on the prefix still match
    assert len({key_slot(k.encode()) for k in record_keys}) == 1
    cache = [keys.embedding("m:1", f"sha{i}") for i in range(20)]
    assert cache[0] == "lookalike:emb:m:1:sha0"
    assert len({key_slot(k.encode()) for k in cache}) > 1
    # Another prefix on the same cluster: its own slot (most likely) and never the same keys.
    assert key_slot(KeyLayout("other:", cluster=True).next_id.encode()) != key_slot(keys.next_id.encode())


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.1:7000"), errors.Unavailable),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), errors.Unavailable),
        (redis.exceptions.ClusterDownError("The cluster is down"), errors.Unavailable),
        (redis.exceptions.MasterDownError("Link with MASTER is down"), errors.Unavailable),
        (redis.exceptions.ClusterError("TTL exhausted."), errors.Unavailable),
        (redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"), errors.Unavailable),
        (redis.exceptions.SlotNotCoveredError("Slot 42 is not covered by the cluster"), errors.Unavailable),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), errors.Unavailable),
        (
            redis.exceptions.RedisClusterUnreachableError("Redis Cluster cannot be connected. Please provide..."),
            errors.Unavailable,
        ),
        (
            redis.exceptions.RedisClusterException("Redis Cluster cannot be connected. Please provide..."),
            errors.Unavailable,
        ),
        (redis.exceptions.ResponseError("ERR Error running script"), errors.InternalError),
        (
            redis.exceptions.RedisClusterException("EVALSHA - all keys must map to the same key slot"),
            errors.InternalError,
        ),
    ],
)
def test_cluster_outages_are_retriable_and_bugs_are_internal(exc: BaseException, kind: type) -> None:
    out = translate(exc, "claim")
    assert type(out) is kind
    assert "10.0.0.1" not in str(out)  # the caller never learns where Redis lives
