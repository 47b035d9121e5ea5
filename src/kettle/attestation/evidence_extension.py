"""The raw TEE evidence a service certificate carries, so that a client can verify the hardware itself.

The attestation service puts the evidence it verified into the *server* certificate as a
non-critical extension (never first: Teaclave's SDK reads ``extensions[0]``):

* OID ``2.25.76742224459063709497501859148858346874``;
* value: a DER OCTET STRING holding compact JSON
  ``{"v": 1, "kind": "sev-snp"|"tdx"|"sgx", "evidence": base64, "certificates": [{"kind": "vcek", "der": base64}, ...]}``
  (``certificates``: for SEV-SNP the VCEK or VLEK the service verified the report with,
  then the other certificates the host supplied; empty for DCAP quotes, which carry their
  PCK chain).

The report data of the evidence is the certificate key's ``X || Y``, as for the AS report.
Compact client certificates leave it out: grpc drops client certificate flights above
about 8 KiB, and peers rely on the AS report.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography import x509

from ..errors import AttestationError
from .backends import SnpCertificate

EVIDENCE_EXTENSION_OID = x509.ObjectIdentifier("2.25.76742224459063709497501859148858346874")
FORMAT_VERSION = 1
KINDS = ("sev-snp", "tdx", "sgx")
CERTIFICATE_KINDS = ("vcek", "vlek", "ask", "ark")


def _der_octet_string(data: bytes) -> bytes:
    size = len(data)
    if size < 0x80:
        return b"\x04" + bytes([size]) + data
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(length)]) + length + data


def _der_octet_string_content(value: bytes) -> bytes:
    if len(value) < 2 or value[0] != 0x04:
        raise AttestationError("evidence extension is not a DER OCTET STRING")
    first = value[1]
    if first < 0x80:
        start, size = 2, first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or len(value) < 2 + count or value[2] == 0:
            raise AttestationError("evidence extension has a malformed DER length")
        start, size = 2 + count, int.from_bytes(value[2 : 2 + count], "big")
        if size < 0x80:
            raise AttestationError("evidence extension has a non-minimal DER length")
    if len(value) != start + size:
        raise AttestationError("evidence extension length does not match its content")
    return value[start:]


@dataclass(frozen=True)
class CarriedEvidence:
    kind: str
    evidence: bytes
    certificates: tuple[SnpCertificate, ...] = ()

    def to_json(self) -> bytes:
        doc = {
            "v": FORMAT_VERSION,
            "kind": self.kind,
            "evidence": base64.b64encode(self.evidence).decode(),
            "certificates": [{"kind": c.kind, "der": base64.b64encode(c.der).decode()} for c in self.certificates],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def to_extension_value(self) -> bytes:
        return _der_octet_string(self.to_json())

    @classmethod
    def from_extension_value(cls, value: bytes) -> CarriedEvidence:
        try:
            doc = json.loads(_der_octet_string_content(value))
        except ValueError:
            raise AttestationError("evidence extension is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"v", "kind", "evidence", "certificates"}:
            raise AttestationError("evidence extension must have exactly v, kind, evidence and certificates")
        if doc["v"] != FORMAT_VERSION:
            raise AttestationError(f"evidence extension version {doc['v']!r} is not {FORMAT_VERSION}")
        if doc["kind"] not in KINDS:
            raise AttestationError(f"evidence extension kind {doc['kind']!r} is not one of {', '.join(KINDS)}")
        certificates = doc["certificates"]
        if not isinstance(doc["evidence"], str) or not isinstance(certificates, list):
            raise AttestationError("evidence extension evidence must be base64 and certificates a list")
        try:
            evidence = base64.b64decode(doc["evidence"], validate=True)
            certs = []
            for entry in certificates:
                if not isinstance(entry, dict) or set(entry) != {"kind", "der"} or entry["kind"] not in CERTIFICATE_KINDS:
                    raise AttestationError(
                        f"evidence extension certificates are {{kind, der}} with kind one of {', '.join(CERTIFICATE_KINDS)}"
                    )
                certs.append(SnpCertificate(entry["kind"], base64.b64decode(entry["der"], validate=True)))
        except (binascii.Error, TypeError):
            raise AttestationError("evidence extension carries bytes that are not base64") from None
        return cls(doc["kind"], evidence, tuple(certs))

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> CarriedEvidence | None:
        """The evidence ``cert`` carries, None when it carries none (simulation, client certificates)."""
        try:
            ext = cert.extensions.get_extension_for_oid(EVIDENCE_EXTENSION_OID)
        except x509.ExtensionNotFound:
            return None
        assert isinstance(ext.value, x509.UnrecognizedExtension)
        return cls.from_extension_value(ext.value.value)
