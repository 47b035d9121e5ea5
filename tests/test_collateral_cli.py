"""``kettle attest collateral import|export|status|fetch`` and ``kettle attest evidence`` from the cache.

Real vectors against the vendor roots shipped with the package, served by a real local
HTTP server standing in for AMD KDS and an Intel PCCS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from collateral_servers import CollateralServer
from typer.testing import CliRunner, Result

from kettle.attestation.collateral import quote_platform
from kettle.attestation.snp import SnpTcb
from kettle.cli.main import app

DATA = Path(__file__).parent / "data" / "tee"
SNP_REPORT, VCEK = DATA / "snp" / "test-report.bin", DATA / "snp" / "test-vcek.der"
TDX, TDX_COLLATERAL, TDX_AT = DATA / "dcap" / "tdx_quote", DATA / "dcap" / "tdx_quote_collateral.json", "2025-06-19T11:16:03Z"


@pytest.fixture
def server():
    with CollateralServer() as s:
        report = SNP_REPORT.read_bytes()
        s.serve_vcek("Milan", report[0x1A0:0x1E0], SnpTcb.from_bytes(report[0x180:0x188], "Milan"), VCEK.read_bytes())
        _, fmspc, ca = quote_platform(TDX.read_bytes())
        s.serve_intel(TDX_COLLATERAL.read_bytes(), tee="tdx", fmspc=fmspc, ca=ca)
        yield s


@pytest.fixture
def home(tmp_path, monkeypatch, server) -> Path:
    monkeypatch.setenv("KETTLE_HOME", str(tmp_path))
    monkeypatch.delenv("KETTLE_CONFIG", raising=False)
    (tmp_path / "kettle.toml").write_text(f'[attestation]\namd_kds_url = "{server.url}"\nintel_pcs_url = "{server.url}"\n')
    return tmp_path


def kettle(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["attest", *map(str, args)])


def status(*args: str | Path) -> dict:  # type: ignore[type-arg]
    result = kettle("collateral", "status", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_fetch_status_export_import(home, server, tmp_path):
    fetched = kettle("collateral", "fetch", "--kind", "sev-snp", SNP_REPORT)
    assert fetched.exit_code == 0, fetched.output
    assert "vcek Milan/" in fetched.stdout and "expires 2030-01-24" in fetched.stdout and server.url in fetched.stdout
    [entry] = status()["entries"]
    assert entry["kind"] == "vcek" and entry["state"] == "fresh" and entry["expires"].startswith("2030-01-24")
    assert (home / "attestation" / "collateral" / "vcek").is_dir()
    text = kettle("collateral", "status")
    assert "vcek  Milan/" in text.stdout and "fresh" in text.stdout

    bundle = tmp_path / "bundle.json"
    assert kettle("collateral", "export", bundle).exit_code == 0
    other = tmp_path / "other"
    imported = kettle("collateral", "import", bundle, "--collateral-dir", other)
    assert imported.exit_code == 0, imported.output
    assert "1 entry imported" in imported.stdout
    assert [e["key"] for e in status("--collateral-dir", other)["entries"]] == [entry["key"]]


def test_fetch_refuses_served_collateral_that_expired(home, server):
    # The real collateral's nextUpdate (2025-07) is long past: fetched now, it is refused.
    result = kettle("collateral", "fetch", "--kind", "tdx", TDX)
    assert result.exit_code == 1
    assert "served collateral that expired at 2025-07-19" in result.output
    assert status()["entries"] == []
    wrong = kettle("collateral", "fetch", "--kind", "sgx", TDX)
    assert wrong.exit_code == 1 and "is a tdx quote, not sgx" in wrong.output


def test_import_of_a_directory_is_all_or_nothing(home, tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "vcek.der").write_bytes(VCEK.read_bytes())
    (seed / "junk.bin").write_bytes(b"junk")
    refused = kettle("collateral", "import", seed)
    assert refused.exit_code == 1 and "nothing imported" in refused.output and "junk.bin" in refused.output
    assert status()["entries"] == []
    (seed / "junk.bin").unlink()
    assert kettle("collateral", "import", seed).exit_code == 0
    assert [e["kind"] for e in status()["entries"]] == ["vcek"]


def test_evidence_takes_collateral_from_the_cache_offline_unless_asked_to_fetch(home, server):
    offline = kettle("evidence", SNP_REPORT, "--kind", "sev-snp", "--at", "2025-06-01T00:00:00Z")
    assert offline.exit_code == 1 and "no VCEK" in offline.output and "offline" in offline.output
    assert "(give --cert FILE, or --fetch)" in offline.output
    assert server.requests == []
    online = kettle("evidence", SNP_REPORT, "--kind", "sev-snp", "--at", "2025-06-01T00:00:00Z", "--fetch")
    assert online.exit_code == 0, online.output
    assert online.output.rstrip().endswith("accepted")
    again = kettle("evidence", SNP_REPORT, "--kind", "sev-snp", "--at", "2025-06-01T00:00:00Z")
    assert again.exit_code == 0 and len(server.requests) == 1  # from the cache now

    tdx = kettle("evidence", TDX, "--kind", "tdx", "--at", TDX_AT, "--fetch", "--json")
    assert tdx.exit_code == 0, tdx.output
    assert json.loads(tdx.stdout)["evidence"]["tcb status"] == "UpToDate"
    # Judged later than the collateral's nextUpdate, the cached collateral is refused.
    late = kettle("evidence", TDX, "--kind", "tdx", "--at", "2025-08-19T00:00:00Z")
    assert late.exit_code == 1 and "expired at 2025-07-19" in late.output
    mixed = kettle("evidence", TDX, "--kind", "tdx", "--collateral", TDX_COLLATERAL, "--fetch")
    assert mixed.exit_code == 2 and "--fetch" in mixed.output
