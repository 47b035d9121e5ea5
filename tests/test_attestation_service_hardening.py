"""The attestation service under hostile connections, and following the auditors' files on disk.

Real sockets against a real ``kettle service attestation`` process: a client that
connects and says nothing, many that trickle bytes, more than the service serves at
once; and enclave info whose signatures and auditor keys are removed, corrupted and
restored while the service runs.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Platform, make_home, reload
from kettle.attestation.backends import SimulationBackend
from kettle.attestation.build import BuildConfig
from kettle.attestation.enclave_info import SIGNATURE_SUFFIX
from kettle.attestation.identity import Identity, as_tls_context, request_certificate
from kettle.attestation.measurement import SIMULATION_MR_SIGNER, measure_service
from kettle.config import parse_config
from kettle.errors import AttestationError, ConfigError, Unavailable
from kettle.launcher import spawn

CLIENT_TIMEOUT = 8.0
"""What a real request may take here, loaded machine included; below the default handshake timeout,
so a service that only times slow clients out, one after another, still fails."""
EVENTUALLY = 20.0
"""Generous bound for what must happen by itself (a deadline passing on the server)."""

STRICT = {"handshake_timeout_secs": 4, "request_timeout_secs": 3, "max_connections": 8}


@pytest.fixture(scope="module")
def strict_as(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[Platform]:
    """An attestation service alone, with short deadlines and few connections."""
    home = tmp_path_factory.mktemp("strict-as")
    config = make_home(home, _auditor_cache)
    settings = "".join(f"{key} = {value}\n" for key, value in STRICT.items())
    toml = home / "kettle.toml"
    toml.write_text(toml.read_text().replace("[attestation]\n", "[attestation]\n" + settings, 1))
    p = Platform(reload(config))
    assert {k: getattr(p.config.attestation, k) for k in STRICT} == STRICT
    p.children.append(spawn("attestation", p.config))
    yield p
    p.stop()


def as_address(platform: Platform) -> tuple[str, int]:
    host, port = platform.config.attestation.listen_address.rsplit(":", 1)
    return host, int(port)


def silent_connection(platform: Platform) -> socket.socket:
    """A TCP connection that never sends a ClientHello."""
    return socket.create_connection(as_address(platform), timeout=CLIENT_TIMEOUT)


def tls_connection(platform: Platform) -> ssl.SSLSocket:
    raw = socket.create_connection(as_address(platform), timeout=CLIENT_TIMEOUT)
    return as_tls_context(platform.config.as_root_path).wrap_socket(raw, server_hostname="localhost")


@functools.cache
def storage_measurement(home: Path) -> bytes:
    return measure_service("storage", BuildConfig.load(home).raw)


def certificate(platform: Platform, timeout: float = CLIENT_TIMEOUT) -> Identity:
    """What a service does at start: evidence and a CSR for storage, certificate back."""
    mr_enclave = storage_measurement(platform.home)
    backend = SimulationBackend(platform.home, mr_enclave, SIMULATION_MR_SIGNER, "storage")
    return request_certificate(
        platform.config.attestation.service_url, platform.config.as_root_path, "storage", backend, 0, timeout=timeout
    )


def closed_by_server(connection: socket.socket, within: float) -> bool:
    """True once the server closes ``connection``; False if it is still open after ``within`` seconds."""
    connection.settimeout(within)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def still_open(connection: socket.socket) -> bool:
    connection.setblocking(False)
    try:
        connection.recv(1)
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    return False


# --- handshakes and slow clients ------------------------------------------------------


def test_a_silent_connection_does_not_hold_up_another_client(platform: Platform) -> None:
    assert platform.config.attestation.handshake_timeout_secs > CLIENT_TIMEOUT
    silent = silent_connection(platform)
    try:
        started = time.monotonic()
        issued = certificate(platform)
        assert issued.service == "storage" and time.monotonic() - started < CLIENT_TIMEOUT
        assert still_open(silent)  # served beside it, not after the service gave up on it
    finally:
        silent.close()


def trickle(connections: list[ssl.SSLSocket], stop: threading.Event) -> None:
    """Slowloris: a header one byte at a time, never finished."""
    while not stop.wait(0.2):
        for connection in connections:
            try:
                connection.send(b"x")
            except OSError:
                continue


def test_fifty_silent_or_trickling_connections_do_not_starve_a_request(platform: Platform) -> None:
    assert platform.config.attestation.max_connections > 50
    silent: list[socket.socket] = []
    tls: list[ssl.SSLSocket] = []
    stop = threading.Event()
    trickler = threading.Thread(target=trickle, args=(tls, stop), daemon=True)
    try:
        silent += [silent_connection(platform) for _ in range(25)]
        for _ in range(25):
            tls.append(tls_connection(platform))  # each handshake completes beside the silent ones
            tls[-1].sendall(b"POST /kettle/v1/certificate HTTP/1.1\r\nX-Slow: ")
        trickler.start()
        assert certificate(platform).service == "storage"
        assert all(still_open(connection) for connection in silent)
    finally:
        stop.set()
        if trickler.is_alive():
            trickler.join()
        for connection in [*silent, *tls]:
            connection.close()


def test_a_silent_connection_is_closed_after_the_handshake_timeout(strict_as: Platform) -> None:
    silent = silent_connection(strict_as)
    try:
        started = time.monotonic()
        assert closed_by_server(silent, EVENTUALLY)
        assert time.monotonic() - started >= STRICT["handshake_timeout_secs"] - 0.5
    finally:
        silent.close()


def test_a_request_trickled_byte_by_byte_is_dropped_at_the_request_deadline(strict_as: Platform) -> None:
    connection = tls_connection(strict_as)
    try:
        started = time.monotonic()
        connection.sendall(b"POST /kettle/v1/certificate HTTP/1.1\r\nX-Slow: ")
        closed = False
        while not closed and time.monotonic() - started < EVENTUALLY:
            try:
                connection.send(b"x")  # each byte well within any per-read timeout
            except OSError:
                closed = True
                break
            closed = closed_by_server(connection, 0.2)
        assert closed
        assert time.monotonic() - started >= STRICT["request_timeout_secs"] - 0.5
    finally:
        connection.close()


def test_connections_over_the_limit_are_closed_at_once_and_served_again_later(strict_as: Platform) -> None:
    held = [silent_connection(strict_as) for _ in range(STRICT["max_connections"])]
    try:
        over = silent_connection(strict_as)
        try:
            assert closed_by_server(over, EVENTUALLY)
        finally:
            over.close()
        # Refused for want of a slot, not timed out: the older connections are all still open.
        assert all(still_open(connection) for connection in held)
    finally:
        for connection in held:
            connection.close()
    # The slots come back as the service sees those clients leave.
    deadline = time.monotonic() + EVENTUALLY
    while True:
        try:
            issued = certificate(strict_as)
            break
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert issued.service == "storage"
    assert "attestation.max_connections" in (strict_as.home / "logs" / "attestation.log").read_text()


# --- enclave info follows the files on disk -------------------------------------------


def test_issuance_follows_signatures_and_auditor_keys_on_disk(strict_as: Platform) -> None:
    """Removing or corrupting an auditor's signature, or an auditor key, stops issuance at once; restoring it resumes it."""
    signatures = sorted(strict_as.config.enclave_info_path.parent.glob("*" + SIGNATURE_SUFFIX))
    assert len(signatures) == 3
    survivors = ", ".join(s.name.removesuffix(SIGNATURE_SUFFIX) for s in signatures[1:])
    too_few = f"attestation service refused storage: enclave info has 2 valid auditor signature(s), 3 required (valid: {survivors})"
    original = signatures[0].read_bytes()
    assert certificate(strict_as).service == "storage"

    def refused() -> str:
        with pytest.raises(AttestationError) as info:
            certificate(strict_as)
        return info.value.reason

    signatures[0].unlink()
    assert refused() == too_few
    signatures[0].write_bytes(original)
    assert certificate(strict_as).service == "storage"

    corrupt = bytearray(original)
    corrupt[len(corrupt) // 2] ^= 0x01  # same size, same inode: only the bytes say it changed
    signatures[0].write_bytes(bytes(corrupt))
    assert refused() == too_few
    signatures[0].write_bytes(original)
    assert certificate(strict_as).service == "storage"

    build = BuildConfig.path_in(strict_as.home)
    build_raw = build.read_bytes()
    build.write_bytes(b"threshold = 1\n")  # every auditor key gone
    assert refused() == "attestation service refused storage: build configuration names no auditor"
    build.write_bytes(build_raw)
    assert certificate(strict_as).service == "storage"


@pytest.mark.parametrize("setting", sorted(STRICT))
def test_connection_limits_must_be_at_least_one(setting: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[attestation]\n{setting} = 0\n", tmp_path)
    assert info.value.message == f"attestation.{setting} must be at least 1"
