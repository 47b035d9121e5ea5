"""Verifying a service's TEE hardware evidence directly, without the operator's attestation service.

An attested certificate normally proves a service's measurement through a report the
attestation service (AS) signed, so a client trusts the operator's AS. The AS also embeds
the service's raw evidence (an SEV-SNP report with its certificates, or a TDX or SGX DCAP
quote) in the server certificate; :mod:`kettle.attestation.evidence_extension` defines that
extension, writes it and is its one (strict) reader.
:func:`examine_hardware` checks that evidence against the VENDOR roots (AMD's, Intel's)
and the auditors' measurements, so a party that distrusts the operator still gets a sound
verdict:

* the extension parses strictly (size bound, exact keys, strict base64, known kinds);
* the evidence verifies under the pinned vendor roots (:mod:`kettle.attestation.snp`,
  :mod:`kettle.attestation.dcap`); certificates carried with it are never trust anchors;
* its report data is the certificate key's binding (``X || Y``), so evidence copied
  from another certificate or made for another key is refused;
* its measurement is one the auditors list for the expected service.

Pure: no network, no clock; the time and the collateral are passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from ..errors import AttestationError, KettleError
from .backends import SnpCertificate
from .collateral import CollateralSource
from .dcap import (
    DcapPolicy,
    DcapVerdict,
    TdReport,
    examine_dcap_quote,
    parse_quote,
)
from .enclave_info import EnclaveInfo, TeeMeasurements
from .evidence_extension import CarriedEvidence
from .snp import (
    SIGNING_KEY_VLEK,
    SnpPolicy,
    SnpRoots,
    SnpVerdict,
    examine_snp_report,
    parse_snp_report,
)
from .verifier import Check, Verdict, leaf_report_data

log = logging.getLogger(__name__)

# Both frozen: shared defaults nobody can change.
STRICT_SNP_POLICY = SnpPolicy()
STRICT_DCAP_POLICY = DcapPolicy()

NO_EVIDENCE = (
    "this service presents no hardware evidence: it runs in simulation, or its attestation "
    "service does not embed evidence, so only the attestation service vouches for it"
)


# ---------------------------------------------------------------- what is trusted


@dataclass(frozen=True)
class FixedCollateral:
    """Collateral given once (a file a party fetched itself): Intel's DCAP collateral JSON
    and/or an SEV-SNP VCEK or VLEK (DER or PEM)."""

    dcap: bytes | None = None
    snp: bytes | None = None

    def snp_certificate(self, report: bytes, supplied: Sequence[SnpCertificate] = ()) -> bytes:
        if self.snp is None:
            raise AttestationError("no VCEK or VLEK was given for this SEV-SNP report")
        return self.snp

    def dcap_collateral(self, quote: bytes) -> bytes:
        if self.dcap is None:
            raise AttestationError("no DCAP collateral was given for this quote")
        return self.dcap


@dataclass
class HardwareVerdict(Verdict):
    """Every hardware check on a certificate; ``ok`` needs authenticated evidence and every check passed."""

    evidence: CarriedEvidence | None = None
    vendor: SnpVerdict | DcapVerdict | None = None
    measurement: str | None = None

    @property
    def ok(self) -> bool:
        return self.vendor is not None and self.vendor.ok and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def summary(self) -> dict[str, Any]:
        """What the evidence says, for display."""
        if self.evidence is None:
            return {}
        info: dict[str, Any] = {"kind": self.evidence.kind}
        if isinstance(self.vendor, SnpVerdict) and self.vendor.report is not None:
            info.update(product=self.vendor.product, measurement=self.vendor.report.measurement.hex(),
                        vmpl=self.vendor.report.vmpl)
        elif isinstance(self.vendor, DcapVerdict) and self.vendor.quote is not None:
            info.update(quote=self.vendor.quote.describe(), tcb_status=self.vendor.tcb_status,
                        advisories=list(self.vendor.advisory_ids))
        return info


def examine_hardware(
    cert: x509.Certificate,
    *,
    enclave_info: EnclaveInfo,
    service: str,
    at: datetime,
    snp_roots: SnpRoots | None = None,
    intel_root_der: bytes | None = None,
    collateral: CollateralSource | None = None,
    snp_policy: SnpPolicy = STRICT_SNP_POLICY,
    dcap_policy: DcapPolicy = STRICT_DCAP_POLICY,
) -> HardwareVerdict:
    """Run every hardware check on ``cert`` as of ``at`` (timezone-aware) for ``service``,
    whose measurements of the evidence's kind ``enclave_info`` must list.

    ``snp_roots`` and ``intel_root_der`` None pin AMD's and Intel's roots shipped with the
    package; others are test roots (``unsafe_test_roots``), reported as UNSAFE. ``collateral``
    supplies Intel's collateral and a VCEK the certificate does not carry.
    """
    if at.tzinfo is None:
        raise ValueError("the verification time must be timezone-aware")
    verdict = HardwareVerdict()
    checks = verdict.checks

    def fail(name: str, detail: str) -> HardwareVerdict:
        checks.append(Check(name, False, detail))
        return verdict

    try:
        raw = CarriedEvidence.from_certificate(cert)
    except AttestationError as exc:
        return fail("hardware evidence", exc.reason)
    if raw is None:
        return fail("hardware evidence", NO_EVIDENCE)
    verdict.evidence = raw
    carried = f", with {', '.join(c.kind.upper() for c in raw.certificates)}" if raw.certificates else ""
    checks.append(Check("hardware evidence", True, f"{raw.kind} evidence, {len(raw.evidence)} bytes{carried}"))

    binding = leaf_report_data(cert)
    if binding is None:
        return fail("report data", "the certificate key is not an ECDSA P-256 key, so no report data can bind it")
    if raw.kind != "sev-snp":
        try:
            quote_kind = parse_quote(raw.evidence).kind
        except AttestationError:
            quote_kind = raw.kind  # not a quote at all: the verification below says why
        if quote_kind != raw.kind:
            return fail("kind", f"the extension says {raw.kind}, the evidence is a {quote_kind} quote")
    try:
        measurements = enclave_info.tee_measurements(service, raw.kind)
    except AttestationError as exc:
        # Checked before the vendor verification so the verdict says what is missing even
        # when the evidence itself is fine: without a measurement there is nothing to accept.
        return fail("measurement", exc.reason)

    try:
        if raw.kind == "sev-snp":
            vendor: SnpVerdict | DcapVerdict = _examine_snp(raw, binding, measurements, at, snp_roots, collateral, snp_policy, checks)
        else:
            vendor = _examine_dcap(raw, binding, measurements, at, intel_root_der, collateral, dcap_policy)
    except KettleError as exc:
        return fail("collateral", exc.message)
    verdict.vendor = vendor
    checks.extend(vendor.checks)
    if vendor.ok:
        verdict.measurement = _measurement_of(vendor)
        checks.append(Check("service", True, f"{service}'s audited measurement, verified under the vendor roots"))
    return verdict


def _examine_snp(
    raw: CarriedEvidence,
    binding: bytes,
    measurements: TeeMeasurements,
    at: datetime,
    roots: SnpRoots | None,
    collateral: CollateralSource | None,
    policy: SnpPolicy,
    checks: list[Check],
) -> SnpVerdict:
    if roots is not None:
        log.warning("UNSAFE: SEV-SNP evidence is verified under test roots, not AMD's")
        checks.append(Check("trust anchor", True, f"UNSAFE test roots ({', '.join(roots)}), not AMD's"))
    else:
        checks.append(Check("trust anchor", True, "AMD roots (pinned, shipped with Kettle)"))
    try:
        signing_key = parse_snp_report(raw.evidence).signing_key
    except AttestationError:
        signing_key = None  # examine_snp_report refuses the format with its reason
    certificate = b""
    if signing_key is not None:
        wanted = "vlek" if signing_key == SIGNING_KEY_VLEK else "vcek"
        certificate = raw.certificate(wanted) or b""
        if not certificate:
            if collateral is None:
                raise AttestationError(f"the evidence carries no {wanted.upper()} and no collateral source is configured")
            certificate = collateral.snp_certificate(raw.evidence, raw.certificates)
    return examine_snp_report(
        raw.evidence, certificate=certificate, at=at, policy=policy, roots=roots,
        expected_report_data=binding, measurements=measurements.sev_snp,
    )


def _examine_dcap(
    raw: CarriedEvidence,
    binding: bytes,
    measurements: TeeMeasurements,
    at: datetime,
    root: bytes | None,
    collateral: CollateralSource | None,
    policy: DcapPolicy,
) -> DcapVerdict:
    if collateral is None:
        raise AttestationError(f"{raw.kind} evidence needs Intel's collateral and no collateral source is configured")
    return examine_dcap_quote(
        raw.evidence, collateral=collateral.dcap_collateral(raw.evidence), at=at, policy=policy,
        root_ca_der=root, expected_report_data=binding, measurements=measurements.dcap(raw.kind),
    )


def _measurement_of(vendor: SnpVerdict | DcapVerdict) -> str | None:
    if isinstance(vendor, SnpVerdict):
        return vendor.report.measurement.hex() if vendor.report else None
    if vendor.quote is None:
        return None
    report = vendor.quote.report
    return report.mr_td.hex() if isinstance(report, TdReport) else report.mr_enclave.hex()

