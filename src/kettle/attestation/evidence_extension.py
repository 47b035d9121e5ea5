"""The raw TEE evidence a service certificate carries, so that a client can verify the hardware itself.

The attestation service puts the evidence it verified into the *server* certificate as a
non-critical extension (never first: Teaclave's SDK reads ``extensions[0]``):

* OID ``2.25.76742224459063709497501859148858346874``;
* value: a DER OCTET STRING holding compact JSON
  ``{"v": 1, "kind": "sev-snp"|"tdx"|"sgx", "evidence": base64, "certificates": [{"kind": "vcek", "der": base64}, ...]}``
  (``certificates``: for SEV-SNP the VCEK or VLEK the service verified the report with,
  then the first ASK and ARK the host supplied, all DER; empty for DCAP quotes, which carry
  their PCK chain).

The report data of the evidence is the certificate key's ``X || Y``, as for the AS report.

:meth:`CarriedEvidence.from_extension_value` is the one reader of this extension (the
attestation service's tests, :mod:`kettle.attestation.hardware`, ``kettle attest``). A peer's
certificate is hostile input, so it reads strictly: a size bound, one exact DER OCTET STRING,
JSON without duplicate keys or deep nesting, exactly the keys above, canonical base64, and
DER certificates only (AMD's KDS form), one per kind; a DCAP quote carries none beside it.
Compact client certificates leave it out: grpc drops client certificate flights above
about 8 KiB, and peers rely on the AS report.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import AttestationError
from .backends import SnpCertificate
from .snp import load_snp_certificate

EVIDENCE_EXTENSION_OID = x509.ObjectIdentifier("2.25.76742224459063709497501859148858346874")
FORMAT_VERSION = 1
KINDS = ("sev-snp", "tdx", "sgx")
CERTIFICATE_KINDS = ("vcek", "vlek", "ask", "ark")

# A TDX quote with its PCK chain is about 5 KiB, an SNP report with VCEK, ASK and ARK about
# 7 KiB; base64 adds a third. Anything much larger is not evidence.
MAX_EXTENSION_BYTES = 32 * 1024


def _der_octet_string(data: bytes) -> bytes:
    size = len(data)
    if size < 0x80:
        return b"\x04" + bytes([size]) + data
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(length)]) + length + data


def _der_octet_string_content(value: bytes) -> bytes:
    """The content of exactly one DER OCTET STRING (minimal definite length, nothing after it)."""
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
        raise AttestationError("evidence extension's DER length does not match its content (truncated or padded)")
    return value[start:]


def _strict_base64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise AttestationError(f"evidence extension: {what} must be a non-empty base64 string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AttestationError(f"evidence extension: {what} is not valid base64") from None
    # One encoding per value: no padding tricks or non-zero trailing bits.
    if base64.b64encode(data).decode() != value:
        raise AttestationError(f"evidence extension: {what} is not canonical base64")
    return data


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise AttestationError("evidence extension: a JSON key appears twice")
    return dict(pairs)


def _exact_keys(doc: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise AttestationError(f"evidence extension: {what} must be a JSON object")
    if set(doc) != keys:
        raise AttestationError(f"evidence extension: {what} must have exactly the keys {', '.join(sorted(keys))}")
    return doc


def _der_certificate(entry: object, index: int, seen: list[SnpCertificate]) -> SnpCertificate:
    entry = _exact_keys(entry, {"kind", "der"}, f"certificate {index}")
    kind = entry["kind"]
    if kind not in CERTIFICATE_KINDS:
        raise AttestationError(f"evidence extension: certificate kind {kind!r} is not one of {', '.join(CERTIFICATE_KINDS)}")
    if any(c.kind == kind for c in seen):
        raise AttestationError(f"evidence extension: two {kind} certificates")
    der = _strict_base64(entry["der"], f"certificate {kind}")
    # DER only (AMD's KDS form); load_snp_certificate quiets the warning AMD's serial 0 raises.
    if der.lstrip().startswith(b"-----BEGIN"):
        raise AttestationError(f"evidence extension: certificate {kind} is not a DER certificate")
    try:
        load_snp_certificate(der)
    except AttestationError:
        raise AttestationError(f"evidence extension: certificate {kind} is not a DER certificate") from None
    return SnpCertificate(kind, der)


def _as_der(data: bytes) -> bytes:
    """A certificate (DER or PEM) as DER; AttestationError if it is not one."""
    return load_snp_certificate(data).public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class CarriedEvidence:
    """The evidence a service certificate carries: a report or quote and the certificates sent with it."""

    kind: str
    evidence: bytes
    certificates: tuple[SnpCertificate, ...] = ()

    def certificate(self, kind: str) -> bytes | None:
        return next((c.der for c in self.certificates if c.kind == kind), None)

    @classmethod
    def snp(cls, report: bytes, signer: SnpCertificate, supplied: Sequence[SnpCertificate] = ()) -> CarriedEvidence:
        """What the AS embeds for an SEV-SNP report it verified with ``signer`` (VCEK or VLEK,
        DER or PEM): the signer, then the first ASK and ARK the host supplied that are
        certificates, all as DER, so that :meth:`from_extension_value` reads what was written.
        Extra certificates are conveniences for the client, never anchors: any that do not
        parse are left out rather than making the whole extension unreadable."""
        certificates = [SnpCertificate(signer.kind, _as_der(signer.der))]
        for cert in supplied:
            if cert.kind in ("ask", "ark") and all(c.kind != cert.kind for c in certificates):
                try:
                    certificates.append(SnpCertificate(cert.kind, _as_der(cert.der)))
                except AttestationError:
                    continue
        return cls("sev-snp", report, tuple(certificates))

    def to_json(self) -> bytes:
        doc = {
            "v": FORMAT_VERSION,
            "kind": self.kind,
            "evidence": base64.b64encode(self.evidence).decode(),
            "certificates": [{"kind": c.kind, "der": base64.b64encode(c.der).decode()} for c in self.certificates],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def to_extension_value(self) -> bytes:
        value = _der_octet_string(self.to_json())
        if len(value) > MAX_EXTENSION_BYTES:
            # Never write what every reader refuses: the request is refused instead, with the reason.
            raise AttestationError(
                f"the evidence and its certificates take {len(value)} bytes in the certificate, more than {MAX_EXTENSION_BYTES}"
            )
        return value

    @classmethod
    def from_extension_value(cls, value: bytes) -> CarriedEvidence:
        """The evidence in an extension value; raises :class:`AttestationError` with the reason."""
        if len(value) > MAX_EXTENSION_BYTES:
            raise AttestationError(f"evidence extension is {len(value)} bytes, more than {MAX_EXTENSION_BYTES}")
        content = _der_octet_string_content(value)
        try:
            doc = json.loads(content.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except (UnicodeDecodeError, ValueError):
            raise AttestationError("evidence extension is not JSON") from None
        except RecursionError:  # json's decoder recurses once per nesting level
            raise AttestationError("evidence extension is JSON nested too deeply") from None
        doc = _exact_keys(doc, {"v", "kind", "evidence", "certificates"}, "the extension")
        if type(doc["v"]) is not int or doc["v"] != FORMAT_VERSION:
            raise AttestationError(f"evidence extension: version {doc['v']!r} is not {FORMAT_VERSION}")
        kind = doc["kind"]
        if kind not in KINDS:
            raise AttestationError(f"evidence extension: kind {kind!r} is not one of {', '.join(KINDS)}")
        evidence = _strict_base64(doc["evidence"], "evidence")
        entries = doc["certificates"]
        if not isinstance(entries, list):
            raise AttestationError("evidence extension: certificates must be a list")
        if kind != "sev-snp" and entries:
            # A DCAP quote carries its PCK chain itself; certificates beside it would be unused bytes.
            raise AttestationError(f"evidence extension: a {kind} quote carries no separate certificates")
        certificates: list[SnpCertificate] = []
        for index, entry in enumerate(entries):
            certificates.append(_der_certificate(entry, index, certificates))
        return cls(kind, evidence, tuple(certificates))

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> CarriedEvidence | None:
        """The evidence ``cert`` carries, None when it carries none (simulation, client
        certificates); AttestationError when it is malformed."""
        try:
            extension = cert.extensions.get_extension_for_oid(EVIDENCE_EXTENSION_OID)
        except x509.ExtensionNotFound:
            return None
        except (x509.DuplicateExtension, ValueError) as exc:
            raise AttestationError(f"certificate extensions cannot be read: {exc}") from None
        value = extension.value
        if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - cryptography knows no such OID
            raise AttestationError("evidence extension has an unexpected type")
        return cls.from_extension_value(value.value)
