"""Acceptance: "Each refused with a clear error, on both server and client side where it applies".

Every case runs against real Kettle processes (attestation service, storage,
authentication) over real TLS; nothing in the trust path is mocked. Hostile
material (tampered code, wrong enclave info, minted or forged certificates) is
made the way an attacker or a buggy issuer would, with the home's own keys
where the case needs them. Each test asserts the specific reason given.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from conftest import Platform, make_home, reload
from kettle.attestation.backends import SimulationBackend
from kettle.attestation.build import BuildConfig
from kettle.attestation.certificates import (
    issue_by_root,
    issue_service_certificate,
    measurement_dns_name,
    report_data_for,
    self_signed_root,
)
from kettle.attestation.enclave_info import SIGNATURE_SUFFIX, EnclaveInfo, Measurement, sign_enclave_info
from kettle.attestation.identity import Identity, as_tls_context
from kettle.attestation.measurement import SIMULATION_MR_SIGNER, measure_service, package_root
from kettle.attestation.quote import DEBUG_FLAG, INIT_FLAG, MODE64BIT_FLAG, QuoteBody
from kettle.attestation.report import EndorsedReport, build_report
from kettle.config import Config
from kettle.errors import AttestationError, KettleError
from kettle.launcher import spawn, stop_all
from kettle.provisioning import load_auditor_private_key
from kettle.rpc.channel import PeerChannels, channel_options
from kettle.rpc.generated import kettle_storage_pb2 as storage_pb
from kettle.rpc.generated import kettle_storage_pb2_grpc as storage_grpc
from kettle.rpc.generated import teaclave_authentication_service_pb2 as auth_pb
from kettle.rpc.generated import teaclave_authentication_service_pb2_grpc as auth_grpc
from kettle.rpc.generated import teaclave_common_pb2 as common_pb
from kettle.sdk.attested import ClientTrust, fetch_certificate, verify_endpoint
from kettle.services.runtime import ServiceRuntime

T = TypeVar("T")

CALL_TIMEOUT = 10.0
MISSING_KEY = b"refusal-tests/no-such-key"
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


# --- helpers ------------------------------------------------------------------


def flat(text: str) -> str:
    """Whitespace-normalised text, so an assertion does not depend on how a console wrapped it."""
    return " ".join(text.split())


def spawn_refused(name: str, config: Config) -> str:
    """Start ``kettle service NAME``, which must die before ready; its (flattened) log tail."""
    with pytest.raises(KettleError) as info:
        child = spawn(name, config)
        stop_all([child])  # only reached if it wrongly started
    message = info.value.message
    assert f"{name} exited with status 1 before it was ready" in message, message
    return flat(message)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def attested_runtime(service: str, config: Config) -> ServiceRuntime:
    """A real attested identity for ``service`` in this process (no rotation task)."""
    runtime = ServiceRuntime(service, config)
    await runtime.identities.obtain(attempts=3)
    return runtime


async def storage_get(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """Status of a storage Get of a missing key over ``channel``: NOT_FOUND means the call was served."""
    try:
        await storage_grpc.KettleStorageStub(channel).Get(storage_pb.GetRequest(key=MISSING_KEY), timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def storage_get_error(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await storage_grpc.KettleStorageStub(channel).Get(storage_pb.GetRequest(key=MISSING_KEY), timeout=CALL_TIMEOUT)
    return info.value


def mre_name(config: Config, service: str) -> str:
    """The TLS name that pins ``service``'s audited measurement (as peer channels use it)."""
    audited = EnclaveInfo.parse(config.enclave_info_path.read_bytes()).measurement(service)
    return measurement_dns_name(audited.mr_enclave, config.domain)


def mutual_channel(
    config: Config, service: str, key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate]
) -> grpc.aio.Channel:
    """An internal-endpoint channel presenting an arbitrary client certificate chain."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=config.as_root_path.read_bytes(),
        private_key=key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        certificate_chain=b"".join(c.public_bytes(PEM) for c in chain),
    )
    return grpc.aio.secure_channel(
        config.endpoint(service).target, credentials, options=channel_options(mre_name(config, service))
    )


def service_ca(home: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The attested-service CA key and certificate (playing a compromised or buggy issuer)."""
    directory = home / "attestation_service"
    key = serialization.load_pem_private_key((directory / "service_ca.key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, x509.load_pem_x509_certificate((directory / "service_ca.pem").read_bytes())


def mint(
    home: Path, domain: str, endorsed: EndorsedReport, service: str, mr_enclave: bytes, *, compact: bool = False
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, x509.Certificate]:
    """A CA-issued certificate for a fresh P-256 key carrying ``endorsed``: (key, leaf, CA)."""
    ca_key, ca_cert = service_ca(home)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_service_certificate(
        ca_key, ca_cert, key.public_key(), service, mr_enclave, endorsed, domain, True,
        datetime.now(UTC), timedelta(minutes=10), compact=compact,
    )
    return key, leaf, ca_cert


@contextmanager
def impostor(key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate]) -> Iterator[str]:
    """A TLS server on loopback presenting ``chain`` (leaf first); yields its address."""
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
        cert_file.write_bytes(b"".join(c.public_bytes(PEM) for c in chain))
        key_file.write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except OSError:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def raw_tls_exchange(
    address: str,
    as_root: Path,
    server_name: str,
    client: tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]] | None = None,
) -> str:
    """Python ``ssl`` client: handshake, send the HTTP/2 preface, read. Returns how it ended:
    ``"data"`` if the server answered, else the TLS error text (``"eof"`` on a bare close)."""
    context = ssl.create_default_context(cafile=str(as_root))
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as tmp:
        if client is not None:
            key, chain = client
            cert_file, key_file = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
            cert_file.write_bytes(b"".join(c.public_bytes(PEM) for c in chain))
            key_file.write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            context.load_cert_chain(cert_file, key_file)
        host, port = address.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT) as sock:
                with context.wrap_socket(sock, server_hostname=server_name) as tls:
                    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
                    return "data" if tls.recv(1024) else "eof"
        except ssl.SSLError as exc:
            return str(exc)
        except (ConnectionResetError, BrokenPipeError) as exc:
            return f"connection closed: {exc}"


def live_certificate(platform: Platform) -> x509.Certificate:
    return x509.load_der_x509_certificate(fetch_certificate(platform.auth_address, platform.config.as_root_path))


def client_trust_dir(platform: Platform, tmp_path: Path) -> Path:
    """A copy of a home's client trust files (AS root, enclave info, signatures, auditor keys)."""
    target = tmp_path / "trust"
    shutil.copytree(platform.home / "trust", target)
    return target


def wait_until(moment: datetime, margin: float = 0.5) -> None:
    delay = (moment - datetime.now(UTC)).total_seconds() + margin
    if delay > 0:
        time.sleep(delay)


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def short_platform(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[Platform]:
    """A running platform whose certificates live 5 seconds (for expiry)."""
    p = Platform(make_home(tmp_path_factory.mktemp("short-validity"), _auditor_cache, validity_secs=5))
    p.start()
    yield p
    p.stop()


# --- 1. code that differs from enclave info ---------------------------------------


def test_tampered_service_code_is_refused_by_the_as(home_factory: Callable[..., Platform], tmp_path: Path) -> None:
    """Point 1, server side: storage code with one changed byte cannot get a certificate, so it does not start."""
    p = home_factory()
    p.children.append(spawn("attestation", p.config))
    copy = tmp_path / "tampered" / "kettle"
    shutil.copytree(package_root(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "services" / "storage" / "service.py").open("a") as f:
        f.write("# one more byte than audited\n")
    build = BuildConfig.load(p.home)
    tampered = measure_service("storage", build.raw, root=copy)
    audited = EnclaveInfo.parse(p.config.enclave_info_path.read_bytes()).measurement("storage").mr_enclave
    assert tampered != audited

    result = subprocess.run(
        [sys.executable, "-m", "kettle", "service", "storage"],
        env={**os.environ, "KETTLE_HOME": str(p.home), "PYTHONPATH": str(copy.parent)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    output = flat(result.stdout + result.stderr)
    assert result.returncode != 0, output
    assert (
        f"attestation service refused storage: measurement of storage ({tampered.hex()}) "
        f"does not match enclave info ({audited.hex()})"
    ) in output
    # The AS logged the refusal too, and is still serving.
    assert p.child("attestation").process.poll() is None
    assert "does not match enclave info" in flat((p.home / "logs" / "attestation.log").read_text())


def test_client_refuses_service_whose_measurement_is_not_in_enclave_info(platform: Platform, tmp_path: Path) -> None:
    """Point 1, client side: properly signed enclave info naming another authentication measurement."""
    trust = client_trust_dir(platform, tmp_path)
    info = EnclaveInfo.parse((trust / "enclave_info.toml").read_bytes())
    services = dict(info.services)
    services["authentication"] = Measurement(bytes(32 * [0xAB]), services["authentication"].mr_signer)
    data = EnclaveInfo(services).render()
    (trust / "enclave_info.toml").write_bytes(data)
    for key_path in sorted((platform.home / "auditors").glob("*.key.pem")):
        name = key_path.name.removesuffix(".key.pem")
        (trust / f"{name}{SIGNATURE_SUFFIX}").write_bytes(sign_enclave_info(data, load_auditor_private_key(key_path)))

    trusted = ClientTrust.from_files(trust / "as_root_ca.pem", trust / "enclave_info.toml", unsafe_allow_simulation=True)
    running = info.measurement("authentication").mr_enclave  # what the live service really runs
    with pytest.raises(AttestationError) as refused:
        verify_endpoint(platform.auth_address, "authentication", trusted)
    assert refused.value.reason == (
        f"{platform.auth_address}: measurement {running.hex()} does not match enclave info for authentication"
    )
    # Control: the home's own enclave info accepts the same endpoint.
    assert verify_endpoint(platform.auth_address, "authentication", platform.trust()).peer.service == "authentication"


# --- 2. fewer than k auditor signatures ---------------------------------------------

TOO_FEW = "enclave info has 2 valid auditor signature(s), 3 required"


def test_services_and_as_refuse_to_start_without_k_signatures(home_factory: Callable[..., Platform]) -> None:
    """Point 2, server side: a repeated signature counts once; storage and the AS refuse to start."""
    p = home_factory()
    p.children.append(spawn("attestation", p.config))
    signatures = sorted((p.home / "trust").glob("*" + SIGNATURE_SUFFIX))
    assert len(signatures) == 3
    signatures[0].write_bytes(signatures[1].read_bytes())

    # Storage checks enclave info itself, even while an AS is up.
    assert TOO_FEW in spawn_refused("storage", p.config)
    p.stop()
    assert TOO_FEW in spawn_refused("attestation", p.config)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "duplicate"])
def test_client_and_audit_verify_refuse_without_k_signatures(platform: Platform, tmp_path: Path, damage: str) -> None:
    """Point 2, client side: ClientTrust.from_files and `kettle audit verify` refuse 2 of 3 signatures."""
    trust = client_trust_dir(platform, tmp_path)
    info_path, root_path = trust / "enclave_info.toml", trust / "as_root_ca.pem"
    ClientTrust.from_files(root_path, info_path, unsafe_allow_simulation=True)  # control: intact copy verifies
    signatures = sorted(trust.glob("*" + SIGNATURE_SUFFIX))
    if damage == "missing":
        signatures[0].unlink()
    elif damage == "corrupt":
        raw = bytearray(signatures[0].read_bytes())
        raw[len(raw) // 2] ^= 0x01
        signatures[0].write_bytes(bytes(raw))
    else:
        signatures[0].write_bytes(signatures[1].read_bytes())

    with pytest.raises(AttestationError) as info:
        ClientTrust.from_files(root_path, info_path, unsafe_allow_simulation=True)
    assert info.value.reason.startswith(TOO_FEW)
    survivors = sorted(s.name.removesuffix(SIGNATURE_SUFFIX) for s in signatures[1:])
    assert info.value.reason == f"{TOO_FEW} (valid: {', '.join(survivors)})"

    result = platform.kettle("audit", "verify", str(info_path))
    assert result.returncode == 1
    assert f"error: {TOO_FEW}" in flat(result.stderr), result.stderr
    assert "enclave info verified" not in result.stdout


# --- 3. peers the inbound rules do not allow ----------------------------------------


def test_inbound_rules_refuse_peer_services(platform: Platform) -> None:
    """Point 3: an attested scheduler may not call authentication; legitimate peers are accepted."""
    admin_token = platform.auth_client().user_login("admin", "teaclave")
    credential = common_pb.UserCredential(id="admin", token=admin_token)

    async def scenario() -> None:
        scheduler = await attested_runtime("scheduler", platform.config)
        frontend = await attested_runtime("frontend", platform.config)
        execution = await attested_runtime("execution", platform.config)
        management = await attested_runtime("management", platform.config)
        try:
            stub = auth_grpc.TeaclaveAuthenticationInternalStub(scheduler.peers.channel("authentication"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.UserAuthenticate(auth_pb.UserAuthenticateRequest(credential=credential), timeout=CALL_TIMEOUT)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert info.value.details() == "peer service scheduler is not allowed to call authentication"

            # Allowed to call storage: scheduler yes, execution no.
            assert await storage_get(scheduler.peers.channel("storage")) == grpc.StatusCode.NOT_FOUND
            refused = await storage_get_error(execution.peers.channel("storage"))
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            assert refused.details() == "peer service execution is not allowed to call storage"
            refused = await storage_get_error(frontend.peers.channel("storage"))
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            assert refused.details() == "peer service frontend is not allowed to call storage"

            # Controls: the frontend may ask authentication; management may use storage.
            stub = auth_grpc.TeaclaveAuthenticationInternalStub(frontend.peers.channel("authentication"))
            reply = await stub.UserAuthenticate(auth_pb.UserAuthenticateRequest(credential=credential), timeout=CALL_TIMEOUT)
            assert reply.claims.sub == "admin"
            assert await storage_get(management.peers.channel("storage")) == grpc.StatusCode.NOT_FOUND
        finally:
            for runtime in (scheduler, frontend, execution, management):
                await runtime.peers.close()

    run(scenario())


# --- 4. expired certificates -------------------------------------------------------


def test_client_refuses_expired_service_certificate(short_platform: Platform) -> None:
    """Point 4, client side: a live authentication certificate, once expired, is refused."""
    p = short_platform
    verifier = p.trust().verifier
    cert = live_certificate(p)
    assert verifier.verify(cert, expected_services={"authentication"}).service == "authentication"  # control
    wait_until(cert.not_valid_after_utc)
    with pytest.raises(AttestationError) as info:
        verifier.verify(cert, expected_services={"authentication"})
    assert info.value.reason == f"certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    # The service itself rotated in time: its current certificate verifies.
    assert verify_endpoint(p.auth_address, "authentication", p.trust()).peer.not_after > datetime.now(UTC)


def test_storage_refuses_expired_client_certificate(short_platform: Platform) -> None:
    """Point 4, server side: a peer whose certificate expired (no rotation) is refused by TLS; storage keeps serving."""
    p = short_platform
    storage = p.config.endpoint("storage").target
    storage_log = p.home / "logs" / "storage.log"
    reason = "CERTIFICATE_VERIFY_FAILED: certificate has expired"
    expired_before = storage_log.read_text().count(reason)

    async def scenario() -> tuple[grpc.aio.AioRpcError, Identity]:
        stale = await attested_runtime("management", p.config)  # rotation never started
        identity = stale.identities.current
        channels = PeerChannels(p.config, stale.identities, stale.enclave_info, stale.as_root_pem)
        try:
            assert await storage_get(stale.peers.channel("storage")) == grpc.StatusCode.NOT_FOUND  # control
            await stale.peers.close()
            wait = (identity.client_certificate.not_valid_after_utc - datetime.now(UTC)).total_seconds() + 0.5
            await asyncio.sleep(max(wait, 0))
            return await storage_get_error(channels.channel("storage")), identity  # new channel, new handshake
        finally:
            await channels.close()

    error, identity = run(scenario())
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    # grpc's client only sees the socket close; the server logs why it refused the handshake.
    after_grpc = storage_log.read_text().count(reason)
    assert after_grpc > expired_before
    # A Python ssl client presenting the expired certificate cannot exchange data either.
    outcome = raw_tls_exchange(
        storage, p.config.as_root_path, mre_name(p.config, "storage"),
        (identity.key, [identity.client_certificate, *identity.chain]),
    )
    assert outcome != "data"
    assert storage_log.read_text().count(reason) > after_grpc

    # Storage is alive and serves peers with valid certificates.
    assert p.child("storage").process.poll() is None

    async def fresh_peer() -> grpc.StatusCode:
        runtime = await attested_runtime("management", p.config)
        try:
            return await storage_get(runtime.peers.channel("storage"))
        finally:
            await runtime.peers.close()

    assert run(fresh_peer()) == grpc.StatusCode.NOT_FOUND
    assert "admin" in p.admin().list_users("any")  # authentication -> storage still works


# --- 5. simulation evidence where simulation is not allowed --------------------------


def test_services_refused_when_as_disallows_simulation(home_factory: Callable[..., Platform]) -> None:
    """Point 5, server side: an AS with unsafe_allow_simulation = false refuses simulation evidence."""
    p = home_factory()
    config_file = p.home / "kettle.toml"
    text = config_file.read_text()
    assert "unsafe_allow_simulation = true" in text
    config_file.write_text(text.replace("unsafe_allow_simulation = true", "unsafe_allow_simulation = false"))
    p.config = reload(p.config)
    assert p.config.attestation.unsafe_allow_simulation is False
    p.children.append(spawn("attestation", p.config))

    expected = "simulation evidence is refused: this attestation service does not allow simulation"
    for service in ("storage", "authentication"):
        assert f"attestation service refused {service}: {expected}" in spawn_refused(service, p.config)
    assert expected in flat((p.home / "logs" / "attestation.log").read_text())
    assert p.child("attestation").process.poll() is None


def test_client_refuses_simulation_evidence_unless_allowed(platform: Platform) -> None:
    """Point 5, client side: a client that does not allow simulation refuses the live service."""
    strict = ClientTrust.from_files(platform.config.as_root_path, platform.config.enclave_info_path)
    with pytest.raises(AttestationError) as info:
        verify_endpoint(platform.auth_address, "authentication", strict)
    assert info.value.reason == (
        f"{platform.auth_address}: simulation evidence is not accepted (not a TEE); "
        "allow simulation explicitly for development"
    )
    explicit = ClientTrust.from_files(
        platform.config.as_root_path, platform.config.enclave_info_path, unsafe_allow_simulation=False
    )
    with pytest.raises(AttestationError, match="simulation evidence is not accepted"):
        verify_endpoint(platform.auth_address, "authentication", explicit)
    # Control: the same files with simulation allowed verify.
    allowed = ClientTrust.from_files(
        platform.config.as_root_path, platform.config.enclave_info_path, unsafe_allow_simulation=True
    )
    assert verify_endpoint(platform.auth_address, "authentication", allowed).peer.simulation is True


# --- 6. no client certificate on an internal endpoint --------------------------------


def test_internal_endpoint_refuses_client_without_certificate(platform: Platform) -> None:
    """Point 6: grpc and Python ssl clients without a client certificate get nothing from storage."""
    config = platform.config
    storage = config.endpoint("storage").target
    storage_log = platform.home / "logs" / "storage.log"
    reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    before = storage_log.read_text().count(reason)

    credentials = grpc.ssl_channel_credentials(root_certificates=config.as_root_path.read_bytes())
    # The server name is storage's real measurement name, so only the missing client certificate can fail.
    with grpc.secure_channel(storage, credentials, options=channel_options(mre_name(config, "storage"))) as channel:
        with pytest.raises(grpc.RpcError) as info:
            storage_grpc.KettleStorageStub(channel).Get(storage_pb.GetRequest(key=MISSING_KEY), timeout=CALL_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    after_grpc = storage_log.read_text().count(reason)
    assert after_grpc > before

    outcome = raw_tls_exchange(storage, config.as_root_path, mre_name(config, "storage"))
    assert outcome != "data"
    assert storage_log.read_text().count(reason) > after_grpc

    # Storage keeps serving attested peers (same server name, same roots, plus a client certificate).
    assert platform.child("storage").process.poll() is None

    async def attested_call() -> grpc.StatusCode:
        runtime = await attested_runtime("management", config)
        try:
            return await storage_get(runtime.peers.channel("storage"))
        finally:
            await runtime.peers.close()

    assert run(attested_call()) == grpc.StatusCode.NOT_FOUND


# --- 7. report data that does not match the TLS key ----------------------------------


def test_client_refuses_report_copied_to_another_key(platform: Platform) -> None:
    """Point 7, client side: the live signed report in a CA-issued certificate for another key."""
    verifier = platform.trust().verifier
    live = live_certificate(platform)
    peer = verifier.verify(live, expected_services={"authentication"})  # control: the original verifies
    key, leaf, ca = mint(platform.home, platform.config.domain, EndorsedReport.from_certificate(live), "authentication", peer.mr_enclave)
    reason = "report data does not match the certificate's public key"
    with pytest.raises(AttestationError) as info:
        verifier.verify(leaf, expected_services={"authentication"}, intermediates=[ca])
    assert info.value.reason == reason
    # The same certificate served over TLS (it chains to the AS root) is refused by the SDK.
    with impostor(key, [leaf, ca]) as address:
        with pytest.raises(AttestationError) as info:
            verify_endpoint(address, "authentication", platform.trust())
    assert info.value.reason == f"{address}: {reason}"


def post_certificate_request(config: Config, body: dict[str, str]) -> tuple[int, dict[str, str]]:
    """POST /kettle/v1/certificate to the live AS (TLS pinned to the AS root)."""
    url = config.attestation.service_url.split("://", 1)[1]
    host, port = url.rsplit(":", 1)
    connection = http.client.HTTPSConnection(
        host, int(port), timeout=CALL_TIMEOUT, context=as_tls_context(config.as_root_path)
    )
    try:
        connection.request("POST", "/kettle/v1/certificate", json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_as_refuses_evidence_for_another_key(platform: Platform) -> None:
    """Point 7, AS side: evidence binding one key with a CSR for another key is HTTP 400 with the reason."""
    home = platform.home
    mr_enclave = measure_service("storage", BuildConfig.load(home).raw)
    backend = SimulationBackend(home, mr_enclave, SIMULATION_MR_SIGNER, "storage")
    attested_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    evidence = backend.evidence(report_data_for(attested_key.public_key()))

    def body(csr_key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teaclave_storage_service")]))
            .sign(csr_key, hashes.SHA256())
        )
        return {
            "service": "storage",
            "csr": csr.public_bytes(PEM).decode(),
            "tee_type": evidence.tee_type,
            "evidence": base64.b64encode(evidence.quote).decode(),
        }

    status, doc = post_certificate_request(platform.config, body(other_key))
    assert (status, doc) == (400, {"error": "evidence report data does not match the certificate key"})
    # Control: the same evidence with a CSR for the attested key is accepted.
    status, doc = post_certificate_request(platform.config, body(attested_key))
    assert status == 200, doc
    issued = x509.load_pem_x509_certificates(doc["certificate_chain"].encode())[0]
    assert issued.public_key() == attested_key.public_key()


def test_storage_refuses_client_report_copied_to_another_key(platform: Platform) -> None:
    """Point 7, server side: a CA-issued client certificate carrying management's report for another key."""
    config = platform.config

    async def scenario() -> grpc.aio.AioRpcError:
        management = await attested_runtime("management", config)
        endorsed = EndorsedReport.from_certificate(management.identities.current.client_certificate)
        key, leaf, ca = mint(platform.home, config.domain, endorsed, "management", management.measurement, compact=True)
        channel = mutual_channel(config, "storage", key, [leaf, ca])
        try:
            error = await storage_get_error(channel)
            # Control: the genuine identity carrying the same report is served.
            assert await storage_get(management.peers.channel("storage")) == grpc.StatusCode.NOT_FOUND
            return error
        finally:
            await channel.close()
            await management.peers.close()

    error = run(scenario())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    assert error.details() == "peer attestation failed: report data does not match the certificate's public key"


# --- forged report: trust-anchor injection (spec/attestation.md §1.5) ---------------


def endorse(
    signer_key: rsa.RSAPrivateKey, certs: list[x509.Certificate], mr_enclave: bytes, report_data: bytes, service: str
) -> EndorsedReport:
    """A report as the AS writes it (simulation, status OK, fresh), signed by ``signer_key``."""
    quote = QuoteBody(mr_enclave, SIMULATION_MR_SIGNER, report_data, INIT_FLAG | DEBUG_FLAG | MODE64BIT_FLAG)
    fields = {"kettleTeeType": "simulation", "kettleSimulation": True, "kettleService": service}
    report = build_report(quote.to_bytes(), "OK", datetime.now(UTC) - timedelta(seconds=1), fields)
    signature = signer_key.sign(report, padding.PKCS1v15(), hashes.SHA256())
    return EndorsedReport(report, signature, [c.public_bytes(DER) for c in certs])


def test_forged_report_with_injected_root_is_refused(platform: Platform) -> None:
    """Forged report: a self-made root in certs[1] signing certs[0], which signs a report with the
    right measurement and bound key, is refused (Teaclave's Python SDK would accept it)."""
    home, domain = platform.home, platform.config.domain
    verifier = platform.trust().verifier
    mr_enclave = measure_service("authentication", BuildConfig.load(home).raw)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca_key, ca_cert = service_ca(home)
    now = datetime.now(UTC)

    # The attacker's hierarchy, named exactly like the real one.
    evil_root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    evil_root = self_signed_root(evil_root_key, "Kettle SIMULATION AS root", True, now)
    evil_signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    evil_signer = issue_by_root(
        evil_root_key, evil_root, evil_signer_key.public_key(), "Kettle SIMULATION AS report signing", True, now
    )
    forged = endorse(evil_signer_key, [evil_signer, evil_root], mr_enclave, report_data_for(leaf_key.public_key()), "authentication")
    # The leaf itself is even issued by the real service CA, so TLS accepts it; only the report is forged.
    leaf = issue_service_certificate(
        ca_key, ca_cert, leaf_key.public_key(), "authentication", mr_enclave, forged, domain, True, now, timedelta(minutes=10)
    )
    # certs[1:] are never trusted: the signer itself must be issued by the pinned root.
    reason = f"report signing certificate {evil_signer.subject.rfc4514_string()} does not chain to the pinned AS root"
    with pytest.raises(AttestationError) as info:
        verifier.verify(leaf, expected_services={"authentication"}, intermediates=[ca_cert])
    assert info.value.reason == reason
    with impostor(leaf_key, [leaf, ca_cert]) as address:
        with pytest.raises(AttestationError) as info:
            verify_endpoint(address, "authentication", platform.trust())
    assert info.value.reason == f"{address}: {reason}"

    # Control: the identical construction signed by the real report-signing key verifies.
    directory = home / "attestation_service"
    report_key = serialization.load_pem_private_key((directory / "report.key.pem").read_bytes(), password=None)
    assert isinstance(report_key, rsa.RSAPrivateKey)
    report_cert = x509.load_pem_x509_certificate((directory / "report.pem").read_bytes())
    genuine = endorse(report_key, [report_cert], mr_enclave, report_data_for(leaf_key.public_key()), "authentication")
    good_leaf = issue_service_certificate(
        ca_key, ca_cert, leaf_key.public_key(), "authentication", mr_enclave, genuine, domain, True, now, timedelta(minutes=10)
    )
    assert verifier.verify(good_leaf, expected_services={"authentication"}, intermediates=[ca_cert]).service == "authentication"


def _rogue_signers(home: Path, now: datetime) -> dict[str, tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]]:
    """Report signers that are not the AS's report-signing role, each with the chain it would present."""
    ca_key, ca_cert = service_ca(home)
    directory = home / "attestation_service"
    signer_key = ec.generate_private_key(ec.SECP256R1())
    under_service_ca = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue report signer")]))
        .issuer_name(ca_cert.subject)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    tls_key = serialization.load_pem_private_key((directory / "tls.key.pem").read_bytes(), password=None)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    tls_cert = x509.load_pem_x509_certificate((directory / "tls.pem").read_bytes())
    return {
        "signer-certified-by-service-ca": (signer_key, [under_service_ca, ca_cert]),
        "as-tls-endpoint-key": (tls_key, [tls_cert]),
    }


@pytest.mark.parametrize("rogue", ["signer-certified-by-service-ca", "as-tls-endpoint-key"])
def test_report_signed_outside_the_report_signing_role_is_refused(platform: Platform, rogue: str) -> None:
    """Forged report, compromised issuer: holding the service CA key (or the AS TLS key) must not
    be enough to sign reports; only the AS report-signing certificate may."""
    home, domain = platform.home, platform.config.domain
    now = datetime.now(UTC)
    mr_enclave = measure_service("authentication", BuildConfig.load(home).raw)
    signer_key, certs = _rogue_signers(home, now)[rogue]
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    quote = QuoteBody(mr_enclave, SIMULATION_MR_SIGNER, report_data_for(leaf_key.public_key()), INIT_FLAG | DEBUG_FLAG | MODE64BIT_FLAG)
    fields = {"kettleTeeType": "simulation", "kettleSimulation": True, "kettleService": "authentication"}
    report = build_report(quote.to_bytes(), "OK", now - timedelta(seconds=1), fields)
    endorsed = EndorsedReport(report, signer_key.sign(report, ec.ECDSA(hashes.SHA256())), [c.public_bytes(DER) for c in certs])
    ca_key, ca_cert = service_ca(home)
    leaf = issue_service_certificate(
        ca_key, ca_cert, leaf_key.public_key(), "authentication", mr_enclave, endorsed, domain, True, now, timedelta(minutes=10)
    )
    with pytest.raises(AttestationError, match="report sign"):
        platform.trust().verifier.verify(leaf, expected_services={"authentication"}, intermediates=[ca_cert])
