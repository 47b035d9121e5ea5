"""The attestation service's issuer on real TEE evidence, in-process (no sockets): SEV-SNP reports and
TDX/SGX quotes signed by test hardware made here with fresh keys, against enclave info per TEE kind."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_home  # noqa: E402
from dcap_test_roots import DcapTestRoots, _raw_signature  # noqa: E402
from snp_test_roots import SnpTestHardware  # noqa: E402

from kettle.attestation.backends import SnpCertificate  # noqa: E402
from kettle.attestation.certificates import report_data_for  # noqa: E402
from kettle.attestation.dcap import DcapPolicy  # noqa: E402
from kettle.attestation.enclave_info import EnclaveInfo, SgxMeasurement, tee_digest, with_tee_measurement  # noqa: E402
from kettle.attestation.evidence_extension import EVIDENCE_EXTENSION_OID, CarriedEvidence  # noqa: E402
from kettle.attestation.quote import QuoteBody  # noqa: E402
from kettle.attestation.report import EndorsedReport, ReportContent  # noqa: E402
from kettle.attestation.snp import SnpPolicy, SnpTcb  # noqa: E402
from kettle.attestation.verifier import Verifier  # noqa: E402
from kettle.attestation_service.authority import Authority, load_authority  # noqa: E402
from kettle.attestation_service.issuer import (  # noqa: E402
    IssueRequest,
    Issuer,
    TeePolicy,
)
from kettle.errors import AttestationError  # noqa: E402

NOW = datetime.now(UTC)
SIGNER = b"\x5a" * 32
SNP_MEASUREMENT = b"\x22" * 48
TD = (b"\x31" * 48, b"\x32" * 48, b"\x33" * 48, b"\x34" * 48, b"\x35" * 48)
MR_ENCLAVE = b"\x41" * 32


@dataclass
class Collateral:
    """A collateral source holding one Intel collateral document (the issuer's protocol, over real bytes)."""

    dcap: bytes

    def snp_certificate(self, report: bytes, supplied: Sequence[SnpCertificate] = ()) -> bytes:
        return next(c.der for c in supplied if c.kind == "vcek")

    def dcap_collateral(self, quote: bytes) -> bytes:
        return self.dcap


@dataclass(frozen=True)
class World:
    authority: Authority
    info: EnclaveInfo
    snp: SnpTestHardware
    tdx: DcapTestRoots
    sgx: DcapTestRoots


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> World:
    config = make_home(tmp_path_factory.mktemp("as-real"), _auditor_cache)
    info = EnclaveInfo({})
    for service in ("storage", "frontend"):
        info = with_tee_measurement(info, service, sev_snp=SNP_MEASUREMENT, mr_signer=SIGNER)
        info = with_tee_measurement(info, service, tdx=TD)
        info = with_tee_measurement(info, service, sgx=SgxMeasurement(mr_enclave=frozenset({MR_ENCLAVE}), isv_prod_id=3))
    info = with_tee_measurement(info, "management", tdx=TD, mr_signer=SIGNER)  # no SNP entry
    start = NOW - timedelta(days=1)
    return World(
        load_authority(config.home), info, SnpTestHardware.make(),
        DcapTestRoots.make(start, "tdx_quote"), DcapTestRoots.make(start, "sgx_quote"),
    )


def collateral_for(roots: DcapTestRoots, *, issued: datetime = NOW - timedelta(hours=1),
                   next_update: datetime = NOW + timedelta(days=30)) -> bytes:
    return roots.collateral(issued=issued, next_update=next_update)


def outdated_collateral(roots: DcapTestRoots) -> bytes:
    """Intel raised the platform's UpToDate level above it: its TCB is now OutOfDate (re-signed TCB info)."""
    doc = json.loads(collateral_for(roots))
    info = json.loads(doc["tcb_info"])
    info["tcbLevels"][0]["tcb"]["tdxtcbcomponents"][2]["svn"] = 200  # TDX late microcode update
    text = json.dumps(info, separators=(",", ":"))
    doc["tcb_info"] = text
    doc["tcb_info_signature"] = _raw_signature(roots.tcb_signing.key, text.encode()).hex()
    return json.dumps(doc).encode()


def issuer(world: World, *, dcap: bytes = b"", policy: TeePolicy | None = None, info: EnclaveInfo | None = None) -> Issuer:
    return Issuer(
        world.authority, lambda: info or world.info, simulation_platform_key=None, unsafe_allow_simulation=False,
        domain="kettle.internal", validity=timedelta(hours=1), clock=NOW.timestamp,
        collateral=Collateral(dcap),
        tee_policy=policy or TeePolicy(snp_roots=world.snp.roots, intel_root_der=world.tdx.root_ca_der),
    )


def csr(key: ec.EllipticCurvePrivateKey, service: str) -> bytes:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"teaclave_{service}_service")]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def snp_request(world: World, service: str = "storage", **report: object) -> tuple[IssueRequest, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    fields: dict[str, object] = {"report_data": report_data_for(key.public_key()), "measurement": SNP_MEASUREMENT, **report}
    evidence = world.snp.report(**fields)  # type: ignore[arg-type]
    return IssueRequest(service, csr(key, service), "sev-snp", evidence, (SnpCertificate("vcek", world.snp.vcek),)), key


def verifier(world: World, *, test_roots: bool = True) -> Verifier:
    return Verifier(world.authority.root, world.info, unsafe_allow_test_roots=test_roots, clock=NOW.timestamp)


def test_snp_evidence_gets_a_certificate_carrying_digest_and_evidence(world: World) -> None:
    request, key = snp_request(world)
    issued = issuer(world).issue(request)
    digest = tee_digest("storage", world.info.measurement("storage").tee)  # type: ignore[arg-type]
    peer = verifier(world).verify(issued.certificate, expected_services=["storage"])
    assert peer.mr_enclave == digest == world.info.measurement("storage").mr_enclave
    assert peer.tee_type == "sev-snp" and not peer.simulation and peer.test_roots and not peer.quote.debug
    content = ReportContent.parse(EndorsedReport.from_certificate(issued.certificate).report)
    assert content.raw["kettleUnsafeTestRoots"] is True and content.raw["kettleTeeType"] == "sev-snp"
    assert content.status == "OK" and QuoteBody.parse(content.quote_body).mr_signer == SIGNER
    # The raw evidence rides in the server certificate only, bound to the same key.
    carried = CarriedEvidence.from_certificate(issued.certificate)
    assert carried is not None and carried.kind == "sev-snp" and carried.evidence == request.evidence
    assert carried.certificates == (SnpCertificate("vcek", world.snp.vcek),)
    assert carried.evidence[0x50:0x90] == report_data_for(key.public_key())
    ext = issued.certificate.extensions.get_extension_for_oid(EVIDENCE_EXTENSION_OID)
    assert not ext.critical and list(issued.certificate.extensions)[0].oid != EVIDENCE_EXTENSION_OID
    assert CarriedEvidence.from_certificate(issued.client_certificate) is None
    assert len(issued.client_certificate.public_bytes(serialization.Encoding.DER)) < 4096
    assert verifier(world).verify(issued.client_certificate).service == "storage"


def test_the_embedded_evidence_is_what_the_one_strict_reader_accepts(world: World) -> None:
    """The host may supply its VCEK as PEM and certificates that are not certificates; the AS
    embeds DER only, one per kind, so a client reading the extension strictly is never refused."""
    request, _ = snp_request(world)
    vcek_pem = x509.load_der_x509_certificate(world.snp.vcek).public_bytes(serialization.Encoding.PEM)
    ask, ark = world.snp.chain.ask, world.snp.chain.ark
    supplied = (
        SnpCertificate("vcek", vcek_pem),
        SnpCertificate("ask", b"not a certificate"),
        SnpCertificate("ask", ask.public_bytes(serialization.Encoding.PEM)),
        SnpCertificate("ark", ark.public_bytes(serialization.Encoding.DER)),
    )
    issued = issuer(world).issue(replace(request, certificates=supplied))
    carried = CarriedEvidence.from_certificate(issued.certificate)
    assert carried is not None
    assert carried.certificates == (
        SnpCertificate("vcek", world.snp.vcek),
        SnpCertificate("ask", ask.public_bytes(serialization.Encoding.DER)),
        SnpCertificate("ark", ark.public_bytes(serialization.Encoding.DER)),
    )


def test_a_client_that_pins_vendor_roots_refuses_test_root_reports(world: World) -> None:
    request, _ = snp_request(world)
    issued = issuer(world).issue(request)
    verdict = verifier(world, test_roots=False).examine(issued.certificate)
    assert not verdict.ok
    assert "verified under TEST hardware roots (unsafe_test_roots), not the vendor's" in verdict.reason


def test_an_as_on_vendor_roots_refuses_test_hardware(world: World) -> None:
    request, _ = snp_request(world)
    with pytest.raises(AttestationError, match="not issued by a pinned AMD ASK"):
        issuer(world, policy=TeePolicy()).issue(request)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"report_data": b"\x01" * 64}, "SEV-SNP evidence refused: report data 0101"),
        ({"measurement": b"\x23" * 48}, "SEV-SNP evidence refused: measurement 2323.* is not an accepted measurement"),
        ({"policy": 0x30000 | 1 << 19}, r"SEV-SNP evidence refused: the guest policy allows debugging \(bit 19\)"),
        ({"policy": 0x30000 | 1 << 18}, "allows a migration agent"),
        ({"vmpl": 1}, "VMPL 1 is above the allowed 0"),
    ],
)
def test_snp_refusals(world: World, change: dict[str, object], reason: str) -> None:
    request, _ = snp_request(world, **change)
    with pytest.raises(AttestationError, match=reason):
        issuer(world).issue(request)


def test_snp_minimum_tcb_and_missing_entries(world: World) -> None:
    request, _ = snp_request(world)
    strict = TeePolicy(snp=SnpPolicy(minimum_tcb=SnpTcb(bootloader=4, tee=0, snp=25, microcode=0xD9)), snp_roots=world.snp.roots)
    with pytest.raises(AttestationError, match="below the minimum: snp 24 < 25"):
        issuer(world, policy=strict).issue(request)
    request, _ = snp_request(world, service="management")
    with pytest.raises(AttestationError, match=r"enclave info lists no sev-snp measurements for management \(no \[teaclave_management_service.sev_snp\]\)"):
        issuer(world).issue(request)
    request, _ = snp_request(world)
    with pytest.raises(AttestationError, match="TEE type 'sev_snp' is not supported"):
        issuer(world).issue(replace(request, tee_type="sev_snp"))


def test_evidence_replayed_for_another_service_or_key_is_refused(world: World) -> None:
    request, _ = snp_request(world, service="storage")
    other = ec.generate_private_key(ec.SECP256R1())
    replayed = replace(request, service="frontend", csr_pem=csr(other, "frontend"))
    with pytest.raises(AttestationError, match="SEV-SNP evidence refused: report data"):
        issuer(world).issue(replayed)


def tdx_request(world: World, service: str = "storage", **quote: object) -> IssueRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    fields: dict[str, object] = {"report_data": report_data_for(key.public_key()), "mr_td": TD[0], "rtmrs": TD[1:], **quote}
    return IssueRequest(service, csr(key, service), "tdx", world.tdx.tdx_quote(**fields))  # type: ignore[arg-type]


def test_tdx_evidence_gets_a_certificate(world: World) -> None:
    request = tdx_request(world)
    issued = issuer(world, dcap=collateral_for(world.tdx)).issue(request)
    peer = verifier(world).verify(issued.certificate, expected_services=["storage"])
    assert peer.tee_type == "tdx" and peer.mr_enclave == world.info.measurement("storage").mr_enclave
    content = ReportContent.parse(EndorsedReport.from_certificate(issued.certificate).report)
    assert content.raw["kettleTcbStatus"] == "UpToDate" and content.status == "OK"
    carried = CarriedEvidence.from_certificate(issued.certificate)
    assert carried is not None and carried.kind == "tdx" and carried.evidence == request.evidence and carried.certificates == ()


def test_tdx_refusals(world: World) -> None:
    good = collateral_for(world.tdx)
    with pytest.raises(AttestationError, match="TDX evidence refused: report data does not match"):
        issuer(world, dcap=good).issue(tdx_request(world, report_data=b"\x07" * 64))
    with pytest.raises(AttestationError, match="TDX evidence refused: MRTD 3131.* is not an accepted TDX measurement"):
        issuer(world, dcap=good).issue(tdx_request(world, rtmrs=(TD[1], TD[2], TD[3], b"\x00" * 48)))
    debug = bytes([0x01]) + bytes(world.tdx.tdx_quote()[48 + 121 : 48 + 128])
    with pytest.raises(AttestationError, match="TDX evidence refused: .*Debug mode is enabled"):
        issuer(world, dcap=good).issue(tdx_request(world, td_attributes=debug))
    with pytest.raises(AttestationError, match="TDX evidence refused: TCB status OutOfDate is not accepted"):
        issuer(world, dcap=outdated_collateral(world.tdx)).issue(tdx_request(world))
    expired = collateral_for(world.tdx, issued=NOW - timedelta(days=40), next_update=NOW - timedelta(days=10))
    with pytest.raises(AttestationError, match="TDX evidence refused: refused at .*"):
        issuer(world, dcap=expired).issue(tdx_request(world))
    as_sgx = replace(tdx_request(world), tee_type="sgx")
    with pytest.raises(AttestationError, match="the evidence is a TDX quote, not SGX"):
        issuer(world, dcap=good).issue(as_sgx)


def test_outdated_tcb_is_accepted_only_with_its_advisories_named(world: World) -> None:
    outdated = outdated_collateral(world.tdx)
    level = json.loads(json.loads(outdated)["tcb_info"])["tcbLevels"][1]
    policy = TeePolicy(dcap=DcapPolicy(allowed={"OutOfDate": frozenset(level["advisoryIDs"])}), intel_root_der=world.tdx.root_ca_der)
    issued = issuer(world, dcap=outdated, policy=policy).issue(tdx_request(world))
    content = ReportContent.parse(EndorsedReport.from_certificate(issued.certificate).report)
    assert content.status == "OUT_OF_DATE" and content.raw["advisoryIDs"] == level["advisoryIDs"]
    # A client that accepts only OK refuses it; the AS's acceptance does not decide for the client.
    assert "quote status OUT_OF_DATE is not accepted" in verifier(world).examine(issued.certificate).reason


def test_sgx_evidence(world: World) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    quote = world.sgx.sgx_quote(report_data=report_data_for(key.public_key()), mr_enclave=MR_ENCLAVE, isv_prod_id=3, isv_svn=9)
    request = IssueRequest("storage", csr(key, "storage"), "sgx", quote)
    doc = json.loads(collateral_for(world.sgx))
    level = json.loads(doc["tcb_info"])["tcbLevels"]
    statuses = {lvl["tcbStatus"]: lvl.get("advisoryIDs", []) for lvl in level}
    policy = TeePolicy(
        dcap=DcapPolicy(allowed={s: frozenset(a) for s, a in statuses.items() if s not in ("UpToDate", "Revoked")}),
        intel_root_der=world.sgx.root_ca_der,
    )
    issued = issuer(world, dcap=collateral_for(world.sgx), policy=policy).issue(request)
    body = QuoteBody.parse(ReportContent.parse(EndorsedReport.from_certificate(issued.certificate).report).quote_body)
    assert body.mr_enclave == world.info.measurement("storage").mr_enclave and (body.isv_prod_id, body.isv_svn) == (3, 9)
    wrong = world.sgx.sgx_quote(report_data=report_data_for(key.public_key()), mr_enclave=MR_ENCLAVE, isv_prod_id=4)
    with pytest.raises(AttestationError, match="ISV product id 4 is not 3"):
        issuer(world, dcap=collateral_for(world.sgx), policy=policy).issue(replace(request, evidence=wrong))


@pytest.mark.parametrize(
    "value",
    [
        b"\x04\x05{}",
        b"\x04\x02{}",
        CarriedEvidence("sev-snp", b"x").to_extension_value()[:-1],
        b"\x04\x81\x02{}",
        b"\x30\x02{}",
    ],
)
def test_evidence_extension_parsing_is_strict(value: bytes) -> None:
    with pytest.raises(AttestationError):
        CarriedEvidence.from_extension_value(value)


def test_evidence_too_large_for_the_extension_is_not_written() -> None:
    with pytest.raises(AttestationError, match="more than 32768"):
        CarriedEvidence("tdx", b"\x00" * 24 * 1024).to_extension_value()
    assert len(CarriedEvidence("tdx", b"\x00" * 20 * 1024).to_extension_value()) <= 32 * 1024


def test_evidence_extension_round_trip_long_form() -> None:
    vcek = (Path(__file__).parent / "data" / "tee" / "snp" / "test-vcek.der").read_bytes()
    carried = CarriedEvidence("sev-snp", b"\x00" * 1184, (SnpCertificate("vcek", vcek),))
    value = carried.to_extension_value()
    assert value[:2] == b"\x04\x82" and CarriedEvidence.from_extension_value(value) == carried
    doc = json.loads(carried.to_json())
    assert doc == {"v": 1, "kind": "sev-snp", "evidence": base64.b64encode(b"\x00" * 1184).decode(),
                   "certificates": [{"kind": "vcek", "der": base64.b64encode(vcek).decode()}]}
    # The one reader is strict: bytes that are not a DER certificate are refused, even under a valid kind.
    fake = CarriedEvidence("sev-snp", b"\x00" * 1184, (SnpCertificate("vcek", b"\x30" * 1300),))
    with pytest.raises(AttestationError, match="certificate vcek is not a DER certificate"):
        CarriedEvidence.from_extension_value(fake.to_extension_value())


# --- settings -----------------------------------------------------------------------------


def test_tee_policy_from_settings(tmp_path: Path, world: World, caplog: pytest.LogCaptureFixture) -> None:
    from kettle.attestation_service.server import tee_policy
    from kettle.config import AttestationConfig

    policy = tee_policy(AttestationConfig(
        snp_max_vmpl=2, snp_allow_migration_agent=True, snp_minimum_tcb="bootloader=4,tee=0,snp=24,microcode=217",
        allowed_tcb_status=("SWHardeningNeeded:INTEL-SA-00615",),
    ))
    assert policy.snp == SnpPolicy(max_vmpl=2, allow_migration_agent=True, minimum_tcb=SnpTcb(4, 0, 24, 217))
    assert policy.dcap.allowed == {"SWHardeningNeeded": frozenset({"INTEL-SA-00615"})}
    assert policy.snp_roots is None and policy.intel_root_der is None
    world.snp.write_roots(tmp_path)
    (tmp_path / "intel_sgx_root_ca.der").write_bytes(world.tdx.root_ca_der)
    with caplog.at_level("WARNING"):
        policy = tee_policy(AttestationConfig(unsafe_test_roots=str(tmp_path)))
    assert policy.snp_roots is not None and set(policy.snp_roots) == {"Milan"}
    assert policy.intel_root_der == world.tdx.root_ca_der
    assert "UNSAFE: real TEE evidence is verified under TEST roots" in caplog.text


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ("snp_minimum_tcb = 'bootloader=4'", "attestation.snp_minimum_tcb lacks tee, snp, microcode"),
        ("snp_minimum_tcb = 'bootloader=4,tee=0,snp=24,microcode=x'", "is comma-separated NAME=NUMBER"),
        ("snp_minimum_tcb = 'bootloader=400,tee=0,snp=24,microcode=1'", "components are 0..255"),
        ("snp_max_vmpl = 4", "attestation.snp_max_vmpl must be between 0 and 3"),
        ("allowed_tcb_status = ['Revoked']", "TCB status Revoked can never be accepted"),
        ("allowed_tcb_status = ['Fine']", "unknown TCB status 'Fine'"),
        ("allowed_tcb_status = ['OutOfDate:A', 'OutOfDate:B']", "each status once"),
    ],
)
def test_bad_settings_are_refused_at_load(tmp_path: Path, settings: str, reason: str) -> None:
    from kettle.config import load_config
    from kettle.errors import ConfigError

    (tmp_path / "kettle.toml").write_text(f"[attestation]\n{settings}\n")
    with pytest.raises(ConfigError, match=reason):
        load_config(tmp_path)


def test_unsafe_test_roots_must_hold_roots(tmp_path: Path) -> None:
    from kettle.attestation_service.server import tee_policy
    from kettle.config import AttestationConfig
    from kettle.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a folder"):
        tee_policy(AttestationConfig(unsafe_test_roots=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="holds neither \\*_ask_ark_asvk.pem nor intel_sgx_root_ca.der"):
        tee_policy(AttestationConfig(unsafe_test_roots=str(tmp_path)))
    (tmp_path / "milan_ask_ark_asvk.pem").write_text("not pem")
    with pytest.raises(AttestationError, match="Milan: the AMD chain is not PEM certificates"):
        tee_policy(AttestationConfig(unsafe_test_roots=str(tmp_path)))
