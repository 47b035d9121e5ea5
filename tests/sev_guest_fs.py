"""A FUSE emulation of the sev-guest driver's ioctls: ``SNP_GET_DERIVED_KEY``, ``SNP_GET_REPORT``
and ``SNP_GET_EXT_REPORT``.

``python tests/sev_guest_fs.py MOUNTPOINT --measurement HEX [--policy N] [--vmpl N] [--certs FILE] ...``
mounts a directory holding one file, ``sev-guest``, that answers the ioctl as
``/dev/sev-guest`` does (Linux ``include/uapi/linux/sev-guest.h``):

- the argument is ``struct snp_guest_request_ioctl`` (32 bytes: ``msg_version``,
  ``req_data`` and ``resp_data`` user addresses, ``exitinfo2``); ``msg_version`` 0
  is EINVAL, as in the driver;
- the request (``struct snp_derived_key_req``, 32 bytes) is read from the caller's
  memory at ``req_data`` and the 64-byte ``MSG_KEY_RSP`` written to ``resp_data``,
  as the driver's ``copy_from_user`` / ``copy_to_user`` do (here through
  ``/proc/PID/mem`` of the calling process, which needs ptrace access to it: run
  as root, as CI does, or with Yama's ``ptrace_scope`` at 0);
- like the firmware, it answers status 0x16 (invalid parameters) for a root key
  other than VCEK (0) or VMRK (1), non-zero reserved bits, unknown field bits, a
  VMPL below the guest's (``--vmpl``), a guest SVN or TCB above the guest's;
- the key is HMAC-SHA256 of a chip secret over the root key, the VMPL and each
  selected field (``--measurement``, ``--policy``, image and family id, guest
  SVN, TCB version), so two guests with different measurements get different keys
  exactly when the measurement bit is selected;
- ``SNP_GET_REPORT`` reads ``struct snp_report_req`` (96 bytes) and writes the
  4000-byte ``struct snp_report_resp`` (status, report size, the report at 0x20):
  a report (``tee_fs.snp_report``, with ``--measurement``) for exactly the user
  data, at the request's VMPL (status 0x16 for a VMPL below the guest's);
- ``SNP_GET_EXT_REPORT`` reads ``struct snp_ext_report_req`` (112 bytes) and also
  copies the host's certificate table (``--certs FILE``; none: a zero-filled
  buffer, the empty table) to ``certs_address``. When ``certs_len`` is smaller
  than the table's pages it fails as the driver does: EIO, VMM error
  ``SNP_GUEST_VMM_ERR_INVALID_LEN`` in ``exitinfo2`` and the needed length in the
  request's ``certs_len`` (FUSE returns the argument with the error, as the
  driver's ``copy_to_user`` does);
- hostile modes: ``--no-ext-report`` (ENOTTY for ``SNP_GET_EXT_REPORT``),
  ``--fw-error N`` (every report request fails with EIO and that firmware error),
  ``--status N`` (the response carries that status), ``--wrong-report-data`` (the
  report carries other user data than was asked for).

Linux's CUSE would expose this at a real character-device node; where the kernel
lacks CUSE (``CONFIG_CUSE`` unset), a FUSE file takes the same ioctl from the
same system call: FUSE forwards a restricted ioctl's 32-byte argument in both
directions, by the size and direction encoded in the command number.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import hmac
import stat
import struct
import time
from typing import Any

import mfusepy as fuse
from tee_fs import snp_report

GUEST_REQUEST = struct.Struct("<B7xQQQ")
DERIVED_KEY_REQ = struct.Struct("<IIQIIQ")
SNP_GET_REPORT = 0xC0205300
SNP_GET_DERIVED_KEY = 0xC0205301
SNP_GET_EXT_REPORT = 0xC0205302
REPORT_REQ = struct.Struct("<64sI28s")
EXT_REPORT_REQ = struct.Struct("<96sQI4x")
REPORT_RESP_SIZE = 4000
PAGE = 4096
SEV_FW_BLOB_MAX_SIZE = 0x4000
VMM_ERR_INVALID_LEN = 1
RESPONSE_SIZE = 64
INVALID_PARAMS = 0x16
KNOWN_FIELDS = 0x3F  # policy, image id, family id, measurement, guest SVN, TCB version
CHIP_SECRET = b"emulated AMD chip secret"


class SevGuest(fuse.Operations):
    use_ns = True

    def __init__(
        self, measurement: bytes, policy: int, vmpl: int, guest_svn: int, tcb: int, *, certs: bytes = b"",
        ext_report: bool = True, fw_error: int = 0, status: int = 0, wrong_report_data: bool = False,
    ) -> None:
        self.certs = certs
        self.ext_report = ext_report
        self.fw_error = fw_error
        self.status = status
        self.wrong_report_data = wrong_report_data
        self.measurement = measurement
        self.policy = policy
        self.vmpl = vmpl
        self.guest_svn = guest_svn
        self.tcb = tcb
        self.started = time.time_ns()
        self.requests = 0

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == "/":
            mode = stat.S_IFDIR | 0o755
        elif path == "/sev-guest":
            mode = stat.S_IFREG | 0o600
        else:
            raise fuse.FuseOSError(errno.ENOENT)
        now = self.started
        return {"st_mode": mode, "st_nlink": 1, "st_size": 0, "st_atime": now, "st_mtime": now, "st_ctime": now}

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", "sev-guest"]

    def open(self, path: str, fi: Any) -> int:
        self.getattr(path)
        return 0

    def ioctl(self, path: str, cmd: int, arg: Any, fh: Any, flags: int, data: Any) -> int:
        cmd &= 0xFFFFFFFF
        if cmd not in (SNP_GET_REPORT, SNP_GET_DERIVED_KEY, SNP_GET_EXT_REPORT) or (
            cmd == SNP_GET_EXT_REPORT and not self.ext_report
        ):
            raise fuse.FuseOSError(errno.ENOTTY)
        argument = ctypes.string_at(data, GUEST_REQUEST.size)
        msg_version, req_address, resp_address, _ = GUEST_REQUEST.unpack(argument)
        if msg_version == 0:
            raise fuse.FuseOSError(errno.EINVAL)
        _, _, pid = fuse.fuse_get_context()
        exitinfo2 = 0
        try:
            with open(f"/proc/{pid}/mem", "r+b", buffering=0) as memory:
                if cmd == SNP_GET_DERIVED_KEY:
                    memory.seek(req_address)
                    response = self._answer(memory.read(DERIVED_KEY_REQ.size))
                else:
                    response, exitinfo2 = self._report(memory, cmd, req_address)
                if not exitinfo2:
                    memory.seek(resp_address)
                    memory.write(response)
        except OSError:
            raise fuse.FuseOSError(errno.EFAULT) from None
        if exitinfo2:
            # The driver copies exitinfo2 back before failing with EIO; FUSE returns the argument too.
            ctypes.memmove(data, GUEST_REQUEST.pack(msg_version, req_address, resp_address, exitinfo2), GUEST_REQUEST.size)
            raise fuse.FuseOSError(errno.EIO)
        self.requests += 1
        ctypes.memmove(data, GUEST_REQUEST.pack(msg_version, req_address, resp_address, 0), GUEST_REQUEST.size)
        return 0

    def _report(self, memory: Any, cmd: int, req_address: int) -> tuple[bytes, int]:
        """The ``snp_report_resp`` and ``exitinfo2`` (0 on success) for a report request."""
        memory.seek(req_address)
        if cmd == SNP_GET_EXT_REPORT:
            raw, certs_address, certs_len = EXT_REPORT_REQ.unpack(memory.read(EXT_REPORT_REQ.size))
        else:
            raw, certs_address, certs_len = memory.read(REPORT_REQ.size), 0, 0
        user_data, vmpl, reserved = REPORT_REQ.unpack(raw)
        if self.fw_error:
            return b"", self.fw_error
        if cmd == SNP_GET_EXT_REPORT and certs_len:
            if certs_len % PAGE or certs_len > SEV_FW_BLOB_MAX_SIZE:
                raise fuse.FuseOSError(errno.EINVAL)  # the driver's own check, before any request
            needed = -(-len(self.certs) // PAGE) * PAGE
            if certs_len < needed:
                memory.seek(req_address)
                memory.write(EXT_REPORT_REQ.pack(raw, certs_address, needed))
                return b"", VMM_ERR_INVALID_LEN << 32
            memory.seek(certs_address)
            memory.write(self.certs.ljust(certs_len, b"\0"))
        if self.status or reserved != bytes(28) or not self.vmpl <= vmpl <= 3:
            return struct.pack("<II", self.status or INVALID_PARAMS, 0).ljust(REPORT_RESP_SIZE, b"\0"), 0
        if self.wrong_report_data:
            user_data = bytes(b ^ 0xFF for b in user_data)
        report = bytearray(snp_report(user_data, vmpl))
        report[0x90:0xC0] = self.measurement
        return struct.pack("<II", 0, len(report)).ljust(32, b"\0") + bytes(report).ljust(REPORT_RESP_SIZE - 32, b"\0"), 0

    def _answer(self, request: bytes) -> bytes:
        root_key, reserved, fields, vmpl, guest_svn, tcb = DERIVED_KEY_REQ.unpack(request)
        if (
            root_key > 1 or reserved or fields & ~KNOWN_FIELDS or not self.vmpl <= vmpl <= 3
            or guest_svn > self.guest_svn or tcb > self.tcb
        ):
            return struct.pack("<I", INVALID_PARAMS).ljust(RESPONSE_SIZE, b"\0")
        mac = hmac.new(CHIP_SECRET, struct.pack("<IIQ", root_key, vmpl, fields), hashlib.sha256)
        selected = (
            (1 << 0, struct.pack("<Q", self.policy)),
            (1 << 1, bytes(16)),  # image id: no ID block
            (1 << 2, bytes(16)),  # family id: no ID block
            (1 << 3, self.measurement),
            (1 << 4, struct.pack("<I", guest_svn)),
            (1 << 5, struct.pack("<Q", tcb)),
        )
        for bit, value in selected:
            if fields & bit:
                mac.update(value)
        return bytes(32) + mac.digest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint")
    parser.add_argument("--measurement", required=True, help="the emulated launch measurement, 48 bytes in hex")
    parser.add_argument("--policy", type=lambda v: int(v, 0), default=0x30000)
    parser.add_argument("--vmpl", type=int, default=0, help="the VMPL the guest runs at")
    parser.add_argument("--guest-svn", type=int, default=0)
    parser.add_argument("--tcb", type=lambda v: int(v, 0), default=0)
    parser.add_argument("--certs", type=argparse.FileType("rb"), help="the host's SNP certificate table")
    parser.add_argument("--no-ext-report", action="store_true", help="SNP_GET_EXT_REPORT is ENOTTY")
    parser.add_argument("--fw-error", type=lambda v: int(v, 0), default=0, help="every report request fails with it")
    parser.add_argument("--status", type=lambda v: int(v, 0), default=0, help="every report response carries it")
    parser.add_argument("--wrong-report-data", action="store_true", help="reports carry other user data")
    args = parser.parse_args()
    measurement = bytes.fromhex(args.measurement)
    if len(measurement) != 48:
        parser.error("--measurement must be 48 bytes")
    operations = SevGuest(
        measurement, args.policy, args.vmpl, args.guest_svn, args.tcb,
        certs=args.certs.read() if args.certs else b"", ext_report=not args.no_ext_report,
        fw_error=args.fw_error, status=args.status, wrong_report_data=args.wrong_report_data,
    )
    fuse.FUSE(operations, args.mountpoint, foreground=True, raw_fi=False, nothreads=True,
              attr_timeout=0, entry_timeout=0, negative_timeout=0)


if __name__ == "__main__":
    main()
