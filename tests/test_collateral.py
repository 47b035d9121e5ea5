"""The collateral cache against real HTTP servers shaped like AMD KDS and an Intel PCCS.

What is served is made by the test hardware roots (fresh keys) or is the real vectors'
certificates and collateral; every fetched item must verify with the real verifiers.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from collateral_servers import CollateralServer, Route
from dcap_test_roots import DcapTestRoots
from snp_test_roots import INSIDE, SnpTestHardware

from kettle.attestation.backends import SnpCertificate
from kettle.attestation.collateral import CollateralCache, quote_platform
from kettle.attestation.dcap import DcapPolicy, examine_dcap_quote
from kettle.attestation.snp import SnpTcb, amd_roots, examine_snp_report
from kettle.errors import AttestationError

TEE = Path(__file__).parent / "data" / "tee"
ISSUED = datetime(2026, 5, 1, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def milan() -> SnpTestHardware:
    return SnpTestHardware.make("Milan")


@pytest.fixture(scope="module")
def tdx_roots() -> DcapTestRoots:
    return DcapTestRoots.make(ISSUED - timedelta(days=30))


@pytest.fixture
def server():
    with CollateralServer() as s:
        yield s


def snp_cache(tmp_path: Path, server: CollateralServer, hw: SnpTestHardware, clock: Clock | None = None, **kw) -> CollateralCache:
    return CollateralCache(tmp_path / "cache", amd_kds_url=server.url, clock=clock or Clock(INSIDE), snp_roots=hw.roots, **kw)


def intel_cache(tmp_path: Path, server: CollateralServer, roots: DcapTestRoots, clock: Clock, **kw) -> CollateralCache:
    return CollateralCache(tmp_path / "cache", intel_pcs_url=server.url, clock=clock, intel_root_der=roots.root_ca_der, **kw)


def serve_tdx(server: CollateralServer, roots: DcapTestRoots, issued: datetime = ISSUED, days: int = 30) -> bytes:
    collateral = roots.collateral(issued=issued, next_update=issued + timedelta(days=days))
    server.serve_intel(collateral, tee="tdx", fmspc="B0C06F000000", ca="platform")
    return collateral


# ---------------------------------------------------------------- SEV-SNP


def test_vcek_is_fetched_once_verifies_the_report_and_then_serves_offline(tmp_path, server, milan):
    report = milan.report()
    server.serve_vcek("Milan", milan.chip_id, milan.tcb, milan.vcek)
    cache = snp_cache(tmp_path, server, milan)
    der = cache.snp_certificate(report)
    assert examine_snp_report(report, certificate=der, at=INSIDE, roots=milan.roots).ok
    assert len(server.requests) == 1 and "blSPL=04&teeSPL=00&snpSPL=24&ucodeSPL=217" in server.requests[0]
    assert cache.snp_certificate(report) == der and len(server.requests) == 1  # warm: no fetch
    server.close()
    offline = snp_cache(tmp_path, server, milan, offline=True)
    assert offline.snp_certificate(report) == der
    [entry] = offline.entries()
    assert entry.kind == "vcek" and entry.state(INSIDE) == "fresh" and entry.source.endswith(server.requests[0])


def test_real_v2_report_tries_products_and_gets_amds_vcek(tmp_path, server):
    report = (TEE / "snp" / "test-report.bin").read_bytes()
    vcek = (TEE / "snp" / "test-vcek.der").read_bytes()
    chip_id, tcb = report[0x1A0:0x1E0], SnpTcb.from_bytes(report[0x180:0x188], "Milan")
    server.serve_vcek("Milan", chip_id, tcb, vcek)
    at = datetime(2025, 6, 1, tzinfo=UTC)
    cache = CollateralCache(tmp_path, amd_kds_url=server.url, clock=Clock(at))
    der = cache.snp_certificate(report)
    assert der == vcek
    assert examine_snp_report(report, certificate=der, at=at).ok
    assert server.requests == [f"/vcek/v1/Milan/{chip_id.hex()}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"]


def test_v2_report_falls_through_to_the_next_product(tmp_path, server, milan):
    genoa = SnpTestHardware.make("Genoa")
    report = genoa.report(version=2)
    server.serve_vcek("Genoa", genoa.chip_id, genoa.tcb, genoa.vcek)
    cache = CollateralCache(tmp_path, amd_kds_url=server.url, clock=Clock(INSIDE), snp_roots={**milan.roots, **genoa.roots})
    assert cache.snp_certificate(report) == genoa.vcek
    assert [r.split("/")[3] for r in server.requests] == ["Milan", "Genoa"]


def test_product_follows_cpuid_and_needs_a_pinned_root(tmp_path, server, milan):
    cache = snp_cache(tmp_path, server, milan)
    with pytest.raises(AttestationError, match="from a Genoa CPU, and no Genoa root is pinned"):
        cache.snp_certificate(milan.report(patch={0x189: bytes([0x11])}))
    with pytest.raises(AttestationError, match="CPU family 0x17 model 0x1 is not an SEV-SNP product"):
        cache.snp_certificate(milan.report(cpuid_family=0x17))
    turin_only = CollateralCache(tmp_path, clock=Clock(INSIDE), snp_roots=SnpTestHardware.make("Turin").roots)
    with pytest.raises(AttestationError, match="version 2.*neither root is pinned"):
        turin_only.snp_certificate(milan.report(version=2))
    assert server.requests == []


def test_turin_url_has_eight_byte_hwid_and_fmc(tmp_path, server):
    turin = SnpTestHardware.make("Turin")
    path = server.serve_vcek("Turin", turin.chip_id, turin.tcb, turin.vcek)
    assert f"/vcek/v1/Turin/{turin.chip_id[:8].hex()}?fmcSPL=01&blSPL=09" in path
    # The report's chip id is the VCEK's hwID (tests' Turin chip ids are 64 random bytes).
    cache = CollateralCache(tmp_path, amd_kds_url=server.url, clock=Clock(INSIDE), snp_roots=turin.roots)
    assert cache.snp_certificate(turin.report()) == turin.vcek


def test_supplied_certificates_win_and_a_vlek_is_never_fetched(tmp_path, server, milan):
    cache = snp_cache(tmp_path, server, milan)
    assert cache.snp_certificate(milan.report(), [SnpCertificate("vcek", b"supplied")]) == b"supplied"
    vlek_report = milan.report(signer="vlek")
    assert cache.snp_certificate(vlek_report, [SnpCertificate("ask", b"x"), SnpCertificate("vlek", milan.vlek)]) == milan.vlek
    with pytest.raises(AttestationError, match="VLEK, which AMD's KDS does not serve.*host must supply"):
        cache.snp_certificate(vlek_report)
    assert server.requests == []


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, b"", "HTTP 404"),
        (500, b"oops", "HTTP 500"),
        (200, b"garbage", "refused: the VCEK/VLEK certificate is neither DER nor PEM"),
    ],
)
def test_kds_failures_say_url_and_status_and_cache_nothing(tmp_path, server, milan, status, body, expected):
    path = server.serve_vcek("Milan", milan.chip_id, milan.tcb, milan.vcek)
    server.routes[path] = Route(status, body)
    cache = snp_cache(tmp_path, server, milan)
    with pytest.raises(AttestationError, match=expected) as refused:
        cache.snp_certificate(milan.report())
    assert server.url + "/vcek/v1/Milan/" in refused.value.reason
    assert list(cache.entries()) == []


def test_kds_down(tmp_path, milan):
    down = CollateralServer()
    down.close()
    cache = snp_cache(tmp_path, down, milan)
    with pytest.raises(AttestationError, match=r"no VCEK .* is cached .* fetching http://127\.0\.0\.1:\d+/vcek/v1/Milan/.* failed"):
        cache.snp_certificate(milan.report())


def test_kds_too_slow_or_cut_short(tmp_path, server, milan):
    path = server.serve_vcek("Milan", milan.chip_id, milan.tcb, milan.vcek)
    cache = snp_cache(tmp_path, server, milan, timeout=0.3)
    server.delay.clear()
    with pytest.raises(AttestationError, match="/vcek/v1/Milan/.* failed: timed out"):
        cache.snp_certificate(milan.report())
    server.delay.set()
    server.routes[path] = Route(200, milan.vcek[:100], {"Content-Length": str(len(milan.vcek))})
    with pytest.raises(AttestationError, match=r"/vcek/v1/Milan/.* failed: the answer was cut short \(100 of \d+ bytes\)"):
        cache.snp_certificate(milan.report())
    assert list(cache.entries()) == []


def test_a_vcek_for_another_chip_or_tcb_is_refused_and_not_cached(tmp_path, server, milan):
    other_chip = milan.endorsement("vcek", issuer="ask", hwid=bytes(64))
    path = server.serve_vcek("Milan", milan.chip_id, milan.tcb, other_chip)
    cache = snp_cache(tmp_path, server, milan)
    with pytest.raises(AttestationError, match="for another chip"):
        cache.snp_certificate(milan.report())
    older = SnpTcb(bootloader=3, tee=0, snp=24, microcode=0xD9)
    server.routes[path] = Route(200, milan.endorsement("vcek", issuer="ask", tcb=older))
    with pytest.raises(AttestationError, match="is for TCB bootloader 3.*not the reported bootloader 4"):
        cache.snp_certificate(milan.report())
    # The VLEK under the ASVK served as the VCEK: refused by the chain check.
    server.routes[path] = Route(200, milan.vlek)
    with pytest.raises(AttestationError, match="issued by SEV-VLEK-Milan"):
        cache.snp_certificate(milan.report())
    assert list(cache.entries()) == [] and not list((tmp_path / "cache").rglob("*.json"))


def test_expired_vcek_is_refused_unless_unsafe(tmp_path, server, milan, caplog):
    server.serve_vcek("Milan", milan.chip_id, milan.tcb, milan.vcek)
    clock = Clock(INSIDE)
    snp_cache(tmp_path, server, milan, clock).snp_certificate(milan.report())
    clock.now = datetime(2034, 6, 1, tzinfo=UTC)  # past the test VCEK's end (2034-01-01)
    offline = snp_cache(tmp_path, server, milan, clock, offline=True)
    with pytest.raises(AttestationError, match="cached VCEK .* expired at 2034-01-01T00:00:00Z .* offline"):
        offline.snp_certificate(milan.report())
    # Online, the fetched one is just as expired: refused too, and not cached over the old one.
    with pytest.raises(AttestationError, match="served a VCEK that expired"):
        snp_cache(tmp_path, server, milan, clock).snp_certificate(milan.report())
    with caplog.at_level(logging.WARNING):
        unsafe = snp_cache(tmp_path, server, milan, clock, offline=True, unsafe_allow_expired_collateral=True)
        assert unsafe.snp_certificate(milan.report()) == milan.vcek
    assert sum("UNSAFE" in r.message for r in caplog.records) >= 2


def test_concurrent_callers_make_one_kds_fetch(tmp_path, server, milan):
    server.serve_vcek("Milan", milan.chip_id, milan.tcb, milan.vcek)
    cache = snp_cache(tmp_path, server, milan)
    server.delay.clear()
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache.snp_certificate(milan.report()))) for _ in range(8)]
    for t in threads:
        t.start()
    threading.Timer(0.3, server.delay.set).start()
    for t in threads:
        t.join(10)
    assert results == [milan.vcek] * 8 and len(server.requests) == 1


def test_unreadable_entry_is_ignored_and_refetched(tmp_path, server, milan):
    server.serve_vcek("Milan", milan.chip_id, milan.tcb, milan.vcek)
    cache = snp_cache(tmp_path, server, milan)
    cache.snp_certificate(milan.report())
    [path] = (tmp_path / "cache").rglob("*.json")
    path.write_text("{not json")
    assert cache.snp_certificate(milan.report()) == milan.vcek and len(server.requests) == 2
    assert json.loads(path.read_text())["kind"] == "vcek"


# ---------------------------------------------------------------- Intel


def test_tdx_collateral_is_fetched_checked_cached_and_verifies(tmp_path, server, tdx_roots):
    quote = tdx_roots.tdx_quote()
    serve_tdx(server, tdx_roots)
    clock = Clock(ISSUED + timedelta(days=1))
    cache = intel_cache(tmp_path, server, tdx_roots, clock)
    collateral = cache.dcap_collateral(quote)
    verdict = examine_dcap_quote(quote, collateral=collateral, at=clock(), root_ca_der=tdx_roots.root_ca_der)
    assert verdict.ok, verdict.checks
    assert sorted(server.requests) == sorted([
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
        "/tdx/certification/v4/tcb?fmspc=B0C06F000000",
        "/tdx/certification/v4/qe/identity",
        "/sgx/certification/v4/rootcacrl",
    ])
    assert cache.dcap_collateral(quote) == collateral and len(server.requests) == 4
    [entry] = cache.entries()
    assert (entry.kind, entry.key, entry.expires) == ("tdx", "B0C06F000000/platform", ISSUED + timedelta(days=30))
    clock.now = ISSUED + timedelta(days=25)
    assert entry.state(clock()) == "expiring"


@pytest.mark.parametrize(
    ("name", "at", "tee"),
    [("tdx_quote", "2025-06-19T11:16:03Z", "tdx"), ("sgx_quote", "2025-06-19T11:56:11Z", "sgx")],
)
def test_real_intel_collateral_served_by_a_pccs(tmp_path, server, name, at, tee):
    quote = (TEE / "dcap" / name).read_bytes()
    collateral = (TEE / "dcap" / f"{name}_collateral.json").read_bytes()
    _, fmspc, ca = quote_platform(quote)
    server.serve_intel(collateral, tee=tee, fmspc=fmspc, ca=ca)
    moment = datetime.fromisoformat(at)
    fetched = CollateralCache(tmp_path, intel_pcs_url=server.url, clock=Clock(moment)).dcap_collateral(quote)
    policy = DcapPolicy({"ConfigurationAndSWHardeningNeeded": frozenset({"INTEL-SA-00289", "INTEL-SA-00615"})})
    assert examine_dcap_quote(quote, collateral=fetched, at=moment, policy=policy).ok
    assert json.loads(fetched)["tcb_info"] == json.loads(collateral)["tcb_info"]


def test_expired_collateral_is_refetched_and_refused_when_no_fresh_one(tmp_path, server, tdx_roots, caplog):
    quote = tdx_roots.tdx_quote()
    serve_tdx(server, tdx_roots)
    clock = Clock(ISSUED + timedelta(days=1))
    cache = intel_cache(tmp_path, server, tdx_roots, clock)
    first = cache.dcap_collateral(quote)
    clock.now = ISSUED + timedelta(days=31)  # past nextUpdate
    renewed = serve_tdx(server, tdx_roots, issued=ISSUED + timedelta(days=30))
    second = cache.dcap_collateral(quote)
    assert second != first and json.loads(second)["tcb_info"] == json.loads(renewed)["tcb_info"]
    assert len(server.requests) == 8
    assert [e.expires for e in cache.entries()] == [ISSUED + timedelta(days=60)]
    clock.now = ISSUED + timedelta(days=61)
    with pytest.raises(AttestationError, match=r"cached TDX collateral .* expired at .* served collateral that expired"):
        cache.dcap_collateral(quote)
    offline = intel_cache(tmp_path, server, tdx_roots, clock, offline=True)
    with pytest.raises(AttestationError, match="expired at 2026-06-30T00:00:00Z .* offline"):
        offline.dcap_collateral(quote)
    with caplog.at_level(logging.WARNING):
        unsafe = intel_cache(tmp_path, server, tdx_roots, clock, offline=True, unsafe_allow_expired_collateral=True)
        assert unsafe.dcap_collateral(quote)
    assert any("UNSAFE: using TDX collateral" in r.message for r in caplog.records)


def test_intel_hostile_answers(tmp_path, server, tdx_roots):
    quote = tdx_roots.tdx_quote()
    clock = Clock(ISSUED + timedelta(days=1))
    cache = intel_cache(tmp_path, server, tdx_roots, clock)
    with pytest.raises(AttestationError, match=r"fetching http://127\.0\.0\.1:\d+/sgx/certification/v4/pckcrl\?ca=platform&encoding=der failed: HTTP 404"):
        cache.dcap_collateral(quote)

    def refused(match: str) -> None:
        with pytest.raises(AttestationError, match=match):
            cache.dcap_collateral(quote)
        assert list(cache.entries()) == []

    serve_tdx(server, tdx_roots)
    tcb = "/tdx/certification/v4/tcb?fmspc=B0C06F000000"
    good = server.routes[tcb]
    server.routes[tcb] = Route(500, b"")
    refused("tcb\\?fmspc=B0C06F000000 failed: HTTP 500")
    server.routes[tcb] = Route(200, b"<html>", good.headers)
    refused("did not answer with Intel's signed JSON")
    server.routes[tcb] = Route(200, good.body.replace(b'"fmspc":"B0C06F000000"', b'"fmspc":"00906ED50000"'), good.headers)
    refused("FMSPC 00906ED50000, not B0C06F000000")
    server.routes[tcb] = Route(200, good.body.replace(b'"signature":"', b'"signature":"00'), good.headers)
    refused("TCB info signature does not verify")
    server.routes[tcb] = Route(200, good.body, {})
    refused("without the TCB info issuer chain header")
    # Collateral signed by other roots (Intel's real collateral under our test root).
    server.serve_intel((TEE / "dcap" / "tdx_quote_collateral.json").read_bytes(), tee="tdx", fmspc="B0C06F000000", ca="platform")
    refused("not issued by the trusted Intel root")
    # Collateral of another FMSPC, properly signed, served for this one.
    sgx = DcapTestRoots.make(ISSUED - timedelta(days=30), template="sgx_quote")
    other = sgx.collateral(issued=ISSUED, next_update=ISSUED + timedelta(days=30))
    server.serve_intel(other, tee="tdx", fmspc="B0C06F000000", ca="platform")
    refused("TCB info is for SGX, not TDX")
    # Collateral already expired when served.
    serve_tdx(server, tdx_roots, issued=ISSUED - timedelta(days=40))
    refused("served collateral that expired")
    # No root CA CRL at the PCCS, and the test root names no distribution point to get it from.
    serve_tdx(server, tdx_roots)
    del server.routes["/sgx/certification/v4/rootcacrl"]
    refused("rootcacrl failed: HTTP 404, and the trusted root names no CRL distribution point")


def test_concurrent_callers_make_one_intel_fetch(tmp_path, server, tdx_roots):
    quote = tdx_roots.tdx_quote()
    serve_tdx(server, tdx_roots)
    cache = intel_cache(tmp_path, server, tdx_roots, Clock(ISSUED + timedelta(days=1)))
    server.delay.clear()
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache.dcap_collateral(quote))) for _ in range(6)]
    for t in threads:
        t.start()
    threading.Timer(0.3, server.delay.set).start()
    for t in threads:
        t.join(10)
    assert len(results) == 6 and len(set(results)) == 1 and len(server.requests) == 4


# ---------------------------------------------------------------- import / export


def test_export_import_seeds_an_offline_cache(tmp_path, server, milan, tdx_roots):
    server.serve_vcek("Milan", milan.chip_id, milan.tcb, milan.vcek)
    serve_tdx(server, tdx_roots)
    clock = Clock(ISSUED + timedelta(days=1))
    online = CollateralCache(tmp_path / "a", amd_kds_url=server.url, intel_pcs_url=server.url, clock=clock,
                             snp_roots=milan.roots, intel_root_der=tdx_roots.root_ca_der)
    online.snp_certificate(milan.report())
    online.dcap_collateral(tdx_roots.tdx_quote())
    bundle = online.export_bytes()
    offline = CollateralCache(tmp_path / "b", clock=clock, offline=True, snp_roots=milan.roots, intel_root_der=tdx_roots.root_ca_der)
    assert [e.kind for e in offline.import_bytes(bundle)] == ["vcek", "tdx"]
    assert offline.snp_certificate(milan.report()) == milan.vcek
    assert offline.dcap_collateral(tdx_roots.tdx_quote())
    # A bundle whose VCEK was swapped for another chip's is refused, and adds nothing.
    tampered = json.loads(bundle)
    tampered["entries"][0]["data"] = base64.b64encode(milan.endorsement("vcek", issuer="ask", hwid=bytes(64))).decode()
    fresh = CollateralCache(tmp_path / "c", clock=clock, offline=True, snp_roots=milan.roots, intel_root_der=tdx_roots.root_ca_der)
    with pytest.raises(AttestationError, match="the vcek entry Milan/.* is refused: .*another chip"):
        fresh.import_bytes(json.dumps(tampered).encode())
    # The good VCEK with collateral whose TCB info was changed: neither is added.
    tampered = json.loads(bundle)
    collateral = json.loads(base64.b64decode(tampered["entries"][1]["data"]))
    collateral["tcb_info"] = collateral["tcb_info"].replace('"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18')
    tampered["entries"][1]["data"] = base64.b64encode(json.dumps(collateral).encode()).decode()
    with pytest.raises(AttestationError, match="the tdx entry B0C06F000000/platform is refused: the TCB info signature does not verify"):
        fresh.import_bytes(json.dumps(tampered).encode())
    # A stated expiry later than the data's own is not believed.
    stretched = json.loads(bundle)
    stretched["entries"][1]["expires"] = "2099-01-01T00:00:00Z"
    fresh.import_bytes(json.dumps(stretched).encode())
    assert [e.expires for e in fresh.entries() if e.kind == "tdx"] == [ISSUED + timedelta(days=30)]
    with pytest.raises(AttestationError, match="malformed"):
        fresh.import_bytes(json.dumps({**stretched["entries"][0], "key": "Milan/zz/00"}).encode())


def test_import_raw_vcek_and_collateral_json(tmp_path, milan, tdx_roots):
    clock = Clock(ISSUED + timedelta(days=1))
    cache = CollateralCache(tmp_path, clock=clock, offline=True, snp_roots=milan.roots, intel_root_der=tdx_roots.root_ca_der)
    [vcek] = cache.import_bytes(milan.vcek)
    assert vcek.key == f"Milan/{milan.chip_id.hex()}/{milan.tcb.to_bytes('Milan').hex()}"
    collateral = tdx_roots.collateral(issued=ISSUED, next_update=ISSUED + timedelta(days=30))
    [tdx] = cache.import_bytes(collateral)
    assert (tdx.kind, tdx.key) == ("tdx", "B0C06F000000/platform")
    assert cache.snp_certificate(milan.report()) == milan.vcek
    with pytest.raises(AttestationError, match="neither DER nor PEM"):
        cache.import_bytes(b"garbage")
    # JSON nested beyond Python's recursion limit is refused like any other non-collateral.
    with pytest.raises(AttestationError, match="neither DER nor PEM"):
        cache.import_bytes(b"[" * 100_000)
    deep = json.dumps({**json.loads(collateral), "tcb_info": "[" * 100_000}).encode()
    with pytest.raises(AttestationError, match="not Intel collateral JSON"):
        cache.import_bytes(deep)
    with pytest.raises(AttestationError, match="not a VCEK issued by a pinned AMD ASK"):
        CollateralCache(tmp_path / "amd", clock=clock).import_bytes(milan.vcek)
    expired = tdx_roots.collateral(issued=ISSUED - timedelta(days=40), next_update=ISSUED - timedelta(days=10))
    with pytest.raises(AttestationError, match="expired at"):
        CollateralCache(tmp_path / "x", clock=clock, intel_root_der=tdx_roots.root_ca_der).import_bytes(expired)


def test_real_amd_vcek_imports_under_amds_roots(tmp_path):
    cache = CollateralCache(tmp_path, clock=Clock(datetime(2025, 6, 1, tzinfo=UTC)), offline=True)
    [entry] = cache.import_bytes((TEE / "snp" / "test-vcek.der").read_bytes())
    assert entry.key.startswith("Milan/") and entry.expires.year == 2030
    report = (TEE / "snp" / "test-report.bin").read_bytes()
    assert examine_snp_report(report, certificate=cache.snp_certificate(report), at=cache.clock(), roots=amd_roots()).ok
