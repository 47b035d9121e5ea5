"""Evidence from real TEEs: Linux configfs-tsm (SEV-SNP, TDX) and Gramine-SGX ``/dev/attestation``.

Both are file ABIs (``spec/attestation.md`` §6.1, §6.2), so the providers only
open, write, read and remove files; their roots are settings so that tests can
drive them through an emulation of the same ABI. Where configfs-tsm is absent, a
SEV-SNP guest's reports come from ``/dev/sev-guest``'s ``SNP_GET_EXT_REPORT`` /
``SNP_GET_REPORT`` ioctls instead (:func:`snp_ioctl_report`). ``backend = "auto"`` probes
what the machine offers (:func:`probe_backends`) and picks the first usable one.

The providers do not verify their own evidence (that is the attestation
service's job), but they do check that what they got is evidence for exactly the
report data they asked for, so a concurrent writer or a confused kernel never
makes a service present someone else's report.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import secrets
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import AttestationError, ConfigError
from .backends import SIMULATION, Evidence, SnpCertificate
from .sealing import (
    SNP_GUEST_DEVICE,
    KeyReleaseClient,
    SnpGuestRequestError,
    gramine_sealing_key,
    purpose_key,
    snp_derived_key,
    snp_guest_request,
)

log = logging.getLogger(__name__)

AUTO = "auto"
SEV_SNP = "sev-snp"
TDX = "tdx"
GRAMINE_SGX = "gramine-sgx"
BACKENDS = (AUTO, SEV_SNP, TDX, GRAMINE_SGX, SIMULATION)
"""Every value ``[attestation] backend`` accepts."""

SGX = "sgx"
"""The evidence kind (``Evidence.tee_type``) of the ``gramine-sgx`` backend: an SGX DCAP quote."""

TSM_PROVIDERS = {SEV_SNP: "sev_guest", TDX: "tdx_guest"}
"""configfs-tsm ``provider`` file content per backend."""
GUEST_DEVICES = {SEV_SNP: SNP_GUEST_DEVICE, TDX: Path("/dev/tdx_guest")}
"""The ioctl interfaces that predate configfs-tsm: ``/dev/sev-guest`` is used where configfs-tsm is absent,
``/dev/tdx_guest`` only reported (:data:`TDX_IOCTL_REFUSAL`)."""


def guest_devices(snp_guest_device: Path) -> dict[str, Path]:
    """The guest devices to probe, with ``/dev/sev-guest`` where the ``snp_guest_device`` setting puts it."""
    return {SEV_SNP: snp_guest_device, TDX: GUEST_DEVICES[TDX]}


TDX_IOCTL_REFUSAL = (
    "upstream Linux produces TDX quotes only through configfs-tsm: /dev/tdx_guest's TDX_CMD_GET_REPORT0 returns "
    "a TDREPORT that only a quoting service can turn into a quote, and TDX_CMD_GET_QUOTE was never merged"
)
CONFIGFS_TSM_KERNEL = "Linux 6.7 or later, CONFIG_TSM_REPORTS, configfs mounted at /sys/kernel/config"

TSM_ATTEMPTS = 3
"""Reports a configfs-tsm provider asks for before giving up on an entry another writer keeps changing."""
REPORT_DATA_SIZE = 64

SNP_REPORT_SIZE = 0x4A0
SNP_REPORT_DATA_OFFSET = 0x50
TDX_QUOTE_V4_REPORT_DATA_OFFSET = 568
TDX_QUOTE_V5_REPORT_DATA_OFFSET = 574  # v5 inserts a 2-byte body type and a 4-byte body size after the header
SGX_QUOTE_REPORT_DATA_OFFSET = 368  # 48-byte header + report body offset 320
QUOTE_VERSION_OFFSET = 0

# --- /dev/sev-guest (Linux include/uapi/linux/sev-guest.h) -----------------------------------
SNP_GET_REPORT = 0xC0205300
"""``_IOWR('S', 0x0, struct snp_guest_request_ioctl)``: request ``struct snp_report_req``."""
SNP_GET_EXT_REPORT = 0xC0205302
"""``_IOWR('S', 0x2, struct snp_guest_request_ioctl)``: request ``struct snp_ext_report_req``."""
SNP_REPORT_REQ = struct.Struct("<64sI28x")
"""``struct snp_report_req``: ``__u8 user_data[64]``, ``__u32 vmpl``, ``__u8 rsvd[28]``: 96 bytes."""
SNP_EXT_REPORT_REQ = struct.Struct("<96sQI4x")
"""``struct snp_ext_report_req``: ``struct snp_report_req data``, ``__u64 certs_address``, ``__u32 certs_len``
(and 4 bytes of tail padding): 112 bytes."""
SNP_REPORT_RESP_SIZE = 4000
"""``struct snp_report_resp``: the firmware's ``MSG_REPORT_RSP``: ``STATUS`` (u32) at 0x00, ``REPORT_SIZE``
(u32) at 0x04, reserved 0x08–0x1F, the report at 0x20."""
SNP_REPORT_RESP_HEADER = struct.Struct("<II24x")
SNP_GUEST_VMM_ERR_INVALID_LEN = 1
"""``exitinfo2``'s VMM half when ``certs_len`` is too small; the driver then writes the length needed into the
request's ``certs_len``."""
SNP_CERTS_PAGE = 4096
SEV_FW_BLOB_MAX_SIZE = 0x4000
"""The driver refuses a ``certs_len`` that is not a whole number of pages or above this (EINVAL)."""
SNP_REPORT_STATUS = {0x16: "invalid parameters"}
"""``MSG_REPORT_RSP`` status values of the SNP firmware ABI."""

SNP_CERT_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "vlek",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark",
}
"""The certificate table's GUIDs (SNP GHCB specification, certificate table format)."""
_CERT_ENTRY = struct.Struct("<16sII")


def parse_snp_certificate_table(blob: bytes) -> tuple[SnpCertificate, ...]:
    """The certificates of an SNP certificate table (``auxblob``): 24-byte entries of GUID
    (RFC 4122 byte order), offset and length from the table's start, ended by an all-zero entry.

    An empty blob (the host supplies no certificates) is an empty table. Entries
    with GUIDs this module does not know are kept under their GUID string, since
    the table is extensible.
    """
    certificates: list[SnpCertificate] = []
    position = 0
    while True:
        if position + _CERT_ENTRY.size > len(blob):
            if not blob:
                return ()
            raise AttestationError("SNP certificate table is not terminated by an all-zero entry")
        raw_guid, offset, length = _CERT_ENTRY.unpack_from(blob, position)
        position += _CERT_ENTRY.size
        if raw_guid == bytes(16) and offset == 0 and length == 0:
            return tuple(certificates)
        guid = uuid.UUID(bytes=raw_guid)
        if offset < position or offset + length > len(blob) or length == 0:
            raise AttestationError(
                f"SNP certificate table entry {guid} points outside the table (offset {offset}, length {length})"
            )
        kind = SNP_CERT_GUIDS.get(guid, str(guid))
        certificates.append(SnpCertificate(kind, blob[offset:offset + length]))


def report_data_of(tee_type: str, evidence: bytes) -> bytes:
    """The 64 report-data bytes inside raw evidence of this kind (SNP report, TDX or SGX quote)."""
    if tee_type == SEV_SNP:
        if len(evidence) < SNP_REPORT_SIZE:
            raise AttestationError(f"SNP report is {len(evidence)} bytes, expected {SNP_REPORT_SIZE}")
        offset = SNP_REPORT_DATA_OFFSET
    elif tee_type == TDX:
        if len(evidence) < 2:
            raise AttestationError("TDX quote is truncated")
        (version,) = struct.unpack_from("<H", evidence, QUOTE_VERSION_OFFSET)
        if version == 4:
            offset = TDX_QUOTE_V4_REPORT_DATA_OFFSET
        elif version == 5:
            offset = TDX_QUOTE_V5_REPORT_DATA_OFFSET
        else:
            raise AttestationError(f"TDX quote version {version} is not supported (4 or 5)")
    elif tee_type == SGX:
        offset = SGX_QUOTE_REPORT_DATA_OFFSET
    else:
        raise AttestationError(f"no report-data layout for evidence kind {tee_type!r}")
    if len(evidence) < offset + REPORT_DATA_SIZE:
        raise AttestationError(f"{tee_type} evidence is truncated ({len(evidence)} bytes)")
    return evidence[offset:offset + REPORT_DATA_SIZE]


def _snp_response_report(response: bytes, device: Path, vmpl: int) -> bytes:
    status, size = SNP_REPORT_RESP_HEADER.unpack_from(response)
    if status != 0:
        raise AttestationError(
            f"the SNP firmware refused the report request on {device}: status 0x{status:x} "
            f"({SNP_REPORT_STATUS.get(status, 'unknown status')}; VMPL {vmpl})"
        )
    if size != SNP_REPORT_SIZE:
        raise AttestationError(f"{device} answered a {size}-byte report, expected {SNP_REPORT_SIZE}")
    start = SNP_REPORT_RESP_HEADER.size
    return response[start:start + SNP_REPORT_SIZE]


def snp_ioctl_report(device: Path, report_data: bytes, vmpl: int) -> tuple[bytes, bytes]:
    """An SNP report for ``report_data`` at ``vmpl`` and the host's certificate table, through the
    sev-guest driver's ioctls.

    ``SNP_GET_EXT_REPORT`` first, with a one-page certificate buffer; when the
    host's table is larger, the driver says so (VMM error INVALID_LEN) and how
    large, and the request is made again with that size. A driver or host
    without extended requests (ENOTTY, or another VMM error) gets a plain
    ``SNP_GET_REPORT``: no certificates, which then come from AMD KDS. Firmware
    errors are refused.
    """
    if not 0 <= vmpl <= 3:
        raise AttestationError(f"SNP VMPL must be 0..3, not {vmpl}")
    response = ctypes.create_string_buffer(SNP_REPORT_RESP_SIZE)
    certs_len = SNP_CERTS_PAGE
    while True:
        certs = ctypes.create_string_buffer(certs_len)
        packed = SNP_EXT_REPORT_REQ.pack(SNP_REPORT_REQ.pack(report_data, vmpl), ctypes.addressof(certs), certs_len)
        request = ctypes.create_string_buffer(packed, len(packed))
        try:
            snp_guest_request(device, SNP_GET_EXT_REPORT, "SNP_GET_EXT_REPORT", request, response)
            return _snp_response_report(response.raw, device, vmpl), certs.raw
        except SnpGuestRequestError as exc:
            if exc.fw_error:
                raise
            if exc.vmm_error == SNP_GUEST_VMM_ERR_INVALID_LEN:
                (needed,) = struct.unpack_from("<I", request.raw, SNP_EXT_REPORT_REQ.size - 8)
                # Only a larger, page-sized, driver-acceptable length is worth asking again;
                # that also bounds the retries.
                if needed <= certs_len or needed > SEV_FW_BLOB_MAX_SIZE or needed % SNP_CERTS_PAGE:
                    raise AttestationError(
                        f"{device} asked for a {needed}-byte certificate buffer after {certs_len} bytes were too "
                        f"small; the driver takes whole pages up to {SEV_FW_BLOB_MAX_SIZE} bytes"
                    ) from None
                log.info("the host's SNP certificate table needs %d bytes, not %d; asking again", needed, certs_len)
                certs_len = needed
                continue
            if exc.errno != errno.ENOTTY and not exc.vmm_error:
                raise
            log.info("%s has no extended report here (%s); using SNP_GET_REPORT, without certificates",
                     device, exc.message)
            break
    plain = ctypes.create_string_buffer(SNP_REPORT_REQ.pack(report_data, vmpl), SNP_REPORT_REQ.size)
    snp_guest_request(device, SNP_GET_REPORT, "SNP_GET_REPORT", plain, response)
    return _snp_response_report(response.raw, device, vmpl), b""


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("ascii", "replace").strip()


def _write(path: Path, data: bytes) -> None:
    # One write and a close: configfs commits a binary attribute when the file is closed.
    with open(path, "wb", buffering=0) as f:
        f.write(data)


class ConfigfsTsmProvider:
    """SEV-SNP or TDX evidence through configfs-tsm: one fresh report entry per request.

    For SEV-SNP without configfs-tsm (no ``root`` directory) but with the guest device,
    reports come from the device's ioctls instead (:func:`snp_ioctl_report`).
    """

    def __init__(
        self, backend: str, root: Path, privlevel: int | None = None, device: Path | None = None, *,
        service: str = "", key_release: KeyReleaseClient | None = None,
    ) -> None:
        """``device`` is the guest device, for SEV-SNP ``/dev/sev-guest``, whose ioctl gives the
        sealing key; ``key_release`` is where a TDX guest gets its sealing key instead."""
        if backend not in TSM_PROVIDERS:
            raise ConfigError(f"configfs-tsm serves sev-snp and tdx, not {backend!r}")
        self._ioctl_device: Path | None = None
        if not root.is_dir():
            guest_device = device or GUEST_DEVICES[backend]
            if backend != SEV_SNP or not guest_device.exists():
                raise ConfigError(f"{backend}: {_configfs_absent(backend, root, guest_device)}")
            self._ioctl_device = guest_device
        self.backend = backend
        self.tee_type = backend
        self._root = root
        self._privlevel = privlevel if backend == SEV_SNP else None
        self._device = device or (SNP_GUEST_DEVICE if backend == SEV_SNP else None)
        self._service = service
        self._key_release = key_release
        self._released: dict[str, bytes] = {}
        self.source = f"ioctl {self._ioctl_device}" if self._ioctl_device else f"configfs-tsm {root}"

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError("report data must be exactly 64 bytes")
        if self._ioctl_device is not None:
            return self._ioctl_evidence(self._ioctl_device, report_data)
        entry = self._root / f"kettle-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            entry.mkdir()
        except OSError as exc:
            raise AttestationError(f"cannot create a configfs-tsm report entry in {self._root}: {exc.strerror}") from None
        try:
            quote, aux = self._report(entry, report_data)
        finally:
            try:
                entry.rmdir()
            except OSError as exc:
                log.warning("could not remove configfs-tsm entry %s: %s", entry, exc.strerror)
        certificates = parse_snp_certificate_table(aux) if self.backend == SEV_SNP else ()
        return Evidence(self.tee_type, quote, source=self.source, certificates=certificates)

    def _ioctl_evidence(self, device: Path, report_data: bytes) -> Evidence:
        report, table = snp_ioctl_report(device, report_data, self._privlevel or 0)
        if report_data_of(SEV_SNP, report) != report_data:
            raise AttestationError(f"{device} returned a report for other report data than was asked for")
        return Evidence(SEV_SNP, report, source=self.source, certificates=parse_snp_certificate_table(table))

    def _report(self, entry: Path, report_data: bytes) -> tuple[bytes, bytes]:
        expected = TSM_PROVIDERS[self.backend]
        provider = _read_text(entry / "provider")
        if provider != expected:
            raise AttestationError(
                f"configfs-tsm at {self._root} is provided by {provider!r}, not {expected!r} ({self.backend})"
            )
        if self._privlevel is not None:
            _write(entry / "privlevel", f"{self._privlevel}\n".encode())
        for attempt in range(1, TSM_ATTEMPTS + 1):
            before = int(_read_text(entry / "generation"))
            _write(entry / "inblob", report_data)
            try:
                quote = (entry / "outblob").read_bytes()
            except OSError as exc:
                raise AttestationError(f"configfs-tsm refused the report ({errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror})") from None
            aux = b""
            if self.backend == SEV_SNP and (entry / "auxblob").exists():
                aux = (entry / "auxblob").read_bytes()
            after = int(_read_text(entry / "generation"))
            # Our own write moved the counter by exactly one; anything more is another writer
            # in our entry, and the report may be for its data.
            if after == before + 1 and report_data_of(self.tee_type, quote) == report_data:
                return quote, aux
            log.warning(
                "configfs-tsm entry %s changed under us (generation %d -> %d, attempt %d of %d)",
                entry.name, before, after, attempt, TSM_ATTEMPTS,
            )
        raise AttestationError(
            f"configfs-tsm entry {entry} changed during each of {TSM_ATTEMPTS} attempts (its generation moved "
            "between our write and read, or the report carried other report data); refusing a report that may not be ours"
        )

    def sealing_key(self, purpose: str) -> bytes:
        if self.backend == SEV_SNP:
            assert self._device is not None
            # Requested at the VMPL the reports are (the firmware refuses a VMPL more
            # privileged than the guest's own); bound to measurement and policy.
            hardware_key = snp_derived_key(self._device, vmpl=self._privlevel or 0)
            return purpose_key(hardware_key, SEV_SNP, self._service, purpose)
        # TDX has no sealing key: the attestation service releases one to this attested
        # measurement. It is kept in this process's memory only, never written anywhere.
        if self._key_release is None:
            raise AttestationError(
                "a TDX service gets its sealing key from the attestation service's key release, "
                "which is not configured for this provider"
            )
        if purpose not in self._released:
            self._released[purpose] = self._key_release.fetch(self._service, purpose, self)
        return self._released[purpose]


class GramineProvider:
    """SGX DCAP quotes through Gramine's ``/dev/attestation`` pseudo-files."""

    backend = GRAMINE_SGX
    tee_type = SGX

    def __init__(self, root: Path, *, service: str = "") -> None:
        attestation_type = _read_gramine_type(root)
        if attestation_type != "dcap":
            raise ConfigError(
                f"Gramine attestation type at {root} is {attestation_type!r}, not 'dcap' "
                '(set sgx.remote_attestation = "dcap" in the manifest)'
            )
        self._root = root
        self._service = service
        self.source = f"gramine {root}"

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError("report data must be exactly 64 bytes")
        try:
            _write(self._root / "user_report_data", report_data)
            quote = (self._root / "quote").read_bytes()
        except OSError as exc:
            raise AttestationError(f"Gramine refused the quote ({exc.strerror})") from None
        if report_data_of(SGX, quote) != report_data:
            raise AttestationError("Gramine returned a quote for other report data than was written")
        return Evidence(SGX, quote, source=self.source)

    def sealing_key(self, purpose: str) -> bytes:
        return purpose_key(gramine_sealing_key(self._root), GRAMINE_SGX, self._service, purpose)


def _read_gramine_type(root: Path) -> str:
    try:
        return _read_text(root / "attestation_type")
    except FileNotFoundError:
        raise ConfigError(f"{root}/attestation_type does not exist (not running under gramine-sgx)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {root}/attestation_type: {exc.strerror}") from None


@dataclass(frozen=True)
class Probe:
    """What probing found for one backend."""

    backend: str
    usable: bool
    detail: str


def _configfs_absent(backend: str, root: Path, device: Path) -> str:
    detail = f"{root} does not exist (configfs-tsm needs {CONFIGFS_TSM_KERNEL})"
    if backend == SEV_SNP:
        detail += f", nor does {device} (the sev-guest driver, used where configfs-tsm is absent)"
    elif device.exists():
        detail += f"; {device} exists, but Kettle cannot use it for TDX: {TDX_IOCTL_REFUSAL}"
    return detail


def _probe_configfs(root: Path) -> tuple[str | None, str]:
    """The configfs-tsm provider name (None if unusable) and what was found."""
    if not root.is_dir():
        return None, f"{root} does not exist"
    entry = root / f"kettle-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        entry.mkdir()
    except OSError as exc:
        return None, f"cannot create an entry in {root}: {exc.strerror}"
    try:
        return _read_text(entry / "provider"), f"{root}"
    except OSError as exc:
        return None, f"cannot read {entry}/provider: {exc.strerror}"
    finally:
        try:
            entry.rmdir()
        except OSError as exc:
            log.warning("could not remove configfs-tsm probe entry %s: %s", entry, exc.strerror)


def probe_backends(
    tsm_root: Path, gramine_root: Path, allow_simulation: bool, devices: Mapping[str, Path] = GUEST_DEVICES
) -> list[Probe]:
    """Every backend, in the order ``auto`` prefers them, with whether it is usable here and why."""
    provider, where = _probe_configfs(tsm_root)
    probes: list[Probe] = []
    for backend, name in TSM_PROVIDERS.items():
        if provider == name:
            probes.append(Probe(backend, True, f"configfs-tsm provider {name} at {where}"))
        elif provider is not None:
            probes.append(Probe(backend, False, f"configfs-tsm is provided by {provider!r}, not {name!r}"))
        elif not tsm_root.is_dir() and backend == SEV_SNP and devices[backend].exists():
            probes.append(Probe(backend, True, f"ioctl {devices[backend]} ({tsm_root} does not exist, so no configfs-tsm)"))
        elif not tsm_root.is_dir():
            probes.append(Probe(backend, False, _configfs_absent(backend, tsm_root, devices[backend])))
        else:
            probes.append(Probe(backend, False, where))
    try:
        attestation_type = _read_gramine_type(gramine_root)
        if attestation_type == "dcap":
            probes.append(Probe(GRAMINE_SGX, True, f"Gramine DCAP attestation at {gramine_root}"))
        else:
            probes.append(Probe(GRAMINE_SGX, False, f"Gramine attestation type is {attestation_type!r}, not 'dcap'"))
    except ConfigError as exc:
        probes.append(Probe(GRAMINE_SGX, False, exc.message))
    if allow_simulation:
        probes.append(Probe(SIMULATION, True, "UNSAFE: software simulation, allowed by attestation.unsafe_allow_simulation"))
    else:
        probes.append(Probe(SIMULATION, False, "no hardware protection; needs attestation.unsafe_allow_simulation = true"))
    return probes


def choose_backend(probes: list[Probe]) -> str:
    """``auto``: the first usable backend, or a refusal that lists what was probed and why each failed."""
    for probe in probes:
        if probe.usable:
            return probe.backend
    reasons = "; ".join(f"{p.backend}: {p.detail}" for p in probes)
    raise ConfigError(f"attestation.backend = \"auto\" found no usable TEE backend ({reasons})")
