"""The attestation service's decisions, without any socket: verify evidence, sign a report, issue a certificate."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ..attestation.backends import SIMULATION, verify_simulation_quote
from ..attestation.certificates import issue_service_certificate, report_data_for
from ..attestation.enclave_info import EnclaveInfo
from ..attestation.quote import QuoteBody
from ..attestation.report import EndorsedReport, build_report
from ..config import SERVICES
from ..errors import AttestationError
from .authority import Authority

log = logging.getLogger(__name__)

MAX_EVIDENCE_BYTES = 32 * 1024


@dataclass(frozen=True)
class IssueRequest:
    service: str
    csr_pem: bytes
    tee_type: str
    evidence: bytes


@dataclass(frozen=True)
class Issued:
    """The server certificate (Teaclave profile), its compact client twin, and the CA above both."""

    certificate: x509.Certificate
    client_certificate: x509.Certificate
    chain: list[x509.Certificate]

    def chain_pem(self, *, client: bool = False) -> bytes:
        leaf = self.client_certificate if client else self.certificate
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [leaf, *self.chain])


class Issuer:
    def __init__(
        self,
        authority: Authority,
        enclave_info: Callable[[], EnclaveInfo],
        *,
        simulation_platform_key: ec.EllipticCurvePublicKey | None,
        unsafe_allow_simulation: bool,
        domain: str,
        validity: timedelta,
        issued_log: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._authority = authority
        self._enclave_info = enclave_info
        self._simulation_key = simulation_platform_key
        self._allow_simulation = unsafe_allow_simulation
        self._domain = domain
        self._validity = validity
        self._issued_log = issued_log
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def verify_evidence(self, tee_type: str, evidence: bytes) -> QuoteBody:
        if len(evidence) > MAX_EVIDENCE_BYTES:
            raise AttestationError("evidence is too large")
        if tee_type != SIMULATION:
            raise AttestationError(f"TEE type {tee_type!r} is not supported by this attestation service")
        if not self._allow_simulation or self._simulation_key is None:
            raise AttestationError("simulation evidence is refused: this attestation service does not allow simulation")
        quote = verify_simulation_quote(evidence, self._simulation_key)
        if not quote.debug:
            # Simulated evidence must always carry the debug flag, so that nothing downstream
            # can take it for a production enclave.
            raise AttestationError("simulation evidence without the debug attribute")
        return quote

    def endorse(self, quote: QuoteBody, tee_type: str, kettle_fields: dict[str, object]) -> EndorsedReport:
        fields = {"kettleTeeType": tee_type, **kettle_fields}
        if tee_type == SIMULATION:
            fields["kettleSimulation"] = True
        # Never ahead of real time: Teaclave's Rust verifier breaks on future timestamps.
        report = build_report(quote.to_bytes(), "OK", self._now() - timedelta(milliseconds=1), fields)
        signature = self._authority.report_key.sign(report, padding.PKCS1v15(), hashes.SHA256())
        return EndorsedReport(report, signature, [self._authority.report_cert.public_bytes(serialization.Encoding.DER)])

    def issue(self, request: IssueRequest) -> Issued:
        if request.service not in SERVICES:
            raise AttestationError(f"unknown service {request.service!r}")
        try:
            csr = x509.load_pem_x509_csr(request.csr_pem)
        except ValueError:
            raise AttestationError("certificate signing request is not valid PEM") from None
        if not csr.is_signature_valid:
            raise AttestationError("certificate signing request signature is invalid")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise AttestationError("certificate key must be ECDSA P-256")
        quote = self.verify_evidence(request.tee_type, request.evidence)
        if quote.report_data != report_data_for(key):
            raise AttestationError("evidence report data does not match the certificate key")
        expected = self._enclave_info().measurement(request.service)
        if (quote.mr_enclave, quote.mr_signer) != (expected.mr_enclave, expected.mr_signer):
            if quote.mr_enclave != expected.mr_enclave:
                got, want, what = quote.mr_enclave, expected.mr_enclave, "measurement"
            else:
                got, want, what = quote.mr_signer, expected.mr_signer, "signer (mr_signer)"
            raise AttestationError(
                f"{what} of {request.service} ({got.hex()}) does not match enclave info ({want.hex()})"
            )
        evidence_digest = hashlib.sha256(request.evidence).hexdigest()
        endorsed = self.endorse(
            quote,
            request.tee_type,
            {"kettleService": request.service, "kettleEvidenceDigest": evidence_digest},
        )
        certificate, client_certificate = (
            issue_service_certificate(
                self._authority.ca_key,
                self._authority.ca_cert,
                key,
                request.service,
                quote.mr_enclave,
                endorsed,
                self._domain,
                request.tee_type == SIMULATION,
                self._now(),
                self._validity,
                compact=compact,
            )
            for compact in (False, True)
        )
        self._record(request.service, certificate, quote, evidence_digest)
        return Issued(certificate, client_certificate, [self._authority.ca_cert])

    def _record(self, service: str, cert: x509.Certificate, quote: QuoteBody, evidence_digest: str) -> None:
        """Append-only log of every issued certificate, for audit (``spec/attestation.md`` §7.9)."""
        line = json.dumps(
            {
                "time": self._now().isoformat(),
                "service": service,
                "serial": format(cert.serial_number, "x"),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "mr_enclave": quote.mr_enclave.hex(),
                "evidence_sha256": evidence_digest,
            }
        )
        log.info("issued certificate %s for %s", format(cert.serial_number, "x"), service)
        if self._issued_log is not None:
            with self._issued_log.open("a") as f:
                f.write(line + "\n")
