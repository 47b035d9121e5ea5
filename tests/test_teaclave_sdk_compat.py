"""Wire compatibility with Teaclave 0.6's official Python SDK (``sdk/python/teaclave.py``).

The SDK is not installed here (it pins pyOpenSSL <= 24.2, which needs
cryptography < 44; Kettle needs cryptography >= 44). Instead this module carries
a faithful re-implementation of what the SDK does, written the way the SDK
writes it, and runs it against the live authentication API of the session
platform:

* ``sdk_ssl_context``      -- the SDK's TLS context (``spec/attestation.md`` §1.5
  connection set-up step 1, ``spec/platform.md`` §1.6);
* ``sdk_verify_report``    -- ``_verify_report`` steps 1-10 (§1.5);
* ``sdk_attest``           -- connection set-up step 3 (errors re-raised as
  ``TeaclaveException("Failed to verify attestation report: ...")``).

The re-implementation is shown to pass on Kettle's live certificate AND to fail
when the SDK would fail (foreign measurements, wrong endpoint name, foreign AS
root, tampered report, report bound to another key, report not the first
extension), so these tests can actually catch a regression.

The grpclib test (§1.5, ``spec/platform.md`` §1.5/§11) runs the SDK's own stack
(grpclib + stubs generated with grpclib's protoc plugin, imported as top-level
modules like the SDK does) in a separate interpreter that has never imported
Kettle -- like a user's process -- by running this file as a script.

The exception messages are this module's; the SDK's exact strings differ.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tomllib
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import toml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store

if TYPE_CHECKING:
    from conftest import Platform

REPO = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "proto"

REPORT_EXTENSION_OID = x509.ObjectIdentifier("2.16.840.1.113730.1.13")
SDK_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
QUOTE_BODY_SIZE = 432
SGX_DEBUG_FLAG = 0x02
TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}")
TEACLAVE_REPORT_FIELDS = {"id", "isvEnclaveQuoteBody", "isvEnclaveQuoteStatus", "timestamp", "version"}
SUBPROCESS_TIMEOUT_SECS = 120


# ---------------------------------------------------------------------------
# The SDK, re-implemented (spec/attestation.md §1.5)
# ---------------------------------------------------------------------------


class TeaclaveException(Exception):
    """The SDK's exception type."""


def sdk_ssl_context() -> ssl.SSLContext:
    """Connection set-up step 1: the SDK's TLS context.

    Python's *unverified* context (no chain check, no host name check), TLS 1.0
    and 1.1 switched off, the SDK's TLS 1.2 cipher string (TLS 1.3 suites are
    unaffected), ALPN ``h2`` and NPN ``h2`` where the ssl module still has NPN.
    """
    ctx = ssl._create_unverified_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.options |= ssl.OP_NO_TLSv1
        ctx.options |= ssl.OP_NO_TLSv1_1
        ctx.set_ciphers(SDK_CIPHERS)
        ctx.set_alpn_protocols(["h2"])
        try:
            ctx.set_npn_protocols(["h2"])
        except (NotImplementedError, AttributeError):
            pass
    return ctx


def _verify_signing_chain(as_root_ca_cert_path: str, certs: list[x509.Certificate]) -> None:
    """Step 5: ``certs[0]`` against a store holding the AS root AND ``certs[1:]`` as trusted.

    The SDK does this with pyOpenSSL (``X509Store`` + ``X509StoreContext``), which
    cannot be installed next to Kettle (pyOpenSSL 24.2.1 requires cryptography
    < 44, Kettle >= 44; pyOpenSSL >= 24.3 no longer has ``crypto.verify``), so
    this uses ``cryptography.x509.verification``: every store certificate is a
    trust anchor (exactly the SDK's -- insecure -- store), the chain's
    signatures and validity dates are checked at the current time, and the
    end-entity policy is ``permit_all`` because OpenSSL's default verification
    sets no purpose (no EKU/SAN requirements on the report-signing cert).
    """
    with open(as_root_ca_cert_path, "rb") as f:
        as_root_ca_cert = x509.load_pem_x509_certificate(f.read())
    store = Store([as_root_ca_cert, *certs[1:]])
    verifier = (
        PolicyBuilder()
        .store(store)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all())
        .build_client_verifier()
    )
    verifier.verify(certs[0], [])


def _crypto_verify(signing_cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    """Step 6: ``OpenSSL.crypto.verify(cert, signature, data, "sha256")``.

    EVP_DigestVerify with SHA-256: PKCS#1 v1.5 for an RSA key, ECDSA for an EC key.
    """
    key = signing_cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    else:
        raise TeaclaveException("unsupported report signing key")


def sdk_verify_report(as_root_ca_cert_path: str, enclave_info_path: str, cert_der: bytes, endpoint_name: str) -> None:
    """``_verify_report`` of Teaclave's Python SDK, steps 1-10 of §1.5, in the SDK's own style."""
    # 1. the client-side simulation bypass
    if os.environ.get("SGX_MODE") == "SW":
        return

    # 2. parse the peer leaf (DER)
    cert = x509.load_der_x509_certificate(cert_der)

    # 3. the FIRST extension, JSON-decoded from its raw value
    try:
        ext = json.loads(cert.extensions[0].value.value)
    except Exception:
        raise TeaclaveException("Failed to load extensions") from None

    # 4. report, signature and the signing chain, as byte arrays
    report_bytes = bytes(ext["report"])
    signature = bytes(ext["signature"])
    try:
        certs = [x509.load_der_x509_certificate(bytes(c)) for c in ext["certs"]]
    except Exception:
        raise TeaclaveException("Failed to load signing certificate") from None

    # 5. signing chain: AS root + certs[1:] all trusted
    try:
        _verify_signing_chain(as_root_ca_cert_path, certs)
    except Exception as e:
        raise TeaclaveException(f"Failed to verify signing certificate: {e}") from None

    # 6. report signature, SHA-256
    try:
        _crypto_verify(certs[0], signature, report_bytes)
    except Exception:
        raise TeaclaveException("Failed to verify report signature") from None

    # 7. the quote body
    report = json.loads(report_bytes)
    quote = base64.b64decode(report["isvEnclaveQuoteBody"])

    # 8. REPORT_DATA is the leaf's public point without its 0x04
    report_data = quote[368:432]
    pub_key = cert.public_key().public_bytes(
        encoding=serialization.Encoding.X962,
        format=serialization.PublicFormat.UncompressedPoint,
    )
    assert pub_key[0] == 4
    if pub_key[1:] != report_data:
        raise TeaclaveException("Failed to verify report_data")

    # 9. measurements as lowercase hex strings
    mr_enclave = quote[112 : 112 + 32].hex()
    mr_signer = quote[176 : 176 + 32].hex()

    # 10. exact string equality with enclave_info.toml, read with the SDK's own reader (toml 0.10)
    enclave_info = toml.load(enclave_info_path)
    enclave_name = "teaclave_" + endpoint_name + "_service"
    if mr_enclave != enclave_info[enclave_name]["mr_enclave"]:
        raise TeaclaveException("mr_enclave error")
    if mr_signer != enclave_info[enclave_name]["mr_signer"]:
        raise TeaclaveException("mr_signer error")


def sdk_attest(as_root_ca_cert_path: str, enclave_info_path: str, cert: bytes | None, endpoint_name: str) -> None:
    """Connection set-up steps 2-3: a missing peer cert is an error; any failure is re-raised."""
    if not cert:
        raise TeaclaveException("Peer certificate is not available")
    try:
        sdk_verify_report(as_root_ca_cert_path, enclave_info_path, cert, endpoint_name)
    except Exception as e:
        raise TeaclaveException(f"Failed to verify attestation report: {e}") from None


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    der: bytes
    alpn: str | None
    version: str | None
    cipher: str


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def sdk_handshake(address: str, context: ssl.SSLContext | None = None) -> Handshake:
    """A TLS handshake with the SDK's context (grpclib hands the host to asyncio as SNI)."""
    host, port = split_address(address)
    context = context or sdk_ssl_context()
    with socket.create_connection((host, port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
            cipher = tls.cipher()
            assert der is not None and cipher is not None
            return Handshake(der, tls.selected_alpn_protocol(), tls.version(), cipher[0])


def endorsed_report(cert: x509.Certificate) -> dict[str, Any]:
    value = cert.extensions[0].value
    assert isinstance(value, x509.UnrecognizedExtension)
    doc: dict[str, Any] = json.loads(value.value)
    return doc


def report_of(cert: x509.Certificate) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(bytes(endorsed_report(cert)["report"]))
    return doc


def quote_of(cert: x509.Certificate) -> bytes:
    return base64.b64decode(report_of(cert)["isvEnclaveQuoteBody"])


def leaf_with_report(extension_value: bytes, *, report_first: bool = True) -> bytes:
    """A Teaclave-style self-signed P-256 leaf (§1.2) for a key of ours, carrying ``extension_value``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CN=Teaclave")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Teaclave")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=90))
    )
    report_ext = x509.UnrecognizedExtension(REPORT_EXTENSION_OID, extension_value)
    constraints = x509.BasicConstraints(ca=False, path_length=None)
    if report_first:
        builder = builder.add_extension(report_ext, critical=False).add_extension(constraints, critical=True)
    else:
        builder = builder.add_extension(constraints, critical=True).add_extension(report_ext, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def flip_hex(value: str) -> str:
    """The same 64-hex string with its last digit changed."""
    return value[:-1] + ("0" if value[-1] != "0" else "1")


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_sw_bypass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK skips every check with SGX_MODE=SW; these tests must never inherit that."""
    monkeypatch.delenv("SGX_MODE", raising=False)


@pytest.fixture(scope="module")
def handshake(platform: Platform) -> Handshake:
    return sdk_handshake(platform.auth_address)


@pytest.fixture(scope="module")
def live_der(handshake: Handshake) -> bytes:
    """The authentication API's leaf certificate as the SDK sees it (DER)."""
    return handshake.der


@pytest.fixture(scope="module")
def live_cert(live_der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(live_der)


@pytest.fixture
def enclave_info(platform: Platform) -> dict[str, Any]:
    with open(platform.config.enclave_info_path, "rb") as f:
        return tomllib.load(f)


def write_enclave_info(path: Path, info: dict[str, Any]) -> str:
    lines = []
    for table, entry in info.items():
        lines += [f"[{table}]", *(f'{k} = "{v}"' for k, v in entry.items()), ""]
    path.write_text("\n".join(lines))
    return str(path)


# ---------------------------------------------------------------------------
# 1. _verify_report against the live certificate
# ---------------------------------------------------------------------------


def test_sdk_verify_report_accepts_live_authentication_certificate(platform: Platform, live_der: bytes) -> None:
    """§1.5 steps 1-10 and §1.7: the SDK accepts Kettle's authentication API certificate
    with the home's AS root PEM and enclave_info.toml, without SGX_MODE=SW."""
    sdk_attest(str(platform.config.as_root_path), str(platform.config.enclave_info_path), live_der, "authentication")


def test_sdk_rejects_foreign_mr_enclave(
    platform: Platform, live_der: bytes, enclave_info: dict[str, Any], tmp_path: Path
) -> None:
    """§1.5 step 10: another ``teaclave_authentication_service.mr_enclave`` fails."""
    table = enclave_info["teaclave_authentication_service"]
    table["mr_enclave"] = flip_hex(table["mr_enclave"])
    info_path = write_enclave_info(tmp_path / "enclave_info.toml", enclave_info)
    with pytest.raises(TeaclaveException, match="mr_enclave error"):
        sdk_attest(str(platform.config.as_root_path), info_path, live_der, "authentication")


def test_sdk_rejects_foreign_mr_signer(
    platform: Platform, live_der: bytes, enclave_info: dict[str, Any], tmp_path: Path
) -> None:
    """§1.5 step 10: another ``teaclave_authentication_service.mr_signer`` fails."""
    table = enclave_info["teaclave_authentication_service"]
    table["mr_signer"] = flip_hex(table["mr_signer"])
    info_path = write_enclave_info(tmp_path / "enclave_info.toml", enclave_info)
    with pytest.raises(TeaclaveException, match="mr_signer error"):
        sdk_attest(str(platform.config.as_root_path), info_path, live_der, "authentication")


def test_sdk_measurement_comparison_is_exact_lowercase_hex(
    platform: Platform, live_der: bytes, enclave_info: dict[str, Any], tmp_path: Path
) -> None:
    """§1.5 step 10 / §1.7: string equality, so Kettle's enclave_info MUST be lowercase hex
    (the same digest in uppercase is rejected by the SDK)."""
    table = enclave_info["teaclave_authentication_service"]
    assert re.fullmatch(r"[0-9a-f]{64}", table["mr_enclave"]) and re.fullmatch(r"[0-9a-f]{64}", table["mr_signer"])
    table["mr_enclave"] = table["mr_enclave"].upper()
    info_path = write_enclave_info(tmp_path / "enclave_info.toml", enclave_info)
    with pytest.raises(TeaclaveException, match="mr_enclave error"):
        sdk_attest(str(platform.config.as_root_path), info_path, live_der, "authentication")


def test_sdk_rejects_authentication_certificate_as_frontend(
    platform: Platform, live_der: bytes, enclave_info: dict[str, Any]
) -> None:
    """§1.5 set-up step 3 / step 10: the endpoint name selects the table, so the
    authentication service's certificate does not pass as ``frontend`` (§1.7: both
    tables exist, with different measurements)."""
    auth = enclave_info["teaclave_authentication_service"]
    frontend = enclave_info["teaclave_frontend_service"]
    assert auth["mr_enclave"] != frontend["mr_enclave"]
    with pytest.raises(TeaclaveException, match="mr_enclave error"):
        sdk_attest(str(platform.config.as_root_path), str(platform.config.enclave_info_path), live_der, "frontend")


def test_sdk_rejects_foreign_as_root(platform: Platform, live_der: bytes, tmp_path: Path) -> None:
    """§1.5 step 5: a report-signing chain that does not lead to the pinned AS root fails."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some other AS root")])
    now = datetime.now(UTC)
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    root_path = tmp_path / "other_root.pem"
    root_path.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(TeaclaveException, match="Failed to verify signing certificate"):
        sdk_attest(str(root_path), str(platform.config.enclave_info_path), live_der, "authentication")


def test_sdk_rejects_tampered_report(platform: Platform, live_cert: x509.Certificate) -> None:
    """§1.5 step 6: the signature covers the exact report bytes; one changed byte fails."""
    ext = endorsed_report(live_cert)
    report = bytes(ext["report"]).replace(b'"version":4', b'"version":5')
    assert report != bytes(ext["report"])
    ext["report"] = list(report)
    der = leaf_with_report(json.dumps(ext, separators=(",", ":")).encode())
    with pytest.raises(TeaclaveException, match="Failed to verify report signature"):
        sdk_attest(str(platform.config.as_root_path), str(platform.config.enclave_info_path), der, "authentication")


def test_sdk_rejects_report_in_certificate_for_another_key(platform: Platform, live_cert: x509.Certificate) -> None:
    """§1.5 step 8 / §1.1: the genuine, validly signed report copied into a certificate
    for another key fails on REPORT_DATA."""
    value = live_cert.extensions[0].value
    assert isinstance(value, x509.UnrecognizedExtension)
    der = leaf_with_report(value.value)
    with pytest.raises(TeaclaveException, match="report_data"):
        sdk_attest(str(platform.config.as_root_path), str(platform.config.enclave_info_path), der, "authentication")


def test_sdk_requires_report_as_first_extension(platform: Platform, live_cert: x509.Certificate) -> None:
    """§1.5 step 3 / §1.7 / Appendix A: with basicConstraints first the SDK fails
    ("Failed to load extensions"), which is why the report MUST be extensions[0]."""
    value = live_cert.extensions[0].value
    assert isinstance(value, x509.UnrecognizedExtension)
    der = leaf_with_report(value.value, report_first=False)
    with pytest.raises(TeaclaveException, match="Failed to load extensions"):
        sdk_attest(str(platform.config.as_root_path), str(platform.config.enclave_info_path), der, "authentication")


def test_sdk_requires_a_peer_certificate(platform: Platform) -> None:
    """§1.5 set-up step 2: no peer certificate is an error."""
    with pytest.raises(TeaclaveException, match="not available"):
        sdk_attest(str(platform.config.as_root_path), str(platform.config.enclave_info_path), None, "authentication")


def test_sdk_sw_mode_skips_everything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """§1.5 step 1 (fidelity of the re-implementation): SGX_MODE=SW accepts anything,
    even files that do not exist; hence every other test here runs without it."""
    monkeypatch.setenv("SGX_MODE", "SW")
    sdk_attest(str(tmp_path / "missing.pem"), str(tmp_path / "missing.toml"), b"not a certificate", "frontend")


# ---------------------------------------------------------------------------
# 2. TLS with exactly the SDK's context
# ---------------------------------------------------------------------------


def test_sdk_tls_context_is_the_sdks() -> None:
    """§1.5 set-up step 1: unverified, no host name check, TLS 1.0/1.1 off."""
    ctx = sdk_ssl_context()
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.check_hostname is False
    assert ctx.options & ssl.OP_NO_TLSv1 and ctx.options & ssl.OP_NO_TLSv1_1
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(n.startswith(("ECDHE-", "DHE-")) and ("GCM" in n or "CHACHA20" in n) for n in tls12)


def test_sdk_tls_handshake_negotiates_h2(handshake: Handshake) -> None:
    """§1.5 set-up steps 1-2, platform.md §1.6: the SDK's context completes a handshake
    with the authentication API, ALPN ``h2``, TLS >= 1.2, and the peer leaf is available
    through ``getpeercert(binary_form=True)``."""
    assert handshake.alpn == "h2"
    assert handshake.version in ("TLSv1.2", "TLSv1.3")
    cert = x509.load_der_x509_certificate(handshake.der)
    assert cert.extensions[0].oid == REPORT_EXTENSION_OID


def test_sdk_tls12_only_client_gets_an_ecdhe_aead_suite(platform: Platform) -> None:
    """platform.md §1.6: an SDK whose TLS stops at 1.2 (so the cipher string decides)
    still connects: an ECDHE suite with AES-GCM, ALPN ``h2``."""
    ctx = sdk_ssl_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    result = sdk_handshake(platform.auth_address, ctx)
    assert result.version == "TLSv1.2"
    assert result.alpn == "h2"
    assert result.cipher.startswith("ECDHE-") and "GCM" in result.cipher, result.cipher


# ---------------------------------------------------------------------------
# 3. The SDK's own wire stack: grpclib + grpclib-generated stubs
# ---------------------------------------------------------------------------


def grpclib_plugin() -> Path:
    candidates = [Path(sys.executable).parent / "protoc-gen-grpclib_python"]
    found = shutil.which("protoc-gen-grpclib_python")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    pytest.skip("grpclib's protoc plugin (protoc-gen-grpclib_python) is not installed")


def generate_sdk_stubs(out_dir: Path) -> None:
    """The SDK's stubs: ``*_pb2`` plus grpclib's ``*_grpc``, top-level modules."""
    spec = importlib.util.find_spec("grpc_tools")
    assert spec is not None and spec.submodule_search_locations
    well_known = Path(next(iter(spec.submodule_search_locations))) / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(p.name for p in PROTO_DIR.glob("teaclave_*.proto"))
    assert "teaclave_authentication_service.proto" in protos, f"no Teaclave protos in {PROTO_DIR}"
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"--plugin=protoc-gen-grpclib_python={grpclib_plugin()}",
        f"--proto_path={PROTO_DIR}", f"--proto_path={well_known}",
        f"--python_out={out_dir}", f"--grpclib_python_out={out_dir}",
        *protos,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECS)
    assert result.returncode == 0, result.stderr
    assert (out_dir / "teaclave_authentication_service_grpc.py").exists()


def test_grpclib_sdk_stack_login_and_list_users(platform: Platform, tmp_path: Path) -> None:
    """§1.5 (grpclib channel, attestation before use) and platform.md §1.5/§11: with the
    SDK's stack -- a grpclib ``Channel`` with the SDK's context, the peer leaf taken
    from the connection's SSL object, ``_verify_report``, then the grpclib stub
    ``TeaclaveAuthenticationApiStub`` -- ``UserLogin(admin/teaclave)`` returns a token,
    ``ListUsers`` with ``id``/``token`` metadata lists ``admin``, and without metadata
    it fails UNAUTHENTICATED "missing user id"."""
    pytest.importorskip("grpclib")
    stubs = tmp_path / "stubs"
    generate_sdk_stubs(stubs)
    host, port = split_address(platform.auth_address)
    env = {k: v for k, v in os.environ.items() if k != "SGX_MODE"}
    result = subprocess.run(
        [
            sys.executable, __file__, "--sdk-grpclib-client", str(stubs), host, str(port),
            str(platform.config.as_root_path), str(platform.config.enclave_info_path),
        ],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECS, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["kettle_imported"] is False
    assert out["alpn"] == "h2"
    assert out["token"]
    assert "admin" in out["ids"]
    assert out["unauthenticated"] == {"status": "UNAUTHENTICATED", "message": "missing user id"}


async def _grpclib_client(stubs: str, host: str, port: int, as_root: str, enclave_info: str) -> dict[str, Any]:
    """What the SDK's AuthenticationService does, in a fresh interpreter (run via ``__main__``)."""
    sys.path.insert(0, stubs)
    import teaclave_authentication_service_grpc  # type: ignore[import-not-found]
    import teaclave_authentication_service_pb2  # type: ignore[import-not-found]
    from grpclib.client import Channel
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    channel = Channel(host, port, ssl=sdk_ssl_context())
    try:
        await channel.__connect__()
        # The SDK reaches into grpclib's private transport for the SSL object.
        ssl_object = channel._protocol.connection._transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        cert = ssl_object.getpeercert(binary_form=True)
        sdk_attest(as_root, enclave_info, cert, "authentication")

        stub = teaclave_authentication_service_grpc.TeaclaveAuthenticationApiStub(channel)
        login = teaclave_authentication_service_pb2.UserLoginRequest(id="admin", password="teaclave")
        response = await stub.UserLogin(login)
        metadata = {"id": "admin", "token": response.token}
        list_request = teaclave_authentication_service_pb2.ListUsersRequest(id="admin")
        users = await stub.ListUsers(list_request, metadata=metadata)
        try:
            await stub.ListUsers(list_request)
            unauthenticated: dict[str, Any] | None = None
        except GRPCError as e:
            unauthenticated = {"status": Status(e.status).name, "message": e.message}
        return {
            "kettle_imported": any(m == "kettle" or m.startswith("kettle.") for m in sys.modules),
            "alpn": ssl_object.selected_alpn_protocol(),
            "token": response.token,
            "ids": list(users.ids),
            "unauthenticated": unauthenticated,
        }
    finally:
        channel.close()


# ---------------------------------------------------------------------------
# 4. The certificate profile (§1.3, §1.7, §2.1, §2.5, §7.4, §7.5, §7.8)
# ---------------------------------------------------------------------------


def test_live_certificate_key_and_report_extension(live_cert: x509.Certificate) -> None:
    """§1.1, §1.3, §1.7: P-256 key; first extension 2.16.840.1.113730.1.13, non-critical,
    unrecognised by cryptography, holding compact JSON ``{"report","signature","certs"}``
    (in that order) whose byte strings are arrays of integers 0..255."""
    key = live_cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    first = live_cert.extensions[0]
    assert first.oid == REPORT_EXTENSION_OID
    assert first.critical is False
    assert isinstance(first.value, x509.UnrecognizedExtension)
    raw = first.value.value
    doc = json.loads(raw)
    assert list(doc) == ["report", "signature", "certs"]
    assert raw == json.dumps(doc, separators=(",", ":")).encode()

    def is_byte_array(value: object) -> bool:
        return (
            isinstance(value, list)
            and len(value) > 0
            and all(type(b) is int and 0 <= b <= 255 for b in value)
        )

    assert is_byte_array(doc["report"]) and is_byte_array(doc["signature"])
    assert isinstance(doc["certs"], list) and doc["certs"] and all(is_byte_array(c) for c in doc["certs"])


def test_live_report_content_and_signature(live_cert: x509.Certificate) -> None:
    """§2.1, §2.3, §2.5, §1.6 steps 4-6, §7.5: report version 4, status OK, a 432-byte
    version-3 key-type-2 body, an IAS-style UTC timestamp not in the future; signature
    RSA PKCS#1 v1.5 SHA-256 by a >= 2048-bit key in ``certs[0]``."""
    ext = endorsed_report(live_cert)
    report = json.loads(bytes(ext["report"]))
    assert TEACLAVE_REPORT_FIELDS <= set(report)
    assert type(report["version"]) is int and report["version"] == 4
    assert report["isvEnclaveQuoteStatus"] == "OK"
    body = base64.b64decode(report["isvEnclaveQuoteBody"], validate=True)
    assert len(body) == QUOTE_BODY_SIZE
    assert int.from_bytes(body[0:2], "little") == 3 and int.from_bytes(body[2:4], "little") == 2

    timestamp = report["timestamp"]
    assert TIMESTAMP_RE.fullmatch(timestamp), timestamp
    issued = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    assert issued <= datetime.now(UTC) + timedelta(seconds=1)
    # UTC, not local time: the report was made for this certificate, inside its validity.
    assert live_cert.not_valid_before_utc <= issued <= live_cert.not_valid_after_utc

    signing = x509.load_der_x509_certificate(bytes(ext["certs"][0]))
    signing_key = signing.public_key()
    assert isinstance(signing_key, rsa.RSAPublicKey)
    assert signing_key.key_size >= 2048
    signing_key.verify(bytes(ext["signature"]), bytes(ext["report"]), padding.PKCS1v15(), hashes.SHA256())


def test_live_certificate_extensions_and_names(platform: Platform, live_cert: x509.Certificate) -> None:
    """§1.7 (all extensions well-formed), §7.4 profile A: extension order, constraints,
    key usages, SAN with the service name and the measurement name, SKI/AKI, subject
    CN, CA-issued, validity = validity_secs + 60 s."""
    extensions = list(live_cert.extensions)  # cryptography parses every extension here
    assert [e.oid for e in extensions] == [
        REPORT_EXTENSION_OID,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ]
    assert all(not isinstance(e.value, x509.UnrecognizedExtension) for e in extensions[1:])

    constraints = live_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = live_cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    eku = live_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    ski = live_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(live_cert.public_key())
    assert live_cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier

    domain = platform.config.domain
    h = quote_of(live_cert)[112:144].hex()
    names = live_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert f"authentication.{domain}" in names
    assert f"{h[:32]}.{h[32:]}.mre.{domain}" in names

    cn = live_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["teaclave_authentication_service"]
    assert live_cert.issuer != live_cert.subject

    span = live_cert.not_valid_after_utc - live_cert.not_valid_before_utc
    assert span == timedelta(seconds=platform.config.attestation.validity_secs + 60)


def test_live_certificate_is_labelled_simulation(platform: Platform, live_cert: x509.Certificate) -> None:
    """§7.5, §7.8: a simulation report says so (``kettleSimulation: true``,
    ``kettleTeeType`` simulation, DEBUG attribute set) and the leaf, its issuer, the
    report-signing certificate and the AS root all carry SIMULATION in their names."""
    report = report_of(live_cert)
    assert report["kettleSimulation"] is True
    assert report["kettleTeeType"] == "simulation"
    assert report["kettleService"] == "authentication"
    flags = int.from_bytes(quote_of(live_cert)[96:104], "little")
    assert flags & SGX_DEBUG_FLAG

    signing = x509.load_der_x509_certificate(bytes(endorsed_report(live_cert)["certs"][0]))
    root = x509.load_pem_x509_certificate(platform.config.as_root_path.read_bytes())
    for name in (live_cert.subject, live_cert.issuer, signing.subject, root.subject):
        assert "SIMULATION" in name.rfc4514_string(), name


# ---------------------------------------------------------------------------
# The SDK-side process for test_grpclib_sdk_stack_login_and_list_users
# ---------------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    if len(argv) != 6 or argv[0] != "--sdk-grpclib-client":
        usage = "usage: test_teaclave_sdk_compat.py --sdk-grpclib-client STUBS HOST PORT AS_ROOT ENCLAVE_INFO"
        print(usage, file=sys.stderr)
        return 2
    _, stubs, host, port, as_root, enclave_info = argv
    print(json.dumps(asyncio.run(_grpclib_client(stubs, host, int(port), as_root, enclave_info))))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
