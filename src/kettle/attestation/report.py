"""The attestation report and its certificate extension (``spec/attestation.md`` §1.3, §2).

The report is the IAS-v4-style JSON the attestation service signs; its exact bytes
travel in the certificate so the signature can be checked. Kettle adds fields
(``kettle*``) that Teaclave's verifiers ignore and Kettle's verifiers read.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from ..errors import AttestationError

REPORT_EXTENSION_OID = x509.ObjectIdentifier("2.16.840.1.113730.1.13")
REPORT_VERSION = 4
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"


def format_timestamp(moment: datetime) -> str:
    """UTC, no zone suffix, 6 fraction digits (IAS style)."""
    return moment.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    # Teaclave's DCAP AS writes up to 9 fraction digits; Python parses at most 6.
    head, _, frac = text.partition(".")
    try:
        moment = datetime.strptime(f"{head}.{(frac or '0')[:6]}", _TIMESTAMP_FORMAT)
    except ValueError:
        raise AttestationError(f"report timestamp {text!r} is malformed") from None
    return moment.replace(tzinfo=UTC)


def build_report(quote_body: bytes, status: str, now: datetime, kettle_fields: dict[str, Any]) -> bytes:
    """The report JSON bytes: Teaclave's five fields plus Kettle's, compact with sorted keys."""
    document: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "isvEnclaveQuoteBody": base64.b64encode(quote_body).decode(),
        "isvEnclaveQuoteStatus": status,
        "timestamp": format_timestamp(now),
        "version": REPORT_VERSION,
    }
    document.update(kettle_fields)
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bytes(value: object) -> bytes:
    """A byte string from either encoding: a list of integers 0..255 or a base64 string."""
    if isinstance(value, str):
        return base64.b64decode(value, validate=True)
    if isinstance(value, list):
        return bytes(value)
    raise TypeError("not a byte string")


@dataclass(frozen=True)
class EndorsedReport:
    """Teaclave's ``EndorsedAttestationReport``: report bytes, AS signature, AS signing chain (DER)."""

    report: bytes
    signature: bytes
    certs: list[bytes]

    def to_extension_value(self, *, compact: bool = False) -> bytes:
        """Teaclave's encoding (byte arrays as JSON arrays of integers, serde's ``Vec<u8>``), or
        the compact one (base64 strings) used for client certificates only.

        Client certificates must stay small: grpc's TLS server drops a client whose
        certificate flight exceeds about 8 KiB, and the integer-array form of a report
        is about 9 KiB. Teaclave's clients never see client certificates.
        """
        if compact:
            doc: dict[str, object] = {
                "report": _b64(self.report),
                "signature": _b64(self.signature),
                "certs": [_b64(c) for c in self.certs],
            }
        else:
            doc = {"report": list(self.report), "signature": list(self.signature), "certs": [list(c) for c in self.certs]}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_extension_value(cls, value: bytes) -> EndorsedReport:
        try:
            doc = json.loads(value)
            report = _bytes(doc["report"])
            signature = _bytes(doc["signature"])
            certs = [_bytes(c) for c in doc["certs"]]
        except (ValueError, TypeError, KeyError):
            raise AttestationError("attestation extension is not a valid endorsed report") from None
        except RecursionError:  # json's decoder recurses once per nesting level; a peer chooses the depth
            raise AttestationError("attestation extension is JSON nested too deeply to be an endorsed report") from None
        if not report or not signature or not certs:
            raise AttestationError("attestation extension is empty (an unattested simulation build)")
        return cls(report, signature, certs)

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> EndorsedReport:
        try:
            extensions = list(cert.extensions)
        except ValueError as exc:
            raise AttestationError(f"certificate extensions do not parse: {exc}") from None
        if not extensions or extensions[0].oid != REPORT_EXTENSION_OID:
            raise AttestationError("certificate has no attestation report as its first extension")
        ext = extensions[0].value
        assert isinstance(ext, x509.UnrecognizedExtension)
        return cls.from_extension_value(ext.value)


@dataclass(frozen=True)
class ReportContent:
    """The fields of a report that verifiers use, parsed and type-checked."""

    status: str
    timestamp: datetime
    quote_body: bytes
    tee_type: str
    simulation: bool
    service: str | None
    raw: dict[str, Any]

    @classmethod
    def parse(cls, report: bytes) -> ReportContent:
        try:
            doc = json.loads(report)
        except ValueError:
            raise AttestationError("report is not valid JSON") from None
        except RecursionError:  # the report bytes come from a peer's certificate
            raise AttestationError("report is JSON nested too deeply") from None
        if not isinstance(doc, dict):
            raise AttestationError("report is not a JSON object")
        if doc.get("version") != REPORT_VERSION:
            raise AttestationError(f"report version {doc.get('version')!r} is not {REPORT_VERSION}")
        status = doc.get("isvEnclaveQuoteStatus")
        body = doc.get("isvEnclaveQuoteBody")
        timestamp = doc.get("timestamp")
        if not isinstance(status, str) or not isinstance(body, str) or not isinstance(timestamp, str):
            raise AttestationError("report lacks status, quote body or timestamp")
        try:
            quote_body = base64.b64decode(body, validate=True)
        except ValueError:
            raise AttestationError("report quote body is not base64") from None
        tee_type = doc.get("kettleTeeType", "sgx")
        simulation = doc.get("kettleSimulation", False) is True or tee_type == "simulation"
        service = doc.get("kettleService")
        return cls(
            status=status,
            timestamp=parse_timestamp(timestamp),
            quote_body=quote_body,
            tee_type=str(tee_type),
            simulation=simulation,
            service=service if isinstance(service, str) else None,
            raw=doc,
        )
