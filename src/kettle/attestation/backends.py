"""TEE backends: where a service gets evidence that binds 64 bytes of report data to its code.

Every backend implements :class:`EvidenceProvider`. ``simulation`` is the only one
that can run on machines without TEE hardware; it is loudly labelled everywhere
and verifiers refuse it unless simulation is explicitly allowed. The real
backends (Gramine-SGX ``/dev/attestation``, Linux configfs-tsm for TDX and
SEV-SNP, ``spec/attestation.md`` §6) implement the same interface in
:mod:`kettle.attestation.providers`.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AttestationError, ConfigError
from .quote import DEBUG_FLAG, INIT_FLAG, MODE64BIT_FLAG, QUOTE_BODY_SIZE, QuoteBody

log = logging.getLogger(__name__)

SIMULATION = "simulation"


@dataclass(frozen=True)
class SnpCertificate:
    """One certificate the host supplied with an SNP report (``vcek``, ``vlek``, ``ask``, ``ark``)."""

    kind: str
    der: bytes


@dataclass(frozen=True)
class Evidence:
    tee_type: str
    """The evidence kind: ``simulation``, ``sev-snp`` (an SNP report), ``tdx`` or ``sgx`` (DCAP quotes)."""
    quote: bytes
    source: str = SIMULATION
    """Which interface produced it (``configfs-tsm /sys/kernel/config/tsm/report``, ``gramine /dev/attestation``)."""
    certificates: tuple[SnpCertificate, ...] = ()
    """Certificates the host supplied alongside (the SNP certificate table); empty when it supplied none."""


class EvidenceProvider(Protocol):
    """What a service needs from its TEE."""

    tee_type: str

    def evidence(self, report_data: bytes) -> Evidence:
        """Fresh evidence whose report data is exactly these 64 bytes."""
        ...

    def sealing_key(self, purpose: str) -> bytes:
        """A 32-byte key only this code identity (signer + service) can derive on this platform."""
        ...


def simulation_dir(home: Path) -> Path:
    return home / "simulation"


def create_simulation_platform(home: Path) -> None:
    """Create the simulated CPU's secrets (quote-signing key and sealing root) if absent."""
    directory = simulation_dir(home)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = directory / "platform_key.pem"
    if not key_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
        (directory / "platform_key.pub.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ))
    seal_path = directory / "seal_root"
    if not seal_path.exists():
        _write_private(seal_path, os.urandom(32))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class SimulationBackend:
    """A software 'TEE': quotes signed by a simulated platform key kept in ``$KETTLE_HOME/simulation``.

    It gives no protection at all against whoever controls the machine; it exists
    so the whole trust path (evidence, AS, reports, attested TLS) runs for real.
    """

    tee_type = SIMULATION

    def __init__(self, home: Path, mr_enclave: bytes, mr_signer: bytes, service: str) -> None:
        directory = simulation_dir(home)
        try:
            self._key = serialization.load_pem_private_key(
                (directory / "platform_key.pem").read_bytes(), password=None
            )
            self._seal_root = (directory / "seal_root").read_bytes()
        except FileNotFoundError as exc:
            raise ConfigError(f"simulation platform is not initialised ({exc.filename} missing)") from None
        self._mr_enclave = mr_enclave
        self._mr_signer = mr_signer
        self._service = service
        log.warning("TEE backend is SIMULATION: no hardware protection, for development only")

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report data must be exactly 64 bytes")
        body = QuoteBody(
            mr_enclave=self._mr_enclave,
            mr_signer=self._mr_signer,
            report_data=report_data,
            # Simulation is a debug environment by definition (spec/attestation.md §7.8).
            attributes_flags=INIT_FLAG | DEBUG_FLAG | MODE64BIT_FLAG,
        ).to_bytes()
        assert isinstance(self._key, ec.EllipticCurvePrivateKey)
        signature = self._key.sign(body, ec.ECDSA(hashes.SHA256()))
        return Evidence(SIMULATION, body + struct.pack("<I", len(signature)) + signature)

    def sealing_key(self, purpose: str) -> bytes:
        # Bound to the signer and the service, not to MRENCLAVE, so that an audited
        # code update can still open what the previous version sealed (SGX MRSIGNER policy).
        info = b"kettle-seal-v1\0" + self._mr_signer + self._service.encode() + b"\0" + purpose.encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._seal_root)


def verify_simulation_quote(quote: bytes, platform_public_key: ec.EllipticCurvePublicKey) -> QuoteBody:
    """Check a simulated quote's platform signature; return its body."""
    if len(quote) < QUOTE_BODY_SIZE + 4:
        raise AttestationError("simulation quote is truncated")
    body = quote[:QUOTE_BODY_SIZE]
    (sig_len,) = struct.unpack_from("<I", quote, QUOTE_BODY_SIZE)
    signature = quote[QUOTE_BODY_SIZE + 4:]
    if sig_len != len(signature):
        raise AttestationError("simulation quote signature length does not match")
    try:
        platform_public_key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AttestationError("simulation quote signature is invalid") from None
    return QuoteBody.parse(body)


def load_simulation_platform_key(home: Path) -> ec.EllipticCurvePublicKey:
    path = simulation_dir(home) / "platform_key.pub.pem"
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"simulation platform key {path} is missing") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError("simulation platform key must be an EC key")
    return key
