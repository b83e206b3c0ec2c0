"""The log redaction filter, on real logging records."""

from __future__ import annotations

import io
import logging

import pytest

from lookalike_server.config_loading import load_config
from lookalike_server.logging_setup import RedactingFilter, config_secrets, redact


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("connecting to redis://:s3cretpw@127.0.0.1:6379/0", "s3cretpw"),
        ("uri=http://root:Milvus123@milvus:19530 failed", "Milvus123"),
        ("rediss://default:p%40ss@host:6380", "p%40ss"),
        ("metadata authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
        ('{"token": "root:hunter22", "password": "pw-9876"}', "hunter22"),
        ("password=pw-9876&user=x", "pw-9876"),
        ("CONFIG SET requirepass hunter2hunter2", None),  # no '=' or ':': left alone by the pattern...
    ],
)
def test_patterns(text: str, leak: str | None) -> None:
    out = redact(text)
    if leak is not None:
        assert leak not in out and "***" in out


def test_literal_secrets_are_masked_anywhere() -> None:
    # ...but a configured secret is masked wherever it appears, pattern or not.
    assert redact("CONFIG SET requirepass hunter2hunter2", ["hunter2hunter2"]) == "CONFIG SET requirepass ***"


def test_ordinary_text_is_untouched() -> None:
    text = "token authentication on: 2 token(s) (ops=admin); serving on 127.0.0.1:50051 http://host:80/metrics"
    assert redact(text) == text


def test_config_secrets_cover_urls_and_plain_tokens() -> None:
    config = load_config(
        [
            "--redis-url", "redis://app:s3cretpw@127.0.0.1:6379/0",
            "--milvus-token", "root:Milvus123",
            "--security-tokens", "plain-token-0123456789 read app; sha256:" + "0" * 64 + " admin ops",
        ]
    )  # fmt: skip
    found = set(config_secrets(config))
    assert {"s3cretpw", "root:Milvus123", "Milvus123", "plain-token-0123456789"} <= found
    assert not any(s.startswith("sha256") for s in found)


def test_filter_redacts_messages_args_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(["s3cretpw"]))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("cannot reach %s", "redis://:s3cretpw@db:6379")
        try:
            raise ConnectionError("AUTH s3cretpw refused by redis://u:s3cretpw@db")
        except ConnectionError:
            logger.exception("store failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "s3cretpw" not in out
    assert "redis://***@db:6379" in out and "ConnectionError: AUTH *** refused" in out
