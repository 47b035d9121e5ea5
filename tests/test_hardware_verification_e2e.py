"""End to end: the attestation service issues a certificate for SEV-SNP evidence of test hardware, a
server presents it over real TLS, and a data owner verifies the hardware itself.

The issuer is the attestation service's own (``build_issuer`` on a home with ``unsafe_test_roots``
and enclave info listing the frontend's SNP measurement, signed by the dev auditors); the
client is Kettle's SDK with ``verify_hardware=True`` and ``kettle attest --hardware``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import make_home
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from snp_test_roots import SnpTestHardware
from typer.testing import CliRunner, Result

from kettle.attestation.backends import SnpCertificate
from kettle.attestation.certificates import report_data_for
from kettle.attestation.enclave_info import EnclaveInfo, with_tee_measurement
from kettle.attestation.evidence_extension import EVIDENCE_EXTENSION_OID
from kettle.attestation_service.issuer import Issued, IssueRequest
from kettle.attestation_service.server import build_issuer
from kettle.cli.main import app
from kettle.config import Config
from kettle.errors import AttestationError
from kettle.provisioning import publish_enclave_info
from kettle.sdk.attested import ClientTrust, HardwareTrust, verify_endpoint

MEASUREMENT = b"\x6b" * 48


@dataclass(frozen=True)
class World:
    config: Config
    milan: SnpTestHardware
    key: ec.EllipticCurvePrivateKey
    issued: Issued
    address: str


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teaclave_frontend_service")])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[World]:
    milan = SnpTestHardware.make("Milan")
    roots = tmp_path_factory.mktemp("test-roots")
    milan.write_roots(roots)
    config = make_home(tmp_path_factory.mktemp("snp-platform"), _auditor_cache, extra=f'unsafe_test_roots = "{roots}"')
    info = EnclaveInfo.parse(config.enclave_info_path.read_bytes())
    publish_enclave_info(config.home, with_tee_measurement(info, "frontend", sev_snp=MEASUREMENT), config)

    key = ec.generate_private_key(ec.SECP256R1())
    report = milan.report(report_data=report_data_for(key.public_key()), measurement=MEASUREMENT)
    request = IssueRequest("frontend", _csr(key), "sev-snp", report, (SnpCertificate("vcek", milan.vcek),))
    issued = build_issuer(config).issue(request)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(private, issued.chain_pem())]))
    server.start()
    yield World(config, milan, key, issued, f"127.0.0.1:{port}")
    server.stop(None)


def kettle(world: World, *args: str) -> Result:
    return CliRunner().invoke(app, ["attest", world.address, *args], env={"KETTLE_HOME": str(world.config.home)})


def test_the_as_embeds_the_evidence_and_the_sdk_verifies_it_against_the_hardware_roots(world: World) -> None:
    assert world.issued.certificate.extensions.get_extension_for_oid(EVIDENCE_EXTENSION_OID)
    endpoint = verify_endpoint(world.address, "frontend", ClientTrust.from_config(world.config, verify_hardware=True))
    assert endpoint.peer.service == "frontend" and endpoint.peer.tee_type == "sev-snp"
    assert endpoint.hardware is not None and endpoint.hardware.ok
    assert endpoint.hardware.measurement == MEASUREMENT.hex()
    assert endpoint.pinned_certificate == world.issued.certificate.public_bytes(serialization.Encoding.PEM)
    channel = endpoint.channel(ClientTrust.from_config(world.config))
    try:
        grpc.channel_ready_future(channel).result(timeout=10)  # the pinned certificate is the one served
    finally:
        channel.close()


def test_a_client_pinning_amds_roots_refuses_test_hardware(world: World) -> None:
    trusting_the_as = ClientTrust.from_config(world.config)
    pinned = ClientTrust(trusting_the_as.as_root_path, trusting_the_as.enclave_info, trusting_the_as.verifier,
                         HardwareTrust())
    with pytest.raises(AttestationError, match="hardware: the VCEK certificate is not issued by a pinned AMD ASK"):
        verify_endpoint(world.address, "frontend", pinned)


def test_kettle_attest_hardware_prints_both_verdicts(world: World) -> None:
    result = kettle(world, "--hardware", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["verified"] is True and doc["service"] == "frontend" and doc["tee_type"] == "sev-snp"
    hardware = doc["hardware"]
    assert hardware["verified"] is True
    assert hardware["evidence"]["measurement"] == MEASUREMENT.hex()
    names = [c["check"] for c in hardware["checks"]]
    assert names[:2] == ["hardware evidence", "trust anchor"] and names[-1] == "service"
    only = kettle(world, "--without-as", "--service", "frontend", "--json")
    assert only.exit_code == 0, only.output
    assert "checks" not in json.loads(only.stdout) and json.loads(only.stdout)["hardware"]["verified"] is True
    wrong = kettle(world, "--without-as", "--service", "storage", "--json")
    assert wrong.exit_code == 1
    assert json.loads(wrong.stdout)["hardware"]["reason"] == (
        "enclave info lists no sev-snp measurements for storage (no [teaclave_storage_service.sev_snp])"
    )
