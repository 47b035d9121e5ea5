"""FUSE emulations of the TEE file ABIs the evidence providers drive (``spec/attestation.md`` §6.1, §6.2).

``python tests/tee_fs.py MOUNTPOINT tsm --provider sev_guest [--interfere N] [--auxblob FILE]``
mounts a configfs-tsm report directory that behaves like the kernel's:

- ``mkdir NAME`` creates an entry with ``inblob``, ``outblob``, ``auxblob``,
  ``provider``, ``generation``, ``privlevel`` and ``privlevel_floor``; ``rmdir``
  removes it with its attributes (which a plain directory would refuse);
- a binary attribute (``inblob``) is committed when the writer closes the file, a
  text attribute (``privlevel``) on write; each commit increments ``generation``;
  ``inblob`` takes at most 64 bytes (EFBIG beyond);
- ``outblob`` is EINVAL before ``inblob`` was written, and EINVAL unless it was
  exactly 64 bytes; otherwise it is a report for exactly the current ``inblob``: an
  SNP ATTESTATION_REPORT (1184 bytes, report data at 0x50) for ``sev_guest``, a
  TDX v4 quote (report data at 568) for ``tdx_guest``;
- ``--interfere N`` plays another writer for the first N reports of each entry:
  just before the report is generated it writes other data to the entry's
  ``inblob`` (so the report is for that data and the generation moved), as a
  second process sharing the entry would; with ``--interfere-same`` it writes the
  same bytes again, so only the moved generation shows it;
- an SNP report carries the entry's ``privlevel`` as its VMPL (offset 0x30);
- ``auxblob`` has the bytes of ``--auxblob`` (empty by default, as when the host
  supplies no certificates).

``python tests/tee_fs.py MOUNTPOINT gramine [--attestation-type dcap]
[--mrenclave HEX] [--mrsigner HEX] [--no-keys]`` mounts Gramine's ``/dev/attestation``:
``attestation_type``, ``user_report_data`` (64 bytes; shorter writes zero-padded,
longer ones truncated), ``quote`` (an SGX v3 quote whose report data, at 368, is
the current ``user_report_data``) and ``keys/`` with the SGX sealing keys
``_sgx_mrenclave`` and ``_sgx_mrsigner``: 16 bytes each, derived (HMAC of an
emulated CPU secret) from the emulated MRENCLAVE or MRSIGNER alone, as EGETKEY
derives them from the identity its key policy names. ``--no-keys`` plays a
Gramine older than 1.4, which has no ``keys/``.

Evidence is shaped like the real thing but signed by nothing: the providers
under test do not verify evidence, the attestation service does. Every file is
opened with direct I/O so each read reaches this process, as configfs does.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import hmac
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import mfusepy as fuse

TSM_ATTRIBUTES = {
    # name: (mode, binary)
    "inblob": (0o200, True),
    "outblob": (0o444, True),
    "auxblob": (0o444, True),
    "provider": (0o444, False),
    "generation": (0o444, False),
    "privlevel": (0o200, False),
    "privlevel_floor": (0o444, False),
}
OTHER_WRITER_DATA = b"\xee" * 64


def snp_report(report_data: bytes, vmpl: int) -> bytes:
    report = bytearray(0x4A0)
    struct.pack_into("<III", report, 0, 3, 0, 0)  # version 3, guest svn 0, policy low word
    struct.pack_into("<I", report, 0x30, vmpl)
    struct.pack_into("<I", report, 0x34, 1)  # ECDSA P-384 with SHA-384
    report[0x50:0x90] = report_data
    report[0x90:0xC0] = hashlib.sha384(b"emulated launch").digest()
    return bytes(report)


def tdx_quote(report_data: bytes, _privlevel: int) -> bytes:  # TDX has no VMPL
    header = struct.pack("<HHI", 4, 2, 0x81).ljust(48, b"\0")
    body = bytearray(584)
    body[520:584] = report_data  # REPORTDATA is the body's last field: quote offset 568
    signature_data = b"\x01" * 64 + b"\x02" * 64
    return header + bytes(body) + struct.pack("<I", len(signature_data)) + signature_data


def sgx_quote(report_data: bytes) -> bytes:
    header = struct.pack("<HHI", 3, 2, 0).ljust(48, b"\0")
    body = bytearray(384)
    body[320:384] = report_data
    signature_data = b"\x03" * 64
    return header + bytes(body) + struct.pack("<I", len(signature_data)) + signature_data


REPORTS = {"sev_guest": snp_report, "tdx_guest": tdx_quote}


@dataclass
class Entry:
    inblob: bytes | None = None
    generation: int = 0
    privlevel: int = 0
    outblob: bytes | None = None
    outblob_generation: int = -1
    reports: int = 0


@dataclass
class Handle:
    path: str
    written: bytearray = field(default_factory=bytearray)
    content: bytes | None = None


class _Base(fuse.Operations):
    use_ns = True

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.started = time.time_ns()

    def _stat(self, mode: int, size: int = 0) -> dict[str, Any]:
        now = self.started
        return {"st_mode": mode, "st_nlink": 2 if stat.S_ISDIR(mode) else 1, "st_size": size,
                "st_atime": now, "st_mtime": now, "st_ctime": now, "st_uid": 0, "st_gid": 0}

    def _new_handle(self, path: str, fi: Any) -> int:
        fi.direct_io = True
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(path)
        fi.fh = fh
        return 0


class TsmReport(_Base):
    """configfs ``tsm/report`` with one provider."""

    def __init__(self, provider: str, interfere: int, interfere_same: bool, auxblob: bytes) -> None:
        super().__init__()
        self.provider = provider
        self.interfere = interfere
        self.interfere_same = interfere_same
        self.auxblob = auxblob
        self.entries: dict[str, Entry] = {}

    def _split(self, path: str) -> tuple[str, str | None]:
        parts = path.strip("/").split("/")
        if len(parts) == 1:
            return parts[0], None
        if len(parts) == 2:
            return parts[0], parts[1]
        raise fuse.FuseOSError(errno.ENOENT)

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        with self._mutex:
            if path == "/":
                return self._stat(stat.S_IFDIR | 0o755)
            name, attribute = self._split(path)
            if name not in self.entries or (attribute is not None and attribute not in TSM_ATTRIBUTES):
                raise fuse.FuseOSError(errno.ENOENT)
            if attribute is None:
                return self._stat(stat.S_IFDIR | 0o755)
            mode, _ = TSM_ATTRIBUTES[attribute]
            # configfs reports 4096 for text attributes and 0 for binary ones; reads run to EOF.
            return self._stat(stat.S_IFREG | mode, 0 if TSM_ATTRIBUTES[attribute][1] else 4096)

    def readdir(self, path: str, fh: Any) -> list[str]:
        with self._mutex:
            if path == "/":
                return [".", "..", *self.entries]
            name, attribute = self._split(path)
            if attribute is not None or name not in self.entries:
                raise fuse.FuseOSError(errno.ENOTDIR)
            return [".", "..", *TSM_ATTRIBUTES]

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            name, attribute = self._split(path)
            if attribute is not None:
                raise fuse.FuseOSError(errno.EPERM)
            if name in self.entries:
                raise fuse.FuseOSError(errno.EEXIST)
            self.entries[name] = Entry()
            return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            name, attribute = self._split(path)
            if attribute is not None or name not in self.entries:
                raise fuse.FuseOSError(errno.ENOENT)
            del self.entries[name]
            return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        raise fuse.FuseOSError(errno.EPERM)  # configfs: only the kernel makes attributes

    def unlink(self, path: str) -> int:
        raise fuse.FuseOSError(errno.EPERM)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        return 0  # O_TRUNC on an attribute is accepted and means nothing, as in configfs

    def open(self, path: str, fi: Any) -> int:
        with self._mutex:
            name, attribute = self._split(path)
            if name not in self.entries or attribute not in TSM_ATTRIBUTES:
                raise fuse.FuseOSError(errno.ENOENT)
            mode, _ = TSM_ATTRIBUTES[attribute]
            writing = fi.flags & 3 != 0
            if (writing and not mode & 0o200) or (fi.flags & 3 != 1 and not mode & 0o444):
                raise fuse.FuseOSError(errno.EACCES)
            return self._new_handle(path, fi)

    def _content(self, entry: Entry, attribute: str) -> bytes:
        if attribute == "provider":
            return f"{self.provider}\n".encode()
        if attribute == "generation":
            return f"{entry.generation}\n".encode()
        if attribute == "privlevel_floor":
            return b"0\n"
        if attribute == "auxblob":
            return self.auxblob
        if attribute == "outblob":
            if entry.reports < self.interfere:
                # Another process sharing this entry writes its own data just now (or, with
                # --interfere-same, rewrites the same bytes: only the generation tells).
                if not self.interfere_same or entry.inblob is None:
                    entry.inblob = OTHER_WRITER_DATA
                entry.generation += 1
            entry.reports += 1
            if entry.inblob is None or len(entry.inblob) != 64:
                raise fuse.FuseOSError(errno.EINVAL)
            if entry.outblob_generation != entry.generation:
                entry.outblob = REPORTS[self.provider](entry.inblob, entry.privlevel)
                entry.outblob_generation = entry.generation
            assert entry.outblob is not None
            return entry.outblob
        raise fuse.FuseOSError(errno.EACCES)

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        with self._mutex:
            handle = self.handles[fi.fh]
            name, attribute = self._split(path)
            entry = self.entries.get(name)
            if entry is None or attribute is None:
                raise fuse.FuseOSError(errno.ENOENT)
            if handle.content is None:  # configfs fills an open file's buffer once, on its first read
                handle.content = self._content(entry, attribute)
            return handle.content[offset:offset + size]

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        with self._mutex:
            handle = self.handles[fi.fh]
            name, attribute = self._split(path)
            entry = self.entries.get(name)
            if entry is None or attribute is None:
                raise fuse.FuseOSError(errno.ENOENT)
            if attribute == "privlevel":
                try:
                    level = int(data.decode().strip())
                except ValueError:
                    raise fuse.FuseOSError(errno.EINVAL) from None
                if not 0 <= level <= 3:
                    raise fuse.FuseOSError(errno.EINVAL)
                entry.privlevel = level
                entry.generation += 1
                return len(data)
            if offset + len(data) > 64:
                raise fuse.FuseOSError(errno.EFBIG)
            handle.written[offset:offset + len(data)] = data
            return len(data)

    def flush(self, path: str, fi: Any) -> int:
        # configfs commits a binary attribute when its file is closed; FUSE's flush is the
        # part of close() the closing process waits for (release arrives asynchronously).
        with self._mutex:
            handle = self.handles[fi.fh]
            name, attribute = self._split(path)
            entry = self.entries.get(name)
            if entry is not None and attribute == "inblob" and handle.written:
                entry.inblob = bytes(handle.written)
                entry.generation += 1
                handle.written.clear()
            return 0

    def release(self, path: str, fi: Any) -> int:
        with self._mutex:
            self.handles.pop(fi.fh, None)
            return 0


SGX_CPU_SECRET = b"emulated SGX CPU secret"


def sgx_sealing_key(policy: str, identity: bytes) -> bytes:
    """The emulated EGETKEY seal key for ``policy`` (``mrenclave`` or ``mrsigner``) and that identity."""
    return hmac.new(SGX_CPU_SECRET, policy.encode() + b"\0" + identity, hashlib.sha256).digest()[:16]


class GramineAttestation(_Base):
    """Gramine's ``/dev/attestation`` (the subset the provider uses)."""

    FILES: ClassVar[dict[str, int]] = {"attestation_type": 0o444, "user_report_data": 0o644, "quote": 0o444}

    def __init__(self, attestation_type: str, mrenclave: bytes, mrsigner: bytes, keys: bool) -> None:
        super().__init__()
        self.attestation_type = attestation_type
        self.user_report_data = bytes(64)
        self.keys = {
            "_sgx_mrenclave": sgx_sealing_key("mrenclave", mrenclave),
            "_sgx_mrsigner": sgx_sealing_key("mrsigner", mrsigner),
        } if keys else None

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == "/":
            return self._stat(stat.S_IFDIR | 0o755)
        name = path.strip("/")
        if self.keys is not None and name == "keys":
            return self._stat(stat.S_IFDIR | 0o755)
        if self.keys is not None and name.removeprefix("keys/") in self.keys:
            return self._stat(stat.S_IFREG | 0o444, 16)
        if name not in self.FILES or (name == "quote" and self.attestation_type == "none"):
            raise fuse.FuseOSError(errno.ENOENT)
        return self._stat(stat.S_IFREG | self.FILES[name])

    def readdir(self, path: str, fh: Any) -> list[str]:
        if path.strip("/") == "keys" and self.keys is not None:
            return [".", "..", *self.keys]
        return [".", "..", *self.FILES, *(["keys"] if self.keys is not None else [])]

    def open(self, path: str, fi: Any) -> int:
        self.getattr(path)
        with self._mutex:
            return self._new_handle(path, fi)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        with self._mutex:
            handle = self.handles[fi.fh]
            if handle.content is None:
                name = path.strip("/")
                if name == "attestation_type":
                    handle.content = f"{self.attestation_type}\n".encode()
                elif name == "user_report_data":
                    handle.content = self.user_report_data
                elif name.startswith("keys/"):
                    assert self.keys is not None  # open() found the file
                    handle.content = self.keys[name.removeprefix("keys/")]
                else:
                    handle.content = sgx_quote(self.user_report_data)
            return handle.content[offset:offset + size]

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        if path.strip("/") != "user_report_data":
            raise fuse.FuseOSError(errno.EACCES)
        with self._mutex:
            handle = self.handles[fi.fh]
            handle.written[offset:offset + len(data)] = data
            return len(data)

    def flush(self, path: str, fi: Any) -> int:
        with self._mutex:
            handle = self.handles[fi.fh]
            if path.strip("/") == "user_report_data" and handle.written:
                self.user_report_data = bytes(handle.written[:64]).ljust(64, b"\0")
                handle.written.clear()
            return 0

    def release(self, path: str, fi: Any) -> int:
        with self._mutex:
            self.handles.pop(fi.fh, None)
            return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint")
    parser.add_argument("kind", choices=("tsm", "gramine"))
    parser.add_argument("--provider", default="sev_guest")
    parser.add_argument("--interfere", type=int, default=0)
    parser.add_argument("--interfere-same", action="store_true")
    parser.add_argument("--auxblob", default="")
    parser.add_argument("--attestation-type", default="dcap")
    parser.add_argument("--mrenclave", default="11" * 32, help="the emulated enclave's MRENCLAVE (hex)")
    parser.add_argument("--mrsigner", default="22" * 32, help="the emulated enclave's MRSIGNER (hex)")
    parser.add_argument("--no-keys", action="store_true", help="no keys/ directory (Gramine before 1.4)")
    args = parser.parse_args()
    operations: fuse.Operations
    if args.kind == "tsm":
        auxblob = Path(args.auxblob).read_bytes() if args.auxblob else b""
        operations = TsmReport(args.provider, args.interfere, args.interfere_same, auxblob)
    else:
        operations = GramineAttestation(
            args.attestation_type, bytes.fromhex(args.mrenclave), bytes.fromhex(args.mrsigner), not args.no_keys
        )
    fuse.FUSE(operations, args.mountpoint, foreground=True, raw_fi=True, nothreads=True,
              attr_timeout=0, entry_timeout=0, negative_timeout=0)


if __name__ == "__main__":
    main()
