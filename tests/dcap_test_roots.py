"""Test hardware roots for Intel DCAP: a root CA, a PCK chain and a TCB signing key of our own
that sign DCAP-format quotes and the collateral that verifies them.

``dcap_qvl.verify_with_root_ca`` accepts what this makes under :attr:`DcapTestRoots.root_ca_der`
and nothing else: every signature (quote, QE report, certificates, CRLs, TCB info, QE identity)
is made here with fresh keys. What is not invented is taken from the real vectors in
``tests/data/tee/dcap`` as templates, so the formats stay Intel's: the TCB info and QE
identity JSON (re-dated and re-signed), the PCK certificate's SGX extension (FMSPC, TCB
components) and the QE report and TD report fields that must match them (TEE TCB SVN, the
QE's measurement), re-signed with our keys.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from kettle.attestation.dcap import parse_quote

VECTORS = Path(__file__).parent / "data" / "tee" / "dcap"
SGX_EXTENSION = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
HEADER_SIZE = 48
TD10_BODY_SIZE = 584
SGX_BODY_SIZE = 384


def _name(common_name: str) -> x509.Name:
    # Intel's common names: dcap-qvl tells a Platform CA from a Processor CA by them.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kettle test roots (not Intel)"),
        ]
    )


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as DCAP carries it: r and s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point[1:]


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _certificate(
    subject: str,
    issuer: _Issued | None,
    *,
    ca: bool,
    not_before: datetime,
    lifetime: timedelta,
    extra: x509.Extension[x509.ExtensionType] | None = None,
) -> _Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    signer_key = issuer.key if issuer else key
    issuer_name = issuer.cert.subject if issuer else _name(subject)
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only", "decipher_only"),
        False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=(1 if issuer is None else 0) if ca else None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, **usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
        )
    )
    if extra is not None:
        builder = builder.add_extension(extra.value, critical=extra.critical)
    return _Issued(key, builder.sign(signer_key, hashes.SHA256()))


@dataclass(frozen=True)
class DcapTestRoots:
    """A test root CA with its PCK chain and TCB signing key; made fresh by :meth:`make`."""

    root: _Issued
    pck_ca: _Issued
    pck: _Issued
    tcb_signing: _Issued
    attestation_key: ec.EllipticCurvePrivateKey
    not_before: datetime

    template: str
    """The real vector whose platform (PCK extension, TCB info, QE identity) these roots impersonate."""

    @classmethod
    def make(cls, not_before: datetime, template: str = "tdx_quote") -> DcapTestRoots:
        real_pck = parse_quote((VECTORS / template).read_bytes()).pck_chain[0]
        sgx_extension = real_pck.extensions.get_extension_for_oid(SGX_EXTENSION)
        years = timedelta(days=3650)
        root = _certificate("Intel SGX Root CA", None, ca=True, not_before=not_before, lifetime=years)
        ca_name = real_pck.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        pck_ca = _certificate(str(ca_name), root, ca=True, not_before=not_before, lifetime=years)
        pck = _certificate(
            "Intel SGX PCK Certificate", pck_ca, ca=False, not_before=not_before, lifetime=years, extra=sgx_extension
        )
        tcb_signing = _certificate("Intel SGX TCB Signing", root, ca=False, not_before=not_before, lifetime=years)
        attestation_key = ec.generate_private_key(ec.SECP256R1())
        return cls(root, pck_ca, pck, tcb_signing, attestation_key, not_before, template)

    @property
    def root_ca_der(self) -> bytes:
        return self.root.cert.public_bytes(serialization.Encoding.DER)

    def tdx_quote(
        self,
        *,
        report_data: bytes = bytes(64),
        mr_td: bytes = bytes(48),
        rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48),) * 4,
        td_attributes: bytes | None = None,
    ) -> bytes:
        """A TDX quote v4 (TD report 1.0) for the template's platform and TCB (roots made from ``tdx_quote``)."""
        assert len(report_data) == 64 and len(mr_td) == 48 and all(len(r) == 48 for r in rtmrs)
        template = (VECTORS / self.template).read_bytes()
        assert parse_quote(template).body_type == "td10", "TDX quotes need roots made from a TDX v4 template"
        body = bytearray(template[HEADER_SIZE : HEADER_SIZE + TD10_BODY_SIZE])
        if td_attributes is not None:  # else the template's (SEPT_VE_DISABLE set, as dcap-qvl requires)
            body[120:128] = td_attributes
        body[136:184] = mr_td
        body[328:520] = b"".join(rtmrs)
        body[520:584] = report_data
        return self._sign(template, bytes(body))

    def sgx_quote(
        self,
        *,
        report_data: bytes = bytes(64),
        mr_enclave: bytes = bytes(32),
        mr_signer: bytes = bytes(32),
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        attributes: bytes | None = None,
    ) -> bytes:
        """An SGX quote v3 for the template's platform and TCB (roots made from ``sgx_quote``)."""
        assert len(report_data) == 64 and len(mr_enclave) == 32 and len(mr_signer) == 32
        template = (VECTORS / self.template).read_bytes()
        assert parse_quote(template).body_type == "sgx", "SGX quotes need roots made from an SGX template"
        body = bytearray(template[HEADER_SIZE : HEADER_SIZE + SGX_BODY_SIZE])
        if attributes is not None:
            body[48:64] = attributes
        body[64:96] = mr_enclave
        body[128:160] = mr_signer
        body[256:260] = struct.pack("<HH", isv_prod_id, isv_svn)
        body[320:384] = report_data
        return self._sign(template, bytes(body))

    def _sign(self, template: bytes, body: bytes) -> bytes:
        """The template's header with ``body``, signed by a fresh attestation key that our QE
        report vouches for, under our PCK chain (``spec/attestation.md`` §3.3, §6.3)."""
        parsed = parse_quote(template)
        signed = template[:HEADER_SIZE] + body
        attestation_key = _raw_public_key(self.attestation_key)
        auth_data = parsed.qe_auth_data
        # The QE vouches for the attestation key: its report data is SHA-256(key || auth data).
        # After the signed part: length (4), quote signature (64), attestation key (64), and in
        # v4/v5 the type and size (6) of the certification data that holds the QE report.
        offset = parsed.signed_size + 4 + 64 + 64 + (6 if parsed.header.version >= 4 else 0)
        qe_report = bytearray(template[offset : offset + 384])
        qe_report[320:384] = hashlib.sha256(attestation_key + auth_data).digest() + bytes(32)
        chain = _pem(self.pck.cert, self.pck_ca.cert, self.root.cert).encode() + b"\0"
        qe_data = (
            bytes(qe_report)
            + _raw_signature(self.pck.key, bytes(qe_report))
            + struct.pack("<H", len(auth_data))
            + auth_data
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        if parsed.header.version >= 4:  # v4/v5 wrap the QE's data as certification data type 6
            qe_data = struct.pack("<HI", 6, len(qe_data)) + qe_data
        signature_data = _raw_signature(self.attestation_key, signed) + attestation_key + qe_data
        return signed + struct.pack("<I", len(signature_data)) + signature_data

    def collateral(self, *, issued: datetime, next_update: datetime, revoke_pck: bool = False) -> bytes:
        """Collateral (TCB info, QE identity, CRLs) for the template's platform, valid from ``issued``
        to ``next_update``; ``revoke_pck`` lists the PCK certificate in the PCK CRL."""
        real = json.loads((VECTORS / f"{self.template}_collateral.json").read_text())
        tcb_info = json.loads(real["tcb_info"])
        tcb_info.update(issueDate=_iso(issued), nextUpdate=_iso(next_update))
        qe_identity = json.loads(real["qe_identity"])
        qe_identity.update(issueDate=_iso(issued), nextUpdate=_iso(next_update))
        tcb_text = json.dumps(tcb_info, separators=(",", ":"))
        qe_text = json.dumps(qe_identity, separators=(",", ":"))
        return json.dumps(
            {
                "pck_crl_issuer_chain": _pem(self.pck_ca.cert, self.root.cert),
                "root_ca_crl": self._crl(self.root, issued, next_update).hex(),
                "pck_crl": self._crl(self.pck_ca, issued, next_update, self.pck.cert if revoke_pck else None).hex(),
                "tcb_info_issuer_chain": _pem(self.tcb_signing.cert, self.root.cert),
                "tcb_info": tcb_text,
                "tcb_info_signature": _raw_signature(self.tcb_signing.key, tcb_text.encode()).hex(),
                "qe_identity_issuer_chain": _pem(self.tcb_signing.cert, self.root.cert),
                "qe_identity": qe_text,
                "qe_identity_signature": _raw_signature(self.tcb_signing.key, qe_text.encode()).hex(),
            }
        ).encode()

    @staticmethod
    def _crl(issuer: _Issued, issued: datetime, next_update: datetime, revoked: x509.Certificate | None = None) -> bytes:
        builder = x509.CertificateRevocationListBuilder()
        if revoked is not None:
            entry = x509.RevokedCertificateBuilder().serial_number(revoked.serial_number).revocation_date(issued)
            builder = builder.add_revoked_certificate(entry.build())
        crl = (
            builder
            .issuer_name(issuer.cert.subject)
            .last_update(issued)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
            .sign(issuer.key, hashes.SHA256())
        )
        return crl.public_bytes(serialization.Encoding.DER)
