"""The SEV-SNP verifier against real captured evidence and against fresh test hardware.

Real evidence (``tests/data/tee/snp``, see its README) is judged at a time inside its
certificate's window, never by the wall clock. Fresh test roots (``snp_test_roots``)
sign reports shaped as the policy cases need.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from snp_test_roots import INSIDE, SnpTestHardware

from kettle.attestation.snp import (
    REPORT_SIZE,
    SIGNED_SIZE,
    SnpPolicy,
    SnpProductRoots,
    SnpRoots,
    SnpTcb,
    SnpVerdict,
    amd_roots,
    examine_snp_report,
    load_snp_certificate,
    load_snp_roots,
    parse_snp_report,
    snp_certificate_info,
)
from kettle.errors import AttestationError

DATA = Path(__file__).parent / "data" / "tee" / "snp"
VCEK_REPORT = (DATA / "test-report.bin").read_bytes()
VCEK = (DATA / "test-vcek.der").read_bytes()
VLEK_REPORT = (DATA / "test-vlek-report.bin").read_bytes()
VLEK = (DATA / "test-vlek.der").read_bytes()
# Inside both real certificates' windows (VCEK 2023-01-24..2030-01-24, VLEK 2024-12-10..2025-12-10).
AT = datetime(2025, 6, 1, tzinfo=UTC)
VCEK_MEASUREMENT = bytes.fromhex(
    "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c"
)
VLEK_MEASUREMENT = bytes.fromhex(
    "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0"
)
# The VLEK report was taken at VMPL 1; its stated verdict (accept) holds under a policy allowing that.
VLEK_POLICY = SnpPolicy(max_vmpl=1)
SIGNATURE_END = SIGNED_SIZE + 2 * 72


@pytest.fixture(scope="module")
def milan() -> SnpTestHardware:
    return SnpTestHardware.make("Milan")


def failed(verdict: SnpVerdict) -> list[str]:
    return [c.name for c in verdict.checks if not c.ok]


def test_real_vcek_report_gets_its_stated_verdict() -> None:
    report_data = parse_snp_report(VCEK_REPORT).report_data
    verdict = examine_snp_report(
        VCEK_REPORT, certificate=VCEK, at=AT, expected_report_data=report_data, measurements={VCEK_MEASUREMENT}
    )
    assert verdict.ok, verdict.reason
    assert [c.name for c in verdict.checks] == [
        "report format", "reserved fields", "signature algorithm", "signing key", "certificate chain",
        "certificate validity", "report signature", "tcb", "chip id", "debug", "migration agent", "vmpl", "report data", "measurement",
    ]
    assert verdict.product == "Milan"
    report = verdict.report
    assert report is not None
    assert (report.version, report.policy, report.vmpl, report.signing_key_name) == (2, 0x3001F, 0, "VCEK")
    assert report.reported_tcb.hex() == "0300000000000873"
    assert report.measurement == VCEK_MEASUREMENT
    assert "bootloader 3, tee 0, snp 8, microcode 115" in verdict.checks[7].detail


def test_real_vlek_report_gets_its_stated_verdict() -> None:
    verdict = examine_snp_report(
        VLEK_REPORT, certificate=VLEK, at=AT, policy=VLEK_POLICY, measurements={VLEK_MEASUREMENT}
    )
    assert verdict.ok, verdict.reason
    assert verdict.report is not None and verdict.report.signing_key_name == "VLEK"
    assert "VLEK ← SEV-VLEK-Milan ← ARK-Milan" in next(c.detail for c in verdict.checks if c.name == "certificate chain")
    # The default policy allows VMPL 0 only: the same report is refused for that alone.
    strict = examine_snp_report(VLEK_REPORT, certificate=VLEK, at=AT)
    assert failed(strict) == ["vmpl"]
    assert strict.reason == "VMPL 1 is above the allowed 0"


@pytest.mark.parametrize(
    ("report", "certificate", "policy", "at", "reason"),
    [
        (VCEK_REPORT, VCEK, SnpPolicy(), datetime(2030, 1, 24, 17, 58, 27, tzinfo=UTC), "SEV-VCEK expired at 2030-01-24 17:58:26 UTC"),
        (VLEK_REPORT, VLEK, VLEK_POLICY, datetime(2025, 12, 10, 22, 14, 22, tzinfo=UTC), "SEV-VLEK expired at 2025-12-10 22:14:21 UTC"),
        (VLEK_REPORT, VLEK, VLEK_POLICY, datetime(2024, 12, 10, tzinfo=UTC), "SEV-VLEK is not valid before 2024-12-10 22:14:21 UTC"),
    ],
)
def test_real_report_is_refused_outside_its_certificate_window(
    report: bytes, certificate: bytes, policy: SnpPolicy, at: datetime, reason: str
) -> None:
    verdict = examine_snp_report(report, certificate=certificate, at=at, policy=policy)
    assert not verdict.ok
    assert failed(verdict) == ["certificate validity"]
    assert verdict.reason == reason


@pytest.mark.parametrize(
    ("report", "certificate", "policy"), [(VCEK_REPORT, VCEK, SnpPolicy()), (VLEK_REPORT, VLEK, VLEK_POLICY)], ids=["vcek", "vlek"]
)
def test_every_changed_byte_of_the_signed_range_or_the_signature_is_refused(
    report: bytes, certificate: bytes, policy: SnpPolicy
) -> None:
    """Each byte of [0, 0x2A0) and of R and S (0x2A0..0x330), in turn, with its lowest bit flipped."""
    started = time.monotonic()
    accepted = []
    for offset in range(SIGNATURE_END):
        changed = bytearray(report)
        changed[offset] ^= 0x01
        verdict = examine_snp_report(bytes(changed), certificate=certificate, at=AT, policy=policy)
        if verdict.ok or verdict.report is not None:
            accepted.append(offset)
    assert accepted == []
    # Verify-only cost per variant; generous for a loaded machine, yet far below a per-byte
    # chain rebuild with key generation.
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("report", [VCEK_REPORT, VLEK_REPORT], ids=["vcek", "vlek"])
def test_every_byte_after_the_signature_must_be_zero(report: bytes) -> None:
    """0x330..0x4A0 is the signature structure's reserved tail: not signed, so the verifier
    requires it zero; otherwise unauthenticated bytes could ride along with a valid report."""
    for offset in range(SIGNATURE_END, REPORT_SIZE):
        changed = bytearray(report)
        changed[offset] = 0x01
        verdict = examine_snp_report(bytes(changed), certificate=VCEK if report is VCEK_REPORT else VLEK, at=AT, policy=VLEK_POLICY)
        assert failed(verdict) == ["reserved fields"], offset
        assert f"byte {offset:#05x} is not" in verdict.reason


def _milan() -> SnpProductRoots:
    return amd_roots()["Milan"]


def test_real_vcek_under_the_asvk_and_vlek_under_the_ask_are_refused() -> None:
    """The pinned Milan chain with its two intermediates in each other's place."""
    milan = _milan()
    swapped: SnpRoots = {"Milan": SnpProductRoots(ark=milan.ark, ask=milan.asvk, asvk=milan.ask)}
    vcek = examine_snp_report(VCEK_REPORT, certificate=VCEK, at=AT, roots=swapped)
    assert failed(vcek) == ["certificate chain"] and vcek.report is None
    assert "signed by a VCEK, but its certificate is issued by SEV-Milan (ASVK); a VCEK must be issued by the ASK" in vcek.reason
    vlek = examine_snp_report(VLEK_REPORT, certificate=VLEK, at=AT, policy=VLEK_POLICY, roots=swapped)
    assert failed(vlek) == ["certificate chain"] and vlek.report is None
    assert "a VLEK must be issued by the ASVK" in vlek.reason


def test_fresh_vcek_under_the_asvk_and_vlek_under_the_ask_are_refused(milan: SnpTestHardware) -> None:
    vcek_by_asvk = milan.endorsement("vcek", issuer="asvk")
    verdict = examine_snp_report(milan.report(signer="vcek"), certificate=vcek_by_asvk, at=INSIDE, roots=milan.roots)
    assert failed(verdict) == ["certificate chain"]
    assert "a VCEK must be issued by the ASK" in verdict.reason
    vlek_by_ask = milan.endorsement("vlek", issuer="ask")
    verdict = examine_snp_report(milan.report(signer="vlek"), certificate=vlek_by_ask, at=INSIDE, roots=milan.roots)
    assert failed(verdict) == ["certificate chain"]
    assert "a VLEK must be issued by the ASVK" in verdict.reason


def test_chain_under_genoa_or_turin_ark_is_refused() -> None:
    amd = amd_roots()
    others = {"Genoa": amd["Genoa"], "Turin": amd["Turin"]}
    verdict = examine_snp_report(VCEK_REPORT, certificate=VCEK, at=AT, roots=others)
    assert failed(verdict) == ["certificate chain"]
    assert verdict.reason == "the VCEK certificate is not issued by a pinned AMD ASK (products: Genoa, Turin)"
    # Milan's intermediates presented under another product's ARK.
    milan = amd["Milan"]
    for product in ("Genoa", "Turin"):
        mixed: SnpRoots = {product: SnpProductRoots(ark=amd[product].ark, ask=milan.ask, asvk=milan.asvk)}
        for report, cert in ((VCEK_REPORT, VCEK), (VLEK_REPORT, VLEK)):
            verdict = examine_snp_report(report, certificate=cert, at=AT, policy=VLEK_POLICY, roots=mixed)
            assert failed(verdict) == ["certificate chain"]
            assert f"is not issued by ARK-{product}" in verdict.reason


def test_amd_roots_ship_with_the_package() -> None:
    roots = amd_roots()
    assert sorted(roots) == ["Genoa", "Milan", "Turin"]
    for product, chain in roots.items():
        assert chain.ark.subject == chain.ark.issuer
        names = [c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value for c in chain]
        assert names == [f"ARK-{product}", f"SEV-{product}", f"SEV-VLEK-{product}"]


@pytest.mark.parametrize(
    ("name", "tcb", "hwid_prefix"),
    [
        ("test-vcek-invalid-legacy.der", SnpTcb(bootloader=3, tee=0, snp=10, microcode=0xA9), bytes(range(8))),
        ("test-vcek-invalid-new.der", SnpTcb(bootloader=0, tee=0, snp=0, microcode=0x1E), bytes(range(8))),
        ("test-vcek.der", SnpTcb(bootloader=3, tee=0, snp=8, microcode=0x73), bytes.fromhex("c38427a30d4c7af9")),
    ],
)
def test_both_vcek_extension_encodings_parse(name: str, tcb: SnpTcb, hwid_prefix: bytes) -> None:
    """The legacy form carries hwID as its 64 raw bytes, the new one as a DER OCTET STRING."""
    info = snp_certificate_info(load_snp_certificate((DATA / name).read_bytes()), "Milan")
    assert info.tcb == tcb
    assert info.hwid is not None and len(info.hwid) == 64 and info.hwid.startswith(hwid_prefix)


def test_invalid_vceks_do_not_verify_the_real_report() -> None:
    for name in ("test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"):
        verdict = examine_snp_report(VCEK_REPORT, certificate=(DATA / name).read_bytes(), at=AT)
        assert failed(verdict) == ["certificate chain"]


def test_fresh_report_verifies_under_its_test_roots_and_not_under_amds(milan: SnpTestHardware, tmp_path: Path) -> None:
    report = milan.report(report_data=b"\x42" * 64, measurement=b"\x07" * 48)
    verdict = examine_snp_report(
        report, certificate=milan.vcek, at=INSIDE, roots=milan.roots, expected_report_data=b"\x42" * 64, measurements=[b"\x07" * 48]
    )
    assert verdict.ok, verdict.reason
    # The folder form an unsafe_test_roots setting names.
    milan.write_roots(tmp_path)
    assert examine_snp_report(report, certificate=milan.vcek, at=INSIDE, roots=load_snp_roots(tmp_path)).ok
    vlek = examine_snp_report(milan.report(signer="vlek"), certificate=milan.vlek, at=INSIDE, roots=milan.roots)
    assert vlek.ok, vlek.reason
    real = examine_snp_report(report, certificate=milan.vcek, at=INSIDE)
    assert failed(real) == ["certificate chain"] and real.report is None
    assert "not issued by a pinned AMD ASK (products: Milan, Genoa, Turin)" in real.reason


def test_certificate_in_pem_and_hwid_as_octet_string_verify(milan: SnpTestHardware) -> None:
    der = milan.endorsement("vcek", issuer="ask", hwid_octet_string=True)
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    assert examine_snp_report(milan.report(), certificate=pem, at=INSIDE, roots=milan.roots).ok


def test_turin_tcb_layout_and_product_family() -> None:
    turin = SnpTestHardware.make("Turin")
    verdict = examine_snp_report(turin.report(), certificate=turin.vcek, at=INSIDE, roots=turin.roots)
    assert verdict.ok, verdict.reason
    assert "fmc 1" in next(c.detail for c in verdict.checks if c.name == "tcb")
    wrong_family = examine_snp_report(turin.report(cpuid_family=0x19), certificate=turin.vcek, at=INSIDE, roots=turin.roots)
    assert failed(wrong_family) == ["product"]
    assert wrong_family.reason == "the report's CPU family 0x19 is not Turin's (0x1a)"


MINIMUM = SnpTcb(bootloader=4, tee=0, snp=25, microcode=0xD9)


@pytest.mark.parametrize(
    ("fields", "policy", "check", "reason"),
    [
        ({"policy": 0x30000 | 1 << 19}, SnpPolicy(), "debug", "the guest policy allows debugging (bit 19): the host can read the guest's memory"),
        ({"policy": 0x30000 | 1 << 18}, SnpPolicy(), "migration agent", "the guest policy allows a migration agent (bit 18), which policy does not allow"),
        ({"vmpl": 2}, SnpPolicy(max_vmpl=1), "vmpl", "VMPL 2 is above the allowed 1"),
        ({}, SnpPolicy(minimum_tcb=MINIMUM), "minimum tcb", "the reported TCB is below the minimum: snp 24 < 25"),
    ],
)
def test_policy_refusals(milan: SnpTestHardware, fields: dict[str, int], policy: SnpPolicy, check: str, reason: str) -> None:
    verdict = examine_snp_report(milan.report(**fields), certificate=milan.vcek, at=INSIDE, roots=milan.roots, policy=policy)
    assert failed(verdict) == [check]
    assert verdict.reason == reason
    assert verdict.report is not None  # authenticated; refused by policy alone


def test_policy_allowances(milan: SnpTestHardware, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        unsafe = SnpPolicy(unsafe_allow_debug=True)
    assert "UNSAFE" in caplog.text
    debug = examine_snp_report(milan.report(policy=0x30000 | 1 << 19), certificate=milan.vcek, at=INSIDE, roots=milan.roots, policy=unsafe)
    assert debug.ok and next(c.detail for c in debug.checks if c.name == "debug").startswith("UNSAFE")
    migration = milan.report(policy=0x30000 | 1 << 18)
    assert examine_snp_report(migration, certificate=milan.vcek, at=INSIDE, roots=milan.roots, policy=SnpPolicy(allow_migration_agent=True)).ok
    at_minimum = SnpPolicy(minimum_tcb=milan.tcb)
    assert examine_snp_report(milan.report(), certificate=milan.vcek, at=INSIDE, roots=milan.roots, policy=at_minimum).ok
    with pytest.raises(ValueError, match="max_vmpl"):
        SnpPolicy(max_vmpl=4)


def test_wrong_report_data_and_unlisted_measurement_are_refused(milan: SnpTestHardware) -> None:
    report = milan.report(report_data=b"\x01" * 64, measurement=b"\x02" * 48)
    verdict = examine_snp_report(
        report, certificate=milan.vcek, at=INSIDE, roots=milan.roots, expected_report_data=b"\x03" * 64, measurements=[b"\x04" * 48]
    )
    assert failed(verdict) == ["report data", "measurement"]
    assert verdict.reason == f"report data {'01' * 64} is not the expected {'03' * 64}"
    assert verdict.checks[-1].detail == f"measurement {'02' * 48} is not an accepted measurement"


def test_reported_tcb_and_chip_id_must_match_the_vcek(milan: SnpTestHardware) -> None:
    older = SnpTcb(bootloader=4, tee=0, snp=23, microcode=0xD9)
    verdict = examine_snp_report(milan.report(tcb=older), certificate=milan.vcek, at=INSIDE, roots=milan.roots)
    assert failed(verdict) == ["tcb"]
    assert "the reported TCB (bootloader 4, tee 0, snp 23, microcode 217) is not the TCB the certificate was issued for" in verdict.reason
    other_chip = examine_snp_report(milan.report(chip_id=b"\x05" * 64), certificate=milan.vcek, at=INSIDE, roots=milan.roots)
    assert failed(other_chip) == ["chip id"] and other_chip.reason == "the report's chip id is not the VCEK's hwID"
    masked = examine_snp_report(milan.report(chip_id=bytes(64), flags=0b10), certificate=milan.vcek, at=INSIDE, roots=milan.roots)
    assert failed(masked) == ["chip id"] and "masks its chip id" in masked.reason


@pytest.mark.parametrize(
    ("fields", "check", "reason"),
    [
        ({"version": 1}, "report format", "SEV-SNP report version 1 is not supported (version 2 or later)"),
        ({"signature_algo": 2}, "signature algorithm", "signature algorithm 2 is not 1 (ECDSA P-384 with SHA-384)"),
        ({"flags": 7 << 2}, "signing key", "the report's signing key is none, not a VCEK or VLEK"),
        ({"flags": 1 << 5}, "reserved fields", "reserved bits of the flags at 0x048 are set (0x20)"),
        ({"patch": {0x04C: b"\x01"}}, "reserved fields", "reserved bytes [0x04c, 0x050) must be zero, byte 0x04c is not"),
        ({"patch": {0x18B: b"\x01"}}, "reserved fields", "reserved bytes [0x18b, 0x1a0) must be zero, byte 0x18b is not"),
        ({"version": 2, "patch": {0x188: b"\x19"}}, "reserved fields", "reserved bytes [0x188, 0x1a0) must be zero, byte 0x188 is not"),
        ({"patch": {0x1EB: b"\x01"}}, "reserved fields", "reserved bytes [0x1eb, 0x1ec) must be zero, byte 0x1eb is not"),
        ({"patch": {0x200: b"\x01"}}, "reserved fields", "reserved bytes [0x1f8, 0x2a0) must be zero, byte 0x200 is not"),
        (
            {"version": 6, "patch": {0x208: b"\x01"}},
            "reserved fields",
            "reserved bytes [0x208, 0x2a0) must be zero, byte 0x208 is not (version 6 is newer than 5, the newest layout known here)",
        ),
    ],
)
def test_layout_refusals_of_signed_reports(milan: SnpTestHardware, fields: dict, check: str, reason: str) -> None:
    """Correctly signed, yet not a report this verifier accepts: each layout rule on its own."""
    verdict = examine_snp_report(milan.report(**fields), certificate=milan.vcek, at=INSIDE, roots=milan.roots)
    assert failed(verdict) == [check]
    assert verdict.reason == reason


def test_version_5_mitigation_vectors_are_not_reserved(milan: SnpTestHardware) -> None:
    report = milan.report(version=5, patch={0x1F8: b"\x03", 0x200: b"\x01"})
    assert examine_snp_report(report, certificate=milan.vcek, at=INSIDE, roots=milan.roots).ok


def test_signature_components_must_be_zero_extended(milan: SnpTestHardware) -> None:
    report = bytearray(milan.report())
    report[SIGNED_SIZE + 48] = 0x01  # R's first byte above 384 bits
    verdict = examine_snp_report(bytes(report), certificate=milan.vcek, at=INSIDE, roots=milan.roots)
    assert failed(verdict) == ["report signature"] and verdict.reason == "signature R is not a zero-extended P-384 integer"


def test_malformed_inputs_are_refused_with_a_reason(milan: SnpTestHardware) -> None:
    short = examine_snp_report(VCEK_REPORT[:-1], certificate=VCEK, at=AT)
    assert failed(short) == ["report format"] and short.reason == "an SEV-SNP report is 1184 bytes, this is 1183"
    garbage = examine_snp_report(VCEK_REPORT, certificate=b"not a certificate", at=AT)
    assert failed(garbage) == ["certificate"] and garbage.reason == "the VCEK/VLEK certificate is neither DER nor PEM"
    with pytest.raises(AttestationError, match="1184 bytes"):
        parse_snp_report(b"")
    with pytest.raises(ValueError, match="timezone-aware"):
        examine_snp_report(VCEK_REPORT, certificate=VCEK, at=datetime(2025, 6, 1))


def test_root_files_that_are_not_one_products_chain_are_refused(milan: SnpTestHardware, tmp_path: Path) -> None:
    amd = amd_roots()
    mixed = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (amd["Milan"].ask, amd["Genoa"].ark, amd["Milan"].asvk)
    )
    (tmp_path / "genoa_ask_ark_asvk.pem").write_bytes(mixed)
    with pytest.raises(AttestationError, match="Genoa: SEV-Milan is not issued by ARK-Genoa"):
        load_snp_roots(tmp_path)
    (tmp_path / "genoa_ask_ark_asvk.pem").write_bytes(amd["Genoa"].ark.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(AttestationError, match="one ARK, one ASK and one ASVK"):
        load_snp_roots(tmp_path)
    (tmp_path / "genoa_ask_ark_asvk.pem").unlink()
    with pytest.raises(AttestationError, match="no AMD root chains"):
        load_snp_roots(tmp_path)
    # Handed in directly under a product name this verifier has no layout for.
    unknown = examine_snp_report(milan.report(), certificate=milan.vcek, at=INSIDE, roots={"Venice": milan.chain})
    assert failed(unknown) == ["certificate chain"]
    assert unknown.reason == "pinned product Venice is not one of Milan, Genoa, Turin"
