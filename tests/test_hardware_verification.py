"""A party verifies a service's hardware evidence itself, against the vendor roots, not the operator's AS.

Certificates are built here as the attestation service issues them, with the raw evidence
extension; the evidence is signed by test hardware (``snp_test_roots``, ``dcap_test_roots``)
or is AMD's real report vector, which verifies under AMD's shipped roots.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dcap_test_roots import DcapTestRoots
from snp_test_roots import INSIDE, SnpTestHardware

from kettle.attestation.backends import SnpCertificate
from kettle.attestation.certificates import report_data_for
from kettle.attestation.dcap import DcapPolicy
from kettle.attestation.enclave_info import (
    EnclaveInfo,
    Measurement,
    SgxMeasurement,
    TeeMeasurements,
    tee_digest,
)
from kettle.attestation.evidence_extension import (
    EVIDENCE_EXTENSION_OID,
    MAX_EXTENSION_BYTES,
    CarriedEvidence,
)
from kettle.attestation.hardware import (
    NO_EVIDENCE,
    FixedCollateral,
    HardwareVerdict,
    examine_hardware,
)
from kettle.attestation.snp import SnpPolicy, parse_snp_report
from kettle.errors import AttestationError

SNP_VECTORS = Path(__file__).parent / "data" / "tee" / "snp"
SNP_VCEK = (SNP_VECTORS / "test-vcek.der").read_bytes()
MEASUREMENT = bytes(range(48))
TD = (b"\x31" * 48, b"\x32" * 48, b"\x33" * 48, b"\x34" * 48, b"\x35" * 48)
MR_ENCLAVE, MR_SIGNER = b"\x41" * 32, b"\x42" * 32


def listing(tee: TeeMeasurements) -> EnclaveInfo:
    """Enclave info listing ``tee`` for the frontend, as ``kettle audit add-measurement`` writes it."""
    return EnclaveInfo({"frontend": Measurement(tee_digest("frontend", tee), b"\x01" * 32, tee)})


SNP_ONLY = listing(TeeMeasurements(sev_snp=frozenset({MEASUREMENT})))
TDX_ONLY = listing(TeeMeasurements(tdx=frozenset({TD})))
SGX_ONLY = listing(TeeMeasurements(sgx=SgxMeasurement(mr_enclave=frozenset({MR_ENCLAVE}), mr_signer=frozenset({MR_SIGNER}))))
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def service_certificate(
    key: ec.EllipticCurvePrivateKey, extension_value: bytes | None, *, not_before: datetime = INSIDE
) -> x509.Certificate:
    """A service certificate as the AS issues it, carrying ``extension_value`` under the evidence OID."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teaclave_frontend_service")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attested services CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before - timedelta(minutes=1))
        .not_valid_after(not_before + timedelta(hours=1))
    )
    if extension_value is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(EVIDENCE_EXTENSION_OID, extension_value), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def binding(key: ec.EllipticCurvePrivateKey) -> bytes:
    return report_data_for(key.public_key())


def failed(verdict: HardwareVerdict) -> list[str]:
    return [c.name for c in verdict.checks if not c.ok]


@pytest.fixture(scope="module")
def milan() -> SnpTestHardware:
    return SnpTestHardware.make("Milan")


@pytest.fixture(scope="module")
def tdx_roots() -> DcapTestRoots:
    return DcapTestRoots.make(NOW - timedelta(days=1), "tdx_quote")


@pytest.fixture(scope="module")
def sgx_roots() -> DcapTestRoots:
    return DcapTestRoots.make(NOW - timedelta(days=1), "sgx_quote")


def collateral_of(roots: DcapTestRoots) -> FixedCollateral:
    return FixedCollateral(dcap=roots.collateral(issued=NOW - timedelta(hours=1), next_update=NOW + timedelta(days=30)))


def snp_certificate(milan: SnpTestHardware, key: ec.EllipticCurvePrivateKey, **report: object) -> x509.Certificate:
    report.setdefault("report_data", binding(key))
    report.setdefault("measurement", MEASUREMENT)
    # The ASK travels too, as a host supplies it; only the pinned roots are trusted.
    ask = milan.chain.ask.public_bytes(serialization.Encoding.DER)
    raw = CarriedEvidence("sev-snp", milan.report(**report), (SnpCertificate("vcek", milan.vcek), SnpCertificate("ask", ask)))
    return service_certificate(key, raw.to_extension_value())


def examine_snp(cert: x509.Certificate, milan: SnpTestHardware, **kwargs: object) -> HardwareVerdict:
    kwargs.setdefault("enclave_info", SNP_ONLY)
    kwargs.setdefault("snp_roots", milan.roots)
    kwargs.setdefault("service", "frontend")
    return examine_hardware(cert, at=INSIDE, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- SEV-SNP


def test_snp_evidence_bound_to_the_certificate_key_verifies_under_its_roots(milan: SnpTestHardware) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verdict = examine_snp(snp_certificate(milan, key), milan)
    assert verdict.ok, verdict.reason
    names = [c.name for c in verdict.checks]
    assert names[:3] == ["hardware evidence", "trust anchor", "report format"]
    assert {"certificate chain", "report signature", "report data", "measurement", "service"} <= set(names)
    assert "UNSAFE test roots (Milan)" in verdict.checks[1].detail
    assert verdict.measurement == MEASUREMENT.hex()
    assert verdict.summary == {"kind": "sev-snp", "product": "Milan", "measurement": MEASUREMENT.hex(), "vmpl": 0}


def test_snp_evidence_for_another_key_is_refused(milan: SnpTestHardware) -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    verdict = examine_snp(snp_certificate(milan, key, report_data=binding(other)), milan)
    assert not verdict.ok
    assert failed(verdict) == ["report data"]


def test_snp_evidence_replayed_from_another_certificate_is_refused(milan: SnpTestHardware) -> None:
    genuine = snp_certificate(milan, ec.generate_private_key(ec.SECP256R1()))
    copied = genuine.extensions.get_extension_for_oid(EVIDENCE_EXTENSION_OID).value
    assert isinstance(copied, x509.UnrecognizedExtension)
    thief = service_certificate(ec.generate_private_key(ec.SECP256R1()), copied.value)
    verdict = examine_snp(thief, milan)
    assert failed(verdict) == ["report data"]
    assert "is not the expected" in verdict.reason


def test_snp_measurement_not_listed_for_the_service_is_refused(milan: SnpTestHardware) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verdict = examine_snp(snp_certificate(milan, key, measurement=b"\x66" * 48), milan)
    assert failed(verdict) == ["measurement"]
    nothing = examine_snp(snp_certificate(milan, key), milan, enclave_info=TDX_ONLY)
    assert failed(nothing) == ["measurement"]
    assert nothing.reason == "enclave info lists no sev-snp measurements for frontend (no [teaclave_frontend_service.sev_snp])"
    other_service = examine_snp(snp_certificate(milan, key), milan, service="storage")
    assert failed(other_service) == ["measurement"]
    assert other_service.reason == "enclave info has no entry for service 'storage'"


def test_snp_evidence_under_test_roots_is_refused_when_pinning_amds_roots(milan: SnpTestHardware) -> None:
    verdict = examine_snp(snp_certificate(milan, ec.generate_private_key(ec.SECP256R1())), milan, snp_roots=None)
    assert failed(verdict) == ["certificate chain"]
    assert "AMD roots (pinned" in verdict.checks[1].detail
    assert "not issued by a pinned AMD ASK" in verdict.reason


def test_snp_policy_applies_to_hardware_evidence(milan: SnpTestHardware) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    debug = examine_snp(snp_certificate(milan, key, policy=0x30000 | 1 << 19), milan)
    assert failed(debug) == ["debug"]
    vmpl = examine_snp(snp_certificate(milan, key, vmpl=2), milan, snp_policy=SnpPolicy(max_vmpl=2))
    assert vmpl.ok, vmpl.reason


def test_real_amd_report_verifies_under_amds_roots_but_binds_another_key() -> None:
    """AMD's real report and VCEK, carried in a certificate: the chain to AMD's shipped roots and
    the signature verify, but its report data is not this certificate's key, so it is refused."""
    report = (SNP_VECTORS / "test-report.bin").read_bytes()
    raw = CarriedEvidence("sev-snp", report, (SnpCertificate("vcek", (SNP_VECTORS / "test-vcek.der").read_bytes()),))
    cert = service_certificate(ec.generate_private_key(ec.SECP256R1()), raw.to_extension_value())
    info = listing(TeeMeasurements(sev_snp=frozenset({parse_snp_report(report).measurement})))
    at = datetime(2025, 6, 1, tzinfo=UTC)
    verdict = examine_hardware(cert, enclave_info=info, service="frontend", at=at)
    assert failed(verdict) == ["report data"]
    assert next(c for c in verdict.checks if c.name == "certificate chain").ok


def test_snp_vcek_not_carried_comes_from_the_collateral_source(milan: SnpTestHardware) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = CarriedEvidence("sev-snp", milan.report(report_data=binding(key), measurement=MEASUREMENT))
    cert = service_certificate(key, raw.to_extension_value())
    missing = examine_snp(cert, milan)
    assert failed(missing) == ["collateral"]
    assert missing.reason == "the evidence carries no VCEK and no collateral source is configured"
    fetched = examine_snp(cert, milan, collateral=FixedCollateral(snp=milan.vcek))
    assert fetched.ok, fetched.reason


def test_snp_evidence_signed_by_another_chip_is_refused(milan: SnpTestHardware) -> None:
    other = SnpTestHardware.make("Milan")
    key = ec.generate_private_key(ec.SECP256R1())
    forged = other.report(report_data=binding(key), measurement=MEASUREMENT)
    raw = CarriedEvidence("sev-snp", forged, (SnpCertificate("vcek", milan.vcek),))
    verdict = examine_snp(service_certificate(key, raw.to_extension_value()), milan)
    assert not verdict.ok
    assert failed(verdict) == ["report signature"]


# ---------------------------------------------------------------- TDX and SGX


def test_tdx_quote_bound_to_the_certificate_key_verifies_under_its_root(tdx_roots: DcapTestRoots) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    quote = tdx_roots.tdx_quote(report_data=binding(key), mr_td=TD[0], rtmrs=TD[1:])
    cert = service_certificate(key, CarriedEvidence("tdx", quote).to_extension_value())
    verdict = examine_hardware(cert, enclave_info=TDX_ONLY, service="frontend", at=NOW,
                               intel_root_der=tdx_roots.root_ca_der, collateral=collateral_of(tdx_roots))
    assert verdict.ok, verdict.reason
    assert "UNSAFE test root" in next(c.detail for c in verdict.checks if c.name == "trust anchor")
    assert verdict.measurement == TD[0].hex()
    assert verdict.summary["tcb_status"] == "UpToDate"
    # Pinning Intel's root, the same evidence is refused.
    pinned = examine_hardware(cert, enclave_info=TDX_ONLY, service="frontend", at=NOW, collateral=collateral_of(tdx_roots))
    assert failed(pinned) == ["PCK chain"]
    # Another RTMR: another measurement.
    other = listing(TeeMeasurements(tdx=frozenset({(TD[0], TD[1], TD[2], TD[3], bytes(48))})))
    refused = examine_hardware(cert, enclave_info=other, service="frontend", at=NOW,
                               intel_root_der=tdx_roots.root_ca_der, collateral=collateral_of(tdx_roots))
    assert failed(refused) == ["measurement"]


def test_tdx_quote_for_another_key_and_without_collateral_are_refused(tdx_roots: DcapTestRoots) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    quote = tdx_roots.tdx_quote(report_data=binding(ec.generate_private_key(ec.SECP256R1())), mr_td=TD[0], rtmrs=TD[1:])
    cert = service_certificate(key, CarriedEvidence("tdx", quote).to_extension_value())
    verdict = examine_hardware(cert, enclave_info=TDX_ONLY, service="frontend", at=NOW,
                               intel_root_der=tdx_roots.root_ca_der, collateral=collateral_of(tdx_roots))
    assert failed(verdict) == ["report data"]
    bare = examine_hardware(cert, enclave_info=TDX_ONLY, service="frontend", at=NOW, intel_root_der=tdx_roots.root_ca_der)
    assert failed(bare) == ["collateral"] and "no collateral source" in bare.reason
    expired = FixedCollateral(dcap=tdx_roots.collateral(issued=NOW - timedelta(days=31), next_update=NOW - timedelta(days=1)))
    stale = examine_hardware(cert, enclave_info=TDX_ONLY, service="frontend", at=NOW,
                             intel_root_der=tdx_roots.root_ca_der, collateral=expired)
    assert failed(stale) == ["quote verification"]


def test_sgx_quote_under_the_wrong_kind_is_refused(sgx_roots: DcapTestRoots) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    quote = sgx_roots.sgx_quote(report_data=binding(key), mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER)
    both = listing(TeeMeasurements(tdx=frozenset({TD}), sgx=SgxMeasurement(mr_enclave=frozenset({MR_ENCLAVE}),
                                                                            mr_signer=frozenset({MR_SIGNER}))))
    # The SGX template platform's TCB status needs its advisories named.
    policy = DcapPolicy(allowed={"ConfigurationAndSWHardeningNeeded": frozenset({"INTEL-SA-00289", "INTEL-SA-00615"})})
    kwargs = {"service": "frontend", "at": NOW, "intel_root_der": sgx_roots.root_ca_der, "collateral": collateral_of(sgx_roots),
                  "dcap_policy": policy}
    right = examine_hardware(service_certificate(key, CarriedEvidence("sgx", quote).to_extension_value()),
                             enclave_info=SGX_ONLY, **kwargs)  # type: ignore[arg-type]
    assert right.ok, right.reason
    assert right.measurement == MR_ENCLAVE.hex()
    wrong = examine_hardware(service_certificate(key, CarriedEvidence("tdx", quote).to_extension_value()),
                             enclave_info=both, **kwargs)  # type: ignore[arg-type]
    assert failed(wrong) == ["kind"]
    assert wrong.reason == "the extension says tdx, the evidence is a sgx quote"
    snp = examine_hardware(service_certificate(key, CarriedEvidence("sev-snp", quote).to_extension_value()),
                           enclave_info=SNP_ONLY, **kwargs)  # type: ignore[arg-type]
    assert failed(snp) == ["report format"]


# ---------------------------------------------------------------- the extension itself


def test_a_certificate_without_the_extension_says_so(milan: SnpTestHardware) -> None:
    cert = service_certificate(ec.generate_private_key(ec.SECP256R1()), None)
    assert CarriedEvidence.from_certificate(cert) is None
    verdict = examine_snp(cert, milan)
    assert not verdict.ok
    assert verdict.reason == NO_EVIDENCE
    assert "presents no hardware evidence" in NO_EVIDENCE


def test_the_extension_round_trips() -> None:
    written = CarriedEvidence("sev-snp", b"\x01" * 1184, (SnpCertificate("vcek", SNP_VCEK),))
    value = written.to_extension_value()
    assert CarriedEvidence.from_extension_value(value) == CarriedEvidence("sev-snp", b"\x01" * 1184, (SnpCertificate("vcek", SNP_VCEK),))
    assert value[:4] == bytes([0x04, 0x82]) + (len(value) - 4).to_bytes(2, "big")  # a DER OCTET STRING
    assert json.loads(value[4:]) == {"v": 1, "kind": "sev-snp", "evidence": base64.b64encode(b"\x01" * 1184).decode(),
                                       "certificates": [{"kind": "vcek", "der": base64.b64encode(SNP_VCEK).decode()}]}


def der_octet_string(content: bytes) -> bytes:
    """A DER OCTET STRING around ``content``, to wrap hostile JSON as the extension value."""
    size = len(content)
    if size < 0x80:
        return bytes([0x04, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x04, 0x80 | len(length)]) + length + content


def _doc(**changes: object) -> bytes:
    doc: dict[str, object] = {"v": 1, "kind": "tdx", "evidence": base64.b64encode(b"quote").decode(), "certificates": []}
    doc.update(changes)
    return der_octet_string(json.dumps({k: v for k, v in doc.items() if v is not ...}).encode())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "is not a DER OCTET STRING"),
        (b'{"v":1,"kind":"tdx","evidence":"cXVvdGU=","certificates":[]}', "is not a DER OCTET STRING"),
        (_doc()[:-7], "does not match its content (truncated or padded)"),
        (_doc() + b"\x00", "does not match its content (truncated or padded)"),
        (b"\x04\x81\x05hello", "non-minimal DER length"),
        (b"\x04\x85\x00\x00\x00\x00\x05hello", "malformed DER length"),
        (b"\x04\x80", "malformed DER length"),
        (der_octet_string(b""), "evidence extension is not JSON"),
        (der_octet_string(b"\xff\xfe garbage"), "evidence extension is not JSON"),
        (der_octet_string(b"[1, 2]"), "the extension must be a JSON object"),
        (der_octet_string(b" " * MAX_EXTENSION_BYTES), f"more than {MAX_EXTENSION_BYTES}"),
        (der_octet_string(b"[" * 30000), "JSON nested too deeply"),
        (der_octet_string(b'{"v":' * 6000), "JSON nested too deeply"),
        (_doc(v=2), "version 2 is not 1"),
        (_doc(v=True), "version True is not 1"),
        (_doc(v=...), "exactly the keys certificates, evidence, kind, v"),
        (_doc(extra="x"), "exactly the keys certificates, evidence, kind, v"),
        (_doc(kind="simulation"), "kind 'simulation' is not one of sev-snp, tdx, sgx"),
        (_doc(evidence="not base64!"), "evidence is not valid base64"),
        (_doc(evidence="cXVvdGU"), "evidence is not valid base64"),
        (_doc(evidence="cXVvdGV="), "evidence is not canonical base64"),
        (_doc(evidence=""), "evidence must be a non-empty base64 string"),
        (_doc(evidence=[1, 2]), "evidence must be a non-empty base64 string"),
        (_doc(certificates={}), "certificates must be a list"),
        (_doc(certificates=[{"kind": "vcek", "der": "AAAA"}]), "a tdx quote carries no separate certificates"),
        (_doc(kind="sev-snp", certificates=[{"kind": "pck", "der": "AAAA"}]), "certificate kind 'pck' is not one of"),
        (_doc(kind="sev-snp", certificates=[{"kind": "vcek"}]), "certificate 0 must have exactly the keys der, kind"),
        (_doc(kind="sev-snp", certificates=["vcek"]), "certificate 0 must be a JSON object"),
        (_doc(kind="sev-snp", certificates=[{"kind": "vcek", "der": "AAAA"}]), "certificate vcek is not a DER certificate"),
        (der_octet_string(b'{"v":1,"v":1,"kind":"tdx","evidence":"cXVvdGU=","certificates":[]}'), "a JSON key appears twice"),
    ],
)
def test_malformed_extensions_are_refused_with_the_reason(value: bytes, reason: str) -> None:
    with pytest.raises(AttestationError) as info:
        CarriedEvidence.from_extension_value(value)
    assert reason in info.value.reason
    cert = service_certificate(ec.generate_private_key(ec.SECP256R1()), value)
    verdict = examine_hardware(cert, enclave_info=SNP_ONLY, service="frontend", at=INSIDE)
    assert failed(verdict) == ["hardware evidence"]
    assert reason in verdict.reason


def test_duplicate_certificates_and_truncated_evidence_are_refused(milan: SnpTestHardware) -> None:
    der = base64.b64encode(milan.vcek).decode()
    with pytest.raises(AttestationError, match="two vcek certificates"):
        CarriedEvidence.from_extension_value(_doc(kind="sev-snp", certificates=[{"kind": "vcek", "der": der}] * 2))
    key = ec.generate_private_key(ec.SECP256R1())
    report = milan.report(report_data=binding(key), measurement=MEASUREMENT)
    truncated = CarriedEvidence("sev-snp", report[:-1], (SnpCertificate("vcek", milan.vcek),))
    verdict = examine_snp(service_certificate(key, truncated.to_extension_value()), milan)
    assert failed(verdict) == ["report format"]
    assert "1184 bytes, this is 1183" in verdict.reason


def test_a_certificate_key_that_is_not_p256_is_refused(milan: SnpTestHardware) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    raw = CarriedEvidence("sev-snp", milan.report(measurement=MEASUREMENT), (SnpCertificate("vcek", milan.vcek),))
    issuer = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(INSIDE).not_valid_after(INSIDE + timedelta(hours=1))
        .add_extension(x509.UnrecognizedExtension(EVIDENCE_EXTENSION_OID, raw.to_extension_value()), critical=False)
        .sign(issuer, hashes.SHA256())
    )
    verdict = examine_snp(cert, milan)
    assert failed(verdict) == ["report data"]
    assert "not an ECDSA P-256 key" in verdict.reason
