"""Log redaction: no credential reaches a log line.

:class:`RedactingFilter` sits on every handler of the root logger, so it sees
every record that is written, from our code or a library's, after the message
is formatted and with the exception text included. It removes:

* the user-info of any URL (``redis://:pw@host`` → ``redis://***@host``),
* ``Bearer <token>`` values and ``password=…``/``token: …``-style pairs,
* every secret the configuration holds, verbatim (the Redis password, the
  Milvus token, plain tokens given in ``security.tokens``/``token_file``),
  wherever it appears.

Redaction is a backstop: code still should not log secrets, and the config
dump masks ``secret`` fields already.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from lookalike_server.config import Config

MASK = "***"
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
_BEARER = re.compile(r"(?i)(\bbearer\s+)[^\s'\",;]+")
_PAIR = re.compile(
    r"(?i)(\b(?:password|passwd|pwd|token|tokens|secret|api_?key|authorization|requirepass)\b['\"]?\s*[=:]\s*['\"]?)"
    r"(?!\*\*\*)[^\s'\",;&]+"
)
_MIN_SECRET = 4  # shorter literals would mask ordinary words


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL credentials, bearer tokens, key=secret pairs and ``secrets`` masked."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _PAIR.sub(lambda m: m.group(1) + MASK, text)


class RedactingFilter(logging.Filter):
    """A handler filter that rewrites each record's message and exception text, redacted.

    Args:
        secrets: Literal values to mask wherever they appear.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        redacted = redact(message, self.secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def _url_secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password or "", parts.username or ""] if "@" in parts.netloc else []
    return [v for s in found if s for v in (s, unquote(s))]


def config_secrets(config: Config) -> list[str]:
    """Every secret value the configuration holds (never logged; used only to mask)."""
    out = _url_secrets(config.redis.url) + _url_secrets(config.milvus.uri)
    token = config.milvus.token
    if token:
        out += [token, *token.split(":", 1)[1:]]  # user:password → the password alone too
    texts = []
    if config.security.tokens:
        texts += config.security.tokens.split(";")
    if config.security.token_file:
        with contextlib.suppress(OSError):  # reported when the tokens are loaded
            texts += Path(config.security.token_file).read_text().splitlines()
    for line in texts:  # auth.parse_tokens's format: the first field is the token or its hash
        spec = line.split("#", 1)[0].split()
        if spec and not spec[0].startswith("sha256:"):
            out.append(spec[0])
    return out


def install_redaction(config: Config | None = None, logger: logging.Logger | None = None) -> RedactingFilter:
    """Puts a :class:`RedactingFilter` on every handler of ``logger`` (default: the root logger).

    Call after ``logging.basicConfig``; handlers added later need
    ``handler.addFilter(filter)`` with the returned filter.
    """
    filt = RedactingFilter(config_secrets(config) if config is not None else ())
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(filt)
    return filt
