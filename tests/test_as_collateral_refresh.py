"""A running attestation service renews its collateral in the background, and only when online.

A real AS process (``kettle service attestation``) on a home whose collateral cache holds
Intel collateral past its refresh point (80% of its life); Intel's PCS is a real local HTTP
server (``collateral_servers``) serving collateral signed by test roots (``dcap_test_roots``),
which the AS trusts through ``unsafe_test_roots``.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from collateral_servers import CollateralServer
from conftest import Platform
from dcap_test_roots import DcapTestRoots

from kettle.attestation.collateral import CollateralCache, CollateralEntry

FMSPC, CA = "B0C06F000000", "platform"
NOW = datetime.now(UTC)
# Fetched 24 days ago, expiring in 5: its refresh point (80% of 29 days) passed about a day ago.
OLD_ISSUED = NOW - timedelta(days=24)
OLD_NEXT_UPDATE = NOW + timedelta(days=5)


@pytest.fixture(scope="module")
def roots() -> DcapTestRoots:
    return DcapTestRoots.make(NOW - timedelta(days=60))


@pytest.fixture
def pcs() -> CollateralServer:
    with CollateralServer() as server:
        yield server


def as_home(home_factory, roots: DcapTestRoots, pcs: CollateralServer, tmp_path: Path, *, offline: bool) -> Platform:
    """A home whose AS trusts the test Intel root, fetches from ``pcs`` and holds an entry due for renewal."""
    folder = tmp_path / f"test-roots-{offline}"
    folder.mkdir()
    (folder / "intel_sgx_root_ca.der").write_bytes(roots.root_ca_der)
    platform = home_factory(extra="\n".join([
        f'intel_pcs_url = "{pcs.url}"',
        f'unsafe_test_roots = "{folder}"',
        f"collateral_offline = {str(offline).lower()}",
    ]))
    pcs.serve_intel(roots.collateral(issued=OLD_ISSUED, next_update=OLD_NEXT_UPDATE), tee="tdx", fmspc=FMSPC, ca=CA)
    seeding = CollateralCache(cache_dir(platform), intel_pcs_url=pcs.url, clock=lambda: OLD_ISSUED,
                              intel_root_der=roots.root_ca_der)
    seeding.dcap_collateral(roots.tdx_quote())
    assert entry(platform).state(NOW) == "expiring"
    pcs.requests.clear()
    return platform


def cache_dir(platform: Platform) -> Path:
    return platform.config.path(platform.config.attestation.collateral_dir)


def entry(platform: Platform) -> CollateralEntry:
    [only] = list(CollateralCache(cache_dir(platform), offline=True).entries())
    assert (only.kind, only.key) == ("tdx", f"{FMSPC}/{CA}")
    return only


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def stop_attestation(platform: Platform) -> int:
    """SIGTERM the AS and return its exit status; it must stop promptly, refresh thread and all."""
    process = platform.child("attestation").process
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=10)
    platform.children = []
    return status


def test_a_running_attestation_service_renews_collateral_due_for_refresh(home_factory, roots, pcs, tmp_path) -> None:
    platform = as_home(home_factory, roots, pcs, tmp_path, offline=False)
    renewed_issued = NOW - timedelta(hours=1)
    pcs.serve_intel(roots.collateral(issued=renewed_issued, next_update=NOW + timedelta(days=30)),
                    tee="tdx", fmspc=FMSPC, ca=CA)
    platform.start_service("attestation")
    wait_for(lambda: entry(platform).expires > OLD_NEXT_UPDATE)
    renewed = entry(platform)
    assert renewed.state(datetime.now(UTC)) == "fresh"
    assert renewed.source.startswith(pcs.url) and renewed.fetched > NOW - timedelta(minutes=5)
    assert any(path.startswith(f"/tdx/certification/v4/tcb?fmspc={FMSPC}") for path in pcs.requests)
    assert platform.child("attestation").process.poll() is None
    assert stop_attestation(platform) == 0
    log = (platform.home / "logs" / "attestation.log").read_text()
    assert "Traceback" not in log and "collateral refresh pass failed" not in log


def test_an_offline_attestation_service_never_fetches(home_factory, roots, pcs, tmp_path) -> None:
    platform = as_home(home_factory, roots, pcs, tmp_path, offline=True)
    before = entry(platform)
    platform.start_service("attestation")
    log_path = platform.home / "logs" / "attestation.log"
    wait_for(lambda: "collateral is offline: entries are not renewed in the background" in log_path.read_text())
    time.sleep(1.0)  # the online service renews at start: give an offline one the same chance to be wrong
    assert pcs.requests == []
    assert entry(platform) == before
    assert stop_attestation(platform) == 0
