"""``enclave_info.toml``: the auditor-signed list of each service's measurement.

Format and signatures as Teaclave (``spec/attestation.md`` §4): one table per
service named ``teaclave_<service>_service`` with lowercase-hex ``mr_enclave`` and
``mr_signer``; each auditor signs the exact file bytes with RSA PKCS#1 v1.5 /
SHA-256 into ``<auditor>.sign.sha256`` beside the file. Kettle is stricter than
the reference: it requires ``threshold`` valid signatures from *distinct* known
auditors (zero signatures never pass, a repeated signature counts once).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import AttestationError

_HEX64 = re.compile(r"[0-9a-f]{64}")
SIGNATURE_SUFFIX = ".sign.sha256"
PUBLIC_KEY_SUFFIX = ".public.pem"


def table_name(service: str) -> str:
    return f"teaclave_{service}_service"


@dataclass(frozen=True)
class Measurement:
    mr_enclave: bytes
    mr_signer: bytes


@dataclass(frozen=True)
class EnclaveInfo:
    """Measurements by service name (``authentication``, not the table name)."""

    services: dict[str, Measurement]

    def services_matching(self, mr_enclave: bytes, mr_signer: bytes) -> list[str]:
        return sorted(
            name
            for name, m in self.services.items()
            if m.mr_enclave == mr_enclave and m.mr_signer == mr_signer
        )

    def measurement(self, service: str) -> Measurement:
        try:
            return self.services[service]
        except KeyError:
            raise AttestationError(f"enclave info has no entry for service {service!r}") from None

    @classmethod
    def parse(cls, data: bytes) -> EnclaveInfo:
        try:
            doc = tomllib.loads(data.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise AttestationError(f"enclave info is not valid TOML: {exc}") from None
        services: dict[str, Measurement] = {}
        for table, entry in doc.items():
            match = re.fullmatch(r"teaclave_(\w+)_service", table)
            if not match or not isinstance(entry, dict):
                raise AttestationError(f"enclave info has an unexpected entry [{table}]")
            values = []
            for key in ("mr_enclave", "mr_signer"):
                value = entry.get(key)
                if not isinstance(value, str) or not _HEX64.fullmatch(value):
                    raise AttestationError(f"[{table}] {key} must be 64 lowercase hex characters")
                values.append(bytes.fromhex(value))
            services[match.group(1)] = Measurement(*values)
        return cls(services)

    def render(self) -> bytes:
        lines = []
        for name in sorted(self.services):
            m = self.services[name]
            lines += [
                f"[{table_name(name)}]",
                f'mr_enclave = "{m.mr_enclave.hex()}"',
                f'mr_signer = "{m.mr_signer.hex()}"',
                "",
            ]
        return "\n".join(lines).encode()


def sign_enclave_info(data: bytes, key: rsa.RSAPrivateKey) -> bytes:
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def count_valid_signatures(
    data: bytes, signatures: list[bytes], auditors: dict[str, rsa.RSAPublicKey]
) -> set[str]:
    """Names of the distinct auditor *keys* that signed ``data`` among ``signatures``.

    One key listed under two names counts once (by its first name in sorted order),
    so a threshold cannot be met by renaming an auditor.
    """
    by_key: dict[bytes, str] = {}
    for name in sorted(auditors):
        der = auditors[name].public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
        by_key.setdefault(der, name)
    signed: set[str] = set()
    for signature in signatures:
        for name in by_key.values():
            try:
                auditors[name].verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            except (InvalidSignature, ValueError):
                continue
            signed.add(name)
    return signed


def verify_enclave_info(
    data: bytes, signatures: list[bytes], auditors: dict[str, rsa.RSAPublicKey], threshold: int
) -> EnclaveInfo:
    """Parse ``data`` only if at least ``threshold`` distinct known auditors signed it."""
    if threshold < 1:
        raise AttestationError("auditor threshold must be at least 1")
    signed = count_valid_signatures(data, signatures, auditors)
    if len(signed) < threshold:
        raise AttestationError(
            f"enclave info has {len(signed)} valid auditor signature(s), {threshold} required"
            + (f" (valid: {', '.join(sorted(signed))})" if signed else "")
        )
    return EnclaveInfo.parse(data)


def signatures_beside(path: Path) -> list[bytes]:
    """Every ``*.sign.sha256`` file in the enclave info's directory."""
    return [p.read_bytes() for p in sorted(path.parent.glob("*" + SIGNATURE_SUFFIX))]


def auditor_keys_beside(path: Path) -> dict[str, rsa.RSAPublicKey]:
    """The auditor public keys a client keeps beside enclave info (``<name>.public.pem``)."""
    keys: dict[str, rsa.RSAPublicKey] = {}
    for p in sorted(path.parent.glob("*" + PUBLIC_KEY_SUFFIX)):
        key = serialization.load_pem_public_key(p.read_bytes())
        if not isinstance(key, rsa.RSAPublicKey):
            raise AttestationError(f"auditor key {p.name} is not an RSA public key")
        keys[p.name.removesuffix(PUBLIC_KEY_SUFFIX)] = key
    return keys


def load_enclave_info(
    path: Path, auditors: dict[str, rsa.RSAPublicKey], threshold: int
) -> EnclaveInfo:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AttestationError(f"enclave info {path} is missing") from None
    return verify_enclave_info(data, signatures_beside(path), auditors, threshold)
