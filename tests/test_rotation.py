"""Certificate rotation at half the validity, without dropping the service or its open work."""

from __future__ import annotations

import threading
import time

from cryptography import x509

from conftest import Platform
from kettle.sdk.attested import fetch_certificate

VALIDITY = 8  # seconds: rotation every 4 s, connections aged out every 2 s


def test_services_rotate_certificates_without_failing_calls(home_factory) -> None:  # type: ignore[no-untyped-def]
    platform: Platform = home_factory(validity_secs=VALIDITY)
    platform.start()
    client = platform.admin()  # one client, one channel, for the whole test
    serials: set[int] = set()
    failures: list[str] = []
    calls = 0
    stop = threading.Event()

    def watch_certificates() -> None:
        while not stop.is_set():
            der = fetch_certificate(platform.auth_address, platform.config.as_root_path)
            cert = x509.load_der_x509_certificate(der)
            serials.add(cert.serial_number)
            lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
            assert lifetime.total_seconds() <= VALIDITY + 60
            time.sleep(0.5)

    watcher = threading.Thread(target=watch_certificates, daemon=True)
    watcher.start()
    deadline = time.monotonic() + 2.5 * VALIDITY
    while time.monotonic() < deadline:
        try:
            # list_users goes API -> authentication -> storage (internal, mutually attested),
            # so both the public and the internal certificates rotate under it.
            assert "admin" in client.list_users("all")
            calls += 1
        except Exception as exc:  # noqa: BLE001 - every failure is the finding
            failures.append(repr(exc))
        time.sleep(0.1)
    stop.set()
    watcher.join(timeout=5)
    assert not failures, failures[:3]
    assert calls > 50
    # Started at t=0, rotated at ~4, ~8, ~12, ~16 s: at least four certificates were served.
    assert len(serials) >= 4, serials
    assert all(child.process.poll() is None for child in platform.children)
