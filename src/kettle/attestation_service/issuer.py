"""The attestation service's decisions, without any socket: verify evidence, sign a report, issue a certificate.

Evidence is verified by kind (``docs/attestation.md``, "Real TEE evidence at the
attestation service"): ``simulation`` with the simulated platform key; ``sev-snp``
with :func:`~kettle.attestation.snp.examine_snp_report` and ``tdx``/``sgx`` with
:func:`~kettle.attestation.dcap.examine_dcap_quote`, each against the presenting key's
report data and the service's measurements of that kind in enclave info. For real
evidence the report carries a synthesised quote body whose MRENCLAVE is the enclave
info digest of those measurements (what Teaclave's clients compare), never with the
debug attribute, and the server certificate carries the raw evidence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ..attestation.backends import SIMULATION, SnpCertificate, verify_simulation_quote
from ..attestation.certificates import issue_service_certificate, report_data_for
from ..attestation.collateral import CollateralSource
from ..attestation.dcap import DcapPolicy, SgxReport, examine_dcap_quote, parse_quote
from ..attestation.enclave_info import EnclaveInfo
from ..attestation.evidence_extension import EVIDENCE_EXTENSION_OID, CarriedEvidence
from ..attestation.quote import QuoteBody
from ..attestation.snp import SIGNING_KEY_VLEK, SnpPolicy, SnpRoots, examine_snp_report
from ..attestation.report import EndorsedReport, build_report
from ..config import SERVICES
from ..errors import AttestationError
from .authority import Authority

log = logging.getLogger(__name__)

MAX_EVIDENCE_BYTES = 32 * 1024
MAX_EVIDENCE_CERTIFICATES = 4
SEV_SNP, TDX, SGX = "sev-snp", "tdx", "sgx"
REAL_KINDS = (SEV_SNP, TDX, SGX)

# The IAS/DCAP-AS status a Teaclave-style report states for a DCAP TCB status the policy accepted.
DCAP_REPORT_STATUS = {
    "UpToDate": "OK",
    "SWHardeningNeeded": "SW_HARDENING_NEEDED",
    "ConfigurationNeeded": "CONFIGURATION_NEEDED",
    "ConfigurationAndSWHardeningNeeded": "CONFIGURATION_AND_SW_HARDENING_NEEDED",
    "OutOfDate": "OUT_OF_DATE",
    "OutOfDateConfigurationNeeded": "OUT_OF_DATE_CONFIGURATION_NEEDED",
}


@dataclass(frozen=True)
class TeePolicy:
    """How real evidence is judged: vendor policies and the roots (None: the vendors' pinned roots)."""

    snp: SnpPolicy = SnpPolicy()
    dcap: DcapPolicy = field(default_factory=DcapPolicy)
    snp_roots: SnpRoots | None = field(default=None, hash=False)
    intel_root_der: bytes | None = None

    def unsafe_roots(self, kind: str) -> bool:
        return (self.snp_roots if kind == SEV_SNP else self.intel_root_der) is not None


@dataclass(frozen=True)
class IssueRequest:
    service: str
    csr_pem: bytes
    tee_type: str
    evidence: bytes
    certificates: tuple[SnpCertificate, ...] = ()
    """Certificates the host supplied with the evidence (the SNP certificate table)."""


@dataclass(frozen=True)
class VerifiedEvidence:
    """Evidence the AS accepted: the body its report carries, and what else the report and certificate say."""

    quote: QuoteBody
    status: str = "OK"
    report_fields: dict[str, object] = field(default_factory=dict)
    carried: CarriedEvidence | None = None


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
        collateral: CollateralSource | None = None,
        tee_policy: TeePolicy | None = None,
    ) -> None:
        self._collateral = collateral
        self._tee_policy = tee_policy or TeePolicy()
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

    def verify_evidence(
        self,
        tee_type: str,
        evidence: bytes,
        *,
        service: str | None = None,
        report_data: bytes | None = None,
        certificates: Sequence[SnpCertificate] = (),
    ) -> VerifiedEvidence:
        """Verify ``evidence`` by its kind. Real kinds need the claimed ``service`` (its enclave
        info measurements) and the ``report_data`` the evidence must carry (the presenting key)."""
        if len(evidence) > MAX_EVIDENCE_BYTES:
            raise AttestationError("evidence is too large")
        if tee_type == SIMULATION:
            return VerifiedEvidence(self._verify_simulation(evidence))
        if tee_type not in REAL_KINDS:
            raise AttestationError(
                f"TEE type {tee_type!r} is not supported by this attestation service "
                f"(supported: {SIMULATION}, {', '.join(REAL_KINDS)})"
            )
        if service is None or report_data is None:
            raise AttestationError(f"{tee_type} evidence is verified only for a certificate request of a named service")
        if self._collateral is None:
            raise AttestationError(f"{tee_type} evidence is refused: this attestation service has no collateral source")
        info = self._enclave_info()
        entry = info.measurement(service)
        tee = info.tee_measurements(service, tee_type)
        now = self._now()
        policy = self._tee_policy
        fields: dict[str, object] = {}
        if tee_type == SEV_SNP:
            certificate = self._collateral.snp_certificate(evidence, certificates)
            snp = examine_snp_report(
                evidence, certificate=certificate, at=now, policy=policy.snp, roots=policy.snp_roots,
                expected_report_data=report_data, measurements=tee.sev_snp,
            )
            if not snp.ok:
                raise AttestationError(f"SEV-SNP evidence refused: {snp.reason}")
            vlek = snp.report is not None and snp.report.signing_key == SIGNING_KEY_VLEK
            carried = CarriedEvidence.snp(evidence, SnpCertificate("vlek" if vlek else "vcek", certificate), certificates)
            status = "OK"
            isv_prod_id = isv_svn = 0
        else:
            try:
                kind = parse_quote(evidence).kind
            except AttestationError as exc:
                raise AttestationError(f"{tee_type.upper()} evidence refused: {exc.reason}") from None
            if kind != tee_type:
                raise AttestationError(f"the evidence is a {kind.upper()} quote, not {tee_type.upper()}")
            collateral = self._collateral.dcap_collateral(evidence)
            dcap = examine_dcap_quote(
                evidence, collateral=collateral, at=now, policy=policy.dcap, root_ca_der=policy.intel_root_der,
                expected_report_data=report_data, measurements=tee.dcap(tee_type),
            )
            if not dcap.ok or dcap.quote is None or dcap.tcb_status is None:
                raise AttestationError(f"{tee_type.upper()} evidence refused: {dcap.reason}")
            status = DCAP_REPORT_STATUS[dcap.tcb_status]
            fields["kettleTcbStatus"] = dcap.tcb_status
            if dcap.advisory_ids:
                fields["advisoryIDs"] = list(dcap.advisory_ids)
            carried = CarriedEvidence(tee_type, evidence)
            body = dcap.quote.report
            isv_prod_id, isv_svn = (body.isv_prod_id, body.isv_svn) if isinstance(body, SgxReport) else (0, 0)
        if policy.unsafe_roots(tee_type):
            log.warning("UNSAFE: %s evidence of %s accepted under test roots (unsafe_test_roots)", tee_type, service)
            fields["kettleUnsafeTestRoots"] = True
        # Where Teaclave's clients read MRENCLAVE: the enclave info digest of the service's TEE
        # measurements (equal to its mr_enclave, checked when enclave info was parsed). The debug
        # attribute stays clear: debug guests were refused above.
        quote = QuoteBody(
            mr_enclave=entry.mr_enclave, mr_signer=entry.mr_signer, report_data=report_data,
            isv_prod_id=isv_prod_id, isv_svn=isv_svn,
        )
        return VerifiedEvidence(quote, status, fields, carried)

    def _verify_simulation(self, evidence: bytes) -> QuoteBody:
        if not self._allow_simulation or self._simulation_key is None:
            raise AttestationError("simulation evidence is refused: this attestation service does not allow simulation")
        quote = verify_simulation_quote(evidence, self._simulation_key)
        if not quote.debug:
            # Simulated evidence must always carry the debug flag, so that nothing downstream
            # can take it for a production enclave.
            raise AttestationError("simulation evidence without the debug attribute")
        return quote

    def endorse(
        self, quote: QuoteBody, tee_type: str, kettle_fields: dict[str, object], status: str = "OK"
    ) -> EndorsedReport:
        fields = {"kettleTeeType": tee_type, **kettle_fields}
        if tee_type == SIMULATION:
            fields["kettleSimulation"] = True
        # Never ahead of real time: Teaclave's Rust verifier breaks on future timestamps.
        report = build_report(quote.to_bytes(), status, self._now() - timedelta(milliseconds=1), fields)
        signature = self._authority.report_key.sign(report, padding.PKCS1v15(), hashes.SHA256())
        return EndorsedReport(report, signature, [self._authority.report_cert.public_bytes(serialization.Encoding.DER)])

    def issue(self, request: IssueRequest) -> Issued:
        if request.service not in SERVICES:
            raise AttestationError(f"unknown service {request.service!r}")
        if len(request.certificates) > MAX_EVIDENCE_CERTIFICATES:
            raise AttestationError(f"at most {MAX_EVIDENCE_CERTIFICATES} evidence certificates are accepted")
        try:
            csr = x509.load_pem_x509_csr(request.csr_pem)
        except ValueError:
            raise AttestationError("certificate signing request is not valid PEM") from None
        if not csr.is_signature_valid:
            raise AttestationError("certificate signing request signature is invalid")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise AttestationError("certificate key must be ECDSA P-256")
        verified = self.verify_evidence(
            request.tee_type, request.evidence, service=request.service,
            report_data=report_data_for(key), certificates=request.certificates,
        )
        quote = verified.quote
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
            {"kettleService": request.service, "kettleEvidenceDigest": evidence_digest, **verified.report_fields},
            verified.status,
        )
        carried = (
            (x509.UnrecognizedExtension(EVIDENCE_EXTENSION_OID, verified.carried.to_extension_value()),)
            if verified.carried is not None
            else ()
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
                # The raw evidence (a few KiB) goes in the server certificate only: grpc drops
                # client certificate flights above about 8 KiB.
                extra=() if compact else carried,
            )
            for compact in (False, True)
        )
        self._record(request.service, request.tee_type, certificate, quote, evidence_digest)
        return Issued(certificate, client_certificate, [self._authority.ca_cert])

    def _record(self, service: str, tee_type: str, cert: x509.Certificate, quote: QuoteBody, evidence_digest: str) -> None:
        """Append-only log of every issued certificate, for audit (``spec/attestation.md`` §7.9)."""
        line = json.dumps(
            {
                "time": self._now().isoformat(),
                "service": service,
                "serial": format(cert.serial_number, "x"),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "tee_type": tee_type,
                "mr_enclave": quote.mr_enclave.hex(),
                "evidence_sha256": evidence_digest,
            }
        )
        log.info("issued certificate %s for %s", format(cert.serial_number, "x"), service)
        if self._issued_log is not None:
            with self._issued_log.open("a") as f:
                f.write(line + "\n")
