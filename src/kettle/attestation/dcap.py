"""Verifier of Intel DCAP quotes: TDX (quote v4/v5) and SGX (quote v3/v4/v5).

The cryptography and Intel's collateral rules (PCK chain and CRLs, QE report and
identity, TCB info and level matching, collateral validity) are ``dcap-qvl``'s, run
at the verification time the caller gives (never the wall clock). Around it this
module adds what ``dcap-qvl`` leaves open (``spec/attestation.md`` §3, §6.3):

* a strict parse of the whole quote: every length field must describe exactly the
  bytes that follow, certification data must be the QE report (type 6) wrapping a
  PCK PEM chain (type 5) in canonical PEM whose root is the trusted root, and bytes
  after the signature data (TDX quotes come padded) must be zero, so no byte of a
  quote can change without the quote being refused;
* Kettle's policy: the TCB status (``UpToDate`` only by default; any other status
  only together with the advisory ids it may carry), debug TDs and SGX debug
  enclaves refused, the report data binding and the measurements.

``examine_dcap_quote`` returns a :class:`DcapVerdict` listing each check with its
reason, in the style of :meth:`kettle.attestation.verifier.Verifier.examine`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from types import MappingProxyType

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import AttestationError, ConfigError, InvalidArgument
from .verifier import Check, Verdict

log = logging.getLogger(__name__)

INTEL_ROOT_CA_RESOURCE = "vendor_roots/intel/intel_sgx_root_ca.der"
INTEL_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
"""SHA-256 of Intel's "Intel SGX Root CA" certificate (DER); the shipped file must match it."""

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ECDSA_P256 = 2

HEADER_SIZE = 48
SGX_REPORT_SIZE = 384
TD10_REPORT_SIZE = 584
TD15_REPORT_SIZE = 648
V5_BODY_TYPES = {1: ("sgx", SGX_REPORT_SIZE), 2: ("td10", TD10_REPORT_SIZE), 3: ("td15", TD15_REPORT_SIZE)}
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6
QE_REPORT_SIGNATURE_SIZE = 64
QUOTE_SIGNATURE_SIZE = 64
ATTESTATION_KEY_SIZE = 64

SGX_DEBUG_FLAG = 0x02
TD_DEBUG_BIT = 0x01

TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)


# ---------------------------------------------------------------- quote structure


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class SgxReport:
    """An SGX report body (``sgx_report_body_t``, 384 bytes): the enclave's or the QE's."""

    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    report_data: bytes

    @property
    def flags(self) -> int:
        return struct.unpack_from("<Q", self.attributes)[0]

    @property
    def debug(self) -> bool:
        return bool(self.flags & SGX_DEBUG_FLAG)

    @classmethod
    def parse(cls, body: bytes) -> SgxReport:
        return cls(
            cpu_svn=body[0:16],
            misc_select=struct.unpack_from("<I", body, 16)[0],
            attributes=body[48:64],
            mr_enclave=body[64:96],
            mr_signer=body[128:160],
            config_id=body[192:256],
            isv_prod_id=struct.unpack_from("<H", body, 256)[0],
            isv_svn=struct.unpack_from("<H", body, 258)[0],
            config_svn=struct.unpack_from("<H", body, 260)[0],
            report_data=body[320:384],
        )


@dataclass(frozen=True)
class TdReport:
    """A TD report (1.0, 584 bytes; 1.5 appends TEE_TCB_SVN2 and MRSERVICETD)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def debug(self) -> bool:
        # TDATTRIBUTES bit 0 (TUD.DEBUG): the host VMM can read and change the TD's state.
        return bool(self.td_attributes[0] & TD_DEBUG_BIT)

    @classmethod
    def parse(cls, body: bytes) -> TdReport:
        rtmrs = (body[328:376], body[376:424], body[424:472], body[472:520])
        return cls(
            tee_tcb_svn=body[0:16],
            mr_seam=body[16:64],
            mr_signer_seam=body[64:112],
            seam_attributes=body[112:120],
            td_attributes=body[120:128],
            xfam=body[128:136],
            mr_td=body[136:184],
            mr_config_id=body[184:232],
            mr_owner=body[232:280],
            mr_owner_config=body[280:328],
            rtmrs=rtmrs,
            report_data=body[520:584],
            tee_tcb_svn2=body[584:600] if len(body) >= TD15_REPORT_SIZE else None,
            mr_service_td=body[600:648] if len(body) >= TD15_REPORT_SIZE else None,
        )


@dataclass(frozen=True)
class DcapQuote:
    """A DCAP quote, parsed strictly; ``signed_size`` bytes are covered by the quote signature."""

    header: QuoteHeader
    body_type: str  # "sgx", "td10" or "td15"
    report: SgxReport | TdReport
    signed_size: int
    signature: bytes
    attestation_key: bytes
    qe_report: SgxReport
    qe_auth_data: bytes
    pck_chain: tuple[x509.Certificate, ...]
    padding: int

    @property
    def kind(self) -> str:
        return "sgx" if self.body_type == "sgx" else "tdx"

    @property
    def debug(self) -> bool:
        return self.report.debug

    def describe(self) -> str:
        body = {"sgx": "SGX enclave report", "td10": "TD report 1.0", "td15": "TD report 1.5"}[self.body_type]
        return f"DCAP quote v{self.header.version}, {self.kind.upper()} ({body})"


class _Reader:
    def __init__(self, data: bytes, start: int) -> None:
        self.data = data
        self.at = start

    def take(self, size: int, what: str) -> bytes:
        if self.at + size > len(self.data):
            raise AttestationError(f"quote is truncated in its {what}")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])


def parse_quote(quote: bytes) -> DcapQuote:
    """Parse a DCAP quote v3, v4 or v5 (``spec/attestation.md`` §3.1, §3.3, §6.3).

    Structure only, no signature is checked; raises :class:`AttestationError` saying
    which part is malformed. Every byte is accounted for: lengths must match exactly
    and only zero padding may follow the signature data.
    """
    if len(quote) < HEADER_SIZE:
        raise AttestationError(f"quote is {len(quote)} bytes, shorter than its 48-byte header")
    version, key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", quote, 0)
    header = QuoteHeader(version, key_type, tee_type, qe_svn, pce_svn, quote[12:28], quote[28:48])
    if version not in (3, 4, 5):
        raise AttestationError(f"quote version {version} is not a DCAP quote version (3, 4 or 5)")
    if key_type != ECDSA_P256:
        raise AttestationError(f"attestation key type {key_type} is not ECDSA P-256")
    if header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise AttestationError(f"QE vendor id {header.qe_vendor_id.hex()} is not Intel's quoting enclave")
    reader = _Reader(quote, HEADER_SIZE)
    if version == 5:
        body_type_id = reader.u16("body type")
        size = reader.u32("body size")
        if body_type_id not in V5_BODY_TYPES:
            raise AttestationError(f"quote v5 body type {body_type_id} is not supported (1 SGX, 2 TD 1.0, 3 TD 1.5)")
        body_type, expected_size = V5_BODY_TYPES[body_type_id]
        if size != expected_size:
            raise AttestationError(f"quote v5 body of type {body_type_id} is {size} bytes, expected {expected_size}")
    elif version == 4 and tee_type == TEE_TYPE_TDX:
        body_type = "td10"
    else:
        body_type = "sgx"
    expected_tee = TEE_TYPE_SGX if body_type == "sgx" else TEE_TYPE_TDX
    if tee_type != expected_tee:
        # v3 has no TEE type: the field is reserved and must be zero (SGX).
        raise AttestationError(f"TEE type 0x{tee_type:x} does not match the quote's {body_type} body (v{version})")
    body_size = {"sgx": SGX_REPORT_SIZE, "td10": TD10_REPORT_SIZE, "td15": TD15_REPORT_SIZE}[body_type]
    body = reader.take(body_size, "report body")
    report: SgxReport | TdReport = SgxReport.parse(body) if body_type == "sgx" else TdReport.parse(body)
    signed_size = reader.at

    signature_size = reader.u32("signature data length")
    end = signed_size + 4 + signature_size
    if end > len(quote):
        raise AttestationError(f"quote signature data length {signature_size} runs past the end of the quote")
    reader = _Reader(quote[:end], reader.at)
    signature = reader.take(QUOTE_SIGNATURE_SIZE, "quote signature")
    attestation_key = reader.take(ATTESTATION_KEY_SIZE, "attestation key")
    if version >= 4:
        cert_type = reader.u16("certification data type")
        if cert_type != CERT_DATA_QE_REPORT:
            raise AttestationError(f"certification data type {cert_type} is not the QE report certification data (6)")
        if reader.u32("certification data size") != end - reader.at:
            raise AttestationError("certification data size does not match the signature data length")
    qe_report = SgxReport.parse(reader.take(SGX_REPORT_SIZE, "QE report"))
    reader.take(QE_REPORT_SIGNATURE_SIZE, "QE report signature")
    qe_auth_data = reader.take(reader.u16("QE authentication data size"), "QE authentication data")
    cert_type = reader.u16("PCK certification data type")
    if cert_type != CERT_DATA_PCK_CHAIN:
        raise AttestationError(f"PCK certification data type {cert_type} is not a PCK certificate chain (5)")
    if reader.u32("PCK certification data size") != end - reader.at:
        raise AttestationError("PCK certification data size does not match the signature data length")
    pck_chain = _parse_pem_chain(quote[reader.at : end])
    padding = quote[end:]
    if padding.strip(b"\0"):
        raise AttestationError(f"quote has {len(padding)} bytes after its signature data that are not zero padding")
    return DcapQuote(
        header=header,
        body_type=body_type,
        report=report,
        signed_size=signed_size,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_auth_data=qe_auth_data,
        pck_chain=pck_chain,
        padding=len(padding),
    )


def _parse_pem_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    """The PCK chain as certificates; the PEM text must be exactly what its certificates
    encode to (a quoting enclave writes canonical PEM and a NUL), so no byte of its
    formatting can change unnoticed."""
    text = data[:-1] if data.endswith(b"\0") else data
    try:
        certs = tuple(x509.load_pem_x509_certificates(text))
        for cert in certs:  # names are decoded lazily: a malformed one must fail here, not later
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
    except ValueError:
        raise AttestationError("PCK certificate chain is not a valid PEM certificate chain") from None
    if b"".join(c.public_bytes(Encoding.PEM) for c in certs) != text:
        raise AttestationError("PCK certificate chain is not in canonical PEM form")
    if len(certs) < 2:
        raise AttestationError("PCK certificate chain has fewer than two certificates")
    return certs


# ---------------------------------------------------------------- policy


@dataclass(frozen=True)
class DcapPolicy:
    """Which TCB statuses are accepted.

    ``UpToDate`` is always accepted; any other status only when named in ``allowed``
    together with every advisory id the quote carries, e.g.
    ``{"ConfigurationAndSWHardeningNeeded": frozenset({"INTEL-SA-00289", "INTEL-SA-00615"})}``:
    accepting a status means accepting the known weaknesses it comes with, one by one.
    """

    allowed: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for status in self.allowed:
            if status not in TCB_STATUSES:
                raise ConfigError(f"unknown TCB status {status!r} (known: {', '.join(sorted(TCB_STATUSES))})")
            if status == "Revoked":
                raise ConfigError("TCB status Revoked can never be accepted")
        # Frozen in fact, not only in name: a shared default policy must not be mutable.
        frozen = MappingProxyType({s: frozenset(ids) for s, ids in self.allowed.items()})
        object.__setattr__(self, "allowed", frozen)

    def problem(self, status: str, advisories: Collection[str]) -> str | None:
        """None if ``status`` with ``advisories`` is accepted; else why not."""
        if status != "UpToDate" and status not in self.allowed:
            accepted = ", ".join(["UpToDate", *sorted(set(self.allowed) - {"UpToDate"})])
            return f"TCB status {status} is not accepted (accepted: {accepted})"
        unnamed = sorted(set(advisories) - self.allowed.get(status, frozenset()))
        if unnamed:
            return f"TCB status {status} carries advisories not accepted by policy: {', '.join(unnamed)}"
        return None


@dataclass(frozen=True)
class DcapMeasurements:
    """Accepted measurements; None in a field means that field is not checked.

    ``td``: accepted (MRTD, RTMR0, RTMR1, RTMR2, RTMR3) tuples, 48 bytes each.
    SGX: accepted MRENCLAVE and MRSIGNER values, the ISV product id, the minimum ISV SVN.
    """

    td: frozenset[tuple[bytes, bytes, bytes, bytes, bytes]] | None = None
    mr_enclave: frozenset[bytes] | None = None
    mr_signer: frozenset[bytes] | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None

    def __post_init__(self) -> None:
        if self.td is not None:
            object.__setattr__(self, "td", frozenset(tuple(t) for t in self.td))
            for entry in self.td:
                if len(entry) != 5 or any(len(m) != 48 for m in entry):
                    raise ConfigError("a TDX measurement is five 48-byte values: MRTD, RTMR0, RTMR1, RTMR2, RTMR3")
        for name in ("mr_enclave", "mr_signer"):
            values = getattr(self, name)
            if values is not None:
                object.__setattr__(self, name, frozenset(values))
                if any(len(v) != 32 for v in getattr(self, name)):
                    raise ConfigError(f"{name} values are 32 bytes")

    def problem(self, quote: DcapQuote) -> tuple[str | None, str]:
        """(None, what matched) if ``quote``'s measurements are accepted; else (why not, "")."""
        report = quote.report
        if isinstance(report, TdReport):
            if self.td is None:
                return "no TDX measurements are configured", ""
            values = (report.mr_td, *report.rtmrs)
            if values not in self.td:
                return f"MRTD {report.mr_td.hex()} with these RTMR0-3 is not an accepted TDX measurement", ""
            return None, f"MRTD {report.mr_td.hex()} and RTMR0-3 accepted"
        sgx_fields = (self.mr_enclave, self.mr_signer, self.isv_prod_id, self.min_isv_svn)
        if all(f is None for f in sgx_fields):
            return "no SGX measurements are configured", ""
        if self.mr_enclave is not None and report.mr_enclave not in self.mr_enclave:
            return f"MRENCLAVE {report.mr_enclave.hex()} is not accepted", ""
        if self.mr_signer is not None and report.mr_signer not in self.mr_signer:
            return f"MRSIGNER {report.mr_signer.hex()} is not accepted", ""
        if self.isv_prod_id is not None and report.isv_prod_id != self.isv_prod_id:
            return f"ISV product id {report.isv_prod_id} is not {self.isv_prod_id}", ""
        if self.min_isv_svn is not None and report.isv_svn < self.min_isv_svn:
            return f"ISV SVN {report.isv_svn} is below the minimum {self.min_isv_svn}", ""
        return None, f"MRENCLAVE {report.mr_enclave.hex()}, MRSIGNER {report.mr_signer.hex()} accepted"


# ---------------------------------------------------------------- verification


@dataclass
class DcapVerdict(Verdict):
    """Every check on a DCAP quote; ``quote`` is set once the quote verified under the root."""

    quote: DcapQuote | None = None
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.quote is not None and bool(self.checks) and all(c.ok for c in self.checks)


@cache
def intel_root_ca_der() -> bytes:
    """Intel's SGX Root CA (DER), shipped with the package and pinned by its SHA-256."""
    der = resources.files("kettle.attestation").joinpath(INTEL_ROOT_CA_RESOURCE).read_bytes()
    if hashlib.sha256(der).hexdigest() != INTEL_ROOT_CA_SHA256:
        raise ConfigError("the shipped Intel SGX Root CA certificate does not match its pinned fingerprint")
    return der


def examine_dcap_quote(
    quote: bytes,
    *,
    collateral: bytes,
    at: datetime,
    policy: DcapPolicy = DcapPolicy(),  # immutable: frozen, with a read-only mapping
    root_ca_der: bytes | None = None,
    expected_report_data: bytes | None = None,
    measurements: DcapMeasurements | None = None,
) -> DcapVerdict:
    """Run every check on a DCAP ``quote`` as of ``at`` (timezone-aware).

    ``collateral`` is the JSON ``dcap_qvl.QuoteCollateralV3.from_json`` reads;
    ``root_ca_der`` None means Intel's pinned root; any other root is for tests only
    (the platform's ``unsafe_test_roots``) and is reported as unsafe. Stops at the
    first structural or cryptographic failure; reports each policy outcome.
    """
    if at.tzinfo is None:
        raise InvalidArgument("the verification time must carry a timezone")
    if expected_report_data is not None and len(expected_report_data) != 64:
        raise InvalidArgument(f"expected report data is {len(expected_report_data)} bytes, not 64")
    verdict = DcapVerdict()
    checks = verdict.checks

    def fail(name: str, detail: str) -> DcapVerdict:
        checks.append(Check(name, False, detail))
        return verdict

    try:
        parsed = parse_quote(quote)
    except AttestationError as exc:
        return fail("quote format", exc.reason)
    checks.append(Check("quote format", True, parsed.describe()))

    intel_root = intel_root_ca_der()
    root = intel_root if root_ca_der is None else root_ca_der
    fingerprint = hashlib.sha256(root).hexdigest()
    if root == intel_root:
        checks.append(Check("trust anchor", True, "Intel SGX Root CA (pinned)"))
    else:
        log.warning("UNSAFE: DCAP quote verified under a test root %s, not Intel's", fingerprint)
        checks.append(Check("trust anchor", True, f"UNSAFE test root {fingerprint}, not Intel's"))
    if parsed.pck_chain[-1].public_bytes(Encoding.DER) != root:
        return fail("PCK chain", "the quote's PCK certificate chain does not end in the trusted root")
    leaf = parsed.pck_chain[0].subject.rfc4514_string()
    checks.append(Check("PCK chain", True, f"{leaf}, {len(parsed.pck_chain)} certificates ending in the trusted root"))

    try:
        loaded = dcap_qvl.QuoteCollateralV3.from_json(collateral.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return fail("collateral", f"collateral is not valid DCAP collateral JSON: {exc}")
    window = _collateral_window(collateral)
    if window:
        checks.append(Check("collateral", True, window))

    try:
        result = dcap_qvl.verify_with_root_ca(quote, loaded, root, int(at.timestamp()))
    except ValueError as exc:
        return fail("quote verification", f"refused at {at:%Y-%m-%d %H:%M:%S} UTC: {_one_line(exc)}")
    verdict.quote = parsed
    verdict.tcb_status = result.status
    verdict.advisory_ids = tuple(result.advisory_ids)
    checks.append(
        Check("quote verification", True, "quote, QE report, PCK chain, CRLs, TCB info and QE identity verify")
    )

    advisories = f" ({', '.join(verdict.advisory_ids)})" if verdict.advisory_ids else ""
    problem = policy.problem(result.status, verdict.advisory_ids)
    checks.append(Check("tcb status", problem is None, problem or f"{result.status}{advisories}"))

    if parsed.debug:
        what = "the TD is a debug TD" if parsed.kind == "tdx" else "the enclave is a debug enclave"
        checks.append(Check("debug", False, what))
    else:
        checks.append(Check("debug", True, "not in debug mode"))

    if expected_report_data is not None:
        if parsed.report.report_data == expected_report_data:
            checks.append(Check("report data", True, "matches the expected report data"))
        else:
            checks.append(Check("report data", False, "report data does not match the expected report data"))

    if measurements is not None:
        why_not, matched = measurements.problem(parsed)
        checks.append(Check("measurement", why_not is None, why_not or matched))
    return verdict


def _collateral_window(collateral: bytes) -> str | None:
    """TCB info's issue date and next update, for display (``dcap-qvl`` enforces them)."""
    try:
        info = json.loads(json.loads(collateral)["tcb_info"])
        return f"TCB info issued {info['issueDate']}, next update {info['nextUpdate']}"
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
