"""The attestation service's keys and certificates, created once and kept under ``$KETTLE_HOME``.

Two roles are kept on separate keys (``spec/attestation.md`` §7.2): the
report-signing key (RSA, signs Teaclave-style reports) and the attested-service
CA key (ECDSA P-256, issues the services' TLS certificates). Both, and the AS's
own TLS certificate, sit under one self-signed root, the only file clients pin.
A simulation authority's names say SIMULATION, so its root is never mistaken for
a production one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..attestation.certificates import issue_by_root, self_signed_root
from ..errors import ConfigError

PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Authority:
    root: x509.Certificate
    report_key: rsa.RSAPrivateKey
    report_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    tls_key: ec.EllipticCurvePrivateKey
    tls_cert: x509.Certificate

    @property
    def simulation(self) -> bool:
        return "SIMULATION" in self.root.subject.rfc4514_string()


def authority_dir(home: Path) -> Path:
    return home / "attestation_service"


def _private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def create_authority(home: Path, *, simulation: bool, server_names: list[str]) -> None:
    """Create the AS hierarchy if absent and publish the root to ``trust/as_root_ca.pem``."""
    directory = authority_dir(home)
    if (directory / "root.pem").exists():
        return
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.now(UTC)
    label = "Kettle SIMULATION AS" if simulation else "Kettle AS"
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    root = self_signed_root(root_key, f"{label} root", simulation, now)
    report_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    report_cert = issue_by_root(root_key, root, report_key.public_key(), f"{label} report signing", simulation, now)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = issue_by_root(root_key, root, ca_key.public_key(), f"{label} attested-service CA", simulation, now, ca=True)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_cert = issue_by_root(
        root_key, root, tls_key.public_key(), f"{label} endpoint", simulation, now, server_names=server_names
    )
    for name, key in (("report", report_key), ("service_ca", ca_key), ("tls", tls_key)):
        _write(directory / f"{name}.key.pem", _private_pem(key), 0o600)
    for name, cert in (("report", report_cert), ("service_ca", ca_cert), ("tls", tls_cert)):
        _write(directory / f"{name}.pem", cert.public_bytes(PEM), 0o644)
    # The root key is needed only to create this hierarchy; keeping it would let a
    # thief mint a whole new hierarchy, so it is not written anywhere.
    _write(directory / "root.pem", root.public_bytes(PEM), 0o644)
    _write(directory / "tls_chain.pem", tls_cert.public_bytes(PEM) + root.public_bytes(PEM), 0o644)
    trust = home / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    _write(trust / "as_root_ca.pem", root.public_bytes(PEM), 0o644)


def load_authority(home: Path) -> Authority:
    directory = authority_dir(home)

    def cert(name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())

    def key(name: str) -> object:
        return serialization.load_pem_private_key((directory / f"{name}.key.pem").read_bytes(), password=None)

    try:
        authority = Authority(
            root=cert("root"),
            report_key=key("report"),  # type: ignore[arg-type]
            report_cert=cert("report"),
            ca_key=key("service_ca"),  # type: ignore[arg-type]
            ca_cert=cert("service_ca"),
            tls_key=key("tls"),  # type: ignore[arg-type]
            tls_cert=cert("tls"),
        )
    except FileNotFoundError as exc:
        raise ConfigError(f"attestation service is not initialised ({exc.filename} missing)") from None
    return authority
