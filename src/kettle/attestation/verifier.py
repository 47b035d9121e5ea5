"""Kettle's verifier of attested certificates: strict where Teaclave's clients are lax.

``Verifier.examine`` runs every check on a service certificate and returns a
:class:`Verdict` listing each check with its outcome and reason (what
``kettle attest`` prints); ``Verifier.verify`` returns the attested peer or raises
:class:`AttestationError` with the first failing reason. Differences from the
reference's clients (``spec/attestation.md`` §1.5, §7.6, §7.9):

* only the pinned AS root is a trust anchor; certificates carried in the report
  extension are untrusted intermediates (closes Teaclave's trust-anchor injection);
* quote status must be accepted by policy (``OK`` by default), the report must be
  fresh, the leaf must be within its validity, debug enclaves are refused;
* simulation evidence is refused unless simulation is explicitly allowed
  (``unsafe_allow_simulation``), which logs loudly; so is evidence the AS verified
  under test hardware roots (``kettleUnsafeTestRoots``) unless test roots are
  explicitly allowed (``unsafe_allow_test_roots``).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..errors import AttestationError
from .enclave_info import EnclaveInfo
from .quote import QuoteBody
from .report import EndorsedReport, ReportContent

log = logging.getLogger(__name__)

MAX_CHAIN_DEPTH = 4


@dataclass(frozen=True)
class AttestedPeer:
    """What a verified certificate proves about the peer holding its key."""

    service: str
    mr_enclave: bytes
    mr_signer: bytes
    tee_type: str
    simulation: bool
    status: str
    test_roots: bool
    report_time: datetime
    not_after: datetime
    quote: QuoteBody
    certificate: x509.Certificate


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)
    peer: AttestedPeer | None = None

    @property
    def ok(self) -> bool:
        return self.peer is not None and all(c.ok for c in self.checks)

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if not c.ok]
        return failed[0].detail if failed else "verified"


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def chain_to_root(
    cert: x509.Certificate, intermediates: Collection[x509.Certificate], root: x509.Certificate, now: datetime
) -> str | None:
    """None if ``cert`` chains to ``root`` (the only anchor) through CA ``intermediates``; else why not."""
    current = cert
    for _ in range(MAX_CHAIN_DEPTH):
        if not _valid_at(current, now):
            return f"certificate {current.subject.rfc4514_string()} is outside its validity period"
        if verify_issued_by(current, root):
            return None
        issuer = next(
            (c for c in intermediates if c != current and _is_ca(c) and verify_issued_by(current, c)), None
        )
        if issuer is None:
            return f"certificate {current.subject.rfc4514_string()} does not chain to the pinned AS root"
        current = issuer
    return "certificate chain is too long"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def report_signer_problem(signer: x509.Certificate, root: x509.Certificate, now: datetime) -> str | None:
    """None if ``signer`` holds the report-signing role; else why not.

    The role is kept apart from the AS's other keys (its TLS endpoint key, the
    attested-service CA): a report signer is an RSA end-entity certificate issued
    directly by the pinned root and not usable for TLS. The chain certificates in
    the report extension play no part: only the pinned root is trusted.
    """
    name = signer.subject.rfc4514_string()
    if not verify_issued_by(signer, root):
        return f"report signing certificate {name} does not chain to the pinned AS root"
    if not _valid_at(signer, now):
        return f"report signing certificate {name} is outside its validity period"
    key = signer.public_key()
    if _is_ca(signer) or not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        return f"certificate {name} is not a report signing certificate"
    try:
        usages = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if ExtendedKeyUsageOID.SERVER_AUTH in usages or ExtendedKeyUsageOID.CLIENT_AUTH in usages:
        return f"certificate {name} is a TLS certificate, not a report signing certificate"
    return None


def _verify_report_signature(signer: x509.Certificate, report: bytes, signature: bytes) -> bool:
    """RSA PKCS#1 v1.5 / SHA-256, the only report signature Teaclave's verifiers accept."""
    key = signer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, report, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def leaf_report_data(cert: x509.Certificate) -> bytes | None:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point[1:]


class Verifier:
    def __init__(
        self,
        as_root: x509.Certificate,
        enclave_info: EnclaveInfo,
        *,
        unsafe_allow_simulation: bool = False,
        unsafe_allow_test_roots: bool = False,
        accepted_statuses: Collection[str] = ("OK",),
        max_report_age: timedelta = timedelta(seconds=3600),
        clock_skew: timedelta = timedelta(seconds=60),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.as_root = as_root
        self.enclave_info = enclave_info
        self.unsafe_allow_simulation = unsafe_allow_simulation
        self.unsafe_allow_test_roots = unsafe_allow_test_roots
        self.accepted_statuses = frozenset(accepted_statuses)
        self.max_report_age = max_report_age
        self.clock_skew = clock_skew
        self._clock = clock
        if unsafe_allow_simulation:
            log.warning("UNSAFE: simulation evidence is accepted; nothing here runs in a real TEE")
        if unsafe_allow_test_roots:
            log.warning("UNSAFE: evidence verified under TEST hardware roots is accepted; it proves nothing about real hardware")

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def at(self, moment: datetime) -> Verifier:
        """The same trust and policy, judging as of ``moment``: a signature made with a
        certificate is checked against the certificate's validity when it signed, so
        it stays verifiable after the short-lived certificate expired."""
        pinned = copy.copy(self)
        timestamp = moment.timestamp()
        pinned._clock = lambda: timestamp
        return pinned

    def verify(
        self,
        certificate: x509.Certificate | bytes,
        *,
        expected_services: Collection[str] | None = None,
        intermediates: Collection[x509.Certificate] = (),
    ) -> AttestedPeer:
        verdict = self.examine(certificate, expected_services=expected_services, intermediates=intermediates)
        if not verdict.ok:
            raise AttestationError(verdict.reason)
        assert verdict.peer is not None
        return verdict.peer

    def examine(
        self,
        certificate: x509.Certificate | bytes,
        *,
        expected_services: Collection[str] | None = None,
        intermediates: Collection[x509.Certificate] = (),
    ) -> Verdict:
        """Run every check; stop at the first structural failure, report each policy outcome."""
        verdict = Verdict()
        checks = verdict.checks
        now = self.now()

        def fail(name: str, detail: str) -> Verdict:
            checks.append(Check(name, False, detail))
            return verdict

        if isinstance(certificate, bytes):
            try:
                certificate = x509.load_der_x509_certificate(certificate)
            except ValueError:
                return fail("certificate", "peer certificate is not valid DER")
        cert = certificate
        if cert.not_valid_after_utc < now:
            return fail("certificate validity", f"certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
        if cert.not_valid_before_utc > now + self.clock_skew:
            return fail("certificate validity", "certificate is not yet valid")
        checks.append(Check("certificate validity", True, f"valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"))
        if intermediates:
            problem = chain_to_root(cert, intermediates, self.as_root, now)
            if problem:
                return fail("certificate chain", problem)
            checks.append(Check("certificate chain", True, "issued under the pinned AS root"))

        try:
            endorsed = EndorsedReport.from_certificate(cert)
            signer = x509.load_der_x509_certificate(endorsed.certs[0])
        except AttestationError as exc:
            return fail("report extension", exc.reason)
        except ValueError:
            return fail("report extension", "report signing certificate is not valid DER")
        problem = report_signer_problem(signer, self.as_root, now)
        if problem:
            return fail("report signer", problem)
        checks.append(Check("report signer", True, f"{signer.subject.rfc4514_string()} is issued by the pinned AS root"))
        if not _verify_report_signature(signer, endorsed.report, endorsed.signature):
            return fail("report signature", "report signature is invalid")
        checks.append(Check("report signature", True, "signed by the attestation service"))

        try:
            content = ReportContent.parse(endorsed.report)
            quote = QuoteBody.parse(content.quote_body)
        except AttestationError as exc:
            return fail("report content", exc.reason)

        report_data = leaf_report_data(cert)
        if report_data is None:
            return fail("report data", "certificate key is not an ECDSA P-256 key")
        if report_data != quote.report_data:
            return fail("report data", "report data does not match the certificate's public key")
        checks.append(Check("report data", True, "bound to the certificate's public key"))

        matches = self.enclave_info.services_matching(quote.mr_enclave, quote.mr_signer)
        service = matches[0] if len(matches) == 1 else (content.service if content.service in matches else None)
        verdict.peer = AttestedPeer(
            service=service or "",
            mr_enclave=quote.mr_enclave,
            mr_signer=quote.mr_signer,
            tee_type=content.tee_type,
            simulation=content.simulation,
            status=content.status,
            test_roots=content.raw.get("kettleUnsafeTestRoots") is not None,
            report_time=content.timestamp,
            not_after=cert.not_valid_after_utc,
            quote=quote,
            certificate=cert,
        )
        for check in self._policies(verdict.peer, content, matches, expected_services, now):
            checks.append(check)
        return verdict

    def _policies(
        self,
        peer: AttestedPeer,
        content: ReportContent,
        matches: list[str],
        expected: Collection[str] | None,
        now: datetime,
    ) -> list[Check]:
        checks = []
        if peer.status in self.accepted_statuses:
            checks.append(Check("quote status", True, peer.status))
        else:
            checks.append(Check("quote status", False, f"quote status {peer.status} is not accepted"))

        age = now - peer.report_time
        if age < -self.clock_skew:
            checks.append(Check("report age", False, "report timestamp is in the future"))
        elif age > self.max_report_age + self.clock_skew:
            checks.append(Check("report age", False, f"report is {int(age.total_seconds())} s old, older than {int(self.max_report_age.total_seconds())} s"))
        else:
            checks.append(Check("report age", True, f"{max(0, int(age.total_seconds()))} s old"))

        if peer.simulation and not self.unsafe_allow_simulation:
            checks.append(Check("tee", False, "simulation evidence is not accepted (not a TEE); allow simulation explicitly for development"))
        elif peer.simulation:
            checks.append(Check("tee", True, "SIMULATION (not a TEE), accepted because simulation is explicitly allowed"))
        elif peer.test_roots and not self.unsafe_allow_test_roots:
            checks.append(Check("tee", False, f"{peer.tee_type} evidence was verified under TEST hardware roots (unsafe_test_roots), not the vendor's: it proves nothing about real hardware"))
        elif peer.test_roots:
            checks.append(Check("tee", True, f"{peer.tee_type} under TEST hardware roots, accepted because test roots are explicitly allowed"))
        else:
            checks.append(Check("tee", True, peer.tee_type))

        if peer.quote.debug and not (peer.simulation and self.unsafe_allow_simulation):
            checks.append(Check("debug", False, "the enclave runs in debug mode"))

        if not matches:
            wanted = f" for {', '.join(sorted(expected))}" if expected else ""
            checks.append(Check("measurement", False, f"measurement {peer.mr_enclave.hex()} does not match enclave info{wanted}"))
        elif expected is not None and peer.service not in expected:
            checks.append(Check("measurement", False, f"peer is {peer.service or ' or '.join(matches)}, expected {' or '.join(sorted(expected))}"))
        else:
            checks.append(Check("measurement", True, f"{peer.service}: mr_enclave {peer.mr_enclave.hex()}"))
        return checks
