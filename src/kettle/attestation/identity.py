"""A service's attested identity: a fresh P-256 key and the AS-issued certificate for it.

At start and at half of each certificate's validity the service makes a new key,
asks its TEE for evidence binding the key (REPORT_DATA = X || Y), and trades the
evidence and a CSR for a certificate at the attestation service. The AS endpoint
is reached over TLS pinned to the AS root only.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import AttestationError, Unavailable
from .backends import EvidenceProvider
from .certificates import report_data_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    service: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    """Served to clients; Teaclave's report extension format."""
    client_certificate: x509.Certificate
    """Presented to peer services; same key and report, compact encoding."""
    chain: tuple[x509.Certificate, ...]
    generation: int

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.certificate, *self.chain))

    @property
    def client_chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.client_certificate, *self.chain))

    @property
    def refresh_at(self) -> datetime:
        """Half of the validity: rotate well before anyone could see the certificate expire."""
        start, end = self.certificate.not_valid_before_utc, self.certificate.not_valid_after_utc
        return start + (end - start) / 2


def as_tls_context(as_root: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(as_root))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def request_certificate(
    service_url: str, as_root: Path, service: str, provider: EvidenceProvider, generation: int,
    timeout: float = 10.0,
) -> Identity:
    """One round of attestation: new key, evidence, CSR, certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    evidence = provider.evidence(report_data_for(key.public_key()))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"teaclave_{service}_service")]))
        .sign(key, hashes.SHA256())
    )
    body = json.dumps(
        {
            "service": service,
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "tee_type": evidence.tee_type,
            "evidence": base64.b64encode(evidence.quote).decode(),
            # The SNP certificate table the host supplied (the VCEK the report is signed with).
            "certificates": [{"kind": c.kind, "der": base64.b64encode(c.der).decode()} for c in evidence.certificates],
        }
    ).encode()
    url = urllib.parse.urlsplit(service_url)
    if url.scheme != "https" or not url.hostname:
        raise AttestationError(f"attestation service URL must be https://host:port, not {service_url!r}")
    connection = http.client.HTTPSConnection(
        url.hostname, url.port or 443, timeout=timeout, context=as_tls_context(as_root)
    )
    try:
        connection.request("POST", "/kettle/v1/certificate", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"attestation service at {service_url} is unreachable: {exc}") from None
    finally:
        connection.close()
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        doc = {}
    if response.status != 200:
        raise AttestationError(f"attestation service refused {service}: {doc.get('error', response.status)}")
    certs = x509.load_pem_x509_certificates(doc["certificate_chain"].encode())
    client_certs = x509.load_pem_x509_certificates(doc["client_certificate_chain"].encode())
    if certs[0].public_key() != key.public_key() or client_certs[0].public_key() != key.public_key():
        raise AttestationError("attestation service returned a certificate for another key")
    return Identity(service, key, certs[0], client_certs[0], tuple(certs[1:]), generation)


class IdentityManager:
    """Holds the current identity and rotates it at half validity, telling listeners."""

    def __init__(
        self,
        service: str,
        provider: EvidenceProvider,
        service_url: str,
        as_root: Path,
    ) -> None:
        self.service = service
        self._provider = provider
        self._url = service_url
        self._as_root = as_root
        self._current: Identity | None = None
        self._listeners: list[Callable[[Identity], None]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def current(self) -> Identity:
        if self._current is None:
            raise RuntimeError("identity not obtained yet")
        return self._current

    def on_rotate(self, listener: Callable[[Identity], None]) -> None:
        self._listeners.append(listener)

    async def obtain(self, attempts: int = 30, delay: float = 0.5) -> Identity:
        """First attestation; retries only while the AS is unreachable (it may still be starting)."""
        generation = 0 if self._current is None else self._current.generation + 1
        for attempt in range(attempts):
            try:
                identity = await asyncio.to_thread(
                    request_certificate, self._url, self._as_root, self.service, self._provider, generation
                )
                break
            except Unavailable:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(delay)
        self._current = identity
        log.info(
            "attested as %s: certificate %x valid until %s",
            self.service, identity.certificate.serial_number, identity.certificate.not_valid_after_utc,
        )
        for listener in self._listeners:
            listener(identity)
        return identity

    def start_rotation(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._rotate_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _rotate_forever(self) -> None:
        while True:
            wait = (self.current.refresh_at - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(wait, 0.1))
            try:
                await self.obtain(attempts=5)
            except Exception as exc:  # keep serving on the current certificate and retry soon
                log.error("certificate rotation failed, retrying in 1 s: %s", exc)
                await asyncio.sleep(1.0)
