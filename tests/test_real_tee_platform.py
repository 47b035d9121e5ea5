"""End to end on test TEE hardware made with fresh keys: the attestation service runs with the
``sev-snp`` and with the ``tdx`` backend, verifying evidence under ``unsafe_test_roots``, and
services obtain certificates with evidence their configfs-tsm provider reads from a FUSE
emulation that signs it (``tests/tee_fs.py --test-hardware``).

One whole platform per backend is started and reused (on ``tdx`` the attestation service runs
with the ``sev-snp`` backend: it seals its key-release root, and TDX has no sealing key). Kettle's
SDK, the CLI and Teaclave's SDK run a task on each; the refusals post crafted evidence to the
attestation service's HTTPS endpoint directly, as a hostile host would.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from collateral_servers import CollateralServer, Route
from conftest import Platform, make_home, patched_environment
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dcap_test_roots import SGX_EXTENSION, DcapTestRoots, _certificate, _raw_signature
from snp_test_roots import SnpTestHardware
from test_evidence_providers import mounted
from test_tee_sealing import sev_guest
from tee_fs import SNP_GUEST_POLICY, save_dcap_roots, save_snp_hardware
from test_teaclave_sdk_compat import TeaclaveException, sdk_verify_report

from kettle.attestation.backends import SnpCertificate
from kettle.attestation.certificates import report_data_for
from kettle.attestation.collateral import quote_platform
from kettle.attestation.enclave_info import EnclaveInfo, with_tee_measurement
from kettle.attestation.evidence_extension import CarriedEvidence
from kettle.attestation.identity import Identity, request_certificate
from kettle.attestation.providers import SEV_SNP, TDX, ConfigfsTsmProvider
from kettle.attestation.trust import client_enclave_info
from kettle.attestation.verifier import Verifier
from kettle.config import SERVICES, Config, load_config
from kettle.launcher import PLATFORM_SERVICES, Child, instances, spawn, start_platform, stop_all
from kettle.provisioning import publish_enclave_info

SNP_MEASUREMENT = bytes.fromhex("5e" * 48)
TD_MEASUREMENT = tuple(bytes([0x70 + i]) * 48 for i in range(5))


@dataclass
class TeePlatform:
    kind: str
    config: Config
    mount: Path
    snp: SnpTestHardware | None = None
    dcap: DcapTestRoots | None = None
    pccs: CollateralServer | None = None
    kds: CollateralServer | None = None
    children: list[Child] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.config.home

    def provider(self) -> ConfigfsTsmProvider:
        return ConfigfsTsmProvider(self.kind, self.mount)

    def identity(self, service: str) -> Identity:
        """A service's attestation round: its configfs-tsm provider, a CSR, the AS over HTTPS."""
        return request_certificate(self.config.attestation.service_url, self.config.as_root_path, service, self.provider(), 0)

    def trusted(self, *, test_roots: bool) -> Verifier:
        return Verifier(
            x509.load_pem_x509_certificate(self.config.as_root_path.read_bytes()),
            client_enclave_info(self.config.enclave_info_path),
            unsafe_allow_test_roots=test_roots,
        )

    def post(self, body: dict[str, object]) -> tuple[int, dict[str, object]]:
        port = self.config.attestation.listen_address.rsplit(":", 1)[1]
        context = ssl.create_default_context(cafile=str(self.config.as_root_path))
        connection = http.client.HTTPSConnection("localhost", int(port), context=context, timeout=30)
        try:
            connection.request("POST", "/kettle/v1/certificate", json.dumps(body).encode(), {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()


def _csr(key: ec.EllipticCurvePrivateKey, service: str) -> str:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"teaclave_{service}_service")]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def request_body(service: str, kind: str, evidence: bytes, key: ec.EllipticCurvePrivateKey,
                 certificates: tuple[SnpCertificate, ...] = ()) -> dict[str, object]:
    return {
        "service": service, "csr": _csr(key, service), "tee_type": kind,
        "evidence": base64.b64encode(evidence).decode(),
        "certificates": [{"kind": c.kind, "der": base64.b64encode(c.der).decode()} for c in certificates],
    }


def tee_home(path: Path, auditor_cache: Path, settings: str) -> Config:
    """A dev home whose attestation settings are ``settings`` (no simulation anywhere)."""
    config = make_home(path, auditor_cache)
    text = (config.home / "kettle.toml").read_text()
    assert 'backend = "simulation"' in text and "unsafe_allow_simulation = true" in text
    text = text.replace('backend = "simulation"', settings).replace("unsafe_allow_simulation = true", "")
    (config.home / "kettle.toml").write_text(text)
    return load_config(config.home)


def publish_tee_enclave_info(config: Config, **measurement: object) -> EnclaveInfo:
    """Enclave info listing the test measurement for every service, signed by the dev auditors."""
    dev = EnclaveInfo.parse(config.enclave_info_path.read_bytes())
    info = dev
    for service in SERVICES:
        info = with_tee_measurement(info, service, mr_signer=dev.measurement(service).mr_signer, **measurement)  # type: ignore[arg-type]
    assert publish_enclave_info(config.home, info, config)
    return info


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[TeePlatform]:
    base = tmp_path_factory.mktemp("snp-platform")
    hardware = SnpTestHardware.make()
    roots = base / "test-roots"
    roots.mkdir()
    hardware.write_roots(roots)
    save_snp_hardware(hardware, base / "kit.json")
    kds = CollateralServer()
    kds.serve_vcek(hardware.product, hardware.chip_id, hardware.tcb, hardware.vcek)
    with mounted(base / "tsm", "tsm", "--provider", "sev_guest", "--test-hardware", str(base / "kit.json"),
                 "--measurement", SNP_MEASUREMENT.hex()) as mount, \
            sev_guest(base / "sev-guest", SNP_MEASUREMENT) as device:
        settings = (f'backend = "sev-snp"\nconfigfs_tsm_path = "{mount}"\nsnp_guest_device = "{device}"\n'
                    f'unsafe_test_roots = "{roots}"\namd_kds_url = "{kds.url}"')
        config = tee_home(base / "home", _auditor_cache, settings)
        publish_tee_enclave_info(config, sev_snp=SNP_MEASUREMENT)
        platform = TeePlatform(SEV_SNP, config, mount, snp=hardware, kds=kds)
        # The whole platform: every service attests with evidence from the emulated SNP guest and
        # seals with its derived key.
        platform.children = start_platform(config)
        try:
            yield platform
        finally:
            stop_all(platform.children)
            kds.close()


def fmspc_variant(roots: DcapTestRoots, fmspc: bytes) -> DcapTestRoots:
    """The same roots with a PCK certificate for another platform (FMSPC), as another machine has."""
    extension = roots.pck.cert.extensions.get_extension_for_oid(SGX_EXTENSION)
    value = extension.value.value  # type: ignore[attr-defined]
    old = bytes.fromhex(quote_platform(roots.tdx_quote())[1])
    assert value.count(b"\x04\x06" + old) == 1
    patched = x509.Extension(SGX_EXTENSION, False, x509.UnrecognizedExtension(SGX_EXTENSION, value.replace(b"\x04\x06" + old, b"\x04\x06" + fmspc)))
    pck = _certificate("Intel SGX PCK Certificate", roots.pck_ca, ca=False, not_before=roots.not_before,
                       lifetime=timedelta(days=3650), extra=patched)
    return replace(roots, pck=pck)


def tcb_info_route(roots: DcapTestRoots, fmspc: str, *, next_update: datetime, raise_up_to_date: bool) -> tuple[str, Route]:
    """The PCCS answer for ``fmspc``'s TCB info, re-signed: expiring at ``next_update``, and with
    ``raise_up_to_date`` a level above the platform's (Intel published a newer TCB: it is OutOfDate)."""
    now = datetime.now(UTC)
    collateral = json.loads(roots.collateral(issued=now - timedelta(days=60), next_update=next_update))
    info = json.loads(collateral["tcb_info"])
    info["fmspc"] = fmspc
    if raise_up_to_date:
        info["tcbLevels"][0]["tcb"]["tdxtcbcomponents"][2]["svn"] = 200
    text = json.dumps(info, separators=(",", ":"))
    body = '{"tcbInfo":' + text + ',"signature":"' + _raw_signature(roots.tcb_signing.key, text.encode()).hex() + '"}'
    from urllib.parse import quote

    headers = {"TCB-Info-Issuer-Chain": quote(collateral["tcb_info_issuer_chain"]), "Content-Type": "application/json"}
    return f"/tdx/certification/v4/tcb?fmspc={fmspc}", Route(200, body.encode(), headers)


OUTDATED_FMSPC, EXPIRED_FMSPC = "00A06F000001", "00A06F000002"


@pytest.fixture(scope="module")
def tdx(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[TeePlatform]:
    base = tmp_path_factory.mktemp("tdx-platform")
    now = datetime.now(UTC)
    roots = DcapTestRoots.make(now - timedelta(days=1), "tdx_quote")
    (base / "test-roots").mkdir()
    (base / "test-roots" / "intel_sgx_root_ca.der").write_bytes(roots.root_ca_der)
    save_dcap_roots(roots, base / "kit.json")
    pccs = CollateralServer()
    tee, fmspc, ca = quote_platform(roots.tdx_quote())
    pccs.serve_intel(roots.collateral(issued=now - timedelta(hours=1), next_update=now + timedelta(days=30)),
                     tee=tee, fmspc=fmspc, ca=ca)
    for variant, expires, outdated in ((OUTDATED_FMSPC, now + timedelta(days=30), True), (EXPIRED_FMSPC, now - timedelta(days=1), False)):
        path, route = tcb_info_route(roots, variant, next_update=expires, raise_up_to_date=outdated)
        pccs.routes[path] = route
    measurement = b"".join(TD_MEASUREMENT).hex()
    with mounted(base / "tsm", "tsm", "--provider", "tdx_guest", "--test-hardware", str(base / "kit.json"),
                 "--measurement", measurement) as mount, \
            sev_guest(base / "as-sev-guest", b"\xa5" * 48) as as_device:
        settings = (f'backend = "tdx"\nconfigfs_tsm_path = "{mount}"\nunsafe_test_roots = "{base / "test-roots"}"\n'
                    f'intel_pcs_url = "{pccs.url}"')
        config = tee_home(base / "home", _auditor_cache, settings)
        publish_tee_enclave_info(config, tdx=TD_MEASUREMENT)
        platform = TeePlatform(TDX, config, mount, dcap=roots, pccs=pccs)
        # TDX has no sealing key: storage gets its key from the attestation service's key release,
        # which seals its own root with an SEV-SNP derived key, so the AS runs on an SNP machine.
        as_config = base / "attestation.toml"
        as_config.write_text((config.home / "kettle.toml").read_text().replace(
            'backend = "tdx"', f'backend = "sev-snp"\nsnp_guest_device = "{as_device}"'))
        try:
            with patched_environment(KETTLE_CONFIG=str(as_config)):
                platform.children.append(spawn("attestation", config))
            for name, service in instances(config, PLATFORM_SERVICES):
                platform.children.append(spawn(name, config, service))
            yield platform
        finally:
            stop_all(platform.children)
            pccs.close()


def make_evidence(platform: TeePlatform, report_data: bytes, *, measurement: object = None, debug: bool = False,
                  roots: DcapTestRoots | None = None) -> tuple[bytes, tuple[SnpCertificate, ...]]:
    """Evidence signed by the platform's test hardware, as its TEE would make it (or a hostile variant)."""
    if platform.snp is not None:
        policy = SNP_GUEST_POLICY | (1 << 19 if debug else 0)
        report = platform.snp.report(report_data=report_data, measurement=measurement or SNP_MEASUREMENT, policy=policy)  # type: ignore[arg-type]
        return report, (SnpCertificate("vcek", platform.snp.vcek),)
    assert platform.dcap is not None
    td = measurement or TD_MEASUREMENT
    attributes = None
    if debug:
        template = platform.dcap.tdx_quote()
        attributes = bytes([template[48 + 120] | 0x01]) + template[48 + 121 : 48 + 128]
    quote = (roots or platform.dcap).tdx_quote(report_data=report_data, mr_td=td[0], rtmrs=td[1:], td_attributes=attributes)  # type: ignore[index]
    return quote, ()


@pytest.fixture(params=["snp", "tdx"])
def platform(request: pytest.FixtureRequest) -> TeePlatform:
    return request.getfixturevalue(request.param)


def test_services_attest_with_evidence_from_their_tee(platform: TeePlatform) -> None:
    identity = platform.identity("storage")
    peer = platform.trusted(test_roots=True).verify(identity.certificate, expected_services=["storage"])
    info = EnclaveInfo.parse(platform.config.enclave_info_path.read_bytes())
    assert peer.tee_type == platform.kind and not peer.simulation and peer.test_roots
    assert peer.mr_enclave == info.measurement("storage").mr_enclave
    # Teaclave's SDK, unmodified in what it reads, accepts it: MRENCLAVE is the enclave info digest.
    sdk_verify_report(str(platform.config.as_root_path), str(platform.config.enclave_info_path),
                      identity.certificate.public_bytes(serialization.Encoding.DER), "storage")
    with pytest.raises(TeaclaveException, match="mr_enclave error"):
        sdk_verify_report(str(platform.config.as_root_path), str(platform.config.enclave_info_path),
                          identity.certificate.public_bytes(serialization.Encoding.DER), "frontend")
    # The client certificate works for peers and stays small (grpc's client flight limit).
    assert platform.trusted(test_roots=True).verify(identity.client_certificate).service == "storage"
    assert len(identity.client_certificate.public_bytes(serialization.Encoding.DER)) < 4096
    # The raw evidence rides along in the server certificate, bound to the same key.
    carried = CarriedEvidence.from_certificate(identity.certificate)
    assert carried is not None and carried.kind == platform.kind
    assert report_data_for(identity.key.public_key()) in carried.evidence


def test_a_client_pinning_the_vendor_roots_refuses_it(platform: TeePlatform) -> None:
    identity = platform.identity("frontend")
    verdict = platform.trusted(test_roots=False).examine(identity.certificate)
    assert not verdict.ok and "verified under TEST hardware roots (unsafe_test_roots), not the vendor's" in verdict.reason
    # Checking the carried evidence itself against the vendors' pinned roots refuses it too.
    carried = CarriedEvidence.from_certificate(identity.certificate)
    assert carried is not None
    from kettle.attestation.dcap import examine_dcap_quote
    from kettle.attestation.snp import examine_snp_report

    now = datetime.now(UTC)
    if platform.snp is not None:
        snp_verdict = examine_snp_report(carried.evidence, certificate=carried.certificates[0].der, at=now)
        assert "not issued by a pinned AMD ASK" in snp_verdict.reason
    else:
        collateral = platform.dcap.collateral(issued=now - timedelta(hours=1), next_update=now + timedelta(days=1))  # type: ignore[union-attr]
        assert "does not end in the trusted root" in examine_dcap_quote(carried.evidence, collateral=collateral, at=now).reason


def test_an_old_client_request_without_certificates_still_works(platform: TeePlatform) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    evidence, _ = make_evidence(platform, report_data_for(key.public_key()))
    body = request_body("management", platform.kind, evidence, key)
    del body["certificates"]
    status, answer = platform.post(body)
    assert status == 200, answer
    if platform.snp is not None:  # without the host's table, the VCEK came from (test) AMD KDS
        assert platform.kds is not None and any(r.startswith("/vcek/v1/Milan/") for r in platform.kds.requests)


def _refusal(platform: TeePlatform, service: str, evidence: bytes, key: ec.EllipticCurvePrivateKey,
             certificates: tuple[SnpCertificate, ...]) -> str:
    status, answer = platform.post(request_body(service, platform.kind, evidence, key, certificates))
    assert status == 400, answer
    return str(answer["error"])


def test_wrong_report_data_is_refused(platform: TeePlatform) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    evidence, certificates = make_evidence(platform, b"\x42" * 64)
    reason = _refusal(platform, "storage", evidence, key, certificates)
    assert reason.startswith(("SEV-SNP evidence refused: report data 4242", "TDX evidence refused: report data does not match"))


def test_a_measurement_not_in_enclave_info_is_refused(platform: TeePlatform) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = b"\x99" * 48 if platform.snp is not None else (b"\x99" * 48, *TD_MEASUREMENT[1:])
    evidence, certificates = make_evidence(platform, report_data_for(key.public_key()), measurement=other)
    reason = _refusal(platform, "storage", evidence, key, certificates)
    assert reason in (
        f"SEV-SNP evidence refused: measurement {'99' * 48} is not an accepted measurement",
        f"TDX evidence refused: MRTD {'99' * 48} with these RTMR0-3 is not an accepted TDX measurement",
    )


def test_a_debug_guest_is_refused(platform: TeePlatform) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    evidence, certificates = make_evidence(platform, report_data_for(key.public_key()), debug=True)
    reason = _refusal(platform, "storage", evidence, key, certificates)
    assert reason in (
        "SEV-SNP evidence refused: the guest policy allows debugging (bit 19): the host can read the guest's memory",
    ) or reason.startswith("TDX evidence refused: refused at ") and reason.endswith("Debug mode is enabled")


def test_evidence_replayed_from_another_service_is_refused(platform: TeePlatform) -> None:
    """A host that captured the evidence a service obtained for its key presents it with a key of its own."""
    victim = ec.generate_private_key(ec.SECP256R1())
    captured = platform.provider().evidence(report_data_for(victim.public_key()))
    attacker = ec.generate_private_key(ec.SECP256R1())
    reason = _refusal(platform, "frontend", captured.quote, attacker, captured.certificates)
    assert "evidence refused: report data" in reason


def test_tdx_outdated_tcb_and_expired_collateral_are_refused(tdx: TeePlatform) -> None:
    assert tdx.dcap is not None
    key = ec.generate_private_key(ec.SECP256R1())
    outdated = fmspc_variant(tdx.dcap, bytes.fromhex(OUTDATED_FMSPC))
    evidence, _ = make_evidence(tdx, report_data_for(key.public_key()), roots=outdated)
    reason = _refusal(tdx, "storage", evidence, key, ())
    assert reason.startswith("TDX evidence refused: TCB status OutOfDate is not accepted (accepted: UpToDate)")
    expired = fmspc_variant(tdx.dcap, bytes.fromhex(EXPIRED_FMSPC))
    evidence, _ = make_evidence(tdx, report_data_for(key.public_key()), roots=expired)
    reason = _refusal(tdx, "storage", evidence, key, ())
    assert f"no TDX collateral for FMSPC {EXPIRED_FMSPC} (platform CA) is cached" in reason
    assert f"{tdx.pccs.url} served collateral that expired at" in reason  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("certificates", "reason"),
    [
        ("vcek", 'certificates must be a list of {"kind": "vcek"|"vlek"|"ask"|"ark", "der": base64}'),
        ([{"kind": "vcek"}], "certificates must be a list of"),
        ([{"kind": "pck", "der": ""}], "certificates must be a list of"),
        ([{"kind": "vcek", "der": "not base64!"}], "certificates must be a list of"),
        ([{"kind": "ask", "der": "AA=="}] * 5, "at most 4 evidence certificates are accepted"),
        ([{"kind": "vcek", "der": "MAA="}], "SEV-SNP evidence refused: "),
    ],
)
def test_hostile_certificate_fields_get_a_specific_answer(snp: TeePlatform, certificates: object, reason: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    evidence, _ = make_evidence(snp, report_data_for(key.public_key()))
    body = request_body("storage", SEV_SNP, evidence, key)
    body["certificates"] = certificates
    status, answer = snp.post(body)
    assert status == 400 and str(answer["error"]).startswith(reason), answer
    assert snp.identity("storage").service == "storage"  # and the service goes on issuing


# --- the whole platform ------------------------------------------------------------------------

MESSAGE = "Hello from a confidential VM"


def test_the_sdk_registers_a_function_and_runs_a_task(platform: TeePlatform) -> None:
    from kettle.model.records import TaskStatus
    from kettle.sdk import AuthenticationClient, ClientTrust, FrontendClient

    running = Platform(platform.config)
    trust = ClientTrust.from_config(platform.config)
    token = AuthenticationClient(running.auth_address, trust).user_login("admin", "teaclave")
    client = FrontendClient(running.frontend_address, trust, "admin", token)
    try:
        function_id = client.register_function("builtin-echo", arguments=["message"])
        task_id = client.create_task(function_id, {"message": MESSAGE})
        client.invoke_task(task_id)
        task = client.wait_task(task_id, timeout=60)
    finally:
        client.close()
    assert task.status == TaskStatus.FINISHED and task.result.return_value == MESSAGE.encode()  # type: ignore[union-attr]


def test_the_cli_verifies_and_runs_a_task(platform: TeePlatform) -> None:
    running = Platform(platform.config)
    attest = running.kettle("attest", running.frontend_address)
    assert attest.returncode == 0 and "verified" in attest.stdout and platform.kind in attest.stdout, attest.stdout + attest.stderr

    def ok(*args: str) -> str:
        result = running.kettle(*args, env={"KETTLE_PASSWORD": "teaclave"})
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    ok("user", "login", "admin")
    function_id = json.loads(ok("function", "register", "--name", "builtin-echo", "--executor-type", "builtin",
                                "--argument", "message", "--json"))["function_id"]
    task_id = json.loads(ok("task", "create", function_id, "--args", json.dumps({"message": MESSAGE}), "--json"))["task_id"]
    ok("task", "invoke", task_id)
    assert ok("task", "wait", task_id, "--timeout", "60") == MESSAGE + "\n"


def test_a_teaclave_sdk_client_runs_a_task(platform: TeePlatform, tmp_path: Path) -> None:
    """Teaclave's Python SDK flow (its attestation, its gRPC stack, no Kettle import) against the platform."""
    from test_teaclave_sdk_compat import generate_sdk_stubs

    running = Platform(platform.config)
    stubs = tmp_path / "stubs"
    generate_sdk_stubs(stubs)
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "test_teaclave_sdk_frontend.py"), str(stubs), running.auth_address,
         running.frontend_address, str(platform.config.as_root_path), str(platform.config.enclave_info_path)],
        capture_output=True, text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "SGX_MODE"}, cwd=tmp_path,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["kettle_imported"] is False and out["return_value"] == "Hello, Teaclave!" and out["task"]["status"] == 10


def test_a_client_pinning_vendor_roots_refuses_the_platform(platform: TeePlatform) -> None:
    from kettle.errors import AttestationError
    from kettle.sdk import ClientTrust
    from kettle.sdk.attested import verify_endpoint

    running = Platform(platform.config)
    vendor_pinned = ClientTrust.from_files(platform.config.as_root_path, platform.config.enclave_info_path)
    with pytest.raises(AttestationError, match="verified under TEST hardware roots"):
        verify_endpoint(running.frontend_address, "frontend", vendor_pinned)
    allowing = ClientTrust.from_files(platform.config.as_root_path, platform.config.enclave_info_path,
                                      unsafe_allow_test_roots=True)
    assert verify_endpoint(running.frontend_address, "frontend", allowing).peer.tee_type == platform.kind
