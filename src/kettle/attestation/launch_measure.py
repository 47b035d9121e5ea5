"""What an auditor computes from a deployment image before signing enclave info.

The hardware measures what it loads; an auditor who signs a measurement must be
able to derive the same value from the image itself, not copy it from the
operator. This module does that for the three TEE kinds Kettle runs on:

- **SEV-SNP**: the launch measurement of a direct-boot guest (firmware, and
  through the firmware's kernel-hashes page the kernel, initrd and command line),
  computed with ``sev-snp-measure`` (pinned in ``pyproject.toml``).
- **TDX**: MRTD from the TDVF firmware's metadata (the pages the VMM adds and the
  ones it extends into MRTD, as the TDX module measures them), and RTMR0-3 by
  replaying a confidential-computing event log (TCG crypto-agile format, SHA-384).
- **SGX (Gramine)**: MRENCLAVE, MRSIGNER, ISV product id and SVN from the signed
  SIGSTRUCT that ``gramine-sgx-sign`` writes (``.sig``), after checking its
  layout and its RSA-3072 signature as EINIT would.

Every parser here reads hostile bytes: bad input is an :class:`AttestationError`
naming what is wrong, never an assertion or an index error.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import AttestationError

# --- SEV-SNP ------------------------------------------------------------------

SNP_MEASUREMENT_LEN = 48
DEFAULT_GUEST_FEATURES = 0x1
"""SEV_FEATURES of the guest's VMSAs: SNPActive only, what QEMU sets by default."""


def snp_vcpu_types() -> list[str]:
    from sevsnpmeasure.vcpu_types import CPU_SIGS

    return sorted(CPU_SIGS)


def snp_measurement(
    ovmf: Path,
    vcpus: int,
    vcpu_type: str,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    guest_features: int = DEFAULT_GUEST_FEATURES,
) -> bytes:
    """The 48-byte SNP launch measurement of a QEMU guest booted from these files.

    With ``kernel`` the firmware must carry an SNP kernel-hashes page (edk2's
    AmdSevX64 build): QEMU writes the SHA-256 of kernel, initrd and command line
    (NUL-terminated) into it before launch, so the measurement covers all three.
    """
    from sevsnpmeasure import guest
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vcpu_types import CPU_SIGS
    from sevsnpmeasure.vmm_types import VMMType

    if vcpus < 1:
        raise AttestationError("--vcpus must be at least 1")
    if vcpu_type not in CPU_SIGS:
        raise AttestationError(f"unknown vCPU type {vcpu_type!r} (known: {', '.join(sorted(CPU_SIGS))})")
    if (initrd is not None or append is not None) and kernel is None:
        raise AttestationError("an initrd or command line is measured only with a kernel (--kernel)")
    if not 0 <= guest_features < 1 << 64:
        raise AttestationError("guest features must fit in 64 bits")
    for label, path in (("firmware", ovmf), ("kernel", kernel), ("initrd", initrd)):
        if path is not None and not Path(path).is_file():
            raise AttestationError(f"{label} {path} is not a file")
    try:
        digest = guest.calc_launch_digest(
            SevMode.SEV_SNP,
            vcpus,
            CPU_SIGS[vcpu_type],
            str(ovmf),
            str(kernel) if kernel is not None else None,
            str(initrd) if initrd is not None else None,
            append,
            guest_features,
            vmm_type=VMMType.QEMU,
        )
    except (RuntimeError, ValueError, AssertionError, struct.error) as exc:
        raise AttestationError(f"cannot measure {ovmf} as SNP firmware: {exc}") from None
    if len(digest) != SNP_MEASUREMENT_LEN:
        raise AttestationError(f"SNP measurement has {len(digest)} bytes, expected {SNP_MEASUREMENT_LEN}")
    return digest


# --- OVMF footer table (shared by the SEV and TDX metadata) ---------------------

_FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
_TDX_METADATA_OFFSET_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
_FOOTER_END = 32  # the table ends 32 bytes before the end of the image (reset vector)
_ENTRY_HEADER = 18  # u16 size + GUID, after an entry's data


def _footer_table(image: bytes) -> dict[uuid.UUID, bytes]:
    """The GUIDed table edk2 places just below the reset vector (``ResetVectorVtf0.asm``)."""
    end = len(image) - _FOOTER_END
    if end < _ENTRY_HEADER:
        raise AttestationError("firmware image is too small to carry an OVMF footer table")
    size, raw_guid = struct.unpack_from("<H16s", image, end - _ENTRY_HEADER)
    if uuid.UUID(bytes_le=raw_guid) != _FOOTER_GUID:
        raise AttestationError("firmware image has no OVMF footer table (not an edk2 OVMF/TDVF build)")
    if size < _ENTRY_HEADER or size > end:
        raise AttestationError("OVMF footer table has an impossible size")
    table = image[end - size : end - _ENTRY_HEADER]
    entries: dict[uuid.UUID, bytes] = {}
    while table:
        if len(table) < _ENTRY_HEADER:
            raise AttestationError("OVMF footer table ends inside an entry header")
        entry_size, raw = struct.unpack_from("<H16s", table, len(table) - _ENTRY_HEADER)
        if entry_size < _ENTRY_HEADER or entry_size > len(table):
            raise AttestationError("OVMF footer table has an entry of impossible size")
        entries[uuid.UUID(bytes_le=raw)] = table[len(table) - entry_size : len(table) - _ENTRY_HEADER]
        table = table[: len(table) - entry_size]
    return entries


# --- TDX: MRTD from TDVF metadata ----------------------------------------------

PAGE = 4096
_EXTEND_CHUNK = 256
TDX_MR_LEN = 48

SECTION_TYPES = {0: "BFV", 1: "CFV", 2: "TD_HOB", 3: "TempMem"}
"""The TDVF section types an edk2 TDVF carries. td-shim's PermMem/Payload types are not handled."""
ATTRIBUTE_MR_EXTEND = 0x1
ATTRIBUTE_PAGE_AUG = 0x2


@dataclass(frozen=True)
class TdvfSection:
    data_offset: int
    raw_size: int
    address: int
    size: int
    type: int
    attributes: int

    @property
    def type_name(self) -> str:
        return SECTION_TYPES.get(self.type, f"type {self.type}")

    @property
    def extended(self) -> bool:
        return bool(self.attributes & ATTRIBUTE_MR_EXTEND)


def tdvf_sections(image: bytes) -> list[TdvfSection]:
    """The TDVF metadata sections of a firmware image (TDVF design guide, "TDVF metadata")."""
    entry = _footer_table(image).get(_TDX_METADATA_OFFSET_GUID)
    if entry is None:
        raise AttestationError("firmware has no TDX metadata (not a TDVF: no TDX metadata offset in the footer table)")
    if len(entry) < 4:
        raise AttestationError("TDX metadata offset entry is truncated")
    start = len(image) - struct.unpack_from("<I", entry)[0]
    if not 0 <= start <= len(image) - 16:
        raise AttestationError("TDX metadata offset points outside the firmware")
    signature, length, version, count = struct.unpack_from("<4sIII", image, start)
    if signature != b"TDVF":
        raise AttestationError("TDX metadata has no TDVF signature")
    if version != 1:
        raise AttestationError(f"TDVF metadata version {version} is not supported (only 1)")
    if length != 16 + 32 * count or start + length > len(image):
        raise AttestationError("TDVF metadata length does not match its section count or the firmware size")
    sections = [
        TdvfSection(*struct.unpack_from("<IIQQII", image, start + 16 + 32 * i)) for i in range(count)
    ]
    for s in sections:
        where = f"TDVF {s.type_name} section at {s.address:#x}"
        if s.type not in SECTION_TYPES:
            raise AttestationError(f"{where}: section type {s.type} is not covered (edk2 TDVF types only)")
        if s.attributes & ~(ATTRIBUTE_MR_EXTEND | ATTRIBUTE_PAGE_AUG):
            raise AttestationError(f"{where}: unknown attributes {s.attributes:#x}")
        if s.address % PAGE or s.size % PAGE or s.size == 0:
            raise AttestationError(f"{where}: memory range is not whole 4 KiB pages")
        if s.raw_size > s.size or s.data_offset + s.raw_size > len(image):
            raise AttestationError(f"{where}: raw data lies outside the firmware or exceeds the memory range")
        if s.type in (0, 1) and s.raw_size == 0:
            raise AttestationError(f"{where}: a firmware volume without data")
        if s.type not in (0, 1) and (s.raw_size or s.extended):
            raise AttestationError(f"{where}: only firmware volumes carry data or are extended into MRTD")
    return sections


def mrtd(image: bytes) -> bytes:
    """MRTD of a TD launched from this TDVF, as the TDX module computes it.

    The VMM adds each section's pages in metadata order (TDH.MEM.PAGE.ADD extends
    MRTD with a 128-byte record: ``"MEM.PAGE.ADD"``, the GPA at byte 16) and, for
    sections with the MR_EXTEND attribute, extends each page's content in 256-byte
    chunks (TDH.MR.EXTEND: a ``"MR.EXTEND"`` record with the chunk's GPA, then the
    chunk). Sections with PAGE_AUG are accepted later by the guest, not added.
    """
    digest = hashlib.sha384()
    for s in tdvf_sections(image):
        if s.attributes & ATTRIBUTE_PAGE_AUG:
            continue
        content = image[s.data_offset : s.data_offset + s.raw_size].ljust(s.size, b"\0")
        for page in range(0, s.size, PAGE):
            gpa = s.address + page
            digest.update(b"MEM.PAGE.ADD".ljust(16, b"\0") + struct.pack("<Q", gpa) + bytes(104))
            if not s.extended:
                continue
            for chunk in range(0, PAGE, _EXTEND_CHUNK):
                digest.update(b"MR.EXTEND".ljust(16, b"\0") + struct.pack("<Q", gpa + chunk) + bytes(104))
                digest.update(content[page + chunk : page + chunk + _EXTEND_CHUNK])
    return digest.digest()


# --- TDX: RTMRs from a CC event log --------------------------------------------

EV_NO_ACTION = 0x3
TPM_ALG_SHA384 = 0x000C
_SPEC_ID_SIGNATURE = b"Spec ID Event03\0"


@dataclass(frozen=True)
class LoggedEvent:
    mr_index: int
    """CC measurement register index: 1-4 are RTMR0-3 (0 is MRTD, never in the log)."""
    event_type: int
    sha384: bytes
    data: bytes


@dataclass(frozen=True)
class RtmrReplay:
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    events: list[LoggedEvent]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise AttestationError(f"event log ends inside {what} (offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def rest_is_padding(self) -> bool:
        # The ACPI CCEL area is fixed-size; firmware leaves the unused tail erased.
        tail = self.data[self.pos :]
        return tail.strip(b"\xff") == b"" or tail.strip(b"\0") == b""


def parse_cc_event_log(log: bytes) -> list[LoggedEvent]:
    """The events of a TCG crypto-agile event log whose algorithms include SHA-384 (a TDX CCEL)."""
    r = _Reader(log)
    # The first event is in the SHA-1 (TCG 1.2) format and only declares the digest sizes.
    r.u("I", "the header event")
    if r.u("I", "the header event") != EV_NO_ACTION:
        raise AttestationError("event log does not start with a Spec ID (EV_NO_ACTION) event")
    r.take(20, "the header event")
    spec = _Reader(r.take(r.u("I", "the header event"), "the Spec ID event"))
    if spec.take(16, "the Spec ID event") != _SPEC_ID_SIGNATURE:
        raise AttestationError("event log is not in the crypto-agile format (no 'Spec ID Event03')")
    spec.take(8, "the Spec ID event")  # platform class, spec version, errata, uintn size
    sizes: dict[int, int] = {}
    for _ in range(spec.u("I", "the Spec ID algorithm count")):
        alg = spec.u("H", "the Spec ID algorithms")
        sizes[alg] = spec.u("H", "the Spec ID algorithms")
    if sizes.get(TPM_ALG_SHA384) != TDX_MR_LEN:
        raise AttestationError("event log does not declare SHA-384 digests (not a TDX CC event log)")

    events: list[LoggedEvent] = []
    while r.pos < len(log) and not r.rest_is_padding():
        mr_index = r.u("I", "an event")
        event_type = r.u("I", "an event")
        sha384 = None
        for _ in range(r.u("I", "an event's digest count")):
            alg = r.u("H", "an event's digests")
            if alg not in sizes:
                raise AttestationError(f"event {len(events)} has a digest of undeclared algorithm {alg:#06x}")
            digest = r.take(sizes[alg], "an event's digests")
            if alg == TPM_ALG_SHA384:
                sha384 = digest
        data = r.take(r.u("I", "an event's size"), "an event's data")
        if sha384 is None:
            raise AttestationError(f"event {len(events)} has no SHA-384 digest")
        events.append(LoggedEvent(mr_index, event_type, sha384, data))
    return events


def replay_rtmrs(log: bytes) -> RtmrReplay:
    """RTMR0-3 after extending, from zero, every measured event of the log in order."""
    events = parse_cc_event_log(log)
    rtmrs = [bytes(TDX_MR_LEN)] * 4
    for i, e in enumerate(events):
        if e.event_type == EV_NO_ACTION:
            continue
        if not 1 <= e.mr_index <= 4:
            raise AttestationError(f"event {i} extends MR index {e.mr_index}: only 1-4 (RTMR0-3) can be extended")
        rtmrs[e.mr_index - 1] = hashlib.sha384(rtmrs[e.mr_index - 1] + e.sha384).digest()
    return RtmrReplay((rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]), events)


# --- SGX: SIGSTRUCT ------------------------------------------------------------

SIGSTRUCT_LEN = 1808
SIGSTRUCT_HEADER = bytes.fromhex("06000000e10000000000010000000000")
SIGSTRUCT_HEADER2 = bytes.fromhex("01010000600000006000000001000000")
_MODULUS = slice(128, 512)
_SIGNATURE = slice(516, 900)
_Q1 = slice(1040, 1424)
_Q2 = slice(1424, 1808)
_SIGNED = (slice(0, 128), slice(900, 1028))
"""SIGSTRUCT bytes the vendor signs: header to the first reserved field, MISCSELECT to ISVSVN."""
_RESERVED = {"reserved (44..128)": slice(44, 128), "reserved (1028..1040)": slice(1028, 1040)}
ATTRIBUTE_DEBUG = 0x2


@dataclass(frozen=True)
class Sigstruct:
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    vendor: int
    date: int
    attributes: bytes
    attribute_mask: bytes
    misc_select: int

    @property
    def debug(self) -> bool:
        """Whether the enclave is signed to run in debug mode (ATTRIBUTES.DEBUG)."""
        return bool(self.attributes[0] & ATTRIBUTE_DEBUG)


def parse_sigstruct(data: bytes) -> Sigstruct:
    """Check a SIGSTRUCT as EINIT does (layout, exponent 3, signature, Q1/Q2) and read its identity.

    MRSIGNER is SHA-256 of the modulus as stored (little-endian), which is how the
    CPU derives it.
    """
    if len(data) != SIGSTRUCT_LEN:
        raise AttestationError(f"SIGSTRUCT must be {SIGSTRUCT_LEN} bytes, got {len(data)}")
    if data[0:16] != SIGSTRUCT_HEADER or data[24:40] != SIGSTRUCT_HEADER2:
        raise AttestationError("SIGSTRUCT header fields are not Intel's constants (not a SIGSTRUCT)")
    vendor, date = struct.unpack_from("<II", data, 16)
    if vendor not in (0, 0x8086):
        raise AttestationError(f"SIGSTRUCT vendor {vendor:#x} is neither 0 nor 0x8086")
    for name, where in _RESERVED.items():
        if any(data[where]):
            raise AttestationError(f"SIGSTRUCT {name} is not zero")
    exponent = struct.unpack_from("<I", data, 512)[0]
    if exponent != 3:
        raise AttestationError(f"SIGSTRUCT exponent is {exponent}; SGX requires 3")
    modulus_le = data[_MODULUS]
    n = int.from_bytes(modulus_le, "little")
    s = int.from_bytes(data[_SIGNATURE], "little")
    if n.bit_length() != 3072 or n % 2 == 0:
        raise AttestationError("SIGSTRUCT modulus is not an odd 3072-bit number")
    if s >= n:
        raise AttestationError("SIGSTRUCT signature is not smaller than the modulus")
    q1 = s * s // n
    q2 = (s * s * s - q1 * s * n) // n
    if int.from_bytes(data[_Q1], "little") != q1 or int.from_bytes(data[_Q2], "little") != q2:
        raise AttestationError("SIGSTRUCT Q1/Q2 do not match its signature and modulus (EINIT would refuse it)")
    signed = b"".join(data[part] for part in _SIGNED)
    try:
        rsa.RSAPublicNumbers(3, n).public_key().verify(
            s.to_bytes(384, "big"), signed, padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        raise AttestationError("SIGSTRUCT signature does not verify under its own modulus") from None
    misc_select = struct.unpack_from("<I", data, 900)[0]
    isv_prod_id, isv_svn = struct.unpack_from("<HH", data, 1024)
    return Sigstruct(
        mr_enclave=data[960:992],
        mr_signer=hashlib.sha256(modulus_le).digest(),
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        vendor=vendor,
        date=date,
        attributes=data[928:944],
        attribute_mask=data[944:960],
        misc_select=misc_select,
    )
