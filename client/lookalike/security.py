"""How a client proves who it is and checks whom it talks to: TLS, client certificates, tokens.

:class:`ChannelSecurity` gathers the options the Python clients and the CLI share, builds
the channel credentials, and refuses the one unsafe combination by default: a bearer token
sent in clear text to a server that is not on this machine.

* **TLS** (``tls=True``): the server's certificate is checked against ``ca`` (PEM), or the
  system roots when none is given.
* **mTLS**: ``cert`` and ``key`` (PEM) are presented when the server asks for a client
  certificate (``security.tls_client_ca`` on the server).
* **Token**: sent as ``authorization: Bearer <token>`` on every call. Over TLS it travels as
  gRPC call credentials (``grpc.access_token_call_credentials`` composed with the SSL
  credentials), so even a raw ``client.stub`` call carries it. gRPC refuses call credentials
  on a plaintext channel, so there the client adds the header to each call it makes itself
  (:attr:`ChannelSecurity.call_metadata`; pass it as ``metadata=`` if you use the raw stub).
  Anyone on the path can read a plaintext token, so a token over plaintext is only allowed
  to a loopback target (``127.0.0.1``, ``::1``, ``localhost``, a ``unix:`` socket) unless
  ``insecure_token=True`` (CLI ``--insecure-token``) says the user accepts that.

Environment variables (read by :meth:`ChannelSecurity.from_env` and the CLI):
``LOOKALIKE_TLS`` (``1``/``true``/``yes``), ``LOOKALIKE_CA``, ``LOOKALIKE_CERT``,
``LOOKALIKE_KEY`` (paths to PEM files) and ``LOOKALIKE_TOKEN``. Giving a CA or a client
certificate implies TLS.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["ChannelSecurity", "add_security_arguments", "is_loopback_target", "security_from_args"]

PemInput = bytes | str | os.PathLike[str]
"""PEM data as ``bytes``, or the path of a PEM file as ``str``/``Path``."""

_TRUE = frozenset({"1", "true", "yes", "on"})


def _read_pem(value: PemInput | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    path = Path(value)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {str(path)!r}: {exc.strerror or exc}") from exc


def is_loopback_target(target: str) -> bool:
    """Whether a gRPC target names this machine (so clear text never leaves it).

    Args:
        target: ``host:port``, ``[v6]:port``, ``dns:///host:port``, ``ipv4:``/``ipv6:``
            (address lists too: all of them must be local) or ``unix:`` forms.
    """
    t = target.strip()
    if t.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if t.startswith(scheme):
            t = t[len(scheme) :]
            break
    if "," in t:  # an address list (ipv4:a:p,b:p): every address must be local
        return all(_is_loopback_address(a) for a in t.split(","))
    return _is_loopback_address(t)


def _is_loopback_address(t: str) -> bool:
    t = t.strip()
    if t.startswith("["):  # [v6]:port
        host = t[1 : t.find("]")] if "]" in t else t[1:]
    elif t.count(":") == 1:
        host = t.rsplit(":", 1)[0]
    else:
        host = t  # a bare host, or a bare IPv6 address
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ChannelSecurity:
    """Transport and caller credentials for a client channel.

    Attributes:
        tls: Use TLS. Implied by ``ca``, ``cert`` or ``key``.
        ca: PEM root certificates (bytes or a file path); system roots when ``None``.
        cert: PEM client certificate chain for mTLS (bytes or a path); needs ``key``.
        key: PEM private key of ``cert`` (bytes or a path).
        token: Bearer token sent as ``authorization: Bearer <token>``.
        insecure_token: Allow sending ``token`` over plaintext to a non-loopback target.
    """

    tls: bool = False
    ca: PemInput | None = None
    cert: PemInput | None = None
    key: PemInput | None = None
    token: str | None = None
    insecure_token: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ChannelSecurity:
        """Reads ``LOOKALIKE_TLS/CA/CERT/KEY/TOKEN``; keyword ``overrides`` that are not ``None`` win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "tls": env.get("LOOKALIKE_TLS", "").strip().lower() in _TRUE,
            "ca": env.get("LOOKALIKE_CA") or None,
            "cert": env.get("LOOKALIKE_CERT") or None,
            "key": env.get("LOOKALIKE_KEY") or None,
            "token": env.get("LOOKALIKE_TOKEN") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def uses_tls(self) -> bool:
        """True when the channel is TLS (asked, or implied by a CA or a client certificate)."""
        return self.tls or any(x is not None for x in (self.ca, self.cert, self.key))

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata the client adds to each call itself: the token on a plaintext channel.

        Over TLS the token rides in the channel's call credentials instead, so this is empty.
        """
        if self.token and not self.uses_tls:
            return (("authorization", f"Bearer {self.token}"),)
        return ()

    def check(self, target: str) -> None:
        """Refuses inconsistent or unsafe settings before any connection is made.

        Raises:
            ValueError: ``cert`` without ``key`` (or the reverse), a token with a line break,
                or a token over plaintext to a non-loopback ``target`` without
                ``insecure_token``.
        """
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key (--cert and --key)")
        if self.token is not None and any(c in self.token for c in "\r\n"):
            raise ValueError("the token must be one line")
        if self.token and not self.uses_tls and not self.insecure_token and not is_loopback_target(target):
            raise ValueError(
                f"refusing to send a token in clear text to {target}: use TLS (--tls, --ca), "
                "or --insecure-token (insecure_token=True) if the network is trusted"
            )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """The TLS channel credentials (with the token composed in), or ``None`` for plaintext."""
        if not self.uses_tls:
            return None
        ssl = grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca, "CA"),
            private_key=_read_pem(self.key, "client key"),
            certificate_chain=_read_pem(self.cert, "client certificate"),
        )
        if not self.token:
            return ssl
        return grpc.composite_channel_credentials(ssl, grpc.access_token_call_credentials(self.token))


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--tls``, ``--ca``, ``--cert``, ``--key``, ``--token``, ``--insecure-token`` to a CLI parser."""
    g = parser.add_argument_group("connection security (defaults from the environment)")
    g.add_argument("--tls", action="store_true", help="use TLS (env LOOKALIKE_TLS=1; implied by --ca/--cert)")
    g.add_argument("--ca", metavar="PEM", help="CA certificate(s) to check the server with (env LOOKALIKE_CA)")
    g.add_argument("--cert", metavar="PEM", help="client certificate for mTLS (env LOOKALIKE_CERT)")
    g.add_argument("--key", dest="key_file", metavar="PEM", help="client certificate's key (env LOOKALIKE_KEY)")
    g.add_argument(
        "--token", help="bearer token (env LOOKALIKE_TOKEN, preferred: a flag is visible to other local users)"
    )
    g.add_argument(
        "--insecure-token",
        action="store_true",
        help="allow sending the token without TLS to a server that is not on this machine",
    )


def security_from_args(args: argparse.Namespace) -> ChannelSecurity:
    """The flags added by :func:`add_security_arguments`, over the ``LOOKALIKE_*`` environment."""
    return ChannelSecurity.from_env(
        tls=args.tls or None,
        ca=args.ca,
        cert=args.cert,
        key=args.key_file,
        token=args.token,
        insecure_token=args.insecure_token or None,
    )
