"""Enclave info per TEE kind: strict parsing, the Teaclave-compatible digest, the auditor tool."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kettle.attestation.enclave_info import (
    EnclaveInfo,
    Measurement,
    SgxMeasurement,
    TeeMeasurements,
    tee_digest,
    with_tee_measurement,
)
from kettle.errors import AttestationError

SNP = bytes.fromhex("aa" * 48)
TD = (bytes.fromhex("01" * 48), bytes.fromhex("02" * 48), bytes.fromhex("03" * 48), bytes.fromhex("04" * 48), bytes.fromhex("05" * 48))
SIGNER = bytes.fromhex("22" * 32)


def full_info() -> EnclaveInfo:
    info = EnclaveInfo({"frontend": Measurement(bytes.fromhex("11" * 32), SIGNER)})
    info = with_tee_measurement(info, "storage", sev_snp=SNP, mr_signer=SIGNER)
    info = with_tee_measurement(info, "storage", tdx=TD)
    return with_tee_measurement(
        info, "storage", sgx=SgxMeasurement(mr_enclave=frozenset({b"\x33" * 32}), isv_prod_id=7, min_isv_svn=2)
    )


def test_round_trip_and_accessors() -> None:
    info = full_info()
    data = info.render()
    parsed = EnclaveInfo.parse(data)
    assert parsed == info and parsed.render() == data
    storage = parsed.measurement("storage")
    assert storage.tee is not None and storage.tee.kinds == ["sev-snp", "tdx", "sgx"]
    assert storage.mr_enclave == tee_digest("storage", storage.tee)
    assert parsed.tee_measurements("storage", "sev-snp").sev_snp == {SNP}
    dcap = storage.tee.dcap("tdx")
    assert dcap is not None and dcap.td == {TD}
    sgx = storage.tee.dcap("sgx")
    assert sgx is not None and sgx.isv_prod_id == 7 and sgx.min_isv_svn == 2 and sgx.mr_signer is None
    with pytest.raises(AttestationError, match=r"lists no tdx measurements for frontend \(no \[teaclave_frontend_service.tdx\]\)"):
        parsed.tee_measurements("frontend", "tdx")
    # What Teaclave's SDK reads is still a flat string pair per service.
    doc = tomllib.loads(data.decode())
    assert doc["teaclave_storage_service"]["mr_enclave"] == storage.mr_enclave.hex()


def test_digest_is_domain_separated_and_names_service_and_every_field() -> None:
    tee = TeeMeasurements(sev_snp=frozenset({SNP}))
    base = tee_digest("storage", tee)
    assert len(base) == 32
    assert tee_digest("frontend", tee) != base  # one VM image, two services: still told apart
    assert tee_digest("storage", TeeMeasurements(sev_snp=frozenset({SNP, b"\x01" * 48}))) != base
    assert tee_digest("storage", TeeMeasurements(tdx=frozenset({TD}))) != tee_digest(
        "storage", TeeMeasurements(tdx=frozenset({(TD[0], TD[1], TD[2], TD[3], b"\x06" * 48)}))
    )
    # Order in the file does not matter: the canonical form sorts.
    two = [SNP, b"\x01" * 48]
    assert tee_digest("storage", TeeMeasurements(sev_snp=frozenset(two))) == tee_digest(
        "storage", TeeMeasurements(sev_snp=frozenset(reversed(two)))
    )


def _table(extra: str, service: str = "storage", mr_enclave: str | None = None) -> bytes:
    tee = TeeMeasurements(sev_snp=frozenset({SNP}))
    mre = mr_enclave or tee_digest(service, tee).hex()
    return (
        f'[teaclave_{service}_service]\nmr_enclave = "{mre}"\nmr_signer = "{SIGNER.hex()}"\n'
        f'[teaclave_{service}_service.sev_snp]\nmeasurements = ["{SNP.hex()}"]\n{extra}'
    ).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_table("", mr_enclave="11" * 32), r"\[teaclave_storage_service\] mr_enclave is not the digest of its TEE measurements \([0-9a-f]{64}\)"),
        # The digest of another service's identical entries is refused too (replay across services).
        (_table("", mr_enclave=tee_digest("frontend", TeeMeasurements(sev_snp=frozenset({SNP}))).hex()), "is not the digest"),
        (_table("colour = 1\n"), r"\[teaclave_storage_service.sev_snp\] has unknown key\(s\) colour \(allowed: measurements\)"),
        (_table("[teaclave_storage_service.sev]\nx = 1\n"), r"\[teaclave_storage_service\] has unknown key\(s\) sev \(allowed: mr_enclave, mr_signer, sev_snp, tdx, sgx\)"),
        (b'[teaclave_x_service]\nmr_enclave = "' + b"1" * 64 + b'"\nmr_signer = "' + b"2" * 64 + b'"\nnote = "hi"\n', r"unknown key\(s\) note"),
        (b'[teaclave_x_service]\nmr_enclave = "' + b"1" * 64 + b'"\nmr_signer = "' + b"2" * 64 + b'"\n[teaclave_x_service.sev_snp]\nmeasurements = []\n', "must be a non-empty list of 96 lowercase hex"),
        (b'[teaclave_x_service]\nmr_enclave = "' + b"1" * 64 + b'"\nmr_signer = "' + b"2" * 64 + b'"\n[teaclave_x_service.sev_snp]\nmeasurements = ["' + b"A" * 96 + b'"]\n', "96 lowercase hex"),
        (b'[teaclave_x_service]\nmr_enclave = "' + b"1" * 64 + b'"\nmr_signer = "' + b"2" * 64 + b'"\n[teaclave_x_service.tdx]\naccepted = [{ mrtd = "' + b"1" * 96 + b'" }]\n', "exactly the keys mrtd, rtmr0, rtmr1, rtmr2, rtmr3"),
        (b'[teaclave_x_service]\nmr_enclave = "' + b"1" * 64 + b'"\nmr_signer = "' + b"2" * 64 + b'"\n[teaclave_x_service.sgx]\n', "must set at least one of"),
        (b'[teaclave_x_service]\nmr_enclave = "' + b"1" * 64 + b'"\nmr_signer = "' + b"2" * 64 + b'"\n[teaclave_x_service.sgx]\nisv_prod_id = 70000\n', "isv_prod_id must be an integer 0..65535"),
        (b'[teaclave_x_service]\nmr_enclave = "' + b"1" * 64 + b'"\nmr_signer = "' + b"2" * 64 + b'"\n[teaclave_x_service.sgx]\nmin_isv_svn = true\n', "min_isv_svn must be an integer"),
        (b'[teaclave_x_service]\nmr_enclave = "' + b"1" * 64 + b'"\nmr_signer = "' + b"2" * 64 + b'"\nsgx = 3\n', r"\[teaclave_x_service.sgx\] must be a table"),
    ],
)
def test_strict_parsing_refuses_with_a_specific_sentence(data: bytes, reason: str) -> None:
    with pytest.raises(AttestationError, match=reason):
        EnclaveInfo.parse(data)


def test_with_tee_measurement_needs_a_signer_for_a_new_entry() -> None:
    with pytest.raises(AttestationError, match="no entry for storage: give its mr_signer"):
        with_tee_measurement(EnclaveInfo({}), "storage", sev_snp=SNP)
    with pytest.raises(AttestationError, match="exactly one"):
        with_tee_measurement(EnclaveInfo({}), "storage", mr_signer=SIGNER)


def _kettle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kettle", *args], capture_output=True, text=True, timeout=60)


def test_cli_add_measurement_writes_a_verifiable_entry(tmp_path: Path) -> None:
    path = tmp_path / "enclave_info.toml"
    path.write_bytes(EnclaveInfo({"frontend": Measurement(b"\x11" * 32, SIGNER)}).render())
    done = _kettle("audit", "add-measurement", "storage", "--enclave-info", str(path), "--sev-snp", SNP.hex(), "--mr-signer", SIGNER.hex())
    assert done.returncode == 0, done.stderr
    done = _kettle("audit", "add-measurement", "storage", "--enclave-info", str(path), "--tdx", ",".join(v.hex() for v in TD))
    assert done.returncode == 0, done.stderr
    info = EnclaveInfo.parse(path.read_bytes())
    tee = info.measurement("storage").tee
    assert tee is not None and tee.sev_snp == {SNP} and tee.tdx == {TD}
    assert info.measurement("storage").mr_enclave.hex() in done.stdout
    assert info.measurement("frontend").mr_enclave == b"\x11" * 32
    bad = _kettle("audit", "add-measurement", "storage", "--enclave-info", str(path), "--sev-snp", "abcd")
    assert bad.returncode == 1 and "--sev-snp must be 96 hex characters" in bad.stderr
    assert EnclaveInfo.parse(path.read_bytes()) == info  # nothing changed


def test_teaclave_sdk_reads_real_tee_enclave_info_written_by_kettle(tmp_path: Path) -> None:
    """Teaclave's Python SDK reads enclave_info.toml with ``toml`` 0.10 (not tomllib) and compares
    each ``[teaclave_<service>_service]`` table's ``mr_enclave`` / ``mr_signer`` strings; the
    per-TEE sub-tables ``kettle audit add-measurement`` writes must not get in its way."""
    import toml

    path = tmp_path / "enclave_info.toml"
    path.write_bytes(EnclaveInfo({"frontend": Measurement(b"\x11" * 32, SIGNER)}).render())
    td2 = tuple(bytes([0x10 + i]) * 48 for i in range(5))
    for args in (
        ("storage", "--sev-snp", SNP.hex(), "--mr-signer", SIGNER.hex()),
        ("storage", "--sev-snp", "bb" * 48),
        ("storage", "--tdx", ",".join(v.hex() for v in TD)),
        ("storage", "--tdx", ",".join(v.hex() for v in td2)),
        ("storage", "--sgx-mr-enclave", "33" * 32, "--sgx-mr-enclave", "34" * 32, "--isv-prod-id", "7", "--min-isv-svn", "0"),
        ("frontend", "--sgx-mr-signer", "35" * 32, "--isv-prod-id", "0"),
        ("execution", "--tdx", ",".join(v.hex() for v in TD), "--mr-signer", "44" * 32),
    ):
        done = _kettle("audit", "add-measurement", *args, "--enclave-info", str(path))
        assert done.returncode == 0, done.stderr
    info = EnclaveInfo.parse(path.read_bytes())
    assert info.measurement("storage").tee is not None and info.measurement("storage").tee.kinds == ["sev-snp", "tdx", "sgx"]

    text = path.read_text()
    doc = toml.load(str(path))  # exactly how the SDK opens it
    assert doc == toml.loads(text) == tomllib.loads(text)  # toml 0.10 reads the sub-tables as TOML 1.0 does
    assert sorted(doc) == ["teaclave_execution_service", "teaclave_frontend_service", "teaclave_storage_service"]
    for service in ("execution", "frontend", "storage"):
        table = doc[f"teaclave_{service}_service"]
        m = info.measurement(service)
        # The SDK's step 10: exact lowercase hex string equality with the quote's MRENCLAVE / MRSIGNER.
        assert (table["mr_enclave"], table["mr_signer"]) == (m.mr_enclave.hex(), m.mr_signer.hex())
    assert doc["teaclave_storage_service"]["sev_snp"]["measurements"] == [SNP.hex(), "bb" * 48]
    assert [e["mrtd"] for e in doc["teaclave_storage_service"]["tdx"]["accepted"]] == [TD[0].hex(), td2[0].hex()]


# --- kettle attest evidence --enclave-info on the real vectors ---------------------------

DATA = Path(__file__).parent / "data" / "tee"


def signed_info(directory: Path, info: EnclaveInfo) -> Path:
    """``info`` in ``directory`` with one auditor's public key and signature beside it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from kettle.attestation.enclave_info import sign_enclave_info

    key = rsa.generate_private_key(65537, 2048)
    path = directory / "enclave_info.toml"
    path.write_bytes(info.render())
    (directory / "auditor.public.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1))
    (directory / "auditor.sign.sha256").write_bytes(sign_enclave_info(path.read_bytes(), key))
    return path


def _attest(*args: str) -> dict:  # type: ignore[type-arg]
    import json

    done = _kettle("attest", "evidence", *args, "--json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_attest_evidence_checks_snp_and_tdx_entries_of_enclave_info(tmp_path: Path) -> None:
    from kettle.attestation.dcap import parse_quote
    from kettle.attestation.snp import parse_snp_report

    report, vcek = DATA / "snp" / "test-report.bin", DATA / "snp" / "test-vcek.der"
    quote, collateral = DATA / "dcap" / "tdx_quote", DATA / "dcap" / "tdx_quote_collateral.json"
    snp_measurement = parse_snp_report(report.read_bytes()).measurement
    td = parse_quote(quote.read_bytes()).report
    info = with_tee_measurement(EnclaveInfo({}), "storage", sev_snp=snp_measurement, mr_signer=SIGNER)
    info = with_tee_measurement(info, "frontend", tdx=(td.mr_td, *td.rtmrs), mr_signer=SIGNER)  # type: ignore[union-attr,arg-type]
    (tmp_path / "good").mkdir()
    path = signed_info(tmp_path / "good", info)
    snp_args = (str(report), "--kind", "sev-snp", "--cert", str(vcek), "--at", "2025-06-01T00:00:00Z")
    tdx_args = (str(quote), "--kind", "tdx", "--collateral", str(collateral), "--at", "2025-06-19T11:16:03Z")
    doc = _attest(*snp_args, "--enclave-info", str(path))
    assert doc["accepted"] and doc["checks"][-1] == {"check": "measurement", "ok": True, "detail": f"{snp_measurement.hex()}, listed for storage"}
    doc = _attest(*tdx_args, "--enclave-info", str(path))
    assert doc["accepted"] and doc["checks"][-1]["detail"].endswith("listed for frontend")
    # Another measurement listed: refused, with the evidence's measurement named.
    other = with_tee_measurement(EnclaveInfo({}), "storage", sev_snp=b"\x01" * 48, mr_signer=SIGNER)
    other = with_tee_measurement(other, "storage", tdx=(b"\x01" * 48,) * 5)
    (tmp_path / "other").mkdir()
    path = signed_info(tmp_path / "other", other)
    doc = _attest(*snp_args, "--enclave-info", str(path))
    assert not doc["accepted"] and doc["reason"] == f"measurement {snp_measurement.hex()} is not listed for any service in enclave info"
    doc = _attest(*tdx_args, "--enclave-info", str(path))
    assert not doc["accepted"] and doc["reason"].startswith(f"MRTD {td.mr_td.hex()} with these RTMR0-3 is not an accepted")
    # Enclave info without entries of the kind says so rather than check nothing.
    (tmp_path / "sim").mkdir()
    path = signed_info(tmp_path / "sim", EnclaveInfo({"storage": Measurement(b"\x11" * 32, SIGNER)}))
    done = _kettle("attest", "evidence", *snp_args, "--enclave-info", str(path))
    assert done.returncode == 1 and "enclave info lists no sev-snp measurements (no [teaclave_<service>_service.sev_snp] table)" in done.stderr
