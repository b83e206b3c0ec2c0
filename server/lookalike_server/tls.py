"""Server TLS: credentials, mandatory client certificates, reload without restart.

gRPC's dynamic SSL credentials call a *certificate-configuration fetcher* on
every new TLS handshake; :class:`CertificateReloader` is that fetcher. It
stats the certificate, key and client-CA files (cheap) and, when one changed
or a SIGHUP asked for it, reads them again. Established connections keep the
certificate they were opened with; new ones get the new files. Nothing is
restarted and no call fails.

A rotation is rarely atomic: a tool writes the key, then the certificate, or
a file is read half-written. So a new set is adopted only once the key matches
the certificate and every PEM parses (checked with the ``ssl`` module);
until then the previous set keeps serving and a warning is logged once per
change.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from lookalike_server.errors import ConfigError

if TYPE_CHECKING:
    from lookalike_server.config import SecurityConfig

log = logging.getLogger(__name__)

_reloaders: weakref.WeakSet[CertificateReloader] = weakref.WeakSet()


@dataclass(frozen=True)
class CertificateFiles:
    """The PEM contents of one certificate set."""

    cert: bytes
    key: bytes
    client_ca: bytes | None


def validate(files: CertificateFiles) -> None:
    """Checks that the key matches the certificate and every PEM parses.

    Raises:
        ssl.SSLError / ValueError: They do not.
    """
    # ssl only loads a key pair from files: write them to a private (0700)
    # directory for the length of the check.
    with tempfile.TemporaryDirectory(prefix="lookalike-tls-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        for path, data in ((cert, files.cert), (key, files.key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if files.client_ca is not None:
            ctx.load_verify_locations(cadata=files.client_ca.decode("ascii"))


class CertificateReloader:
    """Reads the TLS files of a :class:`SecurityConfig` and re-reads them when they change.

    Args:
        security: ``tls_cert``/``tls_key`` must be set; ``tls_client_ca`` optional.

    Raises:
        ConfigError: The files cannot be read or do not form a valid set.
    """

    def __init__(self, security: SecurityConfig) -> None:
        self.paths = tuple(Path(p) for p in (security.tls_cert, security.tls_key, security.tls_client_ca) if p)
        self._with_ca = bool(security.tls_client_ca)
        self._lock = threading.Lock()
        self._force = False
        self.reloads = 0  # sets adopted after the first (tests and logs)
        try:
            self._signature = self._stat()
            self.current = self._read()
            validate(self.current)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"invalid TLS files {[str(p) for p in self.paths]}: {exc}") from None
        _reloaders.add(self)

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for p in self.paths:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _read(self) -> CertificateFiles:
        data = [p.read_bytes() for p in self.paths]
        return CertificateFiles(data[0], data[1], data[2] if self._with_ca else None)

    def request_reload(self) -> None:
        """Makes the next handshake re-read the files even if they look unchanged (SIGHUP)."""
        self._force = True

    def poll(self) -> CertificateFiles | None:
        """The new certificate set if the files changed into a valid one, else None."""
        with self._lock:
            try:
                signature = self._stat()
            except OSError:
                return None  # mid-rename: keep serving the current set
            if signature == self._signature and not self._force:
                return None
            self._force = False
            self._signature = signature
            try:
                files = self._read()
                validate(files)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("TLS files changed but do not form a valid set yet (%s); keeping the current one", exc)
                return None
            if files == self.current:
                return None
            self.current = files
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self.paths[0])
            return files

    def configuration(self, files: CertificateFiles | None = None) -> grpc.ServerCertificateConfiguration:
        """gRPC's certificate configuration for ``files`` (default: the current set)."""
        files = files or self.current
        return grpc.ssl_server_certificate_configuration([(files.key, files.cert)], root_certificates=files.client_ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The fetcher gRPC calls on every handshake: a new configuration, or None to keep the current."""
        try:
            files = self.poll()
        except Exception:  # never let an exception escape into gRPC's handshake
            log.exception("TLS reload check failed; keeping the current certificate")
            return None
        return None if files is None else self.configuration(files)


def server_credentials(security: SecurityConfig) -> grpc.ServerCredentials | None:
    """Reloading server credentials for ``security``, or None for plaintext.

    With ``tls_client_ca`` set, a client without a certificate signed by that
    CA (or with an expired one) fails the handshake.

    Raises:
        ConfigError: The files cannot be read or do not match.
    """
    if not security.tls_cert:
        return None
    reloader = CertificateReloader(security)
    return grpc.dynamic_ssl_server_credentials(
        reloader.configuration(),
        reloader.fetch,
        require_client_authentication=bool(security.tls_client_ca),
    )


def reload_all() -> None:
    """Asks every live reloader to re-read its files at the next handshake."""
    for reloader in list(_reloaders):
        reloader.request_reload()


def install_sighup() -> None:
    """SIGHUP → :func:`reload_all` (main thread only; POSIX)."""
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda _s, _f: reload_all())
