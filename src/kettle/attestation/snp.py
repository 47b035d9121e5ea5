"""AMD SEV-SNP attestation reports: parsing and offline verification with ``cryptography``.

``examine_snp_report`` runs every check on a raw ATTESTATION_REPORT (``spec/attestation.md``
§6.4, AMD SEV-SNP ABI) and returns a :class:`SnpVerdict` listing each check with its outcome
and reason, in the style of ``Verifier.examine``:

* the report's layout: exact size, version 2 or later, every reserved field zero (also
  the bytes after the signature, which the signature does not cover), signature
  algorithm ECDSA P-384 / SHA-384, signing key VCEK or VLEK;
* the chain of the report's certificate to pinned AMD roots: VCEK → ASK → ARK or
  VLEK → ASVK → ARK of one product (Milan, Genoa, Turin), every link RSA-PSS / SHA-384,
  every certificate valid at the given time; a VCEK under an ASVK, a VLEK under an ASK
  or an intermediate under another product's ARK are refused. Nothing that arrives with
  the evidence is a trust anchor;
* the report signature (ECDSA P-384 over bytes [0x000, 0x2A0)) by the certificate's key;
* the reported TCB equals the TCB the certificate was issued for, and a VCEK's hwID is
  the report's chip id;
* policy (:class:`SnpPolicy`), the expected report data and the accepted measurements.

Structural failures stop the examination (later checks would judge unauthenticated
bytes); policy outcomes are all reported.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID

from ..errors import AttestationError
from .verifier import Check, Verdict

log = logging.getLogger(__name__)

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIGNATURE_COMPONENT_SIZE = 72
# P-384 integers are 48 bytes; the report zero-extends them to 72.
P384_SIZE = 48
MIN_VERSION = 2
# The newest layout this verifier knows: version 5 fills 0x1F8..0x208 (mitigation
# vectors). A later version may fill more reserved bytes; they are checked as reserved,
# so such a report is refused with that reason rather than judged on unknown fields.
LATEST_KNOWN_VERSION = 5
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1

POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7
SIGNING_KEY_NAMES = {SIGNING_KEY_VCEK: "VCEK", SIGNING_KEY_VLEK: "VLEK", SIGNING_KEY_NONE: "none"}

# AMD's VCEK/VLEK extensions (AMD "Versioned Chip Endorsement Key" specification).
_AMD_OID = "1.3.6.1.4.1.3704.1"
OID_BOOTLOADER = x509.ObjectIdentifier(f"{_AMD_OID}.3.1")
OID_TEE = x509.ObjectIdentifier(f"{_AMD_OID}.3.2")
OID_SNP = x509.ObjectIdentifier(f"{_AMD_OID}.3.3")
OID_MICROCODE = x509.ObjectIdentifier(f"{_AMD_OID}.3.8")
OID_FMC = x509.ObjectIdentifier(f"{_AMD_OID}.3.9")
OID_HWID = x509.ObjectIdentifier(f"{_AMD_OID}.4")

# CPUID family of each product (reports of version 3 and later state it): it also
# selects the TCB layout, which Turin changed.
PRODUCT_FAMILIES = {"Milan": 0x19, "Genoa": 0x19, "Turin": 0x1A}
TURIN_LAYOUT = frozenset({"Turin"})


@dataclass(frozen=True)
class SnpTcb:
    """A TCB_VERSION: the security version of each firmware component (Turin adds FMC)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def from_bytes(cls, raw: bytes, product: str) -> SnpTcb:
        """Decode the 8-byte little-endian TCB_VERSION in ``product``'s layout."""
        if product in TURIN_LAYOUT:
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def to_bytes(self, product: str) -> bytes:
        """The 8 bytes of this TCB in ``product``'s layout, reserved bytes zero."""
        if product in TURIN_LAYOUT:
            return bytes([self.fmc or 0, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def components(self) -> dict[str, int]:
        named = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            named["fmc"] = self.fmc
        return named

    def __str__(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in self.components().items())


@dataclass(frozen=True)
class SnpReport:
    """The fields of an ATTESTATION_REPORT (offsets in ``spec/attestation.md`` §6.4)."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid_family: int | None
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb: bytes
    launch_tcb: bytes
    signature_r: bytes
    signature_s: bytes

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signing_key(self) -> int:
        return (self.flags >> 2) & 0x7

    @property
    def signing_key_name(self) -> str:
        return SIGNING_KEY_NAMES.get(self.signing_key, f"reserved value {self.signing_key}")

    @property
    def author_key_enabled(self) -> bool:
        return bool(self.flags & 0x1)

    @property
    def chip_key_masked(self) -> bool:
        return bool(self.flags & 0x2)

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def migration_agent(self) -> bool:
        return bool(self.policy & POLICY_MIGRATE_MA)


def parse_snp_report(report: bytes) -> SnpReport:
    """Typed fields of a report; raises :class:`AttestationError` if it is not one (size, version)."""
    if len(report) != REPORT_SIZE:
        raise AttestationError(f"an SEV-SNP report is {REPORT_SIZE} bytes, this is {len(report)}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", report, 0x000)
    if version < MIN_VERSION:
        raise AttestationError(f"SEV-SNP report version {version} is not supported (version {MIN_VERSION} or later)")
    vmpl, signature_algo = struct.unpack_from("<II", report, 0x030)
    (platform_info,) = struct.unpack_from("<Q", report, 0x040)
    (flags,) = struct.unpack_from("<I", report, 0x048)
    has_cpuid = version >= 3
    return SnpReport(
        raw=bytes(report),
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=report[0x010:0x020],
        image_id=report[0x020:0x030],
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=report[0x038:0x040],
        platform_info=platform_info,
        flags=flags,
        report_data=report[0x050:0x090],
        measurement=report[0x090:0x0C0],
        host_data=report[0x0C0:0x0E0],
        id_key_digest=report[0x0E0:0x110],
        author_key_digest=report[0x110:0x140],
        report_id=report[0x140:0x160],
        report_id_ma=report[0x160:0x180],
        reported_tcb=report[0x180:0x188],
        cpuid_family=report[0x188] if has_cpuid else None,
        cpuid_model=report[0x189] if has_cpuid else None,
        cpuid_stepping=report[0x18A] if has_cpuid else None,
        chip_id=report[0x1A0:0x1E0],
        committed_tcb=report[0x1E0:0x1E8],
        launch_tcb=report[0x1F0:0x1F8],
        signature_r=report[0x2A0:0x2E8],
        signature_s=report[0x2E8:0x330],
    )


def reserved_ranges(version: int) -> list[tuple[int, int]]:
    """The byte ranges [start, end) the ABI reserves (must be zero) in a report of ``version``."""
    ranges = [(0x04C, 0x050)]
    ranges.append((0x18B, 0x1A0) if version >= 3 else (0x188, 0x1A0))  # CPUID fields from version 3
    ranges += [(0x1EB, 0x1EC), (0x1EF, 0x1F0)]  # after CURRENT_MAJOR and COMMITTED_MAJOR
    ranges.append((0x208, SIGNED_SIZE) if version >= 5 else (0x1F8, SIGNED_SIZE))  # mitigation vectors from 5
    # Not signed: the signature structure's tail after R and S. Required zero so that no
    # unauthenticated byte of the report can carry anything.
    ranges.append((0x2A0 + 2 * SIGNATURE_COMPONENT_SIZE, REPORT_SIZE))
    return ranges


def _reserved_problem(report: SnpReport) -> str | None:
    if report.flags >> 5:
        return f"reserved bits of the flags at 0x048 are set ({report.flags:#x})"
    for start, end in reserved_ranges(report.version):
        chunk = report.raw[start:end]
        if any(chunk):
            first = start + next(i for i, b in enumerate(chunk) if b)
            newer = f" (version {report.version} is newer than {LATEST_KNOWN_VERSION}, the newest layout known here)" if report.version > LATEST_KNOWN_VERSION else ""
            return f"reserved bytes [{start:#05x}, {end:#05x}) must be zero, byte {first:#05x} is not{newer}"
    return None


class SnpProductRoots(NamedTuple):
    """One product's pinned AMD certificates: the root and its two signing intermediates."""

    ark: x509.Certificate
    ask: x509.Certificate  # signs VCEKs
    asvk: x509.Certificate  # signs VLEKs


SnpRoots = Mapping[str, SnpProductRoots]

CHAIN_FILE_SUFFIX = "_ask_ark_asvk.pem"


def snp_product_roots_from_pem(pem: bytes, product: str) -> SnpProductRoots:
    """Read AMD's ``<product>_ask_ark_asvk.pem`` form: the self-signed ARK, the ASK and the ASVK
    (``CN=SEV-VLEK-<product>``), in any order; each intermediate must be issued by the ARK."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise AttestationError(f"{product}: the AMD chain is not PEM certificates") from None
    arks = [c for c in certs if c.issuer == c.subject]
    others = [c for c in certs if c.issuer != c.subject]
    asvks = [c for c in others if _common_name(c).startswith("SEV-VLEK-")]
    asks = [c for c in others if not _common_name(c).startswith("SEV-VLEK-")]
    if len(certs) != 3 or len(arks) != 1 or len(asks) != 1 or len(asvks) != 1:
        raise AttestationError(f"{product}: an AMD chain is one ARK, one ASK and one ASVK")
    roots = SnpProductRoots(ark=arks[0], ask=asks[0], asvk=asvks[0])
    for cert in roots:
        problem = _rsa_pss_issued_by(cert, roots.ark)
        if problem:
            raise AttestationError(f"{product}: {problem}")
    return roots


def load_snp_roots(directory: Path) -> SnpRoots:
    """Every ``<product>_ask_ark_asvk.pem`` in ``directory``, keyed by product (``Milan``, …)."""
    roots = {}
    for path in sorted(directory.glob(f"*{CHAIN_FILE_SUFFIX}")):
        product = path.name.removesuffix(CHAIN_FILE_SUFFIX).capitalize()
        roots[product] = snp_product_roots_from_pem(path.read_bytes(), product)
    if not roots:
        raise AttestationError(f"no AMD root chains (*{CHAIN_FILE_SUFFIX}) in {directory}")
    return roots


@lru_cache(maxsize=1)
def amd_roots() -> SnpRoots:
    """AMD's public ARK/ASK/ASVK of Milan, Genoa and Turin, shipped with the package (pinned)."""
    folder = resources.files(__package__).joinpath("vendor_roots", "amd")
    roots = {}
    for product in PRODUCT_FAMILIES:
        pem = folder.joinpath(f"{product.lower()}{CHAIN_FILE_SUFFIX}").read_bytes()
        roots[product] = snp_product_roots_from_pem(pem, product)
    return roots


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _rsa_pss_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None if ``issuer`` signed ``cert`` with RSA-PSS / SHA-384 (AMD's only chain signature); else why not."""
    name, by = _common_name(cert), _common_name(issuer)
    if not isinstance(issuer.public_key(), rsa.RSAPublicKey):
        return f"{by} has no RSA key"
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        cert.signature_hash_algorithm, hashes.SHA384
    ):
        return f"{name} is not signed with RSA-PSS / SHA-384"
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return f"{name} is not issued by {by}"
    return None


def load_snp_certificate(data: bytes) -> x509.Certificate:
    """A VCEK or VLEK from DER (as AMD's KDS serves it) or PEM."""
    # AMD's VCEKs have serial number 0, which cryptography warns about; that is their
    # format, not a defect of this certificate.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
        except ValueError:
            raise AttestationError("the VCEK/VLEK certificate is neither DER nor PEM") from None


def _der_small_integer(raw: bytes) -> int:
    """A DER INTEGER 0..255 (the encoding of every TCB extension value)."""
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2 or raw[1] > 2:
        raise ValueError("not a DER INTEGER")
    if raw[1] == 2 and (raw[2] != 0 or raw[3] < 0x80):
        raise ValueError("not a minimal DER INTEGER")
    if raw[2] & 0x80 and raw[1] == 1:
        raise ValueError("negative INTEGER")
    return raw[-1]


@dataclass(frozen=True)
class SnpCertificateInfo:
    """What a VCEK or VLEK says about the platform it was issued for."""

    tcb: SnpTcb
    hwid: bytes | None  # VCEKs only


def snp_certificate_info(cert: x509.Certificate, product: str) -> SnpCertificateInfo:
    """The TCB extensions (and a VCEK's hwID) of ``cert``; both encodings AMD has used parse:
    hwID as the raw 64 bytes (older VCEKs) or as a DER OCTET STRING of them (newer)."""

    def extension(oid: x509.ObjectIdentifier) -> bytes | None:
        try:
            value = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            return None
        if not isinstance(value, x509.UnrecognizedExtension):
            raise AttestationError(f"the certificate's extension {oid.dotted_string} is not AMD's raw encoding")
        return value.value

    def component(oid: x509.ObjectIdentifier, label: str) -> int:
        raw = extension(oid)
        if raw is None:
            raise AttestationError(f"the certificate has no {label} TCB extension ({oid.dotted_string})")
        try:
            return _der_small_integer(raw)
        except ValueError:
            raise AttestationError(f"the certificate's {label} TCB extension is not an integer 0..255") from None

    fmc = component(OID_FMC, "FMC") if product in TURIN_LAYOUT else None
    tcb = SnpTcb(
        bootloader=component(OID_BOOTLOADER, "bootloader"),
        tee=component(OID_TEE, "TEE"),
        snp=component(OID_SNP, "SNP"),
        microcode=component(OID_MICROCODE, "microcode"),
        fmc=fmc,
    )
    hwid = extension(OID_HWID)
    if hwid is not None and len(hwid) == 66 and hwid[:2] == b"\x04\x40":
        hwid = hwid[2:]
    if hwid is not None and len(hwid) != 64:
        raise AttestationError(f"the certificate's hwID extension is {len(hwid)} bytes, not a 64-byte chip id")
    return SnpCertificateInfo(tcb=tcb, hwid=hwid)


@dataclass(frozen=True)
class SnpPolicy:
    """What a verified report must also satisfy. Strict by default."""

    max_vmpl: int = 0
    allow_migration_agent: bool = False
    minimum_tcb: SnpTcb | None = None
    unsafe_allow_debug: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.max_vmpl <= 3:
            raise ValueError(f"max_vmpl is a VMPL 0..3, not {self.max_vmpl}")
        if self.unsafe_allow_debug:
            log.warning("UNSAFE: SEV-SNP guests whose policy allows debugging are accepted; the host can read their memory")


@dataclass
class SnpVerdict(Verdict):
    """A :class:`Verdict` whose subject is a report: ``report`` is set once it is authenticated
    (layout, chain, signature, TCB binding); ``ok`` needs that and every check passed."""

    report: SnpReport | None = None
    product: str | None = None

    @property
    def ok(self) -> bool:
        return self.report is not None and all(c.ok for c in self.checks)


def _valid_at_problem(cert: x509.Certificate, at: datetime) -> str | None:
    if at < cert.not_valid_before_utc:
        return f"{_common_name(cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
    if at > cert.not_valid_after_utc:
        return f"{_common_name(cert)} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    return None


def _signature_problem(report: SnpReport, cert: x509.Certificate) -> str | None:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return "the certificate's key is not an ECDSA P-384 key"
    for label, component in (("R", report.signature_r), ("S", report.signature_s)):
        if any(component[P384_SIZE:]):
            return f"signature {label} is not a zero-extended P-384 integer"
    r = int.from_bytes(report.signature_r, "little")
    s = int.from_bytes(report.signature_s, "little")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return "the report signature does not verify with the certificate's key"
    return None


class _Chain(NamedTuple):
    product: str
    intermediate: x509.Certificate
    ark: x509.Certificate


def _chain(cert: x509.Certificate, signing_key: int, roots: SnpRoots) -> _Chain | str:
    """The pinned chain ``cert`` belongs to (by the report's signing key), or why there is none."""
    wanted, other = ("ask", "asvk") if signing_key == SIGNING_KEY_VCEK else ("asvk", "ask")
    kind = SIGNING_KEY_NAMES[signing_key]
    found: _Chain | None = None
    for product, pinned in roots.items():
        if _rsa_pss_issued_by(cert, getattr(pinned, wanted)) is None:
            found = _Chain(product, getattr(pinned, wanted), pinned.ark)
            break
        crossed: x509.Certificate = getattr(pinned, other)
        if _rsa_pss_issued_by(cert, crossed) is None:
            return (
                f"the report is signed by a {kind}, but its certificate is issued by "
                f"{_common_name(crossed)} ({other.upper()}); a {kind} must be issued by the {wanted.upper()}"
            )
    if found is None:
        return f"the {kind} certificate is not issued by a pinned AMD {wanted.upper()} (products: {', '.join(roots) or 'none'})"
    if found.product not in PRODUCT_FAMILIES:
        return f"pinned product {found.product} is not one of {', '.join(PRODUCT_FAMILIES)}"
    # Roots may be handed in (tests, unsafe_test_roots): the intermediate must still be its
    # own product's, which refuses an ASK or ASVK presented under another product's ARK.
    for lower in (found.intermediate, found.ark):
        problem = _rsa_pss_issued_by(lower, found.ark)
        if problem:
            return f"{problem} (the pinned {found.product} ARK)"
    return found


def examine_snp_report(
    report: bytes,
    *,
    certificate: bytes,
    at: datetime,
    policy: SnpPolicy = SnpPolicy(),
    roots: SnpRoots | None = None,
    expected_report_data: bytes | None = None,
    measurements: Collection[bytes] | None = None,
) -> SnpVerdict:
    """Run every check on an SEV-SNP report signed by ``certificate`` (its VCEK or VLEK), as of ``at``.

    ``roots`` defaults to AMD's roots shipped with the package; ``measurements`` are the
    accepted 48-byte launch measurements (None: not checked here).
    """
    if at.tzinfo is None:
        raise ValueError("the verification time must be timezone-aware")
    verdict = SnpVerdict()
    checks = verdict.checks
    pinned = amd_roots() if roots is None else roots

    def fail(name: str, detail: str) -> SnpVerdict:
        checks.append(Check(name, False, detail))
        return verdict

    try:
        parsed = parse_snp_report(report)
    except AttestationError as exc:
        return fail("report format", exc.reason)
    checks.append(Check("report format", True, f"version {parsed.version}, {REPORT_SIZE} bytes"))
    problem = _reserved_problem(parsed)
    if problem:
        return fail("reserved fields", problem)
    checks.append(Check("reserved fields", True, "all zero"))
    if parsed.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        return fail("signature algorithm", f"signature algorithm {parsed.signature_algo} is not 1 (ECDSA P-384 with SHA-384)")
    checks.append(Check("signature algorithm", True, "ECDSA P-384 with SHA-384"))
    if parsed.signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
        return fail("signing key", f"the report's signing key is {parsed.signing_key_name}, not a VCEK or VLEK")
    checks.append(Check("signing key", True, parsed.signing_key_name))

    try:
        cert = load_snp_certificate(certificate)
    except AttestationError as exc:
        return fail("certificate", exc.reason)
    chain = _chain(cert, parsed.signing_key, pinned)
    if isinstance(chain, str):
        return fail("certificate chain", chain)
    product = chain.product
    checks.append(Check("certificate chain", True, (
        f"{parsed.signing_key_name} ← {_common_name(chain.intermediate)} ← {_common_name(chain.ark)} "
        f"(pinned {product} root), RSA-PSS / SHA-384"
    )))
    for link in (cert, chain.intermediate, chain.ark):
        problem = _valid_at_problem(link, at)
        if problem:
            return fail("certificate validity", problem)
    checks.append(Check("certificate validity", True, f"{_common_name(cert)} valid at {at:%Y-%m-%d %H:%M:%S} UTC, until {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"))
    if parsed.cpuid_family is not None and parsed.cpuid_family != PRODUCT_FAMILIES[product]:
        return fail("product", f"the report's CPU family {parsed.cpuid_family:#x} is not {product}'s ({PRODUCT_FAMILIES[product]:#x})")

    problem = _signature_problem(parsed, cert)
    if problem:
        return fail("report signature", problem)
    checks.append(Check("report signature", True, f"signed by the {parsed.signing_key_name}"))

    try:
        info = snp_certificate_info(cert, product)
    except AttestationError as exc:
        return fail("tcb", exc.reason)
    reported = SnpTcb.from_bytes(parsed.reported_tcb, product)
    if parsed.reported_tcb != info.tcb.to_bytes(product):
        return fail("tcb", f"the reported TCB ({reported}) is not the TCB the certificate was issued for ({info.tcb})")
    checks.append(Check("tcb", True, f"reported TCB {reported} matches the certificate"))
    if parsed.signing_key == SIGNING_KEY_VCEK:
        if info.hwid is None:
            return fail("chip id", "the VCEK has no hwID extension")
        if info.hwid != parsed.chip_id:
            masked = " (the report masks its chip id)" if parsed.chip_key_masked else ""
            return fail("chip id", f"the report's chip id is not the VCEK's hwID{masked}")
        checks.append(Check("chip id", True, f"VCEK issued for chip {parsed.chip_id[:8].hex()}…"))
    verdict.report = parsed
    verdict.product = product

    checks.extend(_policy_checks(parsed, reported, policy))
    if expected_report_data is not None:
        if parsed.report_data == expected_report_data:
            checks.append(Check("report data", True, "the expected report data"))
        else:
            checks.append(Check("report data", False, f"report data {parsed.report_data.hex()} is not the expected {expected_report_data.hex()}"))
    if measurements is not None:
        if parsed.measurement in measurements:
            checks.append(Check("measurement", True, parsed.measurement.hex()))
        else:
            checks.append(Check("measurement", False, f"measurement {parsed.measurement.hex()} is not an accepted measurement"))
    return verdict


def _policy_checks(report: SnpReport, reported: SnpTcb, policy: SnpPolicy) -> list[Check]:
    checks = []
    if not report.debug:
        checks.append(Check("debug", True, "debugging not allowed by the guest policy"))
    elif policy.unsafe_allow_debug:
        checks.append(Check("debug", True, "UNSAFE: the guest policy allows debugging, accepted because unsafe_allow_debug is on"))
    else:
        checks.append(Check("debug", False, "the guest policy allows debugging (bit 19): the host can read the guest's memory"))
    if not report.migration_agent:
        checks.append(Check("migration agent", True, "no migration agent"))
    elif policy.allow_migration_agent:
        checks.append(Check("migration agent", True, "a migration agent is allowed by policy"))
    else:
        checks.append(Check("migration agent", False, "the guest policy allows a migration agent (bit 18), which policy does not allow"))
    if report.vmpl <= policy.max_vmpl:
        checks.append(Check("vmpl", True, f"VMPL {report.vmpl}"))
    else:
        checks.append(Check("vmpl", False, f"VMPL {report.vmpl} is above the allowed {policy.max_vmpl}"))
    if policy.minimum_tcb is not None:
        wanted = policy.minimum_tcb.components()
        have = reported.components()
        low = [f"{name} {have.get(name, 0)} < {value}" for name, value in wanted.items() if have.get(name, 0) < value]
        if low:
            checks.append(Check("minimum tcb", False, f"the reported TCB is below the minimum: {', '.join(low)}"))
        else:
            checks.append(Check("minimum tcb", True, f"{reported} is at least {policy.minimum_tcb}"))
    return checks
