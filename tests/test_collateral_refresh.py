"""Background renewal of cached collateral, against a real HTTP server whose content changes."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from collateral_servers import CollateralServer, Route
from dcap_test_roots import DcapTestRoots

from kettle.attestation.collateral import CollateralCache

ISSUED = datetime(2026, 5, 1, tzinfo=UTC)
TCB = "/tdx/certification/v4/tcb?fmspc=B0C06F000000"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def roots() -> DcapTestRoots:
    return DcapTestRoots.make(ISSUED - timedelta(days=30))


@pytest.fixture
def server():
    with CollateralServer() as s:
        yield s


def serve(server: CollateralServer, roots: DcapTestRoots, issued: datetime) -> None:
    collateral = roots.collateral(issued=issued, next_update=issued + timedelta(days=30))
    server.serve_intel(collateral, tee="tdx", fmspc="B0C06F000000", ca="platform")


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_entries_are_renewed_at_80_percent_of_their_life(tmp_path, server, roots):
    serve(server, roots, ISSUED)
    clock = Clock(ISSUED + timedelta(days=1))
    cache = CollateralCache(tmp_path, intel_pcs_url=server.url, clock=clock, intel_root_der=roots.root_ca_der)
    cache.dcap_collateral(roots.tdx_quote())
    [entry] = cache.entries()
    assert entry.refresh_at == ISSUED + timedelta(days=1) + timedelta(days=29) * 0.8
    assert cache.refresh_due() == [] and len(server.requests) == 4  # not due yet: nothing fetched

    serve(server, roots, ISSUED + timedelta(days=24))
    clock.now = entry.refresh_at + timedelta(seconds=1)
    cache.start_refresh(poll_secs=0.05)
    try:
        wait_for(lambda: [e.expires for e in cache.entries()] == [ISSUED + timedelta(days=54)])
    finally:
        cache.stop()
    assert len(server.requests) == 8
    [renewed] = cache.entries()
    assert renewed.state(clock()) == "fresh" and renewed.fetched == clock()


def test_failed_renewal_backs_off_and_keeps_the_entry(tmp_path, server, roots, caplog):
    serve(server, roots, ISSUED)
    clock = Clock(ISSUED + timedelta(days=1))
    cache = CollateralCache(tmp_path, intel_pcs_url=server.url, clock=clock, intel_root_der=roots.root_ca_der)
    cache.dcap_collateral(roots.tdx_quote())
    before = list(cache.entries())
    good = server.routes[TCB]
    server.routes[TCB] = Route(503, b"")
    clock.now = ISSUED + timedelta(days=26)
    with caplog.at_level(logging.WARNING):
        assert cache.refresh_due() == []
    assert any("HTTP 503" in r.message and "next try in 60 s" in r.message for r in caplog.records)
    assert list(cache.entries()) == before  # the old, still valid entry stays
    requests = len(server.requests)
    clock.now += timedelta(seconds=30)
    assert cache.refresh_due() == [] and len(server.requests) == requests  # backing off: no fetch
    clock.now += timedelta(seconds=31)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cache.refresh_due() == []
    assert any("next try in 120 s" in r.message for r in caplog.records) and len(server.requests) > requests
    server.routes[TCB] = good
    serve(server, roots, ISSUED + timedelta(days=25))
    clock.now += timedelta(seconds=121)
    [renewed] = cache.refresh_due()
    assert renewed.expires == ISSUED + timedelta(days=55)
    # The verifier now gets the renewed collateral without a fetch.
    requests = len(server.requests)
    assert cache.dcap_collateral(roots.tdx_quote()) == renewed.data and len(server.requests) == requests


def test_offline_cache_never_renews(tmp_path, server, roots):
    serve(server, roots, ISSUED)
    clock = Clock(ISSUED + timedelta(days=1))
    CollateralCache(tmp_path, intel_pcs_url=server.url, clock=clock, intel_root_der=roots.root_ca_der).dcap_collateral(roots.tdx_quote())
    offline = CollateralCache(tmp_path, intel_pcs_url=server.url, clock=clock, offline=True, intel_root_der=roots.root_ca_der)
    clock.now = ISSUED + timedelta(days=29)
    offline.start_refresh(poll_secs=0.01)
    time.sleep(0.1)
    offline.stop()
    assert offline.refresh_due() == [] and len(server.requests) == 4
