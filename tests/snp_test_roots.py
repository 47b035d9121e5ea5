"""Test SEV-SNP hardware: a fresh ARK/ASK/ASVK chain and VCEK/VLEK keys that sign SNP reports.

The chain has AMD's shape (RSA-PSS / SHA-384 / salt 48 on every link, ``SEV-VLEK-<product>``
for the ASVK, the VCEK/VLEK TCB extensions and a VCEK's hwID), but fresh keys: what it
signs verifies only under these roots, never under AMD's. ``write_roots`` writes them in
AMD's ``<product>_ask_ark_asvk.pem`` form, which ``load_snp_roots`` reads (the
``unsafe_test_roots`` setting points at such a folder).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from kettle.attestation.snp import (
    OID_BOOTLOADER,
    OID_FMC,
    OID_HWID,
    OID_MICROCODE,
    OID_SNP,
    OID_TEE,
    REPORT_SIZE,
    SIGNED_SIZE,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    SnpProductRoots,
    SnpRoots,
    SnpTcb,
)

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2034, 1, 1, tzinfo=UTC)
# A moment inside every test certificate's validity.
INSIDE = datetime(2026, 6, 1, tzinfo=UTC)
MILAN_FAMILY, TURIN_FAMILY = 0x19, 0x1A


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kettle test hardware"),
    ])


def _rsa_cert(
    subject: str, key: rsa.RSAPrivateKey, issuer: str, issuer_key: rsa.RSAPrivateKey
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA384(), rsa_padding=PSS)
    )


def der_integer(value: int) -> bytes:
    body = value.to_bytes(1, "big")
    if value >= 0x80:
        body = b"\x00" + body
    return bytes([0x02, len(body)]) + body


@dataclass
class SnpTestHardware:
    """One product's test chain and one chip's endorsement keys."""

    product: str
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    asvk_key: rsa.RSAPrivateKey
    chain: SnpProductRoots
    chip_id: bytes
    tcb: SnpTcb
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: bytes  # DER
    vlek_key: ec.EllipticCurvePrivateKey
    vlek: bytes  # DER

    @classmethod
    def make(cls, product: str = "Milan", tcb: SnpTcb | None = None) -> SnpTestHardware:
        # RSA-2048 (AMD uses 4096) keeps the fixture fast; the verifier's checks do not depend on the size.
        ark_key, ask_key, asvk_key = (rsa.generate_private_key(65537, 2048) for _ in range(3))
        ark = _rsa_cert(f"ARK-{product}", ark_key, f"ARK-{product}", ark_key)
        ask = _rsa_cert(f"SEV-{product}", ask_key, f"ARK-{product}", ark_key)
        asvk = _rsa_cert(f"SEV-VLEK-{product}", asvk_key, f"ARK-{product}", ark_key)
        tcb = tcb or (SnpTcb(bootloader=9, tee=0, snp=23, microcode=72, fmc=1) if product == "Turin" else SnpTcb(bootloader=4, tee=0, snp=24, microcode=0xD9))
        hardware = cls(
            product=product,
            ark_key=ark_key,
            ask_key=ask_key,
            asvk_key=asvk_key,
            chain=SnpProductRoots(ark=ark, ask=ask, asvk=asvk),
            chip_id=os.urandom(64),
            tcb=tcb,
            vcek_key=ec.generate_private_key(ec.SECP384R1()),
            vcek=b"",
            vlek_key=ec.generate_private_key(ec.SECP384R1()),
            vlek=b"",
        )
        hardware.vcek = hardware.endorsement("vcek", issuer="ask")
        hardware.vlek = hardware.endorsement("vlek", issuer="asvk")
        return hardware

    @property
    def roots(self) -> SnpRoots:
        return {self.product: self.chain}

    def write_roots(self, directory: Path) -> Path:
        """AMD's file form (ASK, ARK, ASVK), which ``load_snp_roots(directory)`` reads."""
        path = directory / f"{self.product.lower()}_ask_ark_asvk.pem"
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.chain.ask, self.chain.ark, self.chain.asvk)))
        return path

    def endorsement(
        self,
        kind: str,
        *,
        issuer: str,
        tcb: SnpTcb | None = None,
        hwid: bytes | None = None,
        hwid_octet_string: bool = False,
    ) -> bytes:
        """A VCEK or VLEK certificate (DER) for this chip, issued by the ``ask`` or the ``asvk``."""
        tcb = tcb or self.tcb
        key = self.vcek_key if kind == "vcek" else self.vlek_key
        issuer_cert, issuer_key = (self.chain.ask, self.ask_key) if issuer == "ask" else (self.chain.asvk, self.asvk_key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(f"SEV-{kind.upper()}"))
            .issuer_name(issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(NOT_AFTER)
        )
        components = [(OID_BOOTLOADER, tcb.bootloader), (OID_TEE, tcb.tee), (OID_SNP, tcb.snp), (OID_MICROCODE, tcb.microcode)]
        if tcb.fmc is not None:
            components.append((OID_FMC, tcb.fmc))
        for oid, value in components:
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, der_integer(value)), critical=False)
        if kind == "vcek":
            raw = self.chip_id if hwid is None else hwid
            value = b"\x04\x40" + raw if hwid_octet_string else raw
            builder = builder.add_extension(x509.UnrecognizedExtension(OID_HWID, value), critical=False)
        cert = builder.sign(issuer_key, hashes.SHA384(), rsa_padding=PSS)
        return cert.public_bytes(serialization.Encoding.DER)

    def report(
        self,
        *,
        signer: str = "vcek",
        version: int = 3,
        policy: int = 0x30000,
        vmpl: int = 0,
        report_data: bytes = b"\x11" * 64,
        measurement: bytes = b"\x22" * 48,
        tcb: SnpTcb | None = None,
        chip_id: bytes | None = None,
        flags: int | None = None,
        signature_algo: int = 1,
        cpuid_family: int | None = None,
        patch: dict[int, bytes] | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """An SNP-format report signed by the VCEK or VLEK; ``patch`` overwrites bytes before signing."""
        body = bytearray(SIGNED_SIZE)
        tcb_bytes = (tcb or self.tcb).to_bytes(self.product)
        signing_key = SIGNING_KEY_VCEK if signer == "vcek" else SIGNING_KEY_VLEK
        struct.pack_into("<IIQ", body, 0x000, version, 1, policy)
        struct.pack_into("<II", body, 0x030, vmpl, signature_algo)
        body[0x038:0x040] = tcb_bytes
        struct.pack_into("<QI", body, 0x040, 1, signing_key << 2 if flags is None else flags)
        body[0x050:0x090] = report_data
        body[0x090:0x0C0] = measurement
        body[0x140:0x160] = os.urandom(32)
        body[0x180:0x188] = tcb_bytes
        if version >= 3:
            family = cpuid_family if cpuid_family is not None else (TURIN_FAMILY if self.product == "Turin" else MILAN_FAMILY)
            body[0x188:0x18B] = bytes([family, 0x01, 0x01])
        body[0x1A0:0x1E0] = (self.chip_id if signer == "vcek" else bytes(64)) if chip_id is None else chip_id
        body[0x1E0:0x1E8] = tcb_bytes
        body[0x1F0:0x1F8] = tcb_bytes
        for offset, data in (patch or {}).items():
            body[offset : offset + len(data)] = data
        signing = key or (self.vcek_key if signer == "vcek" else self.vlek_key)
        r, s = decode_dss_signature(signing.sign(bytes(body), ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(72, "little") + s.to_bytes(72, "little")
        return bytes(body) + signature + bytes(REPORT_SIZE - SIGNED_SIZE - len(signature))

