"""``kettle attest evidence``: an auditor verifies a standalone TEE report or quote offline.

The real evidence of ``tests/data/tee`` (captured on SEV-SNP, TDX and SGX machines)
against the vendor roots shipped with the package, judged at the times its README
gives; the historical ``kettle attest HOST:PORT`` form is the default command and is
exercised by the platform tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from conftest import Platform
from kettle.cli.main import app

DATA = Path(__file__).parent / "data" / "tee"
SNP_REPORT, VCEK = DATA / "snp" / "test-report.bin", DATA / "snp" / "test-vcek.der"
SNP_AT = "2025-06-01T00:00:00Z"
TDX, TDX_COLLATERAL, TDX_AT = DATA / "dcap" / "tdx_quote", DATA / "dcap" / "tdx_quote_collateral.json", "2025-06-19T11:16:03Z"
SGX, SGX_COLLATERAL, SGX_AT = DATA / "dcap" / "sgx_quote", DATA / "dcap" / "sgx_quote_collateral.json", "2025-06-19T11:56:11Z"
SGX_STATUS = "ConfigurationAndSWHardeningNeeded"


def kettle(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["attest", *map(str, args)])


def verdict(*args: str | Path) -> dict:  # type: ignore[type-arg]
    result = kettle(*args, "--json")
    assert result.exit_code in (0, 1), result.output
    doc = json.loads(result.stdout)
    assert doc["accepted"] == (result.exit_code == 0)
    return doc


def first_failure(doc: dict) -> str:  # type: ignore[type-arg]
    """``name: detail`` of the first refused check."""
    check = next(c for c in doc["checks"] if not c["ok"])
    return f"{check['check']}: {check['detail']}"


def test_a_real_snp_report_is_accepted_with_every_check_shown() -> None:
    result = kettle("evidence", SNP_REPORT, "--kind", "sev-snp", "--cert", VCEK, "--at", SNP_AT)
    assert result.exit_code == 0, result.output
    assert "certificate chain: VCEK ← SEV-Milan ← ARK-Milan" in result.output
    assert result.output.rstrip().endswith("accepted")
    doc = verdict("evidence", SNP_REPORT, "--kind", "sev-snp", "--cert", VCEK, "--at", SNP_AT)
    assert doc["evidence"]["measurement"].startswith("a1f3930413247bb3")
    assert all(check["ok"] for check in doc["checks"])


def test_an_snp_report_is_refused_after_its_vcek_expired_and_with_a_changed_byte(tmp_path: Path) -> None:
    doc = verdict("evidence", SNP_REPORT, "--kind", "sev-snp", "--cert", VCEK, "--at", "2030-02-01T00:00:00Z")
    assert first_failure(doc).startswith("certificate validity: ") and "expired" in doc["reason"]
    changed = bytearray(SNP_REPORT.read_bytes())
    changed[0x90] ^= 1  # a byte of the measurement
    (tmp_path / "changed.bin").write_bytes(changed)
    doc = verdict("evidence", tmp_path / "changed.bin", "--kind", "sev-snp", "--cert", VCEK, "--at", SNP_AT)
    assert first_failure(doc).startswith("report signature: ")


def test_a_real_tdx_quote_is_accepted_and_the_outdated_one_refused() -> None:
    assert verdict("evidence", TDX, "--kind", "tdx", "--collateral", TDX_COLLATERAL, "--at", TDX_AT)["accepted"]
    doc = verdict("evidence", DATA / "dcap" / "tdx_quote_outdated", "--kind", "tdx",
                  "--collateral", DATA / "dcap" / "tdx_quote_outdated_collateral.json", "--at", "2026-02-18T11:58:51Z")
    assert "No matching TCB level found" in doc["reason"]


def test_an_sgx_status_is_accepted_only_with_its_advisories_named() -> None:
    base = ("evidence", SGX, "--kind", "sgx", "--collateral", SGX_COLLATERAL, "--at", SGX_AT)
    assert first_failure(verdict(*base)) == f"tcb status: TCB status {SGX_STATUS} is not accepted (accepted: UpToDate)"
    assert not verdict(*base, "--allow-status", SGX_STATUS)["accepted"]  # its advisories are not named
    accepted = verdict(*base, "--allow-status", f"{SGX_STATUS}:INTEL-SA-00289,INTEL-SA-00615")
    assert accepted["accepted"] and accepted["evidence"]["tcb status"] == SGX_STATUS


def test_expired_collateral_is_refused() -> None:
    doc = verdict("evidence", TDX, "--kind", "tdx", "--collateral", TDX_COLLATERAL, "--at", "2025-09-01T00:00:00Z")
    assert not doc["accepted"]


def test_measurements_are_checked_against_signed_enclave_info(platform: Platform) -> None:
    """The platform's enclave info (simulation measurements) does not list the real enclave's MRENCLAVE."""
    allow = ("--allow-status", f"{SGX_STATUS}:INTEL-SA-00289,INTEL-SA-00615")
    doc = verdict("evidence", SGX, "--kind", "sgx", "--collateral", SGX_COLLATERAL, "--at", SGX_AT, *allow,
                  "--enclave-info", platform.config.enclave_info_path)
    assert first_failure(doc) == "measurement: MRENCLAVE 33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb is not accepted"


@pytest.mark.parametrize(("args", "message"), [
    (("evidence", TDX, "--kind", "nitro", "--collateral", TDX_COLLATERAL), "--kind must be one of"),
    (("evidence", TDX, "--kind", "tdx", "--collateral", TDX_COLLATERAL, "--at", "yesterday"), "not an ISO-8601 time"),
])
def test_usage_mistakes_are_one_clear_line(args: tuple[str | Path, ...], message: str) -> None:
    result = kettle(*args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_quote_of_another_kind_is_named() -> None:
    result = kettle("evidence", TDX, "--kind", "sgx", "--collateral", TDX_COLLATERAL, "--at", TDX_AT)
    assert result.exit_code == 1 and "the file is a tdx quote, not sgx" in result.output, result.output
