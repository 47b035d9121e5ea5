"""Unit tests of the attestation building blocks: quote, report, enclave info, measurement, issuer, verifier.

Pure logic: no service is started. Crypto is real, files are real (in tmp_path),
and the attestation service's ``Issuer`` runs in-process against a dev home made
by ``make_home``. Every refusal asserts the specific reason a peer would see.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import fast_private_key, make_home
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kettle.attestation.backends import (
    SimulationBackend,
    create_simulation_platform,
    load_simulation_platform_key,
)
from kettle.attestation.certificates import (
    issue_by_root,
    issue_service_certificate,
    measurement_dns_name,
    report_data_for,
    self_signed_root,
    service_dns_name,
)
from kettle.attestation.enclave_info import (
    SIGNATURE_SUFFIX,
    EnclaveInfo,
    Measurement,
    load_enclave_info,
    sign_enclave_info,
    verify_enclave_info,
)
from kettle.attestation.measurement import (
    SIMULATION_MR_SIGNER,
    measure_service,
    package_root,
)
from kettle.attestation.quote import (
    DEBUG_FLAG,
    INIT_FLAG,
    MODE64BIT_FLAG,
    QUOTE_BODY_SIZE,
    QuoteBody,
)
from kettle.attestation.report import (
    REPORT_EXTENSION_OID,
    EndorsedReport,
    ReportContent,
    build_report,
    format_timestamp,
    parse_timestamp,
)
from kettle.attestation.verifier import Verifier
from kettle.attestation_service.authority import Authority, load_authority
from kettle.attestation_service.issuer import Issuer, IssueRequest
from kettle.config import SERVICES, Config
from kettle.errors import AttestationError

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
SIM_FLAGS = INIT_FLAG | DEBUG_FLAG | MODE64BIT_FLAG
PROD_FLAGS = INIT_FLAG | MODE64BIT_FLAG


# --- quote --------------------------------------------------------------------


def sample_body(**overrides: object) -> QuoteBody:
    """A quote body whose three identity fields are distinct, recognisable byte patterns."""
    values: dict[str, object] = {
        "mr_enclave": bytes(range(32)),
        "mr_signer": bytes(range(100, 132)),
        "report_data": bytes(range(150, 214)),
        "attributes_flags": SIM_FLAGS,
        "isv_prod_id": 0x1234,
        "isv_svn": 0x5678,
    }
    values.update(overrides)
    return QuoteBody(**values)  # type: ignore[arg-type]


def test_quote_body_roundtrip() -> None:
    """A body serialises to 432 bytes and parses back to the same value."""
    body = sample_body()
    raw = body.to_bytes()
    assert len(raw) == QUOTE_BODY_SIZE
    assert QuoteBody.parse(raw) == body
    assert QuoteBody.parse(raw).to_bytes() == raw


def test_quote_body_offsets_follow_spec() -> None:
    """MRENCLAVE at 112, MRSIGNER at 176, REPORT_DATA at 368, flags at 96 (spec §3.2)."""
    body = sample_body()
    raw = body.to_bytes()
    assert struct.unpack_from("<HH", raw, 0) == (3, 2)
    assert raw[112:144] == body.mr_enclave
    assert raw[176:208] == body.mr_signer
    assert raw[368:432] == body.report_data
    assert struct.unpack_from("<Q", raw, 96)[0] == SIM_FLAGS
    assert struct.unpack_from("<HH", raw, 304) == (0x1234, 0x5678)
    assert raw[12:28] == body.qe_vendor_id


@pytest.mark.parametrize("flags, debug", [(SIM_FLAGS, True), (PROD_FLAGS, False), (DEBUG_FLAG, True)])
def test_quote_debug_flag(flags: int, debug: bool) -> None:
    """The debug property reads ATTRIBUTES bit 0x02."""
    assert QuoteBody.parse(sample_body(attributes_flags=flags).to_bytes()).debug is debug


@pytest.mark.parametrize("size", [0, 431, 433, 436])
def test_quote_parse_rejects_wrong_size(size: int) -> None:
    """Only exactly 432 bytes parse."""
    raw = (sample_body().to_bytes() + b"\0" * 4)[:size].ljust(size, b"\0")
    with pytest.raises(AttestationError) as exc:
        QuoteBody.parse(raw)
    assert exc.value.reason == f"quote body is {size} bytes, expected 432"


@pytest.mark.parametrize("version, key_type", [(1, 0), (1, 1), (2, 0), (2, 1), (3, 2), (3, 3)])
def test_quote_parse_accepts_teaclave_versions(version: int, key_type: int) -> None:
    """EPID v1/v2 with sign type 0/1 and ECDSA v3 with key type 2/3 parse, as in Teaclave's parser."""
    parsed = QuoteBody.parse(sample_body(version=version, key_type=key_type).to_bytes())
    assert (parsed.version, parsed.key_type) == (version, key_type)


@pytest.mark.parametrize("version, key_type", [(0, 0), (1, 2), (2, 3), (3, 0), (3, 1), (3, 4), (4, 2), (5, 2)])
def test_quote_parse_rejects_unsupported_versions(version: int, key_type: int) -> None:
    """Other version/key-type combinations are refused with both numbers in the reason."""
    with pytest.raises(AttestationError) as exc:
        QuoteBody.parse(sample_body(version=version, key_type=key_type).to_bytes())
    assert exc.value.reason == f"unsupported quote version {version} with key type {key_type}"


@pytest.mark.parametrize(
    "field, value", [("mr_enclave", b"\0" * 31), ("mr_signer", b"\0" * 33), ("report_data", b"\0" * 65)]
)
def test_quote_to_bytes_rejects_wrong_field_sizes(field: str, value: bytes) -> None:
    """Identity fields of the wrong size never serialise."""
    with pytest.raises(ValueError):
        sample_body(**{field: value}).to_bytes()


# --- report -------------------------------------------------------------------


def test_build_report_is_teaclave_shaped() -> None:
    """Five Teaclave fields, version 4, Kettle fields added, sorted compact keys."""
    body = sample_body().to_bytes()
    now = datetime(2024, 5, 6, 7, 8, 9, 123456, UTC)
    raw = build_report(body, "OK", now, {"kettleTeeType": "simulation", "kettleService": "storage"})
    doc = json.loads(raw)
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert b" " not in raw
    assert list(doc) == sorted(doc)
    assert {"id", "isvEnclaveQuoteBody", "isvEnclaveQuoteStatus", "timestamp", "version"} <= set(doc)
    assert doc["version"] == 4
    assert doc["isvEnclaveQuoteStatus"] == "OK"
    assert doc["timestamp"] == "2024-05-06T07:08:09.123456"
    assert base64.b64decode(doc["isvEnclaveQuoteBody"]) == body
    assert len(doc["id"]) == 32 and int(doc["id"], 16) >= 0
    assert doc["kettleTeeType"] == "simulation" and doc["kettleService"] == "storage"
    assert json.loads(build_report(body, "OK", now, {}))["id"] != doc["id"]


@pytest.mark.parametrize(
    "moment, text",
    [
        (datetime(2022, 1, 17, 22, 7, 49, 22259, UTC), "2022-01-17T22:07:49.022259"),
        (datetime(2022, 1, 17, 22, 7, 49, 0, UTC), "2022-01-17T22:07:49.000000"),
        (datetime(2022, 1, 18, 0, 7, 49, 5, timezone(timedelta(hours=2))), "2022-01-17T22:07:49.000005"),
    ],
)
def test_format_timestamp(moment: datetime, text: str) -> None:
    """UTC, no zone suffix, 6 fraction digits."""
    assert format_timestamp(moment) == text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2022-01-17T22:07:49.022259677", datetime(2022, 1, 17, 22, 7, 49, 22259, UTC)),  # Teaclave DCAP AS
        ("2022-01-17T22:07:49.022259", datetime(2022, 1, 17, 22, 7, 49, 22259, UTC)),  # IAS
        ("2022-01-17T22:07:49.5", datetime(2022, 1, 17, 22, 7, 49, 500000, UTC)),
        ("2022-01-17T22:07:49", datetime(2022, 1, 17, 22, 7, 49, 0, UTC)),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    """IAS (6 digits), DCAP AS (9 digits) and shorter fractions parse as UTC."""
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2022-01-17 22:07:49.1", "2022-13-01T00:00:00.0", "2022-01-17T22:07:49.x"]
)
def test_parse_timestamp_rejects_malformed(text: str) -> None:
    """Malformed timestamps are an attestation error naming the text."""
    with pytest.raises(AttestationError) as exc:
        parse_timestamp(text)
    assert exc.value.reason == f"report timestamp {text!r} is malformed"


def test_timestamp_format_parse_roundtrip() -> None:
    """What the AS writes, verifiers read back exactly."""
    moment = datetime(2031, 12, 31, 23, 59, 59, 999999, UTC)
    assert parse_timestamp(format_timestamp(moment)) == moment


ENDORSED = EndorsedReport(b'{"version":4}', bytes(range(256)) * 2, [b"\x30\x82first", b"\x30\x82second"])


@pytest.mark.parametrize("compact", [False, True], ids=["integer-arrays", "base64"])
def test_endorsed_report_roundtrip(compact: bool) -> None:
    """Both extension encodings parse back to the same endorsed report."""
    value = ENDORSED.to_extension_value(compact=compact)
    assert EndorsedReport.from_extension_value(value) == ENDORSED


def test_endorsed_report_teaclave_encoding() -> None:
    """The default encoding is serde's: compact JSON, keys report/signature/certs, byte arrays of integers."""
    value = EndorsedReport(b"\x01\xff", b"\x02", [b"\x03\x04"]).to_extension_value()
    assert value == b'{"report":[1,255],"signature":[2],"certs":[[3,4]]}'


def test_endorsed_report_compact_encoding() -> None:
    """The compact encoding carries base64 strings."""
    value = EndorsedReport(b"\x01\xff", b"\x02", [b"\x03\x04"]).to_extension_value(compact=True)
    assert json.loads(value) == {"report": "Af8=", "signature": "Ag==", "certs": ["AwQ="]}


def test_endorsed_report_reader_accepts_any_json_layout() -> None:
    """Readers accept whitespace and any key order (spec §1.3)."""
    value = b'{ "certs" : [ [3, 4] ],\n "signature": [2], "report": [1, 255] }'
    assert EndorsedReport.from_extension_value(value) == EndorsedReport(b"\x01\xff", b"\x02", [b"\x03\x04"])


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"42",
        b'{"report":[1],"signature":[1]}',
        b'{"report":[1],"signature":[1],"signing_cert":[1]}',  # legacy v3 form
        b'{"report":[256],"signature":[1],"certs":[[1]]}',
        b'{"report":[-1],"signature":[1],"certs":[[1]]}',
        b'{"report":["a"],"signature":[1],"certs":[[1]]}',
        b'{"report":"!!!","signature":[1],"certs":[[1]]}',
        b'{"report":[1],"signature":7,"certs":[[1]]}',
        b'{"report":[1],"signature":[1],"certs":"zz"}',
        b'{"report":[1],"signature":[1],"certs":[null]}',
    ],
)
def test_endorsed_report_rejects_malformed(value: bytes) -> None:
    """Anything that is not an endorsed report is refused, never a crash."""
    with pytest.raises(AttestationError) as exc:
        EndorsedReport.from_extension_value(value)
    assert exc.value.reason == "attestation extension is not a valid endorsed report"


@pytest.mark.parametrize(
    "value",
    [
        b'{"report":[],"signature":[],"certs":[]}',  # Teaclave sgx_sim
        b'{"report":[1],"signature":[1],"certs":[]}',
        b'{"report":"","signature":"AQ==","certs":["AQ=="]}',
    ],
)
def test_endorsed_report_rejects_empty(value: bytes) -> None:
    """Empty parts (Teaclave's unattested simulation form) are refused."""
    with pytest.raises(AttestationError) as exc:
        EndorsedReport.from_extension_value(value)
    assert exc.value.reason == "attestation extension is empty (an unattested simulation build)"


def report_doc(**changes: object) -> bytes:
    """A valid report document with some fields changed (None removes a field)."""
    doc: dict[str, object] = {
        "id": "00" * 16,
        "isvEnclaveQuoteBody": base64.b64encode(sample_body().to_bytes()).decode(),
        "isvEnclaveQuoteStatus": "OK",
        "timestamp": "2022-01-17T22:07:49.022259677",
        "version": 4,
    }
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def test_report_content_parse() -> None:
    """A Teaclave DCAP-shaped report parses; without Kettle fields it is SGX, not simulation."""
    content = ReportContent.parse(report_doc())
    assert content.status == "OK"
    assert content.timestamp == datetime(2022, 1, 17, 22, 7, 49, 22259, UTC)
    assert content.quote_body == sample_body().to_bytes()
    assert (content.tee_type, content.simulation, content.service) == ("sgx", False, None)


@pytest.mark.parametrize(
    "fields, simulation",
    [
        ({"kettleTeeType": "simulation"}, True),
        ({"kettleTeeType": "tdx", "kettleSimulation": True}, True),
        ({"kettleTeeType": "tdx", "kettleSimulation": "yes"}, False),
    ],
)
def test_report_content_simulation_flag(fields: dict[str, object], simulation: bool) -> None:
    """Simulation is flagged by tee type or an explicit ``kettleSimulation: true``."""
    assert ReportContent.parse(report_doc(**fields)).simulation is simulation


@pytest.mark.parametrize(
    "report, reason",
    [
        (report_doc(version=3), "report version 3 is not 4"),
        (report_doc(version="4"), "report version '4' is not 4"),
        (report_doc(version=None), "report version None is not 4"),
        (report_doc(isvEnclaveQuoteBody="not base64!"), "report quote body is not base64"),
        (report_doc(isvEnclaveQuoteBody=None), "report lacks status, quote body or timestamp"),
        (report_doc(isvEnclaveQuoteStatus=None), "report lacks status, quote body or timestamp"),
        (report_doc(timestamp=None), "report lacks status, quote body or timestamp"),
        (report_doc(isvEnclaveQuoteStatus=0), "report lacks status, quote body or timestamp"),
        (report_doc(timestamp="now"), "report timestamp 'now' is malformed"),
        (b"{", "report is not valid JSON"),
        (b"[4]", "report is not a JSON object"),
    ],
)
def test_report_content_rejects(report: bytes, reason: str) -> None:
    """Each malformed report is refused with its own reason."""
    with pytest.raises(AttestationError) as exc:
        ReportContent.parse(report)
    assert exc.value.reason == reason


# --- enclave info ---------------------------------------------------------------


SAMPLE_INFO = EnclaveInfo(
    {
        "authentication": Measurement(bytes.fromhex("ab" * 32), bytes.fromhex("cd" * 32)),
        "access_control": Measurement(bytes(range(32)), bytes(range(32, 64))),
    }
)


def test_enclave_info_render_parse_roundtrip() -> None:
    """Rendering then parsing gives the same measurements; output is Teaclave's format."""
    data = SAMPLE_INFO.render()
    assert EnclaveInfo.parse(data) == SAMPLE_INFO
    assert EnclaveInfo.parse(data).render() == data
    text = data.decode()
    assert text.startswith("[teaclave_access_control_service]\nmr_enclave = \"000102")
    assert f'[teaclave_authentication_service]\nmr_enclave = "{"ab" * 32}"\nmr_signer = "{"cd" * 32}"\n' in text


def test_enclave_info_lookup() -> None:
    """Lookup by service name and by measurement pair."""
    m = SAMPLE_INFO.measurement("authentication")
    assert SAMPLE_INFO.services_matching(m.mr_enclave, m.mr_signer) == ["authentication"]
    assert SAMPLE_INFO.services_matching(m.mr_enclave, b"\0" * 32) == []
    with pytest.raises(AttestationError, match="enclave info has no entry for service 'storage'"):
        SAMPLE_INFO.measurement("storage")


GOOD_HEX = "ab" * 32


@pytest.mark.parametrize(
    "text, reason",
    [
        (f'[teaclave_storage_service]\nmr_enclave = "{"AB" * 32}"\nmr_signer = "{GOOD_HEX}"\n',
         "[teaclave_storage_service] mr_enclave must be 64 lowercase hex characters"),
        (f'[teaclave_storage_service]\nmr_enclave = "{GOOD_HEX[:-1]}"\nmr_signer = "{GOOD_HEX}"\n',
         "[teaclave_storage_service] mr_enclave must be 64 lowercase hex characters"),
        (f'[teaclave_storage_service]\nmr_enclave = "{GOOD_HEX}0"\nmr_signer = "{GOOD_HEX}"\n',
         "[teaclave_storage_service] mr_enclave must be 64 lowercase hex characters"),
        (f'[teaclave_storage_service]\nmr_enclave = "{GOOD_HEX}"\nmr_signer = "{"zz" * 32}"\n',
         "[teaclave_storage_service] mr_signer must be 64 lowercase hex characters"),
        (f'[teaclave_storage_service]\nmr_enclave = "{GOOD_HEX}"\n',
         "[teaclave_storage_service] mr_signer must be 64 lowercase hex characters"),
        (f'[teaclave_storage_service]\nmr_enclave = 5\nmr_signer = "{GOOD_HEX}"\n',
         "[teaclave_storage_service] mr_enclave must be 64 lowercase hex characters"),
        (f'[storage]\nmr_enclave = "{GOOD_HEX}"\nmr_signer = "{GOOD_HEX}"\n',
         "enclave info has an unexpected entry [storage]"),
        (f'[teaclave_storage_enclave]\nmr_enclave = "{GOOD_HEX}"\nmr_signer = "{GOOD_HEX}"\n',
         "enclave info has an unexpected entry [teaclave_storage_enclave]"),
        ('teaclave_storage_service = "x"\n', "enclave info has an unexpected entry [teaclave_storage_service]"),
    ],
)
def test_enclave_info_parse_rejects(text: str, reason: str) -> None:
    """Uppercase or wrong-length hex, missing keys and unknown tables are refused."""
    with pytest.raises(AttestationError) as exc:
        EnclaveInfo.parse(text.encode())
    assert exc.value.reason == reason


@pytest.mark.parametrize("data", [b"[teaclave_x_service", b"\xff\xfe"])
def test_enclave_info_parse_rejects_non_toml(data: bytes) -> None:
    """Bytes that are not TOML are refused."""
    with pytest.raises(AttestationError, match="enclave info is not valid TOML"):
        EnclaveInfo.parse(data)


@dataclass(frozen=True)
class Auditors:
    data: bytes
    private: dict[str, rsa.RSAPrivateKey]
    public: dict[str, rsa.RSAPublicKey]
    signatures: dict[str, bytes]
    outsider_signature: bytes


@pytest.fixture(scope="module")
def auditors(_auditor_cache: Path) -> Auditors:
    """The three dev auditors, their signatures over SAMPLE_INFO, and a signature by an unknown key."""
    private = {p.name.removesuffix(".key.pem"): fast_private_key(p) for p in sorted(_auditor_cache.glob("*.key.pem"))}
    assert len(private) == 3
    data = SAMPLE_INFO.render()
    outsider = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Auditors(
        data=data,
        private=private,
        public={n: k.public_key() for n, k in private.items()},
        signatures={n: sign_enclave_info(data, k) for n, k in private.items()},
        outsider_signature=sign_enclave_info(data, outsider),
    )


def pick(a: Auditors, spec: str) -> list[bytes]:
    """Signatures from a spec like ``"0,0,1,x"``: auditor indexes, ``x`` = unknown key."""
    names = sorted(a.signatures)
    return [a.outsider_signature if s == "x" else a.signatures[names[int(s)]] for s in spec.split(",") if s]


@pytest.mark.parametrize(
    "spec, threshold",
    [("0,1,2", 3), ("0,1", 2), ("2", 1), ("0,1,2,x", 3), ("2,1,0,0", 3)],
    ids=["3-of-3", "2-of-2", "1-of-1", "outsider-ignored", "duplicates-harmless"],
)
def test_enclave_info_threshold_met(auditors: Auditors, spec: str, threshold: int) -> None:
    """Enough distinct known auditors: the enclave info is accepted."""
    info = verify_enclave_info(auditors.data, pick(auditors, spec), auditors.public, threshold)
    assert info == SAMPLE_INFO


@pytest.mark.parametrize(
    "spec, threshold, valid",
    [("0,1", 3, 2), ("0,0,1", 3, 2), ("0,0,0", 2, 1), ("0,1,x", 3, 2), ("x", 1, 0), ("", 1, 0), ("", 3, 0)],
    ids=["2-of-3", "duplicate-counts-once", "triplicate-counts-once", "outsider-counts-zero",
         "only-outsider", "none-1", "none-3"],
)
def test_enclave_info_threshold_not_met(auditors: Auditors, spec: str, threshold: int, valid: int) -> None:
    """Too few distinct known auditors: refused with the count and the requirement."""
    with pytest.raises(AttestationError) as exc:
        verify_enclave_info(auditors.data, pick(auditors, spec), auditors.public, threshold)
    assert exc.value.reason.startswith(f"enclave info has {valid} valid auditor signature(s), {threshold} required")


def test_enclave_info_refusal_names_valid_auditors(auditors: Auditors) -> None:
    """The refusal lists which auditors did sign."""
    with pytest.raises(AttestationError) as exc:
        verify_enclave_info(auditors.data, pick(auditors, "0,1"), auditors.public, 3)
    names = sorted(auditors.signatures)
    assert exc.value.reason == f"enclave info has 2 valid auditor signature(s), 3 required (valid: {names[0]}, {names[1]})"


def test_enclave_info_zero_threshold_never_passes(auditors: Auditors) -> None:
    """A threshold below one is refused outright (Teaclave's zero-signature acceptance is not reproduced)."""
    with pytest.raises(AttestationError, match="auditor threshold must be at least 1"):
        verify_enclave_info(auditors.data, [], auditors.public, 0)


@pytest.mark.parametrize("position", [0, 40, -2])
def test_enclave_info_one_changed_byte_fails(auditors: Auditors, position: int) -> None:
    """Signatures over the original bytes do not cover a file with one byte changed."""
    tampered = bytearray(auditors.data)
    tampered[position] = ord("b") if tampered[position] != ord("b") else ord("c")
    with pytest.raises(AttestationError) as exc:
        verify_enclave_info(bytes(tampered), pick(auditors, "0,1,2"), auditors.public, 1)
    assert exc.value.reason == "enclave info has 0 valid auditor signature(s), 1 required"


def test_enclave_info_same_key_under_two_names_counts_once(auditors: Auditors) -> None:
    """One key known under two names is still one auditor."""
    key = next(iter(auditors.public.values()))
    name = next(iter(auditors.signatures))
    with pytest.raises(AttestationError):
        verify_enclave_info(auditors.data, [auditors.signatures[name]], {"a": key, "b": key}, 2)


def test_load_enclave_info_reads_signatures_beside(tmp_path: Path, auditors: Auditors) -> None:
    """Signature files beside the enclave info are what counts; a missing file is named."""
    path = tmp_path / "enclave_info.toml"
    path.write_bytes(auditors.data)
    for name, sig in auditors.signatures.items():
        (tmp_path / f"{name}{SIGNATURE_SUFFIX}").write_bytes(sig)
    assert load_enclave_info(path, auditors.public, 3) == SAMPLE_INFO
    (tmp_path / f"{sorted(auditors.signatures)[0]}{SIGNATURE_SUFFIX}").unlink()
    with pytest.raises(AttestationError, match=r"has 2 valid auditor signature\(s\), 3 required"):
        load_enclave_info(path, auditors.public, 3)
    with pytest.raises(AttestationError, match="enclave info .*missing"):
        load_enclave_info(tmp_path / "absent.toml", auditors.public, 1)


# --- measurement ----------------------------------------------------------------


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A private copy of the installed ``kettle`` package to tamper with."""
    root = tmp_path / "kettle"
    shutil.copytree(package_root(), root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


BUILD = b'threshold = 3\n\n[auditors]\n'
MEASURED = ("authentication", "storage", "frontend")


def flip_byte(path: Path) -> None:
    """Change exactly one byte in the middle of a file."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def measure_all(root: Path, build: bytes = BUILD) -> dict[str, bytes]:
    return {s: measure_service(s, build, root) for s in MEASURED}


def test_measurement_of_copy_equals_installed(package_copy: Path) -> None:
    """The measurement depends on contents and relative paths, not on where the package lives."""
    assert measure_all(package_copy) == {s: measure_service(s, BUILD) for s in MEASURED}
    assert len(set(measure_all(package_copy).values())) == len(MEASURED)


@pytest.mark.parametrize("relative", ["config.py", "attestation/verifier.py", "services/runtime.py", "__init__.py"])
def test_shared_file_change_moves_every_measurement(package_copy: Path, relative: str) -> None:
    """One byte changed in a shared file changes every service's MRENCLAVE."""
    before = measure_all(package_copy)
    flip_byte(package_copy / relative)
    after = measure_all(package_copy)
    assert all(after[s] != before[s] for s in MEASURED)


@pytest.mark.parametrize(
    "changed_service, relative",
    [("storage", "services/storage/backend.py"), ("authentication", "services/authentication/core.py")],
)
def test_service_package_change_moves_only_that_service(package_copy: Path, changed_service: str, relative: str) -> None:
    """A byte changed in one service's own package moves that service only."""
    before = measure_all(package_copy)
    flip_byte(package_copy / relative)
    after = measure_all(package_copy)
    for service in MEASURED:
        assert (after[service] != before[service]) is (service == changed_service), service


def test_new_file_in_service_package_is_measured(package_copy: Path) -> None:
    """Adding a module to a service's package changes that service only."""
    before = measure_all(package_copy)
    (package_copy / "services" / "storage" / "extra.py").write_text("X = 1\n")
    after = measure_all(package_copy)
    assert after["storage"] != before["storage"]
    assert after["authentication"] == before["authentication"]


def test_build_config_change_moves_every_measurement(package_copy: Path) -> None:
    """The measured build configuration is part of every service's measurement."""
    before = measure_all(package_copy)
    changed = bytearray(BUILD)
    changed[0] ^= 0x20
    after = measure_all(package_copy, bytes(changed))
    assert all(after[s] != before[s] for s in MEASURED)


# --- issuer (in-process attestation service) ---------------------------------------


@dataclass(frozen=True)
class Env:
    config: Config
    authority: Authority
    info: EnclaveInfo
    platform_key: ec.EllipticCurvePublicKey

    @property
    def home(self) -> Path:
        return self.config.home


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Env:
    """One initialised dev home (AS hierarchy, simulated platform, signed enclave info), nothing started."""
    config = make_home(tmp_path_factory.mktemp("units-home"), _auditor_cache)
    from kettle.attestation.build import BuildConfig
    from kettle.attestation.trust import service_enclave_info

    info = service_enclave_info(config, BuildConfig.load(config.home))
    return Env(config, load_authority(config.home), info, load_simulation_platform_key(config.home))


def make_issuer(env: Env, *, allow_simulation: bool = True, clock: Callable[[], float] | None = None,
                issued_log: Path | None = None) -> Issuer:
    """An in-process Issuer for the home, as the AS server constructs it."""
    kwargs = {"clock": clock} if clock else {}
    return Issuer(
        env.authority,
        lambda: env.info,
        simulation_platform_key=env.platform_key,
        unsafe_allow_simulation=allow_simulation,
        domain=env.config.domain,
        validity=timedelta(seconds=env.config.attestation.validity_secs),
        issued_log=issued_log,
        **kwargs,  # type: ignore[arg-type]
    )


def csr_for(key: ec.EllipticCurvePrivateKey, service: str = "authentication") -> bytes:
    """A PKCS#10 request for ``key``, as a service sends it."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"teaclave_{service}_service")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(PEM)


def request(
    env: Env,
    service: str = "authentication",
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    evidence_key: ec.EllipticCurvePrivateKey | None = None,
    mr_enclave: bytes | None = None,
    mr_signer: bytes = SIMULATION_MR_SIGNER,
    platform_home: Path | None = None,
    tee_type: str = "simulation",
) -> tuple[IssueRequest, ec.EllipticCurvePrivateKey]:
    """An issue request with simulation evidence; every knob defaults to the honest value."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    evidence_key = evidence_key or key
    measurement = mr_enclave if mr_enclave is not None else env.info.measurement(service).mr_enclave
    backend = SimulationBackend(platform_home or env.home, measurement, mr_signer, service)
    evidence = backend.evidence(report_data_for(evidence_key.public_key()))
    return IssueRequest(service, csr_for(key, service), tee_type, evidence.quote), key


@pytest.mark.parametrize("service", ["authentication", "storage", "access_control"])
def test_issue_certificate_profile(env: Env, service: str, tmp_path: Path) -> None:
    """A correct request yields a leaf with the report first, EKU server+client, SAN service + measurement."""
    log_path = tmp_path / "issued.log"
    req, key = request(env, service)
    issued = make_issuer(env, issued_log=log_path).issue(req)
    cert = issued.certificate
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.issuer == env.authority.ca_cert.subject
    assert issued.chain == [env.authority.ca_cert]
    cert.verify_directly_issued_by(env.authority.ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"teaclave_{service}_service"

    extensions = list(cert.extensions)
    assert extensions[0].oid == REPORT_EXTENSION_OID and not extensions[0].critical
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    mr_enclave = env.info.measurement(service).mr_enclave
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == [service_dns_name(service, env.config.domain), measurement_dns_name(mr_enclave, env.config.domain)]
    assert sans[0] == f"{service.replace('_', '-')}.kettle.internal"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc) == timedelta(seconds=3600 + 60)

    endorsed = EndorsedReport.from_certificate(cert)
    assert extensions[0].value.value == endorsed.to_extension_value()  # Teaclave integer arrays
    content = ReportContent.parse(endorsed.report)
    quote = QuoteBody.parse(content.quote_body)
    assert (quote.mr_enclave, quote.mr_signer) == (mr_enclave, SIMULATION_MR_SIGNER)
    assert quote.report_data == report_data_for(key.public_key())
    assert (content.status, content.tee_type, content.simulation, content.service) == ("OK", "simulation", True, service)
    assert content.raw["kettleEvidenceDigest"] == hashlib.sha256(req.evidence).hexdigest()
    env.authority.report_key.public_key().verify(endorsed.signature, endorsed.report, padding.PKCS1v15(), hashes.SHA256())

    client = issued.client_certificate
    assert EndorsedReport.from_certificate(client) == endorsed
    assert json.loads(list(client.extensions)[0].value.value)["report"] == base64.b64encode(endorsed.report).decode()

    record = json.loads(log_path.read_text().splitlines()[-1])
    assert record["service"] == service and record["mr_enclave"] == mr_enclave.hex()
    assert record["serial"] == format(cert.serial_number, "x")


def refusal(env: Env, case: str, tmp_path: Path) -> tuple[IssueRequest, bool, str]:
    """Build one refused request: (request, simulation allowed, exact reason)."""
    allow = True
    expected_mr = env.info.measurement("authentication").mr_enclave.hex()
    if case == "unknown service":
        req, _ = request(env)
        return IssueRequest("teaclave", req.csr_pem, req.tee_type, req.evidence), allow, "unknown service 'teaclave'"
    if case == "csr for another key":
        req, _ = request(env, evidence_key=ec.generate_private_key(ec.SECP256R1()))
        return req, allow, "evidence report data does not match the certificate key"
    if case == "wrong measurement":
        req, _ = request(env, mr_enclave=b"\x42" * 32)
        return req, allow, f"measurement of authentication ({'42' * 32}) does not match enclave info ({expected_mr})"
    if case == "wrong signer":
        req, _ = request(env, mr_signer=b"\x43" * 32)
        # Only MRSIGNER differs; the reason's wording for that case is not pinned down here.
        return req, allow, "~does not match enclave info"
    if case == "measurement of another service":
        req, _ = request(env, mr_enclave=env.info.measurement("storage").mr_enclave)
        storage_mr = env.info.measurement("storage").mr_enclave.hex()
        return req, allow, f"measurement of authentication ({storage_mr}) does not match enclave info ({expected_mr})"
    if case == "another platform key":
        create_simulation_platform(tmp_path / "other")
        req, _ = request(env, platform_home=tmp_path / "other")
        return req, allow, "simulation quote signature is invalid"
    if case == "truncated by one byte":
        req, _ = request(env)
        return IssueRequest(req.service, req.csr_pem, req.tee_type, req.evidence[:-1]), allow, \
            "simulation quote signature length does not match"
    if case == "truncated to the body":
        req, _ = request(env)
        return IssueRequest(req.service, req.csr_pem, req.tee_type, req.evidence[:QUOTE_BODY_SIZE]), allow, \
            "simulation quote is truncated"
    if case == "empty evidence":
        req, _ = request(env)
        return IssueRequest(req.service, req.csr_pem, req.tee_type, b""), allow, "simulation quote is truncated"
    if case == "oversized evidence":
        req, _ = request(env)
        return IssueRequest(req.service, req.csr_pem, req.tee_type, req.evidence + b"\0" * 33000), allow, \
            "evidence is too large"
    if case == "tee type sgx":
        req, _ = request(env, tee_type="sgx")
        return req, allow, "sgx evidence is refused: this attestation service has no collateral source"
    if case == "tee type unknown":
        req, _ = request(env, tee_type="sev")
        return req, allow, "TEE type 'sev' is not supported by this attestation service (supported: simulation, sev-snp, tdx, sgx)"
    if case == "simulation not allowed":
        req, _ = request(env)
        return req, False, "simulation evidence is refused: this attestation service does not allow simulation"
    if case == "csr not pem":
        req, _ = request(env)
        return IssueRequest(req.service, b"garbage", req.tee_type, req.evidence), allow, \
            "certificate signing request is not valid PEM"
    if case == "csr p384":
        req, _ = request(env)
        return IssueRequest(req.service, csr_for(ec.generate_private_key(ec.SECP384R1())), req.tee_type, req.evidence), \
            allow, "certificate key must be ECDSA P-256"
    if case == "no debug attribute":
        key = ec.generate_private_key(ec.SECP256R1())
        platform = serialization.load_pem_private_key(
            (env.home / "simulation" / "platform_key.pem").read_bytes(), password=None
        )
        assert isinstance(platform, ec.EllipticCurvePrivateKey)
        body = QuoteBody(env.info.measurement("authentication").mr_enclave, SIMULATION_MR_SIGNER,
                         report_data_for(key.public_key()), attributes_flags=PROD_FLAGS).to_bytes()
        sig = platform.sign(body, ec.ECDSA(hashes.SHA256()))
        evidence = body + struct.pack("<I", len(sig)) + sig
        return IssueRequest("authentication", csr_for(key), "simulation", evidence), allow, \
            "simulation evidence without the debug attribute"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "unknown service", "csr for another key", "wrong measurement", "wrong signer",
        "measurement of another service", "another platform key", "truncated by one byte",
        "truncated to the body", "empty evidence", "oversized evidence", "tee type sgx", "tee type unknown",
        "simulation not allowed", "csr not pem", "csr p384", "no debug attribute",
    ],
)
def test_issue_refusals(env: Env, tmp_path: Path, case: str) -> None:
    """Every bad request is refused with its exact reason and nothing is logged as issued."""
    req, allow, reason = refusal(env, case, tmp_path)
    log_path = tmp_path / "issued.log"
    with pytest.raises(AttestationError) as exc:
        make_issuer(env, allow_simulation=allow, issued_log=log_path).issue(req)
    if reason.startswith("~"):
        assert reason[1:] in exc.value.reason
    else:
        assert exc.value.reason == reason
    assert not log_path.exists()


# --- verifier ---------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedAt:
    """A certificate the in-process Issuer produced at a fixed time T."""

    time: float
    service: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    client_cert: x509.Certificate


@pytest.fixture(scope="module")
def issued(env: Env) -> IssuedAt:
    """An authentication certificate issued at a fixed instant."""
    t = datetime.now(UTC).timestamp()
    req, key = request(env, "authentication")
    result = make_issuer(env, clock=lambda: t).issue(req)
    return IssuedAt(t, "authentication", key, result.certificate, result.client_certificate)


def verifier(env: Env, at: float, *, allow_simulation: bool = True, info: EnclaveInfo | None = None,
             **kwargs: object) -> Verifier:
    """A Verifier pinned to the home's AS root with a fixed clock."""
    return Verifier(
        env.authority.root,
        info or env.info,
        unsafe_allow_simulation=allow_simulation,
        clock=lambda: at,
        **kwargs,  # type: ignore[arg-type]
    )


HAPPY_CHECKS = ["certificate validity", "report signer", "report signature", "report data",
                "quote status", "report age", "tee", "measurement"]


def test_verifier_accepts_issued_certificate(env: Env, issued: IssuedAt) -> None:
    """The Issuer's certificate verifies and the peer is described faithfully."""
    v = verifier(env, issued.time + 5)
    peer = v.verify(issued.cert, expected_services={"authentication"})
    m = env.info.measurement("authentication")
    assert (peer.service, peer.mr_enclave, peer.mr_signer) == ("authentication", m.mr_enclave, m.mr_signer)
    assert (peer.tee_type, peer.simulation, peer.status) == ("simulation", True, "OK")
    assert abs(peer.report_time.timestamp() - issued.time) < 0.01
    assert peer.not_after == issued.cert.not_valid_after_utc
    assert v.verify(issued.cert.public_bytes(DER)).service == "authentication"
    assert v.verify(issued.client_cert).service == "authentication"
    chained = v.examine(issued.cert, intermediates=[env.authority.ca_cert])
    assert chained.ok and [c.name for c in chained.checks][:2] == ["certificate validity", "certificate chain"]


def test_examine_lists_every_check(env: Env, issued: IssuedAt) -> None:
    """examine returns each check by name with a detail, all passing for a good certificate."""
    verdict = verifier(env, issued.time + 5).examine(issued.cert)
    assert verdict.ok and verdict.reason == "verified"
    assert [c.name for c in verdict.checks] == HAPPY_CHECKS
    assert all(c.ok and c.detail for c in verdict.checks)
    details = {c.name: c.detail for c in verdict.checks}
    assert details["quote status"] == "OK"
    assert details["report age"] == "5 s old"
    assert details["tee"].startswith("SIMULATION (not a TEE)")
    assert details["measurement"] == f"authentication: mr_enclave {env.info.measurement('authentication').mr_enclave.hex()}"


def test_examine_reports_all_policy_failures(env: Env, issued: IssuedAt) -> None:
    """With simulation refused, both the TEE and the debug checks fail; the first is the reason."""
    verdict = verifier(env, issued.time + 5, allow_simulation=False).examine(issued.cert)
    failed = [c.name for c in verdict.checks if not c.ok]
    assert failed == ["tee", "debug"]
    assert not verdict.ok and verdict.peer is not None
    assert verdict.reason == "simulation evidence is not accepted (not a TEE); allow simulation explicitly for development"
    assert {c.name for c in verdict.checks if c.ok} == {
        "certificate validity", "report signer", "report signature", "report data", "quote status", "report age",
        "measurement",
    }


def test_verifier_refuses_expired_leaf(env: Env, issued: IssuedAt) -> None:
    """After not_after the certificate is refused before anything else is looked at."""
    verdict = verifier(env, issued.time + 3600 + 61).examine(issued.cert)
    assert [(c.name, c.ok) for c in verdict.checks] == [("certificate validity", False)]
    assert verdict.reason == f"certificate expired at {issued.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    assert verdict.peer is None


def test_verifier_refuses_not_yet_valid_leaf(env: Env, issued: IssuedAt) -> None:
    """Before not_before (beyond the allowed skew) the certificate is refused."""
    verdict = verifier(env, issued.time - 200).examine(issued.cert)
    assert verdict.reason == "certificate is not yet valid"


def test_verifier_refuses_old_report(env: Env, issued: IssuedAt) -> None:
    """A report older than max_report_age (plus skew) is refused."""
    v = verifier(env, issued.time + 30, max_report_age=timedelta(seconds=10), clock_skew=timedelta(0))
    with pytest.raises(AttestationError) as exc:
        v.verify(issued.cert)
    assert exc.value.reason == "report is 30 s old, older than 10 s"


def test_verifier_refuses_future_report(env: Env, issued: IssuedAt) -> None:
    """A report timestamp beyond the clock skew in the future is refused."""
    with pytest.raises(AttestationError) as exc:
        verifier(env, issued.time - 100).verify(issued.cert)
    assert exc.value.reason == "report timestamp is in the future"


def test_verifier_refuses_simulation_when_not_allowed(env: Env, issued: IssuedAt) -> None:
    """Simulation evidence needs unsafe_allow_simulation."""
    with pytest.raises(AttestationError) as exc:
        verifier(env, issued.time + 1, allow_simulation=False).verify(issued.cert)
    assert exc.value.reason == (
        "simulation evidence is not accepted (not a TEE); allow simulation explicitly for development"
    )


def test_verifier_refuses_unknown_measurement(env: Env, issued: IssuedAt) -> None:
    """A measurement absent from enclave info is refused, naming it (and the expected service)."""
    other = EnclaveInfo({"authentication": Measurement(b"\x11" * 32, SIMULATION_MR_SIGNER)})
    mr = env.info.measurement("authentication").mr_enclave.hex()
    v = verifier(env, issued.time + 1, info=other)
    with pytest.raises(AttestationError) as exc:
        v.verify(issued.cert)
    assert exc.value.reason == f"measurement {mr} does not match enclave info"
    with pytest.raises(AttestationError) as exc:
        v.verify(issued.cert, expected_services={"authentication"})
    assert exc.value.reason == f"measurement {mr} does not match enclave info for authentication"


@pytest.mark.parametrize("expected, reason", [
    ({"storage"}, "peer is authentication, expected storage"),
    ({"storage", "frontend"}, "peer is authentication, expected frontend or storage"),
])
def test_verifier_refuses_other_service(env: Env, issued: IssuedAt, expected: set[str], reason: str) -> None:
    """A genuine certificate of another service is refused when a specific service is expected."""
    with pytest.raises(AttestationError) as exc:
        verifier(env, issued.time + 1).verify(issued.cert, expected_services=expected)
    assert exc.value.reason == reason


def mint(
    env: Env,
    *,
    at: float,
    status: str = "OK",
    tee_type: str = "simulation",
    flags: int = SIM_FLAGS,
    service: str = "authentication",
    report_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
    certs: list[x509.Certificate] | None = None,
    leaf_key: ec.EllipticCurvePrivateKey | None = None,
    report_data_key: ec.EllipticCurvePrivateKey | None = None,
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    tamper_report: bool = False,
) -> x509.Certificate:
    """A leaf with a hand-made report; defaults reproduce what the AS issues, each knob breaks one thing."""
    leaf_key = leaf_key or ec.generate_private_key(ec.SECP256R1())
    m = env.info.measurement(service)
    body = QuoteBody(m.mr_enclave, m.mr_signer, report_data_for((report_data_key or leaf_key).public_key()),
                     attributes_flags=flags).to_bytes()
    fields: dict[str, object] = {"kettleTeeType": tee_type, "kettleService": service}
    if tee_type == "simulation":
        fields["kettleSimulation"] = True
    now = datetime.fromtimestamp(at, UTC)
    report = build_report(body, status, now - timedelta(milliseconds=1), fields)
    signer_key = report_key or env.authority.report_key
    if isinstance(signer_key, rsa.RSAPrivateKey):
        signature = signer_key.sign(report, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = signer_key.sign(report, ec.ECDSA(hashes.SHA256()))
    if tamper_report:
        report = report.replace(b'"OK"', b'"ok"')
    chain = certs if certs is not None else [env.authority.report_cert]
    endorsed = EndorsedReport(report, signature, [c.public_bytes(DER) for c in chain])
    ca_key, ca_cert = ca or (env.authority.ca_key, env.authority.ca_cert)
    return issue_service_certificate(
        ca_key, ca_cert, leaf_key.public_key(), service, m.mr_enclave, endorsed, env.config.domain,
        tee_type == "simulation", now, timedelta(seconds=3600),
    )


def test_minted_control_verifies(env: Env) -> None:
    """The minting helper, left at its defaults, produces an acceptable certificate (controls the cases below)."""
    t = datetime.now(UTC).timestamp()
    assert verifier(env, t).verify(mint(env, at=t)).service == "authentication"


# JSON nested this deep makes Python's decoder raise RecursionError; a peer picks the depth.
DEEP_JSON = [b"[" * 100_000, b'{"report":' * 50_000, b'{"report":' + b"[" * 100_000]


@pytest.mark.parametrize("value", DEEP_JSON)
def test_endorsed_report_refuses_deeply_nested_json(value: bytes) -> None:
    with pytest.raises(AttestationError) as exc:
        EndorsedReport.from_extension_value(value)
    assert exc.value.reason == "attestation extension is JSON nested too deeply to be an endorsed report"


@pytest.mark.parametrize("value", DEEP_JSON)
def test_report_content_refuses_deeply_nested_json(value: bytes) -> None:
    with pytest.raises(AttestationError) as exc:
        ReportContent.parse(value)
    assert exc.value.reason == "report is JSON nested too deeply"


def test_verifier_refuses_a_certificate_whose_report_extension_nests_deeply(env: Env) -> None:
    """A peer's certificate is hostile input: its report extension, ``[`` a hundred thousand
    times, is refused with the reason instead of raising RecursionError in the handshake."""
    t = datetime.now(UTC).timestamp()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teaclave_authentication_service")])
    now = datetime.fromtimestamp(t, UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(env.authority.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.UnrecognizedExtension(REPORT_EXTENSION_OID, b"[" * 100_000), critical=False)
        .sign(env.authority.ca_key, hashes.SHA256())
    )
    verdict = verifier(env, t).examine(cert)
    assert not verdict.ok
    assert verdict.checks[-1].name == "report extension"
    assert verdict.reason == "attestation extension is JSON nested too deeply to be an endorsed report"


def test_verifier_refuses_an_as_signed_report_that_nests_deeply(env: Env) -> None:
    """Even a report the AS signed is parsed defensively: deep nesting is a refusal, not a crash."""
    t = datetime.now(UTC).timestamp()
    report = b"[" * 100_000
    signature = env.authority.report_key.sign(report, padding.PKCS1v15(), hashes.SHA256())
    endorsed = EndorsedReport(report, signature, [env.authority.report_cert.public_bytes(DER)])
    m = env.info.measurement("authentication")
    cert = issue_service_certificate(
        env.authority.ca_key, env.authority.ca_cert, ec.generate_private_key(ec.SECP256R1()).public_key(),
        "authentication", m.mr_enclave, endorsed, env.config.domain, True, datetime.fromtimestamp(t, UTC),
        timedelta(seconds=3600),
    )
    verdict = verifier(env, t).examine(cert)
    assert [c.name for c in verdict.checks if not c.ok] == ["report content"]
    assert verdict.reason == "report is JSON nested too deeply"


@pytest.mark.parametrize("status", ["GROUP_OUT_OF_DATE", "KEY_REVOKED", "SIGNATURE_INVALID", "SW_HARDENING_NEEDED"])
def test_verifier_refuses_status_not_accepted(env: Env, status: str) -> None:
    """An AS-signed report with a non-OK status is refused by default and accepted only by explicit policy."""
    t = datetime.now(UTC).timestamp()
    cert = mint(env, at=t, status=status)
    with pytest.raises(AttestationError) as exc:
        verifier(env, t).verify(cert)
    assert exc.value.reason == f"quote status {status} is not accepted"
    assert verifier(env, t, accepted_statuses=("OK", status)).verify(cert).status == status


def test_verifier_refuses_debug_enclave(env: Env) -> None:
    """A non-simulation report with the DEBUG attribute is refused even when simulation is allowed."""
    t = datetime.now(UTC).timestamp()
    debug = mint(env, at=t, tee_type="sgx", flags=SIM_FLAGS)
    for allow in (False, True):
        with pytest.raises(AttestationError) as exc:
            verifier(env, t, allow_simulation=allow).verify(debug)
        assert exc.value.reason == "the enclave runs in debug mode"
    production = mint(env, at=t, tee_type="sgx", flags=PROD_FLAGS)
    peer = verifier(env, t, allow_simulation=False).verify(production)
    assert (peer.tee_type, peer.simulation) == ("sgx", False)


def test_verifier_refuses_tampered_report(env: Env) -> None:
    """A report changed after signing fails the signature check."""
    t = datetime.now(UTC).timestamp()
    with pytest.raises(AttestationError) as exc:
        verifier(env, t).verify(mint(env, at=t, tamper_report=True))
    assert exc.value.reason == "report signature is invalid"


def test_verifier_refuses_report_for_another_key(env: Env) -> None:
    """A genuine report bound to another key does not attest the certificate's key."""
    t = datetime.now(UTC).timestamp()
    cert = mint(env, at=t, report_data_key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(AttestationError) as exc:
        verifier(env, t).verify(cert)
    assert exc.value.reason == "report data does not match the certificate's public key"


@pytest.fixture(scope="module")
def forged_hierarchy(env: Env) -> tuple[rsa.RSAPrivateKey, x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]:
    """An attacker's root (same name as the real AS root) and a report signer under it."""
    now = datetime.now(UTC)
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root_name = env.authority.root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    root = self_signed_root(root_key, str(root_name), True, now)
    assert root.subject == env.authority.root.subject
    signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = issue_by_root(root_key, root, signer_key.public_key(), "Kettle SIMULATION AS report signing", True, now)
    return root_key, root, signer_key, signer


@pytest.mark.parametrize("variant", ["root in certs[1]", "self-signed signer alone", "root then signer"])
def test_verifier_refuses_trust_anchor_injection(
    env: Env, forged_hierarchy: tuple[rsa.RSAPrivateKey, x509.Certificate, rsa.RSAPrivateKey, x509.Certificate],
    variant: str,
) -> None:
    """A report signed under a root carried in the extension is refused: only the pinned root anchors."""
    root_key, root, signer_key, signer = forged_hierarchy
    t = datetime.now(UTC).timestamp()
    attacker = ec.generate_private_key(ec.SECP256R1())
    if variant == "root in certs[1]":
        report_key, certs = signer_key, [signer, root]
    elif variant == "self-signed signer alone":
        report_key, certs = root_key, [root]
    else:
        report_key, certs = root_key, [root, signer]
    # Teaclave-style: the attacker's leaf is self-signed with its own key.
    cert = mint(env, at=t, report_key=report_key, certs=certs, leaf_key=attacker, ca=(attacker, root))
    verdict = verifier(env, t).examine(cert)
    assert not verdict.ok and verdict.peer is None
    assert verdict.checks[-1].name == "report signer"
    assert "does not chain to the pinned AS root" in verdict.reason
    assert verdict.reason.startswith("report signing certificate ")


def test_verifier_chain_check_refuses_foreign_ca(
    env: Env, forged_hierarchy: tuple[rsa.RSAPrivateKey, x509.Certificate, rsa.RSAPrivateKey, x509.Certificate],
) -> None:
    """With intermediates given, a leaf issued by a CA outside the pinned root is refused."""
    root_key, root, _, _ = forged_hierarchy
    t = datetime.now(UTC).timestamp()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    foreign_ca = issue_by_root(root_key, root, ca_key.public_key(), "foreign CA", True, datetime.fromtimestamp(t, UTC), ca=True)
    cert = mint(env, at=t, ca=(ca_key, foreign_ca))
    assert verifier(env, t).verify(cert).service == "authentication"  # the report alone is genuine
    verdict = verifier(env, t).examine(cert, intermediates=[foreign_ca])
    assert verdict.checks[-1].name == "certificate chain"
    assert "does not chain to the pinned AS root" in verdict.reason


@pytest.mark.parametrize("signer", ["service CA key", "AS TLS key", "leaf under the service CA"])
def test_verifier_refuses_report_signed_by_other_as_keys(env: Env, signer: str) -> None:
    """Only the AS report-signing certificate may sign reports, not the AS's other keys nor a service's."""
    t = datetime.now(UTC).timestamp()
    a = env.authority
    if signer == "service CA key":
        report_key, certs = a.ca_key, [a.ca_cert]
        reason = f"certificate {a.ca_cert.subject.rfc4514_string()} is not a report signing certificate"
    elif signer == "AS TLS key":
        tls_key = serialization.load_pem_private_key(
            (env.home / "attestation_service" / "tls.key.pem").read_bytes(), password=None
        )
        assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
        report_key, certs = tls_key, [a.tls_cert]
        reason = f"certificate {a.tls_cert.subject.rfc4514_string()} is not a report signing certificate"
    else:
        rogue = ec.generate_private_key(ec.SECP256R1())
        rogue_req, _ = request(env, "storage", key=rogue)
        rogue_leaf = make_issuer(env).issue(rogue_req).certificate
        report_key, certs = rogue, [rogue_leaf, a.ca_cert]
        reason = f"report signing certificate {rogue_leaf.subject.rfc4514_string()} does not chain to the pinned AS root"
    cert = mint(env, at=t, report_key=report_key, certs=certs)  # type: ignore[arg-type]
    verdict = verifier(env, t).examine(cert)
    assert [(c.name, c.ok) for c in verdict.checks][-1] == ("report signer", False)
    assert verdict.reason == reason and verdict.peer is None


def test_report_signer_role(
    forged_hierarchy: tuple[rsa.RSAPrivateKey, x509.Certificate, rsa.RSAPrivateKey, x509.Certificate],
) -> None:
    """report_signer_problem: an RSA end-entity directly under the pinned root, not CA, not TLS, in validity."""
    from kettle.attestation.verifier import report_signer_problem

    root_key, root, _, signer = forged_hierarchy  # here the forged root plays the pinned root
    now = datetime.now(UTC)
    name = "CN=role test"

    def under_root(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *, ca: bool = False,
                   tls: bool = False, issuer_key: rsa.RSAPrivateKey = root_key,
                   issuer: x509.Certificate = root, at: datetime = now) -> x509.Certificate:
        return issue_by_root(issuer_key, issuer, key.public_key(), "role test", False, at, ca=ca,
                             server_names=["localhost"] if tls else None)

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_root = self_signed_root(other_root_key, "other root", False, now)
    assert report_signer_problem(signer, root, now) is None
    assert report_signer_problem(under_root(rsa_key), root, now) is None
    assert report_signer_problem(under_root(rsa_key, ca=True), root, now) == \
        f"certificate {name} is not a report signing certificate"
    assert report_signer_problem(under_root(ec.generate_private_key(ec.SECP256R1())), root, now) == \
        f"certificate {name} is not a report signing certificate"
    assert report_signer_problem(under_root(rsa.generate_private_key(public_exponent=65537, key_size=1024)), root, now) == \
        f"certificate {name} is not a report signing certificate"
    assert report_signer_problem(under_root(rsa_key, tls=True), root, now) == \
        f"certificate {name} is a TLS certificate, not a report signing certificate"
    assert report_signer_problem(under_root(rsa_key, issuer_key=other_root_key, issuer=other_root), root, now) == \
        f"report signing certificate {name} does not chain to the pinned AS root"
    assert report_signer_problem(root, root, now) == f"certificate {root.subject.rfc4514_string()} is not a report signing certificate"
    late = now + timedelta(days=3651)
    assert report_signer_problem(under_root(rsa_key), root, late) == \
        f"report signing certificate {name} is outside its validity period"


def test_verifier_refuses_pss_report_signature(env: Env) -> None:
    """A genuine report-signing key's signature that is not PKCS#1 v1.5 (here PSS) over the exact bytes fails."""
    t = datetime.now(UTC).timestamp()
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    endorsed = EndorsedReport.from_certificate(mint(env, at=t, leaf_key=leaf_key))
    pss = env.authority.report_key.sign(
        endorsed.report, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
    )
    m = env.info.measurement("authentication")
    wrapped = issue_service_certificate(
        env.authority.ca_key, env.authority.ca_cert, leaf_key.public_key(), "authentication", m.mr_enclave,
        EndorsedReport(endorsed.report, pss, endorsed.certs), env.config.domain, True,
        datetime.fromtimestamp(t, UTC), timedelta(seconds=3600),
    )
    assert verifier(env, t).verify(mint(env, at=t)).service == "authentication"
    with pytest.raises(AttestationError) as exc:
        verifier(env, t).verify(wrapped)
    assert exc.value.reason == "report signature is invalid"


def test_services_constant_matches_enclave_info(env: Env) -> None:
    """The dev home's enclave info has one entry per platform service."""
    assert sorted(env.info.services) == sorted(SERVICES)


@pytest.mark.parametrize(
    ("service_url", "name"),
    [("https://10.77.0.10:17790", "10.77.0.10"), ("https://attestation.kettle.example:17790", "attestation.kettle.example")],
)
def test_the_attestation_service_certificate_names_the_host_other_machines_dial(
    tmp_path: Path, _auditor_cache: Path, service_url: str, name: str
) -> None:
    from kettle.provisioning import init_dev_home

    home = tmp_path / "home"
    home.mkdir()
    (home / "kettle.toml").write_text(f'[attestation]\nservice_url = "{service_url}"\nunsafe_allow_simulation = true\n')
    shutil.copytree(_auditor_cache, home / "auditors")
    init_dev_home(home)
    names = load_authority(home).tls_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert name in [str(n) for n in (*names.get_values_for_type(x509.IPAddress), *names.get_values_for_type(x509.DNSName))]
    assert "localhost" in names.get_values_for_type(x509.DNSName)  # the machine itself still reaches it
