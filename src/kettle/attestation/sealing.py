"""Sealing keys from the TEE: keys the host cannot read, one per service and purpose.

Each backend gets a hardware key its own way, and every one of them is then
turned into per-purpose keys the same way (:func:`purpose_key`: HKDF-SHA256 with
the backend, the service and the purpose in ``info``), so a key for one purpose
never opens what was sealed for another:

* **SEV-SNP**: ``SNP_GET_DERIVED_KEY`` on ``/dev/sev-guest`` (:func:`snp_derived_key`),
  a key the AMD secure processor derives from the chip's VCEK root, mixed with the
  guest's measurement and policy. A code update changes the measurement, so it
  cannot open what the previous code sealed (docs/attestation.md, "Sealing keys").
* **Gramine-SGX**: the enclave's MRSIGNER sealing key from
  ``/dev/attestation/keys/_sgx_mrsigner`` (:func:`gramine_sealing_key`).
* **TDX** has no sealing key of its own; the attestation service releases one to
  an attested caller of the right measurement (:class:`KeyReleaseClient`, and
  :mod:`kettle.attestation_service.key_release` on the service's side).

The layouts of the SNP ioctl are Linux's ``include/uapi/linux/sev-guest.h`` and the
SNP firmware ABI's ``MSG_KEY_REQ`` / ``MSG_KEY_RSP``.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import errno
import fcntl
import json
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AttestationError, Unavailable
from .backends import EvidenceProvider
from .identity import (
    Identity,
    as_tls_context,
    post_to_attestation_service,
    request_certificate,
)

SEAL_DOMAIN = b"kettle-seal-v1\0"
KEY_SIZE = 32


def _name_bytes(what: str, value: str) -> bytes:
    # NUL separates the fields of the HKDF info, so no field may contain one.
    if not value or "\0" in value:
        raise AttestationError(f"sealing {what} must be a non-empty name without NUL characters")
    return value.encode()


def purpose_key(hardware_key: bytes, backend: str, service: str, purpose: str) -> bytes:
    """The 32-byte key for ``purpose`` of ``service``, derived from the backend's hardware key."""
    info = (
        SEAL_DOMAIN + _name_bytes("backend", backend) + b"\0" + _name_bytes("service", service)
        + b"\0" + _name_bytes("purpose", purpose)
    )
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(hardware_key)


# --- SEV-SNP: SNP_GET_DERIVED_KEY on /dev/sev-guest ---------------------------------------

SNP_GUEST_DEVICE = Path("/dev/sev-guest")

SNP_GUEST_REQUEST = struct.Struct("<B7xQQQ")
"""``struct snp_guest_request_ioctl``: ``__u8 msg_version`` (7 bytes of padding), ``__u64 req_data``,
``__u64 resp_data`` (user addresses), ``__u64 exitinfo2`` (firmware error in bits 0–31, VMM error in 32–63)."""
SNP_DERIVED_KEY_REQ = struct.Struct("<IIQIIQ")
"""``struct snp_derived_key_req``: ``__u32 root_key_select``, ``__u32 rsvd``, ``__u64 guest_field_select``,
``__u32 vmpl``, ``__u32 guest_svn``, ``__u64 tcb_version``: 32 bytes."""
SNP_DERIVED_KEY_RESP_SIZE = 64
"""``struct snp_derived_key_resp``: the firmware's ``MSG_KEY_RSP``: ``STATUS`` (u32) at 0x00, reserved
0x04–0x1F, ``DERIVED_KEY`` (32 bytes) at 0x20."""
SNP_KEY_OFFSET = 0x20


def _iowr(kind: str, number: int, size: int) -> int:
    # Linux's _IOWR: direction read|write (3) in bits 30-31, size in 16-29, type in 8-15, number in 0-7.
    return (3 << 30) | (size << 16) | (ord(kind) << 8) | number


SNP_GET_DERIVED_KEY = _iowr("S", 0x1, SNP_GUEST_REQUEST.size)
"""``_IOWR('S', 0x1, struct snp_guest_request_ioctl)`` = 0xC0205301."""
SNP_MSG_VERSION = 1

SNP_ROOT_KEY_VCEK = 0
"""``ROOT_KEY_SELECT`` 0: the chip-unique VCEK (1 would be the VM root key, which the host's migration agent holds)."""
SNP_FIELD_POLICY = 1 << 0
SNP_FIELD_IMAGE_ID = 1 << 1
SNP_FIELD_FAMILY_ID = 1 << 2
SNP_FIELD_MEASUREMENT = 1 << 3
SNP_FIELD_GUEST_SVN = 1 << 4
SNP_FIELD_TCB_VERSION = 1 << 5
SNP_SEAL_FIELDS = SNP_FIELD_POLICY | SNP_FIELD_MEASUREMENT
"""What Kettle's SNP key is bound to: the launch measurement (the exact code) and the guest policy
(so the same image launched with debugging allowed gets another key). Not the guest SVN (Kettle's
guests carry no signed ID block that would set one) and not the TCB (a firmware update must not
lose the data; the attestation service's TCB policy refuses out-of-date firmware instead)."""

SNP_STATUS = {0x16: "invalid parameters"}
"""``MSG_KEY_RSP`` status values of the SNP firmware ABI."""


class SnpGuestRequestError(AttestationError):
    """An ioctl on ``/dev/sev-guest`` failed; ``fw_error`` and ``vmm_error`` are the two halves of ``exitinfo2``."""

    def __init__(self, message: str, errno_value: int, fw_error: int, vmm_error: int) -> None:
        super().__init__(message)
        self.errno = errno_value
        self.fw_error = fw_error
        self.vmm_error = vmm_error


def snp_guest_request(device: Path, command: int, name: str, request: ctypes.Array[ctypes.c_char],
                      response: ctypes.Array[ctypes.c_char]) -> None:
    """One sev-guest ioctl (``struct snp_guest_request_ioctl``): ``request`` and ``response`` are passed
    by address, as the driver expects, and the driver reads and writes them in place.

    :raises SnpGuestRequestError: the device is missing or the ioctl failed (with the firmware and VMM
        errors the driver reported in ``exitinfo2``).
    """
    argument = bytearray(
        SNP_GUEST_REQUEST.pack(SNP_MSG_VERSION, ctypes.addressof(request), ctypes.addressof(response), 0)
    )
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SnpGuestRequestError(
            f"{device} does not exist (the sev-guest driver, CONFIG_SEV_GUEST)", errno.ENOENT, 0, 0
        ) from None
    except OSError as exc:
        raise SnpGuestRequestError(f"cannot open {device}: {exc.strerror}", exc.errno or 0, 0, 0) from None
    try:
        fcntl.ioctl(fd, command, argument, True)
    except OSError as exc:
        # The driver copies exitinfo2 back even when the request failed; it says who refused.
        *_, exitinfo2 = SNP_GUEST_REQUEST.unpack(argument)
        fw_error, vmm_error = exitinfo2 & 0xFFFFFFFF, exitinfo2 >> 32
        raise SnpGuestRequestError(
            f"{name} on {device} failed: {errno.errorcode.get(exc.errno or 0, exc.errno)} "
            f"({exc.strerror}), firmware error 0x{fw_error:x}, VMM error 0x{vmm_error:x}",
            exc.errno or 0, fw_error, vmm_error,
        ) from None
    finally:
        os.close(fd)


def snp_derived_key(device: Path = SNP_GUEST_DEVICE, *, vmpl: int = 0, fields: int = SNP_SEAL_FIELDS) -> bytes:
    """The 32-byte key the SNP firmware derives for this guest, through the sev-guest driver's ioctl.

    The response is wiped from memory as soon as the key is copied out.
    """
    if not 0 <= vmpl <= 3:
        raise AttestationError(f"SNP VMPL must be 0..3, not {vmpl}")
    packed = SNP_DERIVED_KEY_REQ.pack(SNP_ROOT_KEY_VCEK, 0, fields, vmpl, 0, 0)
    request = ctypes.create_string_buffer(packed, len(packed))
    response = ctypes.create_string_buffer(SNP_DERIVED_KEY_RESP_SIZE)
    try:
        try:
            snp_guest_request(device, SNP_GET_DERIVED_KEY, "SNP_GET_DERIVED_KEY", request, response)
        except SnpGuestRequestError as exc:
            if exc.errno == errno.ENOENT and not device.exists():
                raise AttestationError(
                    f"{device} does not exist: SEV-SNP sealing keys come from the sev-guest driver "
                    "(CONFIG_SEV_GUEST) through SNP_GET_DERIVED_KEY"
                ) from None
            raise
        raw = response.raw
        (status,) = struct.unpack_from("<I", raw, 0)
        if status != 0:
            raise AttestationError(
                f"the SNP firmware refused the derived-key request: status 0x{status:x} "
                f"({SNP_STATUS.get(status, 'unknown status')}; VMPL {vmpl}, fields 0x{fields:x})"
            )
        key = raw[SNP_KEY_OFFSET:SNP_KEY_OFFSET + KEY_SIZE]
        if key == bytes(KEY_SIZE):
            raise AttestationError(f"{device} returned an all-zero derived key; refusing to seal with it")
        return key
    finally:
        ctypes.memset(response, 0, SNP_DERIVED_KEY_RESP_SIZE)


# --- Gramine-SGX: /dev/attestation/keys ------------------------------------------------------

GRAMINE_SEALING_KEY = "_sgx_mrsigner"
"""Sealed by signer, as Kettle's simulation backend does: an audited code update (same signer, new
MRENCLAVE in enclave info) still opens the data. The price is trust in the signing key: any enclave it
signs, audited or not, can derive the same key (docs/attestation.md, "Sealing keys")."""
GRAMINE_KEY_SIZE = 16


def gramine_sealing_key(attestation_root: Path, name: str = GRAMINE_SEALING_KEY) -> bytes:
    """One of Gramine's 16-byte SGX sealing keys (``EGETKEY`` with the named key policy)."""
    path = attestation_root / "keys" / name
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise AttestationError(f"{path} does not exist (Gramine 1.4 or later exposes SGX sealing keys there)") from None
    except OSError as exc:
        raise AttestationError(f"cannot read {path}: {exc.strerror}") from None
    if len(key) != GRAMINE_KEY_SIZE:
        raise AttestationError(f"{path} holds {len(key)} bytes, expected a {GRAMINE_KEY_SIZE}-byte SGX sealing key")
    if key == bytes(GRAMINE_KEY_SIZE):
        raise AttestationError(f"{path} holds an all-zero key; refusing to seal with it")
    return key


# --- TDX: a key released by the attestation service ------------------------------------------

RELEASE_PATH = "/kettle/v1/sealing-key"


@contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to ``data`` that exists only in memory (``ssl`` loads client keys from paths only)."""
    fd = os.memfd_create("kettle-release-identity", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


@dataclass(frozen=True)
class KeyReleaseClient:
    """Fetches a sealing key from the attestation service's key release.

    It attests first (fresh key, evidence, certificate) and presents that certificate
    over mutual TLS; the service releases the key for exactly the attested
    measurement. Retries while the attestation service is unreachable (it may be
    starting), never after a refusal.
    """

    service_url: str
    as_root: Path
    attempts: int = 30
    delay: float = 0.5
    timeout: float = 10.0

    def fetch(self, service: str, purpose: str, provider: EvidenceProvider) -> bytes:
        attempt = 1
        while True:
            try:
                identity = request_certificate(self.service_url, self.as_root, service, provider, 0, self.timeout)
                return self._release(identity, purpose)
            except Unavailable:
                if attempt >= self.attempts:
                    raise
                attempt += 1
                time.sleep(self.delay)

    def _release(self, identity: Identity, purpose: str) -> bytes:
        context = as_tls_context(self.as_root)
        with _memory_file(identity.client_chain_pem) as chain, _memory_file(identity.key_pem) as key:
            context.load_cert_chain(chain, key)
        body = json.dumps({"service": identity.service, "purpose": purpose}).encode()
        status, doc = post_to_attestation_service(self.service_url, RELEASE_PATH, body, context, self.timeout)
        if status != 200:
            raise AttestationError(
                f"the attestation service refused the {purpose!r} sealing key of {identity.service}: "
                f"{doc.get('error', status)}"
            )
        try:
            released = base64.b64decode(str(doc["key"]), validate=True)
        except (KeyError, binascii.Error):
            raise AttestationError("the attestation service answered the key release without a key") from None
        if len(released) != KEY_SIZE:
            raise AttestationError(f"the attestation service released a {len(released)}-byte key, expected {KEY_SIZE}")
        return released
