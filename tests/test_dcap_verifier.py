"""The DCAP verifier (TDX and SGX quotes) on real captured quotes and on quotes of our own test roots.

Real vectors: ``tests/data/tee/dcap`` (README there states each verdict and its time).
Test roots: ``tests/dcap_test_roots.py`` signs quotes and collateral with keys of its own.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from dcap_test_roots import DcapTestRoots

from kettle.attestation.dcap import (
    INTEL_ROOT_CA_SHA256,
    DcapMeasurements,
    DcapPolicy,
    DcapVerdict,
    TdReport,
    examine_dcap_quote,
    intel_root_ca_der,
    parse_quote,
)
from kettle.errors import AttestationError, ConfigError, InvalidArgument

VECTORS = Path(__file__).parent / "data" / "tee" / "dcap"
SGX_ADVISORIES = frozenset({"INTEL-SA-00289", "INTEL-SA-00615"})
SGX_POLICY = DcapPolicy(allowed={"ConfigurationAndSWHardeningNeeded": SGX_ADVISORIES})
# Which checks may refuse a changed quote: the change must break its structure or a signature,
# never pass them and be caught only by a policy that happens to disagree.
TAMPER_CHECKS = {"quote format", "PCK chain", "quote verification"}


@dataclass(frozen=True)
class Vector:
    quote_file: str
    at: datetime

    @property
    def quote(self) -> bytes:
        return (VECTORS / self.quote_file).read_bytes()

    @property
    def collateral(self) -> bytes:
        return (VECTORS / f"{self.quote_file}_collateral.json").read_bytes()

    @property
    def next_update(self) -> datetime:
        return datetime.fromisoformat(json.loads(json.loads(self.collateral)["tcb_info"])["nextUpdate"])

    def examine(self, quote: bytes | None = None, **kwargs: object) -> DcapVerdict:
        kwargs.setdefault("at", self.at)
        return examine_dcap_quote(self.quote if quote is None else quote, collateral=self.collateral, **kwargs)  # type: ignore[arg-type]


TDX = Vector("tdx_quote", datetime(2025, 6, 19, 11, 16, 3, tzinfo=UTC))
SGX = Vector("sgx_quote", datetime(2025, 6, 19, 11, 56, 11, tzinfo=UTC))
TDX_OUTDATED = Vector("tdx_quote_outdated", datetime(2026, 2, 18, 11, 58, 51, tzinfo=UTC))


def failed(verdict: DcapVerdict) -> list[str]:
    return [c.name for c in verdict.checks if not c.ok]


# ---------------------------------------------------------------- the real vectors' stated verdicts


def test_tdx_quote_is_accepted_up_to_date_under_intels_pinned_root() -> None:
    verdict = TDX.examine()
    assert verdict.ok, verdict.reason
    assert verdict.tcb_status == "UpToDate" and verdict.advisory_ids == ()
    details = {c.name: c.detail for c in verdict.checks}
    assert details["quote format"] == "DCAP quote v4, TDX (TD report 1.0)"
    assert details["trust anchor"] == "Intel SGX Root CA (pinned)"


def test_sgx_quote_is_refused_by_the_default_policy_for_its_tcb_status() -> None:
    verdict = SGX.examine()
    assert not verdict.ok
    assert failed(verdict) == ["tcb status"]
    assert verdict.reason == "TCB status ConfigurationAndSWHardeningNeeded is not accepted (accepted: UpToDate)"
    assert verdict.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")


def test_sgx_quote_is_accepted_only_when_its_status_and_all_its_advisories_are_named() -> None:
    assert SGX.examine(policy=SGX_POLICY).ok
    one_missing = DcapPolicy(allowed={"ConfigurationAndSWHardeningNeeded": frozenset({"INTEL-SA-00289"})})
    verdict = SGX.examine(policy=one_missing)
    assert not verdict.ok
    assert verdict.reason == (
        "TCB status ConfigurationAndSWHardeningNeeded carries advisories not accepted by policy: INTEL-SA-00615"
    )
    status_only = DcapPolicy(allowed={"ConfigurationAndSWHardeningNeeded": frozenset()})
    assert not SGX.examine(policy=status_only).ok
    advisories_under_another_status = DcapPolicy(allowed={"SWHardeningNeeded": SGX_ADVISORIES})
    assert "is not accepted" in SGX.examine(policy=advisories_under_another_status).reason


def test_outdated_tdx_quote_is_refused_for_its_tcb_level() -> None:
    verdict = TDX_OUTDATED.examine()
    assert not verdict.ok and verdict.quote is None
    assert failed(verdict) == ["quote verification"]
    assert "No matching TCB level found" in verdict.reason
    assert verdict.checks[0].detail == "DCAP quote v5, TDX (TD report 1.5)"


@pytest.mark.parametrize("vector", [TDX, SGX, TDX_OUTDATED], ids=lambda v: v.quote_file)
def test_every_vector_is_refused_30_days_after_its_collateral_next_update(vector: Vector) -> None:
    verdict = vector.examine(at=vector.next_update + timedelta(days=30), policy=SGX_POLICY)
    assert not verdict.ok
    assert failed(verdict) == ["quote verification"]
    assert "expired" in verdict.reason.lower()


def test_collateral_is_refused_before_it_was_issued() -> None:
    verdict = TDX.examine(at=TDX.at - timedelta(days=1))
    assert failed(verdict) == ["quote verification"]
    assert "issue date is in the future" in verdict.reason


# ---------------------------------------------------------------- every byte of the quote


# A changed length byte of a name in a certificate makes cryptography warn before it is refused.
@pytest.mark.filterwarnings("ignore:Attribute's length must be")
@pytest.mark.parametrize("vector", [TDX, SGX], ids=lambda v: v.quote_file)
def test_every_single_byte_change_in_the_quote_is_refused(vector: Vector) -> None:
    """Every byte, not a sample: the signed header and body, the signature data (signature,
    attestation key, QE report and its signature, QE auth data, PCK chain) and the padding.
    The outdated vector is left out: it is refused unchanged, so refusing it changed proves nothing."""
    quote = vector.quote
    assert vector.examine(policy=SGX_POLICY).ok
    for index in range(len(quote)):
        changed = bytearray(quote)
        changed[index] ^= 0x01
        verdict = vector.examine(bytes(changed), policy=SGX_POLICY)
        assert not verdict.ok, f"byte {index} changed and still accepted"
        assert failed(verdict)[0] in TAMPER_CHECKS, (index, verdict.reason)


def _flip_in_root_certificate(quote: bytes) -> bytes:
    """A change inside the chain's root certificate that keeps the chain well-formed PEM and DER."""
    root_pem = parse_quote(quote).pck_chain[-1].public_bytes(Encoding.PEM)
    start = quote.index(root_pem)
    for index in range(start + len(b"-----BEGIN CERTIFICATE-----\n"), start + len(root_pem)):
        changed = bytearray(quote)
        changed[index] ^= 0x01
        try:
            parse_quote(bytes(changed))
        except AttestationError:
            continue
        return bytes(changed)
    raise AssertionError("no well-formed change of the root certificate found")


def _change(quote: bytes, index: int, value: int) -> bytes:
    changed = bytearray(quote)
    changed[index] = value
    return bytes(changed)


def _unchecked_by_dcap_qvl() -> list[object]:
    tdx, sgx = TDX.quote, SGX.quote
    tdx_signature_length = struct.unpack_from("<I", tdx, 632)[0]
    # SGX v3: signature length, signature, attestation key, QE report, its signature, auth data (2 + 32), type.
    sgx_pck_size = parse_quote(sgx).signed_size + 4 + 64 + 64 + 384 + 64 + 2 + 32 + 2
    cases = [
        ("TDX zero padding after the signature data", TDX, _change(tdx, len(tdx) - 1, 1), "not zero padding"),
        (
            "TDX signature data length one longer, reaching into the padding",
            TDX,
            tdx[:632] + struct.pack("<I", tdx_signature_length + 1) + tdx[636:],
            "size does not match the signature data length",
        ),
        ("TDX certification data type 7 instead of 6", TDX, _change(tdx, 764, 7), "certification data type 7"),
        ("TDX PEM line break in the PCK chain", TDX, _change(tdx, tdx.index(b"\n", 1258), 0x0B), "canonical PEM"),
        ("TDX root certificate in the quote", TDX, _flip_in_root_certificate(tdx), "does not end in the trusted root"),
        # 256 bytes shorter: dcap-qvl reads a chain cut off inside the root certificate it does not use.
        ("SGX PCK certification data size", SGX, _change(sgx, sgx_pck_size + 1, sgx[sgx_pck_size + 1] ^ 1), "size does"),
    ]
    return [pytest.param(*case, id=case[0]) for case in cases]


@pytest.mark.parametrize(("what", "vector", "changed", "reason"), _unchecked_by_dcap_qvl())
def test_bytes_outside_what_is_signed_are_checked_here(what: str, vector: Vector, changed: bytes, reason: str) -> None:
    """dcap-qvl 0.7.0 accepts these changes: they are outside every signature (lengths and
    types it does not hold to the bytes that follow, the PEM text around signed DER, the
    root in the chain, which it replaces by its own, zero padding it never reads). They are
    harmless to its verdict, but a quote that can change without being refused can carry
    anything; the structural parse refuses each, with its reason."""
    collateral = dcap_qvl.QuoteCollateralV3.from_json(vector.collateral.decode())
    dcap_qvl.verify(changed, collateral, int(vector.at.timestamp()))  # does not raise: dcap-qvl alone accepts it
    verdict = vector.examine(changed, policy=SGX_POLICY)
    assert not verdict.ok, what
    assert failed(verdict)[0] in {"quote format", "PCK chain"}
    assert reason in verdict.reason, verdict.reason


# ---------------------------------------------------------------- parsing, report data, measurements


def test_parse_quote_reads_the_fields_the_vectors_state() -> None:
    tdx = parse_quote(TDX.quote)
    assert isinstance(tdx.report, TdReport) and tdx.kind == "tdx" and tdx.header.version == 4
    assert tdx.report.td_attributes.hex() == "0000001000000000" and not tdx.debug
    assert tdx.report.mr_td.hex() == (
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
    )
    assert tdx.report.rtmrs[3] == bytes(48)
    assert tdx.report.report_data.hex().startswith("9a9d48e7f6799642")
    assert tdx.padding == 70
    sgx = parse_quote(SGX.quote)
    assert sgx.kind == "sgx" and sgx.header.version == 3 and not sgx.debug
    assert sgx.report.mr_enclave.hex() == "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    assert sgx.report.mr_signer.hex() == "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    outdated = parse_quote(TDX_OUTDATED.quote)
    assert outdated.header.version == 5 and outdated.body_type == "td15"


def test_report_data_must_be_the_expected_one() -> None:
    report_data = parse_quote(TDX.quote).report.report_data
    assert TDX.examine(expected_report_data=report_data).ok
    verdict = TDX.examine(expected_report_data=bytes(64))
    assert failed(verdict) == ["report data"]
    with pytest.raises(InvalidArgument, match="32 bytes, not 64"):
        TDX.examine(expected_report_data=bytes(32))


def test_tdx_measurements_must_be_an_accepted_mrtd_and_rtmr_tuple() -> None:
    report = parse_quote(TDX.quote).report
    assert isinstance(report, TdReport)
    accepted = (report.mr_td, *report.rtmrs)
    assert TDX.examine(measurements=DcapMeasurements(td=frozenset({accepted}))).ok
    other_rtmr2 = (report.mr_td, report.rtmrs[0], report.rtmrs[1], bytes(48), report.rtmrs[3])
    verdict = TDX.examine(measurements=DcapMeasurements(td=frozenset({other_rtmr2})))
    assert failed(verdict) == ["measurement"]
    sgx_only = DcapMeasurements(mr_enclave=frozenset({bytes(32)}))
    assert TDX.examine(measurements=sgx_only).reason == "no TDX measurements are configured"


def test_sgx_measurements_check_mrenclave_mrsigner_product_and_minimum_svn() -> None:
    report = parse_quote(SGX.quote).report
    exact = DcapMeasurements(
        mr_enclave=frozenset({report.mr_enclave}),
        mr_signer=frozenset({report.mr_signer}),
        isv_prod_id=report.isv_prod_id,  # type: ignore[union-attr]
        min_isv_svn=report.isv_svn,  # type: ignore[union-attr]
    )
    assert SGX.examine(policy=SGX_POLICY, measurements=exact).ok
    refusals = {
        "MRENCLAVE": DcapMeasurements(mr_enclave=frozenset({bytes(32)})),
        "MRSIGNER": DcapMeasurements(mr_signer=frozenset({bytes(32)})),
        "ISV product id": DcapMeasurements(isv_prod_id=report.isv_prod_id + 1),  # type: ignore[union-attr]
        "below the minimum": DcapMeasurements(min_isv_svn=report.isv_svn + 1),  # type: ignore[union-attr]
        "no SGX measurements": DcapMeasurements(td=frozenset()),
    }
    for reason, measurements in refusals.items():
        verdict = SGX.examine(policy=SGX_POLICY, measurements=measurements)
        assert failed(verdict) == ["measurement"] and reason in verdict.reason


# ---------------------------------------------------------------- policy, inputs, pinned root


def test_policy_refuses_unknown_statuses_and_never_accepts_revoked() -> None:
    with pytest.raises(ConfigError, match="unknown TCB status 'UptoDate'"):
        DcapPolicy(allowed={"UptoDate": frozenset()})
    with pytest.raises(ConfigError, match="Revoked can never be accepted"):
        DcapPolicy(allowed={"Revoked": frozenset()})
    policy = DcapPolicy(allowed={"SWHardeningNeeded": {"INTEL-SA-00615"}})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        policy.allowed["OutOfDate"] = frozenset()  # type: ignore[index]


def test_bad_inputs_get_specific_refusals() -> None:
    with pytest.raises(InvalidArgument, match="timezone"):
        TDX.examine(at=datetime(2025, 6, 19, 11, 16, 3))
    assert TDX.examine(TDX.quote[:40]).reason == "quote is 40 bytes, shorter than its 48-byte header"
    assert TDX.examine(TDX.quote[:700]).reason == "quote signature data length 4300 runs past the end of the quote"
    verdict = examine_dcap_quote(TDX.quote, collateral=b"{}", at=TDX.at)
    assert failed(verdict) == ["collateral"] and "not valid DCAP collateral JSON" in verdict.reason


def test_the_shipped_root_is_intels_sgx_root_ca_the_one_dcap_qvl_embeds() -> None:
    root = x509.load_der_x509_certificate(intel_root_ca_der())
    assert root.fingerprint(hashes.SHA256()).hex() == INTEL_ROOT_CA_SHA256
    assert root.subject.rfc4514_string() == "C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX Root CA"
    chain = json.loads(TDX.collateral)["pck_crl_issuer_chain"]
    assert x509.load_pem_x509_certificates(chain.encode())[-1] == root
    collateral = dcap_qvl.QuoteCollateralV3.from_json(TDX.collateral.decode())
    at = int(TDX.at.timestamp())
    ours = dcap_qvl.verify_with_root_ca(TDX.quote, collateral, intel_root_ca_der(), at)
    assert ours.to_json() == dcap_qvl.verify(TDX.quote, collateral, at).to_json()


# ---------------------------------------------------------------- our own test roots

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def tdx_roots() -> DcapTestRoots:
    return DcapTestRoots.make(NOW - timedelta(days=1), "tdx_quote")


@pytest.fixture(scope="module")
def tdx_collateral(tdx_roots: DcapTestRoots) -> bytes:
    return tdx_roots.collateral(issued=NOW - timedelta(hours=1), next_update=NOW + timedelta(days=30))


def test_a_quote_of_the_test_roots_verifies_with_dcap_qvl_under_that_root(
    tdx_roots: DcapTestRoots, tdx_collateral: bytes
) -> None:
    quote = tdx_roots.tdx_quote(report_data=b"\x07" * 64, mr_td=b"\x01" * 48)
    collateral = dcap_qvl.QuoteCollateralV3.from_json(tdx_collateral.decode())
    report = dcap_qvl.verify_with_root_ca(quote, collateral, tdx_roots.root_ca_der, int(NOW.timestamp()))
    assert report.status == "UpToDate"
    measurement = (b"\x01" * 48, *(bytes(48),) * 4)
    verdict = examine_dcap_quote(
        quote,
        collateral=tdx_collateral,
        at=NOW,
        root_ca_der=tdx_roots.root_ca_der,
        expected_report_data=b"\x07" * 64,
        measurements=DcapMeasurements(td=frozenset({measurement})),
    )
    assert verdict.ok, verdict.reason
    trust = next(c for c in verdict.checks if c.name == "trust anchor")
    assert trust.detail.startswith("UNSAFE test root")


def test_a_quote_of_the_test_roots_is_refused_under_intels_real_root(
    tdx_roots: DcapTestRoots, tdx_collateral: bytes
) -> None:
    quote = tdx_roots.tdx_quote()
    verdict = examine_dcap_quote(quote, collateral=tdx_collateral, at=NOW)
    assert failed(verdict) == ["PCK chain"]
    collateral = dcap_qvl.QuoteCollateralV3.from_json(tdx_collateral.decode())
    with pytest.raises(ValueError, match="Verification failed"):
        dcap_qvl.verify(quote, collateral, int(NOW.timestamp()))  # dcap-qvl's own Intel root refuses it too


def test_test_root_quotes_refused_for_debug_expired_collateral_revoked_pck_and_another_root(
    tdx_roots: DcapTestRoots, tdx_collateral: bytes
) -> None:
    def examine(quote: bytes, collateral: bytes = tdx_collateral, at: datetime = NOW) -> DcapVerdict:
        return examine_dcap_quote(quote, collateral=collateral, at=at, root_ca_der=tdx_roots.root_ca_der)

    debug = bytearray(parse_quote(tdx_roots.tdx_quote()).report.td_attributes)  # type: ignore[union-attr]
    debug[0] |= 0x01
    assert "debug" in examine(tdx_roots.tdx_quote(td_attributes=bytes(debug))).reason.lower()
    expired = tdx_roots.collateral(issued=NOW - timedelta(days=31), next_update=NOW - timedelta(days=1))
    assert "expired" in examine(tdx_roots.tdx_quote(), collateral=expired).reason.lower()
    revoked = tdx_roots.collateral(issued=NOW - timedelta(hours=1), next_update=NOW + timedelta(days=30), revoke_pck=True)
    assert "revoked" in examine(tdx_roots.tdx_quote(), collateral=revoked).reason.lower()
    others = DcapTestRoots.make(NOW - timedelta(days=1), "tdx_quote")
    verdict = examine_dcap_quote(
        others.tdx_quote(), collateral=tdx_collateral, at=NOW, root_ca_der=tdx_roots.root_ca_der
    )
    assert failed(verdict) == ["PCK chain"]


def test_test_root_sgx_quote_debug_enclave_refused_and_policy_applies() -> None:
    roots = DcapTestRoots.make(NOW - timedelta(days=1), "sgx_quote")
    collateral = roots.collateral(issued=NOW - timedelta(hours=1), next_update=NOW + timedelta(days=30))

    def examine(quote: bytes, policy: DcapPolicy = SGX_POLICY) -> DcapVerdict:
        return examine_dcap_quote(quote, collateral=collateral, at=NOW, root_ca_der=roots.root_ca_der, policy=policy)

    assert examine(roots.sgx_quote(mr_enclave=b"\x05" * 32)).ok
    assert failed(examine(roots.sgx_quote(), DcapPolicy())) == ["tcb status"]
    debug_attributes = bytes.fromhex("0700000000000000e700000000000000")  # INIT | DEBUG | MODE64BIT
    assert "debug" in examine(roots.sgx_quote(attributes=debug_attributes)).reason.lower()
