"""A data owner who distrusts the operator verifies a live endpoint's hardware evidence itself.

Real TLS: grpc servers in this process present certificates issued by a dev home's
attestation service (its real CA key), with the raw evidence extension added as the
attestation service adds it, signed by test SEV-SNP hardware. Clients are Kettle's SDK
(``verify_hardware``) and ``kettle attest HOST:PORT --hardware / --without-as``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from attested_identities import AttestedHome, attested_home
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from snp_test_roots import SnpTestHardware
from typer.testing import CliRunner, Result

from kettle.attestation.backends import SnpCertificate
from kettle.attestation.certificates import report_data_for
from kettle.attestation.hardware import EVIDENCE_EXTENSION_OID, NO_EVIDENCE, RawEvidence
from kettle.attestation.identity import Identity
from kettle.cli.main import app
from kettle.errors import AttestationError
from kettle.sdk.attested import ClientTrust, HardwareTrust, verify_endpoint

MEASUREMENT = bytes(range(48))


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class Served:
    """A grpc server on localhost presenting one certificate chain (the handshake is all the tests need)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate]) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        port = self.server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(_pem_key(key), pem)]))
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None)


def with_evidence(home: AttestedHome, identity: Identity, value: bytes) -> x509.Certificate:
    """``identity``'s certificate re-issued by the AS's CA with the raw evidence extension added."""
    cert = identity.certificate
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject).issuer_name(cert.issuer).public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    builder = builder.add_extension(x509.UnrecognizedExtension(EVIDENCE_EXTENSION_OID, value), critical=False)
    return builder.sign(home.authority.ca_key, hashes.SHA256())


def snp_evidence(milan: SnpTestHardware, key: ec.EllipticCurvePrivateKey, measurement: bytes = MEASUREMENT) -> bytes:
    report = milan.report(report_data=report_data_for(key.public_key()), measurement=measurement)
    return RawEvidence("sev-snp", report, (SnpCertificate("vcek", milan.vcek),)).to_extension_value()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> AttestedHome:
    return attested_home(tmp_path_factory.mktemp("hardware-home"), _auditor_cache)


@pytest.fixture(scope="module")
def milan() -> SnpTestHardware:
    return SnpTestHardware.make("Milan")


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory, milan: SnpTestHardware) -> Path:
    folder = tmp_path_factory.mktemp("test-roots")
    milan.write_roots(folder)
    return folder


@pytest.fixture(scope="module")
def identity(home: AttestedHome) -> Identity:
    return home.identity("frontend", datetime.now(UTC).timestamp())


@pytest.fixture
def plain(identity: Identity) -> Iterator[Served]:
    """The simulation service as it is today: an AS certificate, no hardware evidence."""
    served = Served(identity.key, [identity.certificate, *identity.chain])
    yield served
    served.stop()


@pytest.fixture
def hardware_served(home: AttestedHome, identity: Identity, milan: SnpTestHardware) -> Iterator[Served]:
    cert = with_evidence(home, identity, snp_evidence(milan, identity.key))
    served = Served(identity.key, [cert, *identity.chain])
    yield served
    served.stop()


def trust(home: AttestedHome, **kwargs: object) -> ClientTrust:
    return ClientTrust.from_files(home.config.as_root_path, home.config.enclave_info_path,
                                  unsafe_allow_simulation=True, **kwargs)  # type: ignore[arg-type]


def kettle(home: AttestedHome, *args: str | Path) -> Result:
    return CliRunner().invoke(app, ["attest", *map(str, args)], env={"KETTLE_HOME": str(home.home)})


# ---------------------------------------------------------------- SDK


def test_sdk_without_hardware_verification_trusts_the_as_as_before(home: AttestedHome, plain: Served) -> None:
    endpoint = verify_endpoint(plain.address, "frontend", trust(home))
    assert endpoint.peer.service == "frontend"
    assert endpoint.hardware is None and endpoint.pinned_certificate is None


def test_sdk_requiring_hardware_refuses_a_service_without_evidence(home: AttestedHome, plain: Served) -> None:
    with pytest.raises(AttestationError) as info:
        verify_endpoint(plain.address, "frontend", trust(home, verify_hardware=True))
    assert info.value.reason == f"{plain.address}: hardware: {NO_EVIDENCE}"


def test_sdk_refuses_hardware_evidence_under_test_roots_when_pinning_amds(home: AttestedHome, hardware_served: Served) -> None:
    with pytest.raises(AttestationError) as info:
        verify_endpoint(hardware_served.address, "frontend", trust(home, verify_hardware=True))
    assert info.value.reason.startswith(f"{hardware_served.address}: hardware: ")


def test_hardware_trust_needs_verify_hardware_and_real_test_roots(home: AttestedHome, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(Exception, match="verify_hardware is off"):
        trust(home, hardware=HardwareTrust())
    with pytest.raises(Exception, match="holds no test roots"):
        HardwareTrust.unsafe_test_roots(tmp_path)


def test_test_roots_are_loud(roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    hardware = HardwareTrust.unsafe_test_roots(roots)
    assert hardware.snp_roots is not None and set(hardware.snp_roots) == {"Milan"}
    assert hardware.intel_root_der is None  # Intel's stays pinned
    assert "UNSAFE" in caplog.text


# ---------------------------------------------------------------- kettle attest


def test_cli_hardware_on_a_service_without_evidence_says_so_and_exits_1(home: AttestedHome, plain: Served) -> None:
    result = kettle(home, plain.address, "--hardware", "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["verified"] is False
    assert doc["service"] == "frontend" and all(c["ok"] for c in doc["checks"])  # the AS checks pass
    assert doc["hardware"]["reason"] == NO_EVIDENCE
    text = kettle(home, plain.address, "--hardware")
    assert text.exit_code == 1
    assert "attestation service" in text.stdout and "hardware" in text.stdout
    assert "presents no hardware" in text.stdout


def test_cli_without_as_does_not_need_the_as_certificate_chain(home: AttestedHome, roots: Path, milan: SnpTestHardware) -> None:
    """A certificate no AS issued: the AS root plays no part, the hardware evidence decides."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teaclave_frontend_service")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.UnrecognizedExtension(EVIDENCE_EXTENSION_OID, snp_evidence(milan, key)), critical=False)
        .sign(key, hashes.SHA256())
    )
    served = Served(key, [cert])
    try:
        as_mode = kettle(home, served.address, "--json")
        assert as_mode.exit_code == 1  # the AS root refuses a certificate it did not issue
        result = kettle(home, served.address, "--without-as", "--service", "frontend",
                        "--unsafe-test-roots", roots, "--json")
        assert result.exit_code == 1, result.output
        doc = json.loads(result.stdout)
        assert "checks" not in doc  # no AS checks at all
        checks = {c["check"]: c for c in doc["hardware"]["checks"]}
        assert checks["hardware evidence"]["ok"]
        assert doc["hardware"]["reason"] == "enclave info lists no sev-snp measurement for frontend"
    finally:
        served.stop()


def test_cli_usage_mistakes(home: AttestedHome, plain: Served) -> None:
    missing = kettle(home, plain.address, "--without-as")
    assert missing.exit_code == 2 and "--without-as needs --service" in missing.output
    stray = kettle(home, plain.address, "--collateral", "x.json")
    assert stray.exit_code == 2 and "go with --hardware" in stray.output


def test_a_hardware_channel_trusts_only_the_verified_certificate(home: AttestedHome, identity: Identity, plain: Served) -> None:
    """The AS can issue another certificate for the same measurement name; a channel pinned to the
    verified certificate refuses it, where a channel that trusts the AS root accepts it."""
    other = home.identity("frontend", datetime.now(UTC).timestamp())
    impostor = Served(other.key, [other.certificate, *other.chain])
    try:
        endpoint = verify_endpoint(plain.address, "frontend", trust(home))
        pinned = replace(endpoint, pinned_certificate=identity.certificate.public_bytes(serialization.Encoding.PEM))
        client_trust = trust(home)

        def connects(e: object, address: str) -> bool:
            channel = replace(e, address=address).channel(client_trust)  # type: ignore[type-var]
            try:
                grpc.channel_ready_future(channel).result(timeout=3)
                return True
            except grpc.FutureTimeoutError:
                return False
            finally:
                channel.close()

        assert connects(pinned, plain.address)
        assert not connects(pinned, impostor.address)
        assert connects(endpoint, impostor.address)
    finally:
        impostor.stop()
