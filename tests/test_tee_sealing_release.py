"""The attestation service's key release: sealing keys for TEEs without one (TDX).

A real attestation service process, real mutual TLS, client certificates the
service issued on the simulation path (the release logic does not depend on the
TEE kind), and callers it must refuse: none, another service's, a measurement
withdrawn from enclave info, a certificate it never issued, too many requests.
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Platform, make_home
from kettle.attestation.backends import SimulationBackend
from kettle.attestation.build import BuildConfig
from kettle.attestation.enclave_info import SIGNATURE_SUFFIX, EnclaveInfo, Measurement, sign_enclave_info
from kettle.attestation.identity import Identity, as_tls_context, request_certificate
from kettle.attestation.measurement import SIMULATION_MR_SIGNER, measure_service
from kettle.attestation.providers import TDX, ConfigfsTsmProvider
from kettle.attestation.sealing import RELEASE_PATH, KeyReleaseClient
from kettle.attestation_service.authority import authority_dir
from kettle.attestation_service.key_release import (
    AS_SEALING_PURPOSE,
    AS_SERVICE,
    RATE_LIMIT_REQUESTS,
    ROOT_FILE,
    RateLimiter,
    load_or_create_root,
    released_key,
)
from kettle.errors import AttestationError, ResourceExhausted
from kettle.provisioning import load_auditor_private_key
from test_tee_sealing import mounted


@pytest.fixture(scope="module")
def as_only(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[Platform]:
    """A home with only the attestation service running."""
    p = Platform(make_home(tmp_path_factory.mktemp("key-release"), _auditor_cache))
    p.start(services=())
    yield p
    p.stop()


def simulated(platform: Platform, service: str) -> SimulationBackend:
    measurement = measure_service(service, BuildConfig.load(platform.home).raw)
    return SimulationBackend(platform.home, measurement, SIMULATION_MR_SIGNER, service)


def client(platform: Platform) -> KeyReleaseClient:
    return KeyReleaseClient(platform.config.attestation.service_url, platform.config.as_root_path, attempts=1)


def identity(platform: Platform, service: str) -> Identity:
    settings = platform.config.attestation
    return request_certificate(settings.service_url, platform.config.as_root_path, service, simulated(platform, service), 0)


def post(
    platform: Platform, body: object, tmp_path: Path, caller: Identity | None = None, chain: bytes | None = None,
    key: bytes | None = None,
) -> tuple[int, dict[str, str]]:
    """POST to the key release, presenting ``caller``'s client certificate (or ``chain``/``key``) if given."""
    context = as_tls_context(platform.config.as_root_path)
    if caller is not None:
        chain, key = caller.client_chain_pem, caller.key_pem
    if chain is not None and key is not None:
        (tmp_path / "chain.pem").write_bytes(chain)
        (tmp_path / "key.pem").write_bytes(key)
        context.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    url = urllib.parse.urlsplit(platform.config.attestation.service_url)
    connection = http.client.HTTPSConnection(url.hostname or "", url.port, timeout=10, context=context)
    try:
        connection.request("POST", RELEASE_PATH, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_an_attested_service_gets_its_key_which_is_the_documented_derivation(as_only: Platform) -> None:
    storage = client(as_only).fetch("storage", "storage", simulated(as_only, "storage"))
    assert client(as_only).fetch("storage", "storage", simulated(as_only, "storage")) == storage  # stable
    assert client(as_only).fetch("storage", "other", simulated(as_only, "storage")) != storage
    assert client(as_only).fetch("authentication", "storage", simulated(as_only, "authentication")) != storage
    # The release root is sealed at rest with the AS's own (simulation) sealing key, never in the clear.
    sealed = authority_dir(as_only.home) / ROOT_FILE
    as_key = simulated(as_only, AS_SERVICE).sealing_key(AS_SEALING_PURPOSE)
    root = load_or_create_root(sealed, as_key)
    assert root not in sealed.read_bytes()
    measurement = measure_service("storage", BuildConfig.load(as_only.home).raw)
    assert storage == released_key(root, "storage", measurement, "storage")


def test_an_unattested_caller_is_refused(as_only: Platform, tmp_path: Path) -> None:
    status, body = post(as_only, {"service": "storage", "purpose": "storage"}, tmp_path)
    assert (status, body["error"]) == (403, (
        "sealing keys are released only to attested services: present the client certificate "
        "this attestation service issued (mutual TLS)"
    ))


def test_a_caller_attested_as_another_service_is_refused(as_only: Platform, tmp_path: Path) -> None:
    authentication = identity(as_only, "authentication")
    status, body = post(as_only, {"service": "storage", "purpose": "storage"}, tmp_path, authentication)
    assert (status, body["error"]) == (
        403, "the caller is attested as authentication; the sealing key of storage is released only to storage"
    )


def test_a_certificate_the_service_never_issued_fails_the_handshake(as_only: Platform, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teaclave_storage_service")])
    now = datetime.now(UTC)
    forged = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises((ssl.SSLError, ConnectionError)):
        post(as_only, {"service": "storage", "purpose": "storage"}, tmp_path,
             chain=forged.public_bytes(serialization.Encoding.PEM), key=pem_key)
    assert as_only.child("attestation").process.poll() is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"service": "storage"}, "service and purpose are required strings"),
        ({"service": "storage", "purpose": 7}, "service and purpose are required strings"),
        ({"service": "storage", "purpose": "x" * 65}, "service and purpose are at most 64 bytes"),
        ({"service": "storage", "purpose": ""}, "purpose must be a non-empty name without NUL characters"),
        ({"service": "nope", "purpose": "storage"}, "unknown service 'nope'"),
    ],
)
def test_bad_requests_get_specific_errors(as_only: Platform, tmp_path: Path, body: object, reason: str) -> None:
    status, answer = post(as_only, body, tmp_path, identity(as_only, "storage"))
    assert (status, answer["error"]) == (400, reason)


def test_a_measurement_withdrawn_from_enclave_info_is_refused(as_only: Platform, tmp_path: Path) -> None:
    storage = identity(as_only, "storage")  # issued while enclave info lists this measurement
    path = as_only.config.enclave_info_path
    saved = tmp_path / "saved"
    shutil.copytree(path.parent, saved)
    try:
        info = EnclaveInfo.parse(path.read_bytes())
        services = dict(info.services)
        services["storage"] = Measurement(b"\xab" * 32, services["storage"].mr_signer)  # an audited update
        data = EnclaveInfo(services).render()
        path.write_bytes(data)
        for key_path in sorted((as_only.home / "auditors").glob("*.key.pem")):
            name = key_path.name.removesuffix(".key.pem")
            (path.parent / f"{name}{SIGNATURE_SUFFIX}").write_bytes(sign_enclave_info(data, load_auditor_private_key(key_path)))
        status, body = post(as_only, {"service": "storage", "purpose": "storage"}, tmp_path, storage)
    finally:
        shutil.copytree(saved, path.parent, dirs_exist_ok=True)
    running = info.measurement("storage").mr_enclave
    assert (status, body["error"]) == (
        403, f"the caller is refused: measurement {running.hex()} does not match enclave info for storage"
    )
    # Control: with the enclave info restored, the same certificate gets its key.
    assert post(as_only, {"service": "storage", "purpose": "storage"}, tmp_path, storage)[0] == 200


def test_a_tdx_provider_attests_with_its_own_evidence_before_asking(as_only: Platform, tmp_path: Path) -> None:
    # The emulated TDX quote is signed by nothing, so the AS refuses it: the provider
    # never reaches the key release without a certificate for its own evidence.
    with mounted(tmp_path / "tsm", "tee_fs.py", "tsm", "--provider", "tdx_guest") as root:
        provider = ConfigfsTsmProvider(TDX, root, service="storage", key_release=client(as_only))
        with pytest.raises(AttestationError, match="attestation service refused storage: "):
            provider.sealing_key("storage")


def test_too_many_requests_from_one_address_are_refused(fresh_platform: Platform, tmp_path: Path) -> None:
    fresh_platform.start(services=())
    storage = identity(fresh_platform, "storage")
    answers = [post(fresh_platform, {"service": "storage", "purpose": "storage"}, tmp_path, storage)[0]
               for _ in range(RATE_LIMIT_REQUESTS)]
    assert answers == [200] * RATE_LIMIT_REQUESTS
    status, body = post(fresh_platform, {"service": "storage", "purpose": "storage"}, tmp_path, storage)
    assert status == 429
    assert body["error"].startswith(f"too many sealing-key requests from 127.0.0.1 ({RATE_LIMIT_REQUESTS} per 60 s)")


def test_rate_limiter_window_slides() -> None:
    now = [0.0]
    limiter = RateLimiter(2, 10.0, clock=lambda: now[0])
    limiter.admit("a")
    limiter.admit("a")
    limiter.admit("b")  # per address
    with pytest.raises(ResourceExhausted, match=r"retry in 10 s"):
        limiter.admit("a")
    now[0] = 10.5
    limiter.admit("a")


def test_the_sealed_root_opens_only_with_the_key_that_sealed_it(tmp_path: Path) -> None:
    path = tmp_path / ROOT_FILE
    root = load_or_create_root(path, b"\x01" * 32)
    assert load_or_create_root(path, b"\x01" * 32) == root
    with pytest.raises(AttestationError, match="does not open with this attestation service's sealing key"):
        load_or_create_root(path, b"\x02" * 32)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(AttestationError, match="is not a sealed key-release root"):
        load_or_create_root(path, b"\x01" * 32)


def test_the_key_survives_an_as_restart_and_a_broken_root_stops_only_the_release(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    storage = simulated(fresh_platform, "storage")  # the service's backend, made while the platform is whole
    fresh_platform.start(services=())
    key = client(fresh_platform).fetch("storage", "storage", storage)
    fresh_platform.stop()
    fresh_platform.start(services=())
    assert client(fresh_platform).fetch("storage", "storage", storage) == key  # the sealed root was reopened
    fresh_platform.stop()
    sealed = authority_dir(fresh_platform.home) / ROOT_FILE
    sealed.write_bytes(sealed.read_bytes()[:-1] + bytes([sealed.read_bytes()[-1] ^ 1]))  # tampered at rest
    fresh_platform.start(services=())
    caller = request_certificate(  # certificates are still issued
        fresh_platform.config.attestation.service_url, fresh_platform.config.as_root_path, "storage", storage, 0
    )
    status, body = post(fresh_platform, {"service": "storage", "purpose": "storage"}, tmp_path, caller)
    assert (status, body["error"]) == (503, (
        f"key release is unavailable: {sealed} does not open with this attestation service's sealing key "
        "(sealed by another platform or code identity, or tampered with); keys released before cannot be released again"
    ))
