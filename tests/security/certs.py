"""Test certificates made with the ``openssl`` CLI (no extra Python package).

:func:`make_pki` writes, under one directory: a CA, server certificates for
127.0.0.1/localhost (two, for rotation), a client certificate, an expired
client certificate (signed by the same CA, valid only in January 2020) and a
client certificate from another CA. EC P-256 keys keep it fast (~0.3 s).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pair:
    """A certificate and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Every file a TLS test needs."""

    ca: Path
    server: Pair
    server2: Pair
    client: Pair
    expired_client: Pair
    other_ca: Path
    wrong_ca_client: Pair


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl(
        "req", "-x509", *_EC, "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    return cert, key


def _leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> Pair:
    cert, key, csr, extfile = d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
    extfile.write_text(ext)
    _openssl("req", *_EC, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=d)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "30", "-extfile", str(extfile), cwd=d,
    )  # fmt: skip
    return Pair(cert, key)


SERVER_EXT = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"


def _expired(d: Path, ca: tuple[Path, Path]) -> Pair:
    """A client certificate valid only in January 2020 (``openssl ca`` sets any dates)."""
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "newcerts").mkdir()
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = newcerts\nserial = serial\n"
        "default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n"
        "[client]\nextendedKeyUsage = clientAuth\n"
    )
    key, csr, cert = d / "expired.key", d / "expired.csr", d / "expired.pem"
    _openssl("req", *_EC, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=expired-client", cwd=d)
    _openssl(
        "ca", "-batch", "-config", "ca.cnf", "-extensions", "client", "-cert", str(ca[0]), "-keyfile", str(ca[1]),
        "-startdate", "20200101000000Z", "-enddate", "20200131000000Z", "-in", str(csr), "-out", str(cert),
        "-notext", cwd=d,
    )  # fmt: skip
    return Pair(cert, key)


def make_pki(d: Path) -> Pki:
    """Writes a test PKI under ``d`` (skips the test when ``openssl`` is missing)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    d.mkdir(parents=True, exist_ok=True)
    ca = _ca(d, "ca")
    other = _ca(d, "other-ca")
    return Pki(
        ca=ca[0],
        server=_leaf(d, "server", ca, SERVER_EXT),
        server2=_leaf(d, "server2", ca, SERVER_EXT),
        client=_leaf(d, "client", ca, CLIENT_EXT),
        expired_client=_expired(d, ca),
        other_ca=other[0],
        wrong_ca_client=_leaf(d, "wrong-ca-client", other, CLIENT_EXT),
    )
