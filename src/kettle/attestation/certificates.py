"""X.509 recipes: the attestation service's CA hierarchy and the attested service certificate.

Hierarchy (``spec/attestation.md`` §7.2, §7.4)::

    AS root (self-signed; the file clients pin: trust/as_root_ca.pem)
     ├── report-signing certificate (RSA-3072; signs reports, PKCS#1 v1.5 SHA-256)
     ├── attested-service CA (ECDSA P-256; issues the services' short-lived certificates)
     └── AS TLS certificate (the AS's own HTTPS endpoint)

Attested service certificates carry the Teaclave report extension FIRST, so
Teaclave's Python SDK (which reads ``extensions[0]``) accepts them, then the
usual constraints, a SAN with the service name and the measurement name, SKI and
AKI (OpenSSL strict mode requires AKI).
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .report import REPORT_EXTENSION_OID, EndorsedReport

SIMULATION_LABEL = "SIMULATION - not a TEE"


def _name(common_name: str, simulation: bool) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if simulation:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, SIMULATION_LABEL))
    return x509.Name(attributes)


def measurement_dns_name(mr_enclave: bytes, domain: str) -> str:
    """``<h[0:32]>.<h[32:64]>.mre.<domain>``: DNS labels stop at 63 characters, so the digest is split."""
    h = mr_enclave.hex()
    return f"{h[:32]}.{h[32:]}.mre.{domain}"


def service_dns_name(service: str, domain: str) -> str:
    return f"{service.replace('_', '-')}.{domain}"


def self_signed_root(key: rsa.RSAPrivateKey, common_name: str, simulation: bool, now: datetime) -> x509.Certificate:
    name = _name(common_name, simulation)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def issue_by_root(
    root_key: rsa.RSAPrivateKey,
    root: x509.Certificate,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    common_name: str,
    simulation: bool,
    now: datetime,
    *,
    ca: bool = False,
    server_names: list[str] | None = None,
) -> x509.Certificate:
    """A long-lived certificate directly under the AS root (report signer, service CA, AS TLS)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, simulation))
        .issuer_name(root.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
    if server_names:
        sans: list[x509.GeneralName] = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(root_key, hashes.SHA256())


def issue_service_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    service: str,
    mr_enclave: bytes,
    endorsed: EndorsedReport,
    domain: str,
    simulation: bool,
    now: datetime,
    validity: timedelta,
    *,
    compact: bool = False,
    extra: tuple[x509.UnrecognizedExtension, ...] = (),
) -> x509.Certificate:
    """The short-lived attested certificate of one service instance (profile A).

    ``compact`` makes the client-authentication twin, whose report extension uses
    base64 instead of integer arrays (see :meth:`EndorsedReport.to_extension_value`).
    ``extra`` extensions (non-critical) come last, e.g. the raw TEE evidence.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(f"teaclave_{service}_service", simulation))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(seconds=60))
        .not_valid_after(now + validity)
        # FIRST: Teaclave's Python SDK reads extensions[0].
        .add_extension(x509.UnrecognizedExtension(REPORT_EXTENSION_OID, endorsed.to_extension_value(compact=compact)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(service_dns_name(service, domain)),
                    x509.DNSName(measurement_dns_name(mr_enclave, domain)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def report_data_for(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """REPORT_DATA = X || Y of the uncompressed P-256 point (no 0x04, no hashing)."""
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError("attested keys must be P-256")
    numbers = public_key.public_numbers()
    return numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")
