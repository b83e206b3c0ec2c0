"""Bearer-token authentication with scopes, as a gRPC server interceptor.

Tokens come from ``security.token_file`` and/or ``security.tokens`` (flag or
``LOOKALIKE_SECURITY_TOKENS``). Both use one line format::

    # TOKEN                                                                    SCOPES       NAME
    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08     read,write   indexer
    sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752     admin        ops

``TOKEN`` is ``sha256:<64 hex digits>`` (the SHA-256 of the token a client
sends; ``lookalike-server hash-token`` prints it) or, discouraged, the token
itself, which is hashed at load and never kept. ``SCOPES`` is a comma list of
``read``, ``write``, ``admin``; ``NAME`` (optional) names the token in denials
and logs. In the flag/env form, entries are separated by ``;`` instead of new
lines. Blank lines and ``#`` comments are ignored.

A client sends ``authorization: Bearer <token>`` call metadata. Each RPC needs
one scope (:data:`METHOD_SCOPES`); a missing or unknown token gets
UNAUTHENTICATED, a known token without the scope PERMISSION_DENIED. Health and
reflection are open unless ``security.auth_health`` / ``auth_reflection`` say
otherwise (then any valid token passes). No token configured = no
authentication at all (the default, as before).

The presented token is hashed and compared with every known digest by
:func:`hmac.compare_digest` (no early exit), so timing reveals neither which
digest matched nor how many bytes did. Tokens never reach a log line, an error
message or ``/metrics``: only the token's NAME is ever printed.

:func:`check` holds the whole decision; :class:`AuthInterceptor` adapts it
to ``grpc.aio`` and sync servers alike (and ``metrics.py`` to HTTP).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from lookalike_server.errors import ConfigError

if TYPE_CHECKING:
    from lookalike_server.config import SecurityConfig

log = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin")
SERVICE = "lookalike.v1.Lookalike"

#: The scope each RPC needs. A method of our service missing here needs
#: ``admin`` (fail closed: a new RPC is never open by accident).
METHOD_SCOPES: dict[str, str] = {
    f"/{SERVICE}/ListModels": "read",
    f"/{SERVICE}/Embed": "read",
    f"/{SERVICE}/Search": "read",
    f"/{SERVICE}/SearchStream": "read",
    f"/{SERVICE}/Get": "read",
    # Reads only; its cost is bounded by its own admission slot (limits.max_dupes_walks).
    f"/{SERVICE}/FindDuplicates": "read",
    f"/{SERVICE}/Insert": "write",
    f"/{SERVICE}/InsertStream": "write",
    f"/{SERVICE}/Delete": "write",
    f"/{SERVICE}/GetStats": "admin",
}
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_token(token: str) -> str:
    """The ``sha256:<hex>`` form of a token, as token files store it."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    """One known token: its SHA-256 digest, its scopes and a printable name."""

    digest: bytes
    scopes: frozenset[str]
    name: str


def parse_tokens(text: str, source: str, *, separator: str = "\n") -> list[TokenEntry]:
    """Parses token lines (see the module docstring).

    Args:
        text: The lines.
        source: Where they come from, for error messages (never the token).
        separator: ``"\\n"`` for files, ``";"`` for the flag/env form.

    Raises:
        ConfigError: A malformed line; the message gives its number, not its content.
    """
    entries: list[TokenEntry] = []
    for number, raw in enumerate(text.split(separator), 1):
        line = raw.split("#", 1)[0].strip() if separator == "\n" else raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise ConfigError(f"{source}: entry {number}: expected 'TOKEN SCOPES [NAME]'")
        spec, scope_text = parts[0], parts[1]
        name = parts[2] if len(parts) == 3 else f"token#{number}"
        scopes = frozenset(s.strip() for s in scope_text.split(",") if s.strip())
        unknown = scopes - set(SCOPES)
        if not scopes or unknown:
            raise ConfigError(f"{source}: entry {number} ({name}): scopes must be a comma list of {', '.join(SCOPES)}")
        if spec.startswith("sha256:"):
            hex_digest = spec[len("sha256:") :].lower()
            if not _HEX64.match(hex_digest):
                raise ConfigError(f"{source}: entry {number} ({name}): sha256: needs 64 hex digits")
            digest = bytes.fromhex(hex_digest)
        else:
            if len(spec) < 16:
                raise ConfigError(f"{source}: entry {number} ({name}): a token needs at least 16 characters")
            digest = hashlib.sha256(spec.encode()).digest()
        entries.append(TokenEntry(digest, scopes, name))
    return entries


class TokenStore:
    """The known tokens (digests only) and the lookup of a presented one."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self.entries = tuple(entries)

    @classmethod
    def from_config(cls, security: SecurityConfig) -> TokenStore:
        """Loads ``security.token_file`` and ``security.tokens``.

        Raises:
            ConfigError: The file cannot be read or an entry is malformed.
        """
        entries: list[TokenEntry] = []
        if security.token_file:
            path = Path(security.token_file)
            try:
                text = path.read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read security.token_file {path}: {exc.strerror}") from None
            if path.stat().st_mode & 0o077:
                log.warning("token file %s is readable by other users; chmod 600 it", path)
            entries += parse_tokens(text, f"security.token_file {path}")
        if security.tokens:
            entries += parse_tokens(security.tokens, "security.tokens", separator=";")
        return cls(entries)

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (otherwise nothing is checked)."""
        return bool(self.entries)

    def lookup(self, token: str) -> TokenEntry | None:
        """The entry of a presented token, or None; constant time over all entries."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for entry in self.entries:
            # Every entry is compared, match or not, so timing says nothing.
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        return found


@dataclass(frozen=True)
class Denial:
    """Why a call is refused: the status code and the message the caller sees."""

    code: grpc.StatusCode
    message: str


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` value (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def required_scope(method: str, security: SecurityConfig) -> str | None:
    """The scope ``method`` needs: a scope name, ``""`` (any valid token) or None (open)."""
    if method.startswith(HEALTH_PREFIX):
        return "" if security.auth_health else None
    if method.startswith(REFLECTION_PREFIXES):
        return "" if security.auth_reflection else None
    return METHOD_SCOPES.get(method, "admin")


def check(store: TokenStore, security: SecurityConfig, method: str, authorization: str | None) -> Denial | None:
    """The one access decision, shared by the gRPC interceptors and ``/metrics``.

    Args:
        store: Known tokens.
        security: For which methods are open.
        method: Full gRPC method (``/pkg.Service/Method``) or ``"metrics"``.
        authorization: The ``authorization`` header/metadata value, if any.

    Returns:
        None to let the call through, else the denial to send.
    """
    if not store.enabled:
        return None
    scope = "admin" if method == "metrics" else required_scope(method, security)
    if scope is None:
        return None
    token = bearer_token(authorization)
    short = method.rsplit("/", 1)[-1]
    if token is None:
        return Denial(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{short} needs a token: send 'authorization: Bearer <token>' metadata",
        )
    entry = store.lookup(token)
    if entry is None:
        return Denial(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
    if scope and scope not in entry.scopes:
        return Denial(
            grpc.StatusCode.PERMISSION_DENIED,
            f"token {entry.name!r} lacks the {scope!r} scope that {short} needs",
        )
    return None


def _authorization(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _refusal_handler(
    handler: grpc.RpcMethodHandler | None, abort: Callable[[Any, Any], Any]
) -> grpc.RpcMethodHandler | None:
    """A handler of the same shape as ``handler`` whose body is ``abort``.

    The shape must match: gRPC reads requests the way the handler says, and a
    unary handler answering a stream method would mis-read the call.
    """
    if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
        return None
    req, resp = handler.request_streaming, handler.response_streaming
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if req and resp:
        return grpc.stream_stream_rpc_method_handler(abort, **kw)
    if req:
        return grpc.stream_unary_rpc_method_handler(abort, **kw)
    if resp:
        return grpc.unary_stream_rpc_method_handler(abort, **kw)
    return grpc.unary_unary_rpc_method_handler(abort, **kw)


class AuthInterceptor(grpc.ServerInterceptor, grpc.aio.ServerInterceptor):
    """:func:`check` as a server interceptor, for ``grpc.aio.server`` and ``grpc.server`` alike.

    One class serves both so the app's wiring does not change with the server
    kind: an aio server's ``continuation`` returns an awaitable, and this
    method then returns a coroutine, which the aio server awaits; a sync
    server gets the handler directly.
    """

    def __init__(self, store: TokenStore, security: SecurityConfig) -> None:
        self._store = store
        self._security = security

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], handler_call_details: Any
    ) -> Any:
        method = handler_call_details.method
        denial = check(self._store, self._security, method, _authorization(handler_call_details.invocation_metadata))
        handler = continuation(handler_call_details)
        if inspect.isawaitable(handler):
            return self._aio(handler, denial)
        if denial is None:
            return handler

        def abort(_request: Any, context: grpc.ServicerContext) -> None:
            context.abort(denial.code, denial.message)

        return _refusal_handler(handler, abort)

    @staticmethod
    async def _aio(pending: Awaitable[grpc.RpcMethodHandler | None], denial: Denial | None) -> Any:
        handler = await pending
        if denial is None:
            return handler

        async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(denial.code, denial.message)

        return _refusal_handler(handler, abort)


def interceptors(security: SecurityConfig) -> list[AuthInterceptor]:
    """The interceptors a server built from ``security`` needs (empty: no tokens).

    Works for ``grpc.aio.server(interceptors=...)`` and ``grpc.server(..., interceptors=...)``.

    Raises:
        ConfigError: The token file cannot be read or is malformed.
    """
    store = TokenStore.from_config(security)
    if not store.enabled:
        return []
    log.info(
        "token authentication on: %d token(s) (%s)",
        len(store.entries),
        ", ".join(f"{e.name}={'+'.join(sorted(e.scopes))}" for e in store.entries),
    )
    return [AuthInterceptor(store, security)]


def hash_token_main(argv: Sequence[str]) -> int:
    """``lookalike-server hash-token [TOKEN]``: prints the ``sha256:`` line for a token.

    The token is read from stdin when not given (keeps it out of shell
    history); a fresh random one is generated and printed first when stdin is
    empty.
    """
    import secrets

    token = argv[0] if argv else sys.stdin.readline().strip() if not sys.stdin.isatty() else ""
    if not token:
        token = secrets.token_urlsafe(32)
        sys.stdout.write(f"token (give it to the client): {token}\n")
    sys.stdout.write(f"{hash_token(token)}\n")
    return 0
