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
from conftest import make_home
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from snp_test_roots import SnpTestHardware
from typer.testing import CliRunner, Result

from kettle.attestation.backends import SnpCertificate
from kettle.attestation.certificates import report_data_for
from kettle.attestation.enclave_info import (
    EnclaveInfo,
    TeeMeasurements,
    with_tee_measurement,
)
from kettle.attestation.evidence_extension import (
    EVIDENCE_EXTENSION_OID,
    CarriedEvidence,
)
from kettle.attestation.hardware import NO_EVIDENCE
from kettle.attestation.identity import Identity
from kettle.attestation.report import REPORT_EXTENSION_OID
from kettle.attestation.verifier import Verifier
from kettle.cli.main import app
from kettle.errors import AttestationError, ConfigError
from kettle.provisioning import publish_enclave_info
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


def with_evidence(home: AttestedHome, identity: Identity, value: bytes, *, drop_report: bool = False) -> x509.Certificate:
    """``identity``'s certificate re-issued by the AS's CA with the raw evidence extension added
    (``drop_report``: without the AS report)."""
    cert = identity.certificate
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject).issuer_name(cert.issuer).public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        if not (drop_report and extension.oid == REPORT_EXTENSION_OID):
            builder = builder.add_extension(extension.value, extension.critical)
    builder = builder.add_extension(x509.UnrecognizedExtension(EVIDENCE_EXTENSION_OID, value), critical=False)
    return builder.sign(home.authority.ca_key, hashes.SHA256())


def snp_evidence(milan: SnpTestHardware, key: ec.EllipticCurvePrivateKey, measurement: bytes = MEASUREMENT) -> bytes:
    report = milan.report(report_data=report_data_for(key.public_key()), measurement=measurement)
    return CarriedEvidence("sev-snp", report, (SnpCertificate("vcek", milan.vcek),)).to_extension_value()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> AttestedHome:
    return attested_home(tmp_path_factory.mktemp("hardware-home"), _auditor_cache)


@pytest.fixture(scope="module")
def snp_home(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Path:
    """A home whose auditor-signed enclave info lists the frontend's SEV-SNP launch measurement."""
    config = make_home(tmp_path_factory.mktemp("snp-home"), _auditor_cache)
    info = EnclaveInfo.parse(config.enclave_info_path.read_bytes())
    publish_enclave_info(config.home, with_tee_measurement(info, "frontend", sev_snp=MEASUREMENT), config)
    return config.home


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


def kettle(home: AttestedHome | Path, *args: str | Path) -> Result:
    path = home.home if isinstance(home, AttestedHome) else home
    return CliRunner().invoke(app, ["attest", *map(str, args)], env={"KETTLE_HOME": str(path)})


# ---------------------------------------------------------------- SDK


def test_sdk_without_hardware_verification_trusts_the_as_as_before(home: AttestedHome, plain: Served) -> None:
    endpoint = verify_endpoint(plain.address, "frontend", trust(home))
    assert endpoint.peer.service == "frontend"
    assert endpoint.hardware is None and endpoint.pinned_certificate is None


def test_sdk_requiring_hardware_refuses_a_service_without_evidence(home: AttestedHome, plain: Served) -> None:
    with pytest.raises(AttestationError) as info:
        verify_endpoint(plain.address, "frontend", trust(home, verify_hardware=True))
    assert info.value.reason == f"{plain.address}: hardware: {NO_EVIDENCE}"


def test_sdk_verifies_the_hardware_and_pins_the_verified_certificate(
    home: AttestedHome, identity: Identity, hardware_served: Served, milan: SnpTestHardware
) -> None:
    # The client's view: the AS reports the simulation measurement it knows, and the auditors
    # also list the frontend's SEV-SNP launch measurement.
    listed = home.info.measurement("frontend")
    info = EnclaveInfo({"frontend": replace(listed, tee=TeeMeasurements(sev_snp=frozenset({MEASUREMENT})))})
    verifier = Verifier(home.authority.root, info, unsafe_allow_simulation=True)
    test_hardware = HardwareTrust(snp_roots=milan.roots)
    client = ClientTrust(home.config.as_root_path, info, verifier, test_hardware)
    endpoint = verify_endpoint(hardware_served.address, "frontend", client)
    assert endpoint.hardware is not None and endpoint.hardware.ok
    assert endpoint.hardware.measurement == MEASUREMENT.hex()
    served = x509.load_pem_x509_certificate(endpoint.pinned_certificate or b"")
    assert served.public_key() == identity.key.public_key()
    assert served.extensions.get_extension_for_oid(EVIDENCE_EXTENSION_OID)
    # The same service under AMD's pinned roots: its test-hardware evidence is refused.
    amd = replace(client, hardware=HardwareTrust())
    with pytest.raises(AttestationError, match="hardware: the VCEK certificate is not issued by a pinned AMD ASK"):
        verify_endpoint(hardware_served.address, "frontend", amd)
    # Another SNP measurement listed: refused, whatever the AS says.
    moved = EnclaveInfo({"frontend": replace(listed, tee=TeeMeasurements(sev_snp=frozenset({bytes(48)})))})
    with pytest.raises(AttestationError, match="hardware: measurement .* is not an accepted measurement"):
        verify_endpoint(hardware_served.address, "frontend", replace(client, enclave_info=moved))


def test_hardware_trust_needs_verify_hardware_and_real_test_roots(home: AttestedHome, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="verify_hardware is off"):
        trust(home, hardware=HardwareTrust())
    with pytest.raises(ConfigError, match="holds neither"):
        HardwareTrust.for_config(home.config, unsafe_test_roots=tmp_path)


def test_test_roots_are_loud(home: AttestedHome, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    hardware = HardwareTrust.for_config(home.config, unsafe_test_roots=roots)
    assert hardware.snp_roots is not None and set(hardware.snp_roots) == {"Milan"}
    assert hardware.intel_root_der is None  # Intel's stays pinned
    assert "UNSAFE" in caplog.text
    default = ClientTrust.from_config(home.config, verify_hardware=True).hardware
    assert default is not None and default.snp_roots is None and default.intel_root_der is None
    assert default.collateral is not None  # the home's collateral cache


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


def test_cli_without_as_trusts_only_the_hardware(
    home: AttestedHome, snp_home: Path, roots: Path, milan: SnpTestHardware
) -> None:
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
        as_mode = kettle(snp_home, served.address, "--json")
        assert as_mode.exit_code == 1  # the AS root refuses a certificate it did not issue
        args = (served.address, "--without-as", "--service", "frontend", "--unsafe-test-roots", roots)
        result = kettle(snp_home, *args, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["verified"] is True and "checks" not in doc  # no AS checks at all
        assert doc["hardware"]["evidence"] == {"kind": "sev-snp", "product": "Milan", "measurement": MEASUREMENT.hex(), "vmpl": 0}
        checks = {c["check"]: c for c in doc["hardware"]["checks"]}
        assert "UNSAFE test roots" in checks["trust anchor"]["detail"]
        assert checks["report data"]["ok"] and checks["measurement"]["ok"]
        text = kettle(snp_home, *args)
        assert text.exit_code == 0 and "hardware (vendor roots" in text.stdout and "verified" in text.stdout
        # Pinning AMD's roots, or in a home whose enclave info lists no SNP measurement: refused.
        amd = kettle(snp_home, served.address, "--without-as", "--service", "frontend", "--json")
        assert amd.exit_code == 1
        assert "not issued by a pinned AMD ASK" in json.loads(amd.stdout)["hardware"]["reason"]
        unlisted = kettle(home.home, *args, "--json")
        assert unlisted.exit_code == 1
        assert json.loads(unlisted.stdout)["hardware"]["reason"] == (
            "enclave info lists no sev-snp measurements for frontend (no [teaclave_frontend_service.sev_snp])"
        )
    finally:
        served.stop()


def test_cli_hardware_without_a_service_named_by_the_as_asks_for_one(
    home: AttestedHome, identity: Identity, milan: SnpTestHardware
) -> None:
    cert = with_evidence(home, identity, snp_evidence(milan, identity.key), drop_report=True)
    served = Served(identity.key, [cert, *identity.chain])
    try:
        result = kettle(home, served.address, "--hardware", "--json")
        assert result.exit_code == 1, result.output
        doc = json.loads(result.stdout)
        assert doc["service"] is None and not doc["checks"][-1]["ok"]  # the AS checks say the report is missing
        assert doc["hardware"]["reason"] == "the attestation service's report names no service of enclave info; give --service"
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
