"""Signatures made with a service's attested identity key, verifiable offline.

A service signs bytes with the P-256 key its attested certificate certifies and
bundles the certificate chain in force when it signed (leaf, then the
attested-service CA). The leaf already carries the AS-signed attestation report
(the report extension), so the bundle is self-contained: a verifier needs only
what a client already trusts, the pinned AS root and the auditor-signed enclave
info (:class:`~kettle.sdk.attested.ClientTrust` loads both), and no network.

What is signed is not the payload alone but a small canonical statement,
``kettle attested signature v1\\n`` followed by the compact, key-sorted JSON of
``{"payload_sha256", "purpose", "signed_at"}``:

* ``purpose`` separates uses of the same key (a TLS handshake, an execution
  receipt, a trail head): a signature made for one purpose never verifies for
  another;
* ``signed_at`` (UTC, microseconds) is when the service signed. Certificates
  live for ``attestation_validity_secs`` (an hour by default) and rotate at half
  of it, so verification judges the certificate, the report and its age **as of
  the signing time**, not "now": a signature stays verifiable after its
  certificate expired, as long as the verifier still trusts the AS root that
  issued it and enclave info that still lists the signer's measurement (keep the
  enclave info in force when a signature was made to verify it after an audited
  code update). A signing time in the verifier's future is refused.

:func:`examine_signature` returns every check with its reason, in the style of
:meth:`~kettle.attestation.verifier.Verifier.examine`; :func:`verify_signature`
refuses with the first failing reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import AttestationError
from .identity import Identity
from .verifier import AttestedPeer, Check, Verifier

STATEMENT_PREFIX = b"kettle attested signature v1\n"
MAX_PURPOSE_CHARS = 128
MAX_CERTIFICATES = 4
MAX_CERTIFICATE_BYTES = 16 * 1024
MAX_SIGNATURE_BYTES = 80
"""A DER ECDSA P-256 signature is at most 72 bytes."""
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TIME_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def format_time(moment: datetime) -> str:
    """UTC with exactly six fraction digits and a ``Z``: one spelling per instant."""
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: Any, what: str = "time") -> datetime:
    if not isinstance(text, str) or not _TIME_PATTERN.fullmatch(text):
        raise AttestationError(f"{what} must be UTC like 2026-01-31T12:00:00.000000Z")
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise AttestationError(f"{what} {text!r} is not a valid time") from None


def signing_statement(purpose: str, signed_at: datetime, payload: bytes) -> bytes:
    """The exact bytes the identity key signs (see the module docstring)."""
    statement = {
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "purpose": purpose,
        "signed_at": format_time(signed_at),
    }
    return STATEMENT_PREFIX + json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class AttestedSignature:
    """A signature over a payload (kept elsewhere) and the chain that vouches for its key."""

    purpose: str
    signed_at: datetime
    signature: bytes
    """DER-encoded ECDSA P-256 / SHA-256 over :func:`signing_statement`."""
    certificates: tuple[x509.Certificate, ...]
    """The signer's attested certificate first, then the CA certificate(s) up to (not including) the AS root."""

    def to_json(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "signed_at": format_time(self.signed_at),
            "signature": base64.b64encode(self.signature).decode(),
            "certificates": [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in self.certificates
            ],
        }

    @classmethod
    def from_json(cls, doc: Any) -> AttestedSignature:
        """Decode strictly; every shape error is an :class:`AttestationError` naming the field."""
        if not isinstance(doc, dict) or set(doc) != {"purpose", "signed_at", "signature", "certificates"}:
            raise AttestationError("signature must have exactly purpose, signed_at, signature and certificates")
        purpose = doc["purpose"]
        if not isinstance(purpose, str) or not 0 < len(purpose) <= MAX_PURPOSE_CHARS:
            raise AttestationError(f"signature purpose must be 1 to {MAX_PURPOSE_CHARS} characters")
        signature = _unb64(doc["signature"], "signature", MAX_SIGNATURE_BYTES)
        certs = doc["certificates"]
        if not isinstance(certs, list) or not 0 < len(certs) <= MAX_CERTIFICATES:
            raise AttestationError(f"signature must carry 1 to {MAX_CERTIFICATES} certificates")
        certificates = []
        for i, text in enumerate(certs):
            der = _unb64(text, f"certificate {i}", MAX_CERTIFICATE_BYTES)
            try:
                certificates.append(x509.load_der_x509_certificate(der))
            except ValueError:
                raise AttestationError(f"certificate {i} of the signature is not a DER certificate") from None
        return cls(purpose, parse_time(doc["signed_at"], "signed_at"), signature, tuple(certificates))


def _unb64(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * limit:
        raise AttestationError(f"{what} must be base64 text of at most {limit} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AttestationError(f"{what} is not valid base64") from None
    if not data or len(data) > limit:
        raise AttestationError(f"{what} must be 1 to {limit} bytes")
    return data


def sign(identity: Identity, purpose: str, payload: bytes, *, now: datetime | None = None) -> AttestedSignature:
    """Sign ``payload`` for ``purpose`` with the identity's attested key, now.

    ``identity`` is one consistent snapshot (key, certificate and chain of the same
    generation; :attr:`IdentityManager.current` swaps them together on rotation).
    The compact client certificate is bundled: the same key and report as the
    server certificate, a third of its size.
    """
    if not 0 < len(purpose) <= MAX_PURPOSE_CHARS:
        raise AttestationError(f"signature purpose must be 1 to {MAX_PURPOSE_CHARS} characters")
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    leaf = identity.client_certificate
    if not leaf.not_valid_before_utc <= moment <= leaf.not_valid_after_utc:
        raise AttestationError(f"the {identity.service} service's certificate is not valid at {format_time(moment)}")
    signature = identity.key.sign(signing_statement(purpose, moment, payload), ec.ECDSA(hashes.SHA256()))
    return AttestedSignature(purpose, moment, signature, (leaf, *identity.chain))


@dataclass
class SignatureVerdict:
    """Every check of one attested signature, in order; ``reason`` is the first failure."""

    checks: list[Check] = field(default_factory=list)
    signer: AttestedPeer | None = None

    @property
    def ok(self) -> bool:
        return self.signer is not None and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if not c.ok]
        return failed[0].detail if failed else "verified"


def examine_signature(
    signed: AttestedSignature,
    payload: bytes,
    *,
    purpose: str,
    expected_service: str,
    verifier: Verifier,
) -> SignatureVerdict:
    """Run every check: purpose, signing time, the signer's attestation as of the signing
    time (chain to the pinned AS root only, report, measurement of ``expected_service`` in
    enclave info), and the signature itself. Stops early only where later checks would
    have nothing to look at."""
    verdict = SignatureVerdict()
    checks = verdict.checks
    if signed.purpose == purpose:
        checks.append(Check("purpose", True, purpose))
    else:
        checks.append(Check("purpose", False, f"signed for {signed.purpose!r}, not {purpose!r}"))

    now = verifier.now()
    if signed.signed_at > now + verifier.clock_skew:
        checks.append(Check("signing time", False, f"signing time {format_time(signed.signed_at)} is in the future"))
    else:
        checks.append(Check("signing time", True, format_time(signed.signed_at)))

    leaf, intermediates = signed.certificates[0], signed.certificates[1:]
    if not intermediates:
        checks.append(Check("certificate chain", False, "the signature carries no chain to the AS root"))
        return verdict
    attested = verifier.at(signed.signed_at).examine(
        leaf, expected_services={expected_service}, intermediates=intermediates
    )
    checks.extend(attested.checks)
    if attested.peer is None:
        return verdict
    verdict.signer = attested.peer

    key = leaf.public_key()
    try:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        key.verify(signed.signature, signing_statement(signed.purpose, signed.signed_at, payload),
                   ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        checks.append(Check("signature", False, "the signature does not match the signed content and the certificate's key"))
    else:
        checks.append(Check("signature", True, f"made by the attested {attested.peer.service} service"))
    return verdict


def verify_signature(
    signed: AttestedSignature,
    payload: bytes,
    *,
    purpose: str,
    expected_service: str,
    verifier: Verifier,
) -> AttestedPeer:
    """The attested signer, or :class:`AttestationError` with the first failing reason."""
    verdict = examine_signature(signed, payload, purpose=purpose, expected_service=expected_service, verifier=verifier)
    if not verdict.ok:
        raise AttestationError(verdict.reason)
    assert verdict.signer is not None
    return verdict.signer
