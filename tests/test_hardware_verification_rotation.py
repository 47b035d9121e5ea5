"""A hardware-pinned SDK channel follows the service's certificate rotation, and only to a verified certificate.

Real TLS and grpc: a server on localhost presents a certificate the dev home's attestation
service issued, with SEV-SNP evidence of test hardware embedded as the AS embeds it, then
"rotates" (restarts on the same port with a new key and certificate, as a rotation or a
restart makes new handshakes meet a new certificate). The client is the SDK channel that
``AttestedEndpoint.channel`` returns for a hardware-verified endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from attested_identities import AttestedHome, attested_home
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from snp_test_roots import SnpTestHardware
from test_hardware_verification_endpoint import MEASUREMENT, snp_evidence, with_evidence

from kettle.attestation.enclave_info import EnclaveInfo, TeeMeasurements
from kettle.attestation.evidence_extension import EVIDENCE_EXTENSION_OID
from kettle.attestation.hardware import NO_EVIDENCE
from kettle.attestation.identity import Identity
from kettle.attestation.verifier import Verifier
from kettle.errors import AttestationError
from kettle.sdk.attested import (
    AioRepinningChannel,
    ClientTrust,
    HardwareTrust,
    RepinningChannel,
    verify_endpoint,
)

ECHO = "/kettle.test.Echo/Echo"


class RotatingServer:
    """An echo service on a fixed localhost port that counts the requests it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.port = 0

    def _echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.received.append(request)
        return request

    def serve(self, key_pem: bytes, chain: list[x509.Certificate]) -> None:
        """(Re)start presenting ``chain``: every later handshake meets this certificate."""
        self.stop()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.method_handlers_generic_handler(
            "kettle.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(self._echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        self.port = server.add_secure_port(f"127.0.0.1:{self.port}", grpc.ssl_server_credentials([(key_pem, pem)]))
        server.start()
        self._server = server

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(None)
            self._server = None


def key_pem(identity: Identity) -> bytes:
    return identity.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: object) -> AttestedHome:
    return attested_home(tmp_path_factory.mktemp("rotation-home"), _auditor_cache)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def milan() -> SnpTestHardware:
    return SnpTestHardware.make("Milan")


@pytest.fixture(scope="module")
def client(home: AttestedHome, milan: SnpTestHardware) -> ClientTrust:
    """A data owner who checks the AS and the test hardware, and lists the frontend's SNP measurement."""
    listed = home.info.measurement("frontend")
    info = EnclaveInfo({"frontend": replace(listed, tee=TeeMeasurements(sev_snp=frozenset({MEASUREMENT})))})
    verifier = Verifier(home.authority.root, info, unsafe_allow_simulation=True)
    return ClientTrust(home.config.as_root_path, info, verifier, HardwareTrust(snp_roots=milan.roots))


def fresh(home: AttestedHome) -> Identity:
    return home.identity("frontend", datetime.now(UTC).timestamp())


def certified(home: AttestedHome, identity: Identity, evidence: bytes | None) -> list[x509.Certificate]:
    """``identity``'s chain with ``evidence`` embedded (None: the plain AS certificate)."""
    leaf = identity.certificate if evidence is None else with_evidence(home, identity, evidence)
    return [leaf, *identity.chain]


@pytest.fixture
def server() -> Iterator[RotatingServer]:
    served = RotatingServer()
    yield served
    served.stop()


@pytest.fixture
def same(home: AttestedHome, milan: SnpTestHardware) -> tuple[Identity, list[x509.Certificate]]:
    """The service's first identity and certificate chain."""
    first = fresh(home)
    return first, certified(home, first, snp_evidence(milan, first.key))


@pytest.fixture
def channel(client: ClientTrust, server: RotatingServer,
            same: tuple[Identity, list[x509.Certificate]]) -> Iterator[RepinningChannel]:
    first, chain = same
    server.serve(key_pem(first), chain)
    made = verify_endpoint(server.address, "frontend", client).channel(client)
    assert isinstance(made, RepinningChannel)
    assert made.unary_unary(ECHO)(b"before", timeout=10) == b"before"
    yield made
    made.close()


def pinned(channel: RepinningChannel) -> x509.Certificate:
    return x509.load_pem_x509_certificate(channel.endpoint.pinned_certificate or b"")


def test_a_rotation_to_verified_evidence_is_followed_and_pinned(
    home: AttestedHome, milan: SnpTestHardware, server: RotatingServer, channel: RepinningChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = pinned(channel)
    rotated = fresh(home)
    chain = certified(home, rotated, snp_evidence(milan, rotated.key))
    server.serve(key_pem(rotated), chain)
    with caplog.at_level(logging.INFO, logger="kettle.sdk.attested"):
        assert channel.unary_unary(ECHO)(b"after", timeout=10) == b"after"
    assert pinned(channel) == chain[0] != before
    assert pinned(channel).public_key() == rotated.key.public_key()
    assert channel.endpoint.hardware is not None and channel.endpoint.hardware.measurement == MEASUREMENT.hex()
    assert server.received == [b"before", b"after"]
    assert sum("re-pinned" in r.message for r in caplog.records) == 1
    channel.close()
    with pytest.raises(ValueError, match="closed"):
        channel.unary_unary(ECHO)(b"closed", timeout=10)


def not_from_the_as(identity: Identity, evidence: bytes) -> list[x509.Certificate]:
    """A certificate with valid hardware evidence for its key that the AS did not issue."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teaclave_frontend_service")])
    now = datetime.now(UTC)
    return [
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(identity.key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.UnrecognizedExtension(EVIDENCE_EXTENSION_OID, evidence), critical=False)
        .sign(identity.key, hashes.SHA256())
    ]


@pytest.mark.parametrize(
    "rotation", ["another measurement", "another key's report data", "no evidence", "not issued by the AS"]
)
def test_a_rotation_to_a_certificate_that_fails_is_refused_and_nothing_is_sent(
    home: AttestedHome, milan: SnpTestHardware, server: RotatingServer, channel: RepinningChannel, rotation: str
) -> None:
    before = pinned(channel)
    rotated = fresh(home)
    chain, reason = {
        "another measurement": (certified(home, rotated, snp_evidence(milan, rotated.key, measurement=bytes(48))),
                                "hardware: measurement 0000"),
        "another key's report data": (certified(home, rotated, snp_evidence(milan, fresh(home).key)),
                                      "hardware: report data "),
        "no evidence": (certified(home, rotated, None), f"hardware: {NO_EVIDENCE}"),
        # Hardware evidence alone never replaces the AS checks the client asked for.
        "not issued by the AS": (not_from_the_as(rotated, snp_evidence(milan, rotated.key)),
                                 f"{server.address}: TLS certificate does not chain to the pinned AS root"),
    }[rotation]
    server.serve(key_pem(rotated), chain)
    call = channel.unary_unary(ECHO)
    for _ in range(2):  # refused every time, never sent
        with pytest.raises(AttestationError) as info:
            call(b"secret", timeout=10)
        assert info.value.reason.startswith(f"{server.address} presents a new certificate that fails verification")
        assert f"({reason}" in info.value.reason
    assert server.received == [b"before"]
    assert pinned(channel) == before


def test_concurrent_callers_cause_one_re_verification(
    home: AttestedHome, milan: SnpTestHardware, server: RotatingServer, channel: RepinningChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rotated = fresh(home)
    server.serve(key_pem(rotated), certified(home, rotated, snp_evidence(milan, rotated.key)))
    call = channel.unary_unary(ECHO)
    start = threading.Barrier(8)

    def caller(n: int) -> bytes:
        start.wait()
        return call(bytes([n]), timeout=10)  # type: ignore[no-any-return]

    with caplog.at_level(logging.INFO, logger="kettle.sdk.attested"), futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(caller, range(8)))
    assert answers == [bytes([n]) for n in range(8)]
    assert sum("re-pinned" in r.message for r in caplog.records) == 1
    assert pinned(channel).public_key() == rotated.key.public_key()
    assert sorted(server.received[1:]) == [bytes([n]) for n in range(8)]


def test_an_outage_or_the_same_certificate_is_not_a_rotation(
    server: RotatingServer, same: tuple[Identity, list[x509.Certificate]], channel: RepinningChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A service that is down fails the call as before; one restarted with the verified
    certificate is used without verifying again."""
    before = pinned(channel)
    server.stop()
    with caplog.at_level(logging.INFO, logger="kettle.sdk.attested"):
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(ECHO)(b"down", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert pinned(channel) == before
        identity, chain = same
        server.serve(key_pem(identity), chain)
        grpc.channel_ready_future(channel).result(timeout=10)  # past grpc's reconnect backoff
        assert channel.unary_unary(ECHO)(b"back", timeout=10) == b"back"
    assert pinned(channel) == before
    assert not any("re-pinned" in r.message for r in caplog.records)
    assert server.received == [b"before", b"back"]


def test_an_asyncio_channel_follows_a_verified_rotation_and_refuses_a_failing_one(
    home: AttestedHome, milan: SnpTestHardware, client: ClientTrust, server: RotatingServer,
    same: tuple[Identity, list[x509.Certificate]],
) -> None:
    first, chain = same
    server.serve(key_pem(first), chain)
    endpoint = verify_endpoint(server.address, "frontend", client)
    rotated, refused = fresh(home), fresh(home)

    async def scenario() -> None:
        channel = endpoint.aio_channel(client)
        assert isinstance(channel, AioRepinningChannel)
        async with channel:
            echo = channel.unary_unary(ECHO)
            assert await echo(b"before", timeout=10) == b"before"
            server.serve(key_pem(rotated), certified(home, rotated, snp_evidence(milan, rotated.key)))
            answers = await asyncio.gather(*(echo(bytes([n]), timeout=10) for n in range(4)))
            assert answers == [bytes([n]) for n in range(4)]
            assert x509.load_pem_x509_certificate(channel.endpoint.pinned_certificate or b"").public_key() == (
                rotated.key.public_key()
            )
            wrong = snp_evidence(milan, refused.key, measurement=bytes(48))
            server.serve(key_pem(refused), certified(home, refused, wrong))
            with pytest.raises(AttestationError, match=r"fails verification, so nothing is sent to it \(hardware: measurement"):
                await echo(b"secret", timeout=10)

    asyncio.run(scenario())
    assert sorted(server.received) == sorted([b"before", *(bytes([n]) for n in range(4))])
